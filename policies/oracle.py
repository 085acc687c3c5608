"""``oracle`` (AccelGen A4, simulator only): a clairvoyant reference that knows every request's true output length.

What it is, precisely — a *clairvoyant online* scheduler, not a global offline optimum (that is NP-hard: it
contains single-machine scheduling with release dates and deadlines). At each scheduling point it:

* keeps TBT SLOs with AccelGen's A1 budget (the same sizer, so the reference is about the choices below);
* admits through :class:`ExactKVGate`, which knows when every request finishes and admits only while the pool's
  peak future use fits, so it never preempts and reuses KV that finishing requests free;
* orders the waiting requests to maximise the number that meet their TTFT deadline (goodput), ties broken by the
  smallest sum of prefill completion times, under this model of the near future (:func:`evaluate`): prefills run
  one after another at the current iteration's chunk rate; request ``j`` starts when the previous one ends and
  its lifetime KV is free — KV frees when a running request finishes (known exactly: remaining output x the
  iteration time) or when an earlier-admitted one does.

The search is exact (:func:`best_order`: depth-first branch and bound over admission orders with the bound
``on_time_so_far + jobs_left``) when at most ``exact_limit`` requests wait (default 6; 720 orders at most, the
search is cached while the waiting set is unchanged). Above that it uses Moore-Hodgson on the earliest-deadline
order (optimal for the number of on-time jobs on one machine without the KV limit), then the dropped requests
shortest-work-first. Admission follows the order strictly: a request whose KV does not fit stops the pass, as in
the model.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from policies.accelgen.policy import AccelGenPolicy
from policies.accelgen.priority import TIER_RESUME, Candidate
from policies.base import register
from policies.capabilities import HostCapabilities
from policies.common import newest_first_victims
from policies.config import ExtConfig
from policies.latency import BatchShape, LatencyModel
from policies.views import Admit, Preempt, RunningView, SchedulerView, WaitingView


def true_output(req: WaitingView | RunningView) -> int:
    """The true output length an Oracle view carries (``max_new_tokens`` for a plain view: the safe bound)."""
    return int(getattr(req, "true_output_len", 0) or req.max_new_tokens)


class ExactKVGate:
    """KV admission with exact lifetimes (A4): admit a request only if the pool's *peak* future use stays within
    what is available now, knowing when every request finishes — so the Oracle never preempts, yet does not
    over-reserve (KV freed by requests that finish before a newcomer peaks is reused).

    Model, in tokens relative to now, for every running, in-progress and admitted request ``i`` with ``rem_i``
    output tokens still to generate: it adds ``a_i`` tokens now (its prompt still to prefill, or nothing when
    running, plus one page of rounding slack) and one per step, and when it finishes frees what it held before
    (``kv_i``, its private KV). Use at step ``t``: ``sum_{rem_i >= t} (a_i + t) - sum_{rem_i < t} kv_i``; it grows
    between finishes, so it peaks at some ``t = rem_j``; each check is one pass over the requests sorted by
    ``rem``."""

    def __init__(self) -> None:
        self._entries: list[tuple[int, int, int]] = []  # (rem, a, kv)
        self._available = 0
        self._page = 1
        self._in_progress: set[str] = set()

    def begin(self, view: SchedulerView) -> None:
        page = self._page = view.pool.page_size
        self._available = view.pool.available_tokens
        entries = [
            (max(true_output(r) - r.output_len, 1), page, max(r.kv_used - r.cached_len, 0)) for r in view.running
        ]
        self._in_progress = {w.rid for w in view.waiting if w.prefilled_len > 0 and not w.swapped_out}
        for w in view.waiting:
            if w.rid in self._in_progress:
                entries.append((self._rem(w), w.seq_len - w.prefilled_len + page, w.prefilled_len - w.cached_len))
        self._entries = sorted(entries)

    @staticmethod
    def _rem(req: WaitingView | RunningView) -> int:
        return max(true_output(req) - req.output_len, 1)

    @staticmethod
    def peak(entries: Sequence[tuple[int, int, int]]) -> int:
        """Peak future use (tokens relative to now) of ``entries`` sorted by ``rem`` (class docstring)."""
        n = len(entries)
        suffix_a = [0] * (n + 1)
        for i in range(n - 1, -1, -1):
            suffix_a[i] = suffix_a[i + 1] + entries[i][1]
        best, freed = 0, 0
        for i in range(n):
            if i == 0 or entries[i][0] != entries[i - 1][0]:
                best = max(best, suffix_a[i] + (n - i) * entries[i][0] - freed)
            freed += entries[i][2]
        return best

    def admit(self, req: WaitingView, prefill_tokens: int) -> Admit | None:
        if req.rid in self._in_progress:  # reserved at begin()
            return Admit(req.rid, prefill_tokens, reserve_tokens=0)
        a = (req.seq_len - req.cached_len if req.swapped_out else req.seq_len) + self._page
        trial = sorted([*self._entries, (self._rem(req), a, 0)])
        if self.peak(trial) > self._available:
            return None
        self._entries = trial
        return Admit(req.rid, prefill_tokens, reserve_tokens=a + self._rem(req))

    def topups(self) -> tuple[tuple[str, int], ...]:
        return ()

    def victims(self, view: SchedulerView, tokens_needed: int) -> tuple[Preempt, ...]:
        return newest_first_victims(view.running, tokens_needed)  # only if the host's accounting disagrees


@dataclass(frozen=True, slots=True)
class Job:
    """One waiting request in the search model."""

    release_s: float
    work_s: float  # prefill time at the current chunk rate
    deadline_s: float  # TTFT deadline (inf: none)
    kv: int  # lifetime KV tokens
    life_s: float  # decode time after its prefill


def evaluate(
    order: Sequence[int], jobs: Sequence[Job], now: float, kv_free: int, releases: Sequence[tuple[float, int]]
) -> tuple[int, float]:
    """(on-time count, sum of completion times) of admitting ``jobs`` in ``order`` under the module's model.
    ``releases``: (time, tokens) KV that running requests free. A job that can never fit is skipped."""
    t, state = now, (kv_free, tuple(sorted(releases)))
    on_time, total = 0, 0.0
    for j in order:
        r = _place(jobs[j], t, state)
        if r is None:
            continue
        end, state = r
        t = end
        total += end
        on_time += end <= jobs[j].deadline_s
    return on_time, total


def _place(job: Job, t: float, state: tuple[int, tuple[tuple[float, int], ...]]):
    """Start ``job`` at the earliest time >= max(t, release) with its KV free; (end, new state) or None."""
    free, events = state
    start = max(t, job.release_s)
    i = 0
    while i < len(events) and events[i][0] <= start:
        free += events[i][1]
        i += 1
    while free < job.kv:
        if i == len(events):
            return None
        start = max(start, events[i][0])
        free += events[i][1]
        i += 1
    end = start + job.work_s
    rest = list(events[i:])
    heapq.heappush(rest, (end + job.life_s, job.kv))
    return end, (free - job.kv, tuple(sorted(rest)))


def best_order(
    jobs: Sequence[Job], now: float, kv_free: int, releases: Sequence[tuple[float, int]]
) -> tuple[list[int], tuple[int, float]]:
    """Exact: the order maximising (on-time count, -sum of completion times), by branch and bound."""
    n = len(jobs)
    best: list[Any] = [(-1, math.inf), list(range(n))]
    start_state = (kv_free, tuple(sorted(releases)))

    def dfs(t: float, state, left: list[int], prefix: list[int], on_time: int, total: float) -> None:
        b_count, b_total = best[0]
        if on_time + len(left) < b_count or (on_time + len(left) == b_count and total >= b_total):
            return
        if not left:
            best[0], best[1] = (on_time, total), list(prefix)
            return
        placed = False
        for k, j in enumerate(left):
            r = _place(jobs[j], t, state)
            if r is None:
                continue
            placed = True
            end, new_state = r
            dfs(end, new_state, left[:k] + left[k + 1 :], [*prefix, j], on_time + (end <= jobs[j].deadline_s),
                total + end)  # fmt: skip
        if not placed:  # none of the rest can ever fit: they are skipped
            dfs(t, state, [], prefix, on_time, total)

    dfs(now, start_state, list(range(n)), [], 0, 0.0)
    order = best[1] + [j for j in range(n) if j not in best[1]]
    return order, best[0]


def heuristic_order(jobs: Sequence[Job], now: float) -> list[int]:
    """Moore-Hodgson on EDF (max on-time jobs on one machine, KV ignored), then the dropped ones by work."""
    edf = sorted(range(len(jobs)), key=lambda j: (jobs[j].deadline_s, jobs[j].work_s))
    kept: list[tuple[float, int]] = []  # max-heap on work
    dropped: list[int] = []
    t = now
    for j in edf:
        heapq.heappush(kept, (-jobs[j].work_s, j))
        t += jobs[j].work_s
        if t > jobs[j].deadline_s:
            w, k = heapq.heappop(kept)
            t += w
            dropped.append(k)
    on_time = sorted((j for _, j in kept), key=lambda j: (jobs[j].deadline_s, jobs[j].work_s))
    return on_time + sorted(dropped, key=lambda j: jobs[j].work_s)


@register("oracle")
class OraclePolicy(AccelGenPolicy):
    """A4 reference (see module docstring). Config as ``accelgen``; ``exact_limit`` bounds the exhaustive search."""

    needs_oracle = True

    exact_limit = 6  # waiting requests up to which the order is searched exhaustively

    def __init__(
        self, latency: LatencyModel, config: ExtConfig | None = None, host: HostCapabilities | None = None
    ) -> None:
        super().__init__(latency, config, host, gate=ExactKVGate())
        self.packing = False
        self.strict = True
        self.exact_decisions = 0
        self.heuristic_decisions = 0
        self._cache: tuple[tuple[str, ...], list[str]] | None = None

    def order(
        self, view: SchedulerView, limit_s: float | None, sec_per_token: float = 0.0
    ) -> tuple[list[Candidate], float | None]:
        cands, binding = super().order(view, limit_s)  # no slack pruning: the search below decides
        fixed = [c for c in cands if c.tier <= TIER_RESUME]
        free = [c for c in cands if c.tier > TIER_RESUME]
        if len(free) <= 1:
            return fixed + free, binding
        key = tuple(sorted(c.req.rid for c in free))
        if self._cache is not None and self._cache[0] == key:
            pos = {rid: i for i, rid in enumerate(self._cache[1])}
            return fixed + sorted(free, key=lambda c: pos[c.req.rid]), binding
        jobs, kv_free, releases, start = self._model(view, limit_s, fixed, free)
        if len(free) <= self.exact_limit:
            order, _ = best_order(jobs, start, kv_free, releases)
            self.exact_decisions += 1
        else:
            order = heuristic_order(jobs, start)
            self.heuristic_decisions += 1
        ordered = [free[i] for i in order]
        self._cache = (key, [c.req.rid for c in ordered])
        return fixed + ordered, binding

    def _model(
        self, view: SchedulerView, limit_s: float | None, fixed: list[Candidate], free: list[Candidate]
    ) -> tuple[list[Job], int, list[tuple[float, int]], float]:
        """The search model's inputs at this scheduling point (see :func:`evaluate`): jobs, KV free, KV releases
        and the start time (after the requests that go first regardless: in-progress chunk, resumed, starving)."""
        decode_ctx = tuple(r.seq_len for r in view.running)
        nd = len(decode_ctx)
        budget = (
            self.sizer.budget(self.target_s(limit_s), decode_ctx, free[0].ctx)
            if self.cfg.dynamic_chunk
            else self.cfg.pivot_tokens
        )
        chunk = max(budget - nd, 1)
        iter_s = self.latency.iteration_s(BatchShape(prefill=((chunk, free[0].ctx),), decode_ctx=decode_ctx))
        releases = [
            (view.now_s + max(true_output(r) - r.output_len, 0) * iter_s, r.prompt_len + true_output(r))
            for r in view.running
        ]
        growth = sum(max(r.prompt_len + true_output(r) - r.kv_used, 0) for r in view.running)
        kv_free = view.pool.available_tokens - growth
        kv_free -= sum(c.req.prompt_len + true_output(c.req) - c.req.prefilled_len for c in fixed)
        start = view.now_s + sum(math.ceil(c.remaining / chunk) * iter_s for c in fixed)
        jobs = []
        for c in free:
            w = c.req
            ttft = w.slo.ttft_ms
            deadline = math.inf if ttft is None or w.first_token_s is not None else w.arrival_s + ttft / 1e3
            out_left = max(true_output(w) - w.output_len, 0)
            jobs.append(
                Job(
                    release_s=view.now_s,
                    work_s=math.ceil(c.remaining / chunk) * iter_s,
                    deadline_s=deadline,
                    kv=w.prompt_len + true_output(w),
                    life_s=out_left * iter_s,
                )
            )
        return jobs, kv_free, releases, start
