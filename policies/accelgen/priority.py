"""AccelGen A2: iteration-level SLO priority — least slack first, with similar-SLO grouping.

Order of the waiting queue, as the sort key ``(tier, group_penalty, slack)``:

* **tier 0** — the request whose chunked prefill is in progress (it already holds KV; SGLang continues it first).
  With ``chunk_yields`` (AccelGen's default) it has no tier of its own: it is ordered by its slack like any other
  request (tier 1 when starving, else 2 or 3), so a short prompt with less slack joins the iteration ahead of it
  (whole; the chunk keeps the rest of the budget, at least a page — SGLang's ``chunked_req_limit``). Without this
  a chat request arriving while a long prompt is being chunked waits for the whole long prefill.
* **tier 1** — requests resuming after a preemption (their token stream is stalled mid-response, and the TBT
  metric counts the stall) and *starving* requests (waiting longer than ``starve_s``), oldest first. This tier
  is what guarantees that no request is starved by the tiers below, whatever its SLOs.
* **tier 2** — requests that can still meet their TTFT SLO (``slack >= 0``) and requests with no TTFT SLO.
* **tier 3** — *late* requests (``slack < 0``: not even a solo prefill can meet the TTFT SLO any more). They are
  served after every request that can still count towards goodput, earliest deadline first; ``starve_s`` lifts
  them into tier 1 eventually.

Slack (time left to meet the SLO): ``arrival + ttft_slo - now - prefill_s(remaining prompt)``; ``+inf`` without a
TTFT SLO. TBT SLOs of running requests enter through the budget (A1), which is set by the tightest of them.

Slack pruning (within tier 2, ``slack_pruning``). Least slack first is earliest-deadline-first, which under
overload lets every request miss by a little (the domino effect). The prefill work of each request is known
without clairvoyance (its prompt), so A2 estimates each one's prefill time at the current chunk rate
(``sec_per_token``, seconds of iteration per prefill token at this iteration's budget), queues it behind the
tier-0/1 work, and runs Moore-Hodgson on the least-slack order: whenever the running total misses a deadline, the
longest request so far is deferred to tier 3. This keeps the largest number of TTFT deadlines that the estimate
says can be met (Moore-Hodgson is optimal for the number of on-time jobs on one machine); deferred requests are
still served, after those, and ``starve_s`` bounds their wait.

Similar-SLO grouping (within tier 2 only). A batch runs at the pace of its tightest member, so requests are
batched by TBT SLO class. The *binding* SLO ``B`` is the tightest (feasible, see A1's best-effort class) TBT SLO
among the running requests, or — when no running request has one — the TBT SLO of the least-slack waiting
request. A waiting request is *in the group* when its TBT SLO ``s`` satisfies ``B / r <= s <= B * r``
(``r = slo_group_ratio``). Which out-of-group requests get ``group_penalty = 1`` (considered only after the group)
is ``slo_group_mode``:

* ``tighter`` (default): requests with ``s < B / r`` — admitting one would drag the whole batch down to its
  smaller budget while it still has time to wait for a tight batch to form;
* ``both``: also requests with ``s > B * r`` and requests without a (feasible) TBT SLO — so a loose request does
  not take a tight batch's budget ahead of the tight requests it was sized for.

Measured (docs/results/accelgen): penalising the looser requests too cost 1-9% goodput on every profile/workload
tried (their prefill then waits for a tight batch to drain, and their TTFT suffers), so ``tighter`` is the
default. Exception in both modes: an *urgent* request (``slack < urgent_slack_frac * ttft_slo``) has penalty 0 —
grouping may delay a request, never make it miss its TTFT SLO. Without any TBT SLO in sight (``B`` undefined) all
penalties are 0 and the order is plain least slack first.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from policies.latency import LatencyModel
from policies.views import SchedulerView, WaitingView

TIER_CHUNKED, TIER_RESUME, TIER_FEASIBLE, TIER_LATE = 0, 1, 2, 3


@dataclass(slots=True)
class Candidate:
    """A waiting request with its A2 key and the quantities A3 packs with."""

    req: WaitingView
    tier: int
    penalty: int
    slack_s: float
    remaining: int  # prompt (+ regenerated output) tokens still to prefill
    ctx: int  # tokens of its context already in the KV pool before its next chunk
    tbt_ms: float | None  # its TBT SLO, None when absent or best-effort

    @property
    def key(self) -> tuple[int, int, float, float]:
        return (self.tier, self.penalty, self.slack_s, self.req.arrival_s)

    @property
    def cls(self) -> tuple[int, int]:
        return (self.tier, self.penalty)


def remaining_prefill(req: WaitingView) -> tuple[int, int]:
    """(tokens still to prefill, context before them). A swapped-out request resumes by a swap-in: 0 tokens.
    A fully cached prompt still computes its last token (SGLang does), hence at least 1."""
    ctx = max(req.cached_len, req.prefilled_len)
    if req.swapped_out:
        return 0, req.seq_len
    return max(req.seq_len - ctx, 1), min(ctx, req.seq_len - 1)


def in_group(tbt_ms: float | None, binding_ms: float | None, ratio: float) -> bool:
    """The grouping rule of the module docstring."""
    if binding_ms is None:
        return True
    return tbt_ms is not None and binding_ms / ratio <= tbt_ms <= binding_ms * ratio


def deferred_by_group(tbt_ms: float | None, binding_ms: float, ratio: float, mode: str) -> bool:
    """Whether grouping defers a (non-urgent) request: ``mode`` is ``tighter`` or ``both`` (module docstring)."""
    if mode == "tighter":
        return tbt_ms is not None and tbt_ms < binding_ms / ratio
    return not in_group(tbt_ms, binding_ms, ratio)


def order_waiting(
    view: SchedulerView,
    latency: LatencyModel,
    *,
    binding_ms: float | None,
    feasible_tbt: dict[str, float | None],
    group_ratio: float,
    urgent_slack_frac: float,
    starve_s: float,
    grouping: bool = True,
    sec_per_token: float = 0.0,
    group_mode: str = "tighter",
    chunk_yields: bool = False,
) -> tuple[list[Candidate], float | None]:
    """Waiting requests in A2 order, and the binding SLO used for grouping. ``binding_ms``: the running
    requests' tightest feasible TBT SLO (None: none binds, the waiting queue's least-slack request sets it).
    ``feasible_tbt`` maps rid -> TBT SLO with best-effort SLOs removed (missing rids use the request's own);
    ``grouping=False`` gives plain least-slack-first (ablation); ``sec_per_token > 0`` turns on slack pruning;
    ``chunk_yields`` orders the in-progress chunked request by its slack instead of first (module docstring)."""
    now = view.now_s
    out: list[Candidate] = []
    for req in view.waiting:
        remaining, ctx = remaining_prefill(req)
        tbt = feasible_tbt.get(req.rid, req.slo.tbt_ms)
        ttft = req.slo.ttft_ms
        if ttft is None or req.first_token_s is not None:
            slack = math.inf
        else:
            solo = latency.prefill_s(remaining, ctx) if remaining else 0.0
            slack = req.arrival_s + ttft / 1e3 - now - solo
        if req.rid == view.chunked_rid and not chunk_yields:
            tier = TIER_CHUNKED
        elif req.output_len > 0 or req.swapped_out or now - req.arrival_s > starve_s:
            tier = TIER_RESUME
        elif slack >= 0:
            tier = TIER_FEASIBLE
        else:
            tier = TIER_LATE
        if tier in (TIER_CHUNKED, TIER_RESUME):
            slack = -math.inf  # these go by arrival among themselves
        out.append(Candidate(req, tier, 0, slack, remaining, ctx, tbt))
    if sec_per_token > 0:
        prune_by_slack(out, now, sec_per_token)
    if grouping:
        if binding_ms is None:
            binding_ms = _least_slack_tbt(out)
        if binding_ms is not None:
            for c in out:
                if c.tier == TIER_FEASIBLE and deferred_by_group(c.tbt_ms, binding_ms, group_ratio, group_mode):
                    ttft = c.req.slo.ttft_ms
                    urgent = ttft is not None and c.slack_s < urgent_slack_frac * ttft / 1e3
                    c.penalty = 0 if urgent else 1
    out.sort(key=lambda c: c.key)
    return out, binding_ms


def prune_by_slack(cands: list[Candidate], now: float, sec_per_token: float) -> int:
    """Moore-Hodgson over tier 2 in least-slack order (module docstring); returns how many were deferred."""
    t = now + sec_per_token * sum(c.remaining for c in cands if c.tier < TIER_FEASIBLE)
    kept: list[tuple[int, int]] = []  # max-heap on prefill tokens: (-remaining, index)
    deferred = 0
    order = sorted((i for i, c in enumerate(cands) if c.tier == TIER_FEASIBLE), key=lambda i: cands[i].slack_s)
    for i in order:
        c = cands[i]
        ttft = c.req.slo.ttft_ms
        if ttft is None or c.req.first_token_s is not None:
            continue  # no deadline: never deferred, and it does not delay the deadlines here (it sorts last)
        heapq.heappush(kept, (-c.remaining, i))
        t += c.remaining * sec_per_token
        if t > c.req.arrival_s + ttft / 1e3:
            neg, j = heapq.heappop(kept)
            t += neg * sec_per_token
            cands[j].tier = TIER_LATE
            deferred += 1
    return deferred


def _least_slack_tbt(cands: list[Candidate]) -> float | None:
    """The TBT SLO of the least-slack feasible waiting request that has one."""
    best: Candidate | None = None
    for c in cands:
        if c.tier == TIER_FEASIBLE and c.tbt_ms is not None and (best is None or c.slack_s < best.slack_s):
            best = c
    return best.tbt_ms if best is not None else None
