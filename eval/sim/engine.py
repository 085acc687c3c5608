"""Discrete-event, iteration-level simulator: the host that runs the *same* policy code as the SGLang adapter,
with an injected latency model in place of the GPU (issue 3; Vidur-style).

One iteration: build the views, ``policy.plan(view)``, apply its preemptions/top-ups/admissions (each admitted
chunk's KV is allocated before the forward, as SGLang allocates ``out_cache_loc``), make room for the decode step
(``policy.choose_victims`` when it does not fit: decode OOM), advance the clock by
``latency.iteration_s(shape)`` plus any swap transfers (``latency.swap_s``, serialised with the iteration: no
copy/compute overlap is modelled), then emit tokens. Time jumps over idle gaps to the next
arrival. The host decides nothing itself: it only enforces the physics (pool capacity, hidden lengths) and
fails loudly when a policy breaks them or stops making progress.

Host rules that mirror SGLang's server at arrival (``eval.caps.sglang_arrival``: the tokenizer's context-length
check against the policy's ``host.context_len``, ``scheduler.py`` ``init_req_max_new_tokens`` and input validation):
a prompt of ``min(context, capacity) - 6`` tokens or more, or a cap that does not fit the context, is rejected with a
reason; the visible ``max_new_tokens`` is capped at ``min(context, capacity) - 2 - prompt`` and at
``capacity - ceil_page(prompt) - page - 1`` (``max_new_tokens_for_memory``: a request alone in an empty pool is
always admissible). A re-prefilled (recomputed) request samples its next
token at the end of the prefill, as SGLang's retracted requests do. All admitted prefixes are locked before any
allocation of the iteration (SGLang forms the whole batch before ``prepare_for_extend`` allocates), so a policy
accounts a hit as pinned: it leaves the evictable pool when its request is admitted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from eval.caps import sglang_arrival
from eval.metrics import RequestRecord, summarize
from eval.sim import request as rq
from eval.sim.kv_ops import KVOps, PolicyError, SimulationStalled
from eval.sim.pool import KVPool, OverCommitError
from eval.sim.request import PREFILLING, RUNNING, WAITING, SimRequest
from eval.workloads import RequestSpec
from host.budget import PrefillBudgetRule, kv_to_free
from host.core import HostCore
from policies.base import Policy
from policies.latency import BatchShape, LatencyModel
from policies.views import Admit, IterationPlan, LengthEstimate, PoolView, PreemptMode, SchedulerView

BLOCK_TOKENS = 512  # Mooncake's hash_ids block size
Estimator = Callable[[RequestSpec], LengthEstimate | None]


@dataclass
class SimStats:
    iterations: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    preemptions: int = 0
    swaps_out: int = 0
    swaps_in: int = 0
    swap_fallbacks: int = 0  # swap asked for but host memory was full: recomputed instead
    rejected: int = 0
    aborted: int = 0  # decode OOM that no victim could fix (SGLang aborts the last request too)
    cache_hit_tokens: int = 0
    busy_s: float = 0.0
    preempt_recompute: int = 0  # preemptions by mode (plan preemptions and decode-OOM retractions alike)
    preempt_swap: int = 0  # executed swaps (a swap that fell back to recompute counts as recompute)
    kv_peak_tokens: int = 0  # most KV held by requests (private + locked prefixes) during any iteration
    kv_token_s: float = 0.0  # integral of that KV over simulated time (mean = kv_token_s / span_s)
    span_s: float = 0.0  # simulated time from the first arrival to the end of the run


@dataclass
class SimResult:
    records: list[RequestRecord]
    summary: dict[str, Any]
    stats: SimStats = field(default_factory=SimStats)


class Simulator(KVOps):
    def __init__(
        self,
        policy: Policy,
        latency: LatencyModel,
        *,
        pool_tokens: int,
        page_size: int = 1,
        host_tokens: int | None = None,
        estimator: Estimator | None = None,
        block_tokens: int = BLOCK_TOKENS,
        rate_window_s: float = 60.0,
        check_invariants: bool = False,
        max_iterations: int = 100_000_000,
        prefix_cache: bool = True,
    ) -> None:
        if policy.host.page_size != page_size:
            raise ValueError(
                f"policy {policy.name!r} was built for page size {policy.host.page_size}, the simulator runs "
                f"{page_size}: build it with eval.sim.make_policy(..., page_size={page_size})"
            )
        self.policy = policy
        self.core = HostCore(policy, rate_window_s=rate_window_s)
        self.latency = latency
        self.pool = KVPool(pool_tokens, page_size, 4 * pool_tokens if host_tokens is None else host_tokens)
        self.estimator = estimator
        if hasattr(estimator, "rate"):  # an online estimator reads this host's arrival-rate estimate (C1)
            estimator.rate = lambda: self.core.arrival_rate(self.now)  # type: ignore[union-attr]
        self.block_tokens = block_tokens
        self.check = check_invariants
        self.max_iterations = max_iterations
        self.prefix_cache = prefix_cache  # False: SGLang's --disable-radix-cache (no prefix reuse at all)
        self.oracle = bool(getattr(policy, "needs_oracle", False))
        self._wview = rq.oracle_waiting_view if self.oracle else rq.waiting_view
        self._rview = rq.oracle_running_view if self.oracle else rq.running_view
        self.waiting: dict[str, SimRequest] = {}
        self.prefilling: dict[str, SimRequest] = {}
        self.running: dict[str, SimRequest] = {}
        self.requests: list[SimRequest | RequestRecord] = []
        self.stats = SimStats()
        self.now = 0.0
        self._zero_dt = 0
        self._wtuple: tuple | None = None  # cached views of the waiting queue (None: rebuild)
        self._priority_of = policy.config.sglang.priority_map()  # SLO class -> SGLang request priority

    # --- main loop ------------------------------------------------------------------------------------------
    def run(self, specs: Iterable[RequestSpec]) -> SimResult:
        todo = sorted(specs, key=lambda s: s.arrival_s)
        n = len(todo)
        i = 0
        self.now = todo[0].arrival_s if todo else 0.0
        while True:
            while i < n and todo[i].arrival_s <= self.now:
                self._arrive(todo[i])
                i += 1
            if not (self.waiting or self.prefilling or self.running):
                if i >= n:
                    break
                self.core.plan(self._view())  # an idle scheduling point (SGLang resets its ratio here)
                self.now = todo[i].arrival_s
                continue
            if not self._iterate():
                if i < n:
                    self.now = max(self.now, todo[i].arrival_s)
                    continue
                raise SimulationStalled(
                    f"policy {self.policy.name!r} admits nothing with {len(self.waiting)} waiting, "
                    f"{len(self.prefilling)} prefilling, {len(self.running)} running, {self.pool.free} of "
                    f"{self.pool.capacity} KV tokens free, and no arrival left"
                )
            if self.stats.iterations > self.max_iterations:
                raise SimulationStalled(f"more than {self.max_iterations} iterations")
        records = [r.record if isinstance(r, SimRequest) else r for r in self.requests]
        self.stats.span_s = self.now - todo[0].arrival_s if todo else 0.0
        return SimResult(records, summarize(records), self.stats)

    def _iterate(self) -> bool:
        view = self._view()
        plan: IterationPlan = self.core.plan(view)
        for rid, _ in plan.topups:
            if not (rid in self.running or rid in self.prefilling or rid in self.waiting):
                raise PolicyError(f"top-up for {rid!r}: no such live request")
        extra_s = 0.0
        for p in plan.preempt:
            extra_s += self._preempt(p.rid, p.mode)
        prefills: list[tuple[SimRequest, int, int]] = []
        resumed: list[SimRequest] = []
        admitted = self._execute_admissions(plan, view)
        for r, a in admitted:
            if r.host_tokens:
                extra_s += self._swap_in(r)
                resumed.append(r)
                continue
            n = a.prefill_tokens
            before = r.prefilled_len
            if not 0 < n <= r.seq_len - before:
                raise PolicyError(f"admit of {a.rid!r} with {n} prefill tokens; {r.seq_len - before} remain")
            self._grow(r, n)
            prefills.append((r, n, before))
        decoders: list[SimRequest] = []
        if plan.run_decodes and self.running:
            extra_s += self._make_room_for_decode()
            decoders = list(self.running.values())
            for r in decoders:
                self._grow(r, 1)
        if not (prefills or decoders or resumed or plan.preempt or extra_s):
            return False
        shape = BatchShape(tuple((n, b) for _, n, b in prefills), tuple(r.kv_used for r in decoders))
        forward_s = self.latency.iteration_s(shape) if (prefills or decoders) else 0.0
        if forward_s > 0:
            self.core.measured(shape, forward_s)  # the "measured" iteration (A1's refit learns the true profile)
        dt = forward_s + extra_s
        in_use = self.pool.capacity - self.pool.free - self.pool.cache.evictable_tokens  # KV held by requests
        self.stats.kv_peak_tokens = max(self.stats.kv_peak_tokens, in_use)
        self.stats.kv_token_s += in_use * dt
        self._zero_dt = self._zero_dt + 1 if dt <= 0 else 0
        if self._zero_dt > 10_000:
            raise SimulationStalled(f"policy {self.policy.name!r}: 10,000 iterations without simulated time passing")
        self.now += dt
        self.stats.busy_s += dt
        self.stats.iterations += 1
        now = self.now
        for r in decoders:
            r.output_len += 1
            r.record.token_times_s.append(now)
            r.version += 1
            if r.output_len >= r._finish_len:
                self._finish(r)
        self.stats.decode_tokens += len(decoders)
        for r, n, _ in prefills:
            r.prefilled_len += n
            r.version += 1
            self.stats.prefill_tokens += n
            if r.prefilled_len == r.seq_len:
                self._complete_prefill(r)
        for r in resumed:
            r.state = RUNNING
            self.running[r.rid] = r
        if self.check:
            self.check_invariants()
        return True

    # --- views ----------------------------------------------------------------------------------------------
    def _execute_admissions(self, plan: IterationPlan, view: SchedulerView) -> list[tuple[SimRequest, Admit]]:
        """Apply the plan's admissions in order under the engine's rules: every admitted prefix is locked before
        any allocation (SGLang forms the batch before ``prepare_for_extend``), and for policies that own their KV
        accounting each new admission passes SGLang's prefill budget fed from the plan (``host.budget``); the
        first refusal ends the pass, as ``add_one_req`` returning NO_TOKEN does. A chunk in progress continues
        without a check (``add_chunked_req``)."""
        core, pool = self.core, self.pool
        budget = None
        if core.owns_kv and plan.admit:
            mixed = len(self.running) if self.policy.mixed else 0
            budget = PrefillBudgetRule(lambda: pool.available, core.budget_hold(), pool.page_size, mixed)
        waiting = {w.rid: w for w in view.waiting}
        out: list[tuple[SimRequest, Admit]] = []
        for a in plan.admit:
            r = self.prefilling.get(a.rid) or self.waiting.get(a.rid)
            if r is None or any(a.rid == q.rid for q, _ in out):
                raise PolicyError(f"admit of {a.rid!r}: not waiting (or admitted twice)")
            w = waiting.get(a.rid) or self._wview(r)
            new = r.state == WAITING
            if budget is not None:
                total, reserve_out = core.admission_terms(a, w)
                if new and not (budget.has_capacity() and budget.check(total)):
                    core.refused(a)
                    break
                budget.reserve(a.prefill_tokens, reserve_out)
            if new and not r.host_tokens:
                self._start_prefill(r)
            core.committed(a, w)
            out.append((r, a))
        return out

    def _view(self) -> SchedulerView:
        wv, rv = self._wview, self._rview
        core = self.core
        for rid in core.ledger.dirty:  # ledger fields changed: rebuild those views
            r = self.running.get(rid) or self.prefilling.get(rid)
            if r is not None:
                r.version += 1
        core.ledger.dirty.clear()
        cache = self.pool.cache
        if cache.stale:  # re-match requests whose prefix hit may have changed, and watch their paths again
            stale, cache.stale = cache.stale, []
            for r in stale:
                if r.match_epoch == -1 and r.state == WAITING and not r.host_tokens and r.rid in self.waiting:
                    path, hit = self._match(r)
                    cache.watch(path, r.blocks, r)
                    r.match_epoch = 0
                    if hit != r.cached_len:
                        r.cached_len = hit
                        r.version += 1
                        self._wtuple = None
        if self._wtuple is None:  # the queue or one of its views changed: rebuild (views are cached per request)
            queue = []
            for r in self.waiting.values():
                if r.view_version != r.version:
                    r.view, r.view_version = wv(r), r.version
                queue.append(r.view)
            self._wtuple = tuple(queue)
        waiting = self._wtuple
        if self.prefilling:
            pre = []
            for r in self.prefilling.values():
                if r.view_version != r.version:
                    r.view, r.view_version = wv(r, core.allocation(r.rid, r.kv_used)), r.version
                pre.append(r.view)
            waiting = (*pre, *waiting)
        running = []
        for r in self.running.values():
            if r.view_version != r.version:
                r.view, r.view_version = rv(r, core.allocation(r.rid, r.kv_used)), r.version
            running.append(r.view)
        pool = self.pool
        return SchedulerView(
            self.now,
            waiting,
            tuple(running),
            PoolView(pool.capacity, pool.free, cache.evictable_tokens, pool.page_size),
            core.arrival_rate(self.now),
            next(iter(self.prefilling)) if self.prefilling else None,
        )

    # --- request lifecycle ----------------------------------------------------------------------------------
    def _arrive(self, spec: RequestSpec) -> None:
        pool, ctx = self.pool, self.policy.host.context_len  # SGLang's context and memory rule at arrival (eval.caps)
        max_new, reason = sglang_arrival(
            spec.prompt_len, spec.max_new_tokens, pool_tokens=pool.capacity, page_size=pool.page_size, context_len=ctx
        )
        if max_new is None:
            rec = SimRequest(spec, 1, (), (), None).record
            rec.error = reason
            self.requests.append(rec)
            self.stats.rejected += 1
            return
        bt = spec.prefix_block_tokens if spec.prefix_hash_ids and spec.prefix_block_tokens > 0 else self.block_tokens
        nblocks = -(-spec.prompt_len // bt)
        lens = tuple(min(bt, spec.prompt_len - j * bt) for j in range(nblocks))
        ids = tuple(spec.prefix_hash_ids[:nblocks])
        blocks = ids + tuple((spec.rid, j) for j in range(len(ids), nblocks))
        est = self.estimator(dataclasses.replace(spec, output_len=-1)) if self.estimator else None
        r = SimRequest(spec, max_new, blocks, lens, est)
        r.priority = self._priority_of.get(spec.slo_class)
        r.match_epoch = -1 if ids and self.prefix_cache else -2  # -2: nothing it could match yet
        if r.match_epoch == -1:
            self.pool.cache.stale.append(r)
        self.requests.append(r)
        self.waiting[r.rid] = r
        self._wtuple = None
        self.core.arrived(r.rid, spec.arrival_s)

    def _start_prefill(self, r: SimRequest) -> None:
        del self.waiting[r.rid]
        self._wtuple = None
        nodes, hit = self._match(r) if r.match_epoch >= -1 else ([], 0)
        self.pool.cache.lock(nodes, self.now)
        r.nodes, r.shared_len, r.kv_used, r.prefilled_len, r.cached_len = nodes, hit, hit, hit, hit
        self.stats.cache_hit_tokens += hit
        r.state = PREFILLING
        r.version += 1
        self.prefilling[r.rid] = r

    def _complete_prefill(self, r: SimRequest) -> None:
        del self.prefilling[r.rid]
        self._insert_prompt(r)
        r.output_len += 1
        r.record.token_times_s.append(self.now)
        r.state = RUNNING
        self.running[r.rid] = r
        if r.output_len >= r._finish_len:
            self._finish(r)

    def _finish(self, r: SimRequest) -> None:
        del self.running[r.rid]
        self._release_device(r)
        r.state = rq.DONE
        r.record.finish_s = self.now
        self.core.finished(r.rid, r.output_len)
        if hasattr(self.estimator, "observe"):  # an online estimator (eval.estimates.OnlineEstimator) learns from it
            self._reestimate(r.output_len)

    def _reestimate(self, finished_len: int) -> None:
        est = self.estimator
        est.observe(finished_len)  # type: ignore[union-attr]
        for q in (*self.waiting.values(), *self.prefilling.values(), *self.running.values()):
            q.estimate = est.current(q.max_new_tokens, q.output_len)  # type: ignore[union-attr]
            q.version += 1  # its cached view carries the old estimate

    def _preempt(self, rid: str, mode: PreemptMode) -> float:
        r = self.running.pop(rid, None) or self.prefilling.pop(rid, None)
        if r is None:
            raise PolicyError(f"preempt of {rid!r}: it holds no KV (not running or prefilling)")
        t = 0.0
        tokens = r.kv_used
        swap = mode == PreemptMode.SWAP and r.state == RUNNING
        if swap and not self.pool.host_alloc(tokens):
            swap = False
            self.stats.swap_fallbacks += 1
        self._release_device(r)
        self.core.preempted(rid, PreemptMode.SWAP if swap else PreemptMode.RECOMPUTE)
        if swap:
            r.host_tokens = tokens
            t = self.latency.swap_s(tokens)
            self.stats.swaps_out += 1
            self.stats.preempt_swap += 1
        else:
            self.stats.preempt_recompute += 1
        r.match_epoch = -1 if self.prefix_cache else -2
        if self.prefix_cache:
            self.pool.cache.stale.append(r)
        r.state = WAITING
        r.version += 1
        r.record.preemptions += 1
        self.stats.preemptions += 1
        self.waiting[rid] = r
        self._wtuple = None
        return t

    def _swap_in(self, r: SimRequest) -> float:
        del self.waiting[r.rid]
        self._wtuple = None
        tokens = r.host_tokens
        try:
            self.pool.alloc(self.pool.pages(tokens))
        except OverCommitError as e:
            raise PolicyError(f"policy {self.policy.name!r} swapped {r.rid} in without room: {e}") from None
        self.pool.host_release(tokens)
        r.host_tokens = 0
        r.kv_used = tokens
        r.version += 1
        self.stats.swaps_in += 1
        return self.latency.swap_s(tokens)

    def _make_room_for_decode(self) -> float:
        """Decode OOM: ask the policy for victims until the next decode step fits (SGLang's retract loop)."""
        page = self.pool.page_size
        extra = 0.0
        for _ in range(len(self.running) + 1):
            need = page * sum(1 for r in self.running.values() if (r.kv_used - r.shared_len) % page == 0)
            if need <= self.pool.available or not self.running:
                return extra
            victims = self.core.victims(self._view(), kv_to_free(need, self.pool.available))
            if not victims:  # SGLang aborts the last request when even it cannot decode
                r = next(reversed(self.running.values()))
                del self.running[r.rid]
                self._release_device(r)
                self.core.aborted(r.rid, r.output_len)
                r.state = rq.DONE
                r.record.error = "aborted: out of KV memory even after retracting the other requests"
                self.stats.aborted += 1
                continue
            for p in victims:
                if p.rid not in self.running:
                    raise PolicyError(f"victim {p.rid!r} is not running")
                extra += self._preempt(p.rid, p.mode)
        return extra
