"""``accelgen``: AccelGen's scheduler — A1 budget, A2 order, A3 packing — over a pluggable :class:`KVGate`.

One plan per iteration, always *mixed* (``run_decodes=True``): every running request decodes and the budget left
after the decodes goes to prefill chunks. Steps:

1. Best-effort check (bad input): running/waiting requests whose TBT SLO is below the minimum possible iteration
   time for their context (:func:`~policies.accelgen.chunk.min_feasible_tbt_ms`) are treated as having no TBT SLO
   (documented best-effort class; counted in ``notes['best_effort']``).
2. A1 sizes the budget from the tightest feasible TBT SLO of the running requests, the decodes' contexts and the
   in-progress chunk's context (:mod:`policies.accelgen.chunk`). A1 off: a fixed budget of ``pivot_tokens``.
3. A2 orders the waiting queue (:mod:`policies.accelgen.priority`); its slack pruning estimates prefill times at
   this budget's rate (seconds per prefill token of a budget-sized iteration).
4. A3 packs admissions into the budget and the free KV through the gate (:mod:`policies.accelgen.packing`).
   Each admission is checked against the *actual* iteration shape (all chunks so far with their own contexts,
   plus the decodes) and shrunk until the predicted time meets the limit, so the plan's predicted iteration time
   never exceeds the tightest included SLO whenever a ``min_budget``-sized iteration fits at all.

A1's late-gap allowance (:mod:`policies.accelgen.late_gaps`): where not even a ``min_budget`` chunk meets the tightest
TBT SLO (costly extend passes, as on CPU), tight requests' allowed late gaps buy few large chunks.

The gate (default :class:`~policies.accelgen.gate.DemandKVGate`: expected-demand admission in pages) makes every KV
decision: admissions, top-ups and victims. The combined ``cacheopt+accelgen`` mode is this class with CacheOPT's
gate (:mod:`policies.combined`); no special cases.

Surviving a wrong latency model (A1): a host that measures its iterations calls
:meth:`AccelGenPolicy.observe_iteration`. Two mechanisms use those measurements: the *error margin*
(:class:`~policies.latency.ErrorMargin`, ``--ext-accelgen-error-margin``) — A1 sizes for the tightest TBT SLO divided
by a high quantile of measured/predicted iteration time, so jitter and a model that under-predicts cost budget, not
TBT attainment — and the *online refit* (:class:`~policies.latency.OnlineLatencyFitter`, with an
:class:`~policies.latency.IterationLatencyModel`): every ``refit_interval`` measurements the model is refitted and
later budgets are sized with it; the margin is then re-measured against the refitted model, so a bias the refit
removed stops costing budget. The SLO-grouping of A2 keeps using the SLOs themselves, not the margin.
"""

from __future__ import annotations

from collections.abc import Callable

from policies.accelgen.chunk import ChunkSizer, min_feasible_tbt_ms
from policies.accelgen.gate import DemandKVGate
from policies.accelgen.late_gaps import LateGaps
from policies.accelgen.packing import pack
from policies.accelgen.priority import Candidate, order_waiting
from policies.base import Policy, register
from policies.capabilities import HostCapabilities
from policies.config import AccelGenConfig, ExtConfig
from policies.kv_gate import KVGate
from policies.latency import BatchShape, ErrorMargin, IterationLatencyModel, LatencyModel, OnlineLatencyFitter
from policies.views import Admit, IterationPlan, Preempt, SchedulerView

EXTEND_COST_SHARE = 0.1  # the late-gap allowance is for hosts whose extend pass costs >= 10% of a decode step
TTFT_WINDOW_S = 30.0  # how long the TTFT guard remembers the tightest TTFT SLO it saw


@register("accelgen")
class AccelGenPolicy(Policy):
    """AccelGen A1-A3 (see module docstring). ``gate``: the :class:`KVGate` that makes the KV decisions (default
    :class:`DemandKVGate`). The online refit runs when ``--ext-accelgen-online-refit`` is on and the host measures
    its iterations."""

    def __init__(
        self,
        latency: LatencyModel,
        config: ExtConfig | None = None,
        host: HostCapabilities | None = None,
        gate: KVGate | None = None,
    ) -> None:
        super().__init__(latency, config, host)
        self.cfg: AccelGenConfig = self.config.accelgen
        self.gate: KVGate = gate if gate is not None else DemandKVGate()
        self.sizer = ChunkSizer(latency, self.cfg.min_budget, self.cfg.max_budget)
        self.fitter: OnlineLatencyFitter | None = None
        base_model = latency if isinstance(latency, IterationLatencyModel) else getattr(latency, "latency", None)
        refit = self.cfg.online_refit and self.host.measures_iterations
        if refit and isinstance(base_model, IterationLatencyModel):  # a profile wraps one
            self.fitter = OnlineLatencyFitter(base_model, refit_every=self.cfg.refit_interval)
        use_margin = self.cfg.error_margin and self.host.measures_iterations
        self.error_margin: ErrorMargin | None = ErrorMargin(self.cfg.margin_quantile) if use_margin else None
        self._min_tbt_cache: dict[int, float] = {}
        # Read from the profile the host starts from (measured on it), not from online refits, which need not
        # separate the extend cost from the intercept and the roofline floor.
        extend_s = getattr(base_model, "c_prefill_s", 0.0) if base_model is not None else 0.0
        self.costly_extends = extend_s >= EXTEND_COST_SHARE * min_feasible_tbt_ms(latency) / 1e3
        self._tight_ttft: tuple[float, float] | None = None  # (tightest TTFT SLO ms seen, when) for the TTFT guard
        self.late_gaps = LateGaps(self.cfg, self.feasible_tbt)  # A1's late-gap allowance
        self.packing = True  # subclasses that fix their own order (the Oracle) turn A3's window off
        self.strict = False  # ... and stop at the first refusal instead of backfilling

    @classmethod
    def needs_mixed_chunk(cls, config: ExtConfig) -> bool:
        return True  # every plan is mixed: decodes first, then chunks in the budget left (A1)

    # --- A1 online refit --------------------------------------------------------------------------------------
    def observe_iteration(self, shape: BatchShape, seconds: float) -> None:
        """A measured iteration (host clock, not read here): updates the error margin against the model that
        sized it, and refits the latency model periodically."""
        if self.error_margin is not None:
            self.error_margin.observe(shape, seconds, self.latency.iteration_s(shape))
        if self.fitter is None:
            return
        model = self.fitter.observe(shape, seconds)
        if model is not None:
            self.set_latency(model)
            if self.error_margin is not None:
                self.error_margin.rebase(model)

    @property
    def margin(self) -> float:
        """A1's current safety factor on the TBT limit (1.0 without measurements or with the margin off)."""
        return self.error_margin.value if self.error_margin is not None else 1.0

    def target_s(self, limit_s: float | None) -> float | None:
        """The iteration time A1 sizes for: the tightest TBT SLO over the error margin."""
        return None if limit_s is None else limit_s / self.margin

    def set_latency(self, latency: LatencyModel) -> None:
        self.latency = latency
        self.sizer = ChunkSizer(latency, self.cfg.min_budget, self.cfg.max_budget)
        self._min_tbt_cache.clear()

    # --- helpers ----------------------------------------------------------------------------------------------
    def _min_tbt_ms(self, ctx: int) -> float:
        """Minimum feasible TBT at context ``ctx``, bucketed to a power of two above (conservative: the minimum
        grows with context) and cached, so the check costs nothing per decision."""
        bucket = 1 << max(int(ctx) - 1, 0).bit_length()
        v = self._min_tbt_cache.get(bucket)
        if v is None:
            v = self._min_tbt_cache[bucket] = min_feasible_tbt_ms(self.latency, bucket)
        return v

    def feasible_tbt(self, tbt_ms: float | None, ctx: int) -> float | None:
        """The TBT SLO that binds for this request: ``None`` when absent or in the best-effort class."""
        if tbt_ms is None or tbt_ms < self._min_tbt_ms(ctx):
            return None
        return tbt_ms

    def _floor_is_late(self, limit_s: float | None, decode_ctx: tuple[int, ...], chunk_ctx: int) -> bool:
        """The allowance engages only on hosts whose extend pass has a fixed cost (the profile's ``c_prefill_s`` at
        least :data:`EXTEND_COST_SHARE` of a decode step: the CPU server, not the GPU profiles) and only where strict
        A1 has nothing to give: not even a ``min_budget``-token chunk meets the tightest TBT SLO over the error
        margin. Then strict A1 adds a floor-sized chunk to every iteration — late for the tight class anyway, and
        hardly any progress (a live run at 1.5 req/s: 16-30-token chunks, the queue growing to a 9-44 s TTFT
        p99). On the GPU profiles nothing changes; engaging the allowance there when a jitter-grown margin shrank
        chunks cost the tight class 18-21 points at 16 req/s under 15% noise."""
        if not self.costly_extends:
            return False
        target = self.target_s(limit_s)
        if target is None:
            return False
        least = max(self.cfg.min_budget - len(decode_ctx), 1)
        return self.sizer.max_chunk(target, decode_ctx, chunk_ctx, least) < least

    def iteration_limit_s(
        self, view: SchedulerView, decode_ctx: tuple[int, ...] | None = None
    ) -> tuple[float | None, int]:
        """(tightest feasible TBT SLO among running requests in seconds or None, best-effort count).
        Only SLOs below the minimum TBT at the longest context need a per-request feasibility check."""
        ctx = decode_ctx if decode_ctx is not None else tuple(r.seq_len for r in view.running)
        if not ctx:
            return None, 0
        slos = [r.slo.tbt_ms for r in view.running]
        m_hi = self._min_tbt_ms(max(ctx))
        tight = min((t for t in slos if t is not None and t >= m_hi), default=None)
        best_effort = 0
        for t, c in zip(slos, ctx, strict=True):
            if t is None or t >= m_hi:
                continue
            if t < self._min_tbt_ms(c):
                best_effort += 1
            elif tight is None or t < tight:
                tight = t
        return (None if tight is None else tight / 1e3), best_effort

    def order(
        self, view: SchedulerView, limit_s: float | None, sec_per_token: float = 0.0
    ) -> tuple[list[Candidate], float | None]:
        """A2: the waiting queue in admission order and the binding SLO (ms) used for grouping.
        ``sec_per_token``: the current prefill rate for slack pruning (0: off)."""
        cfg = self.cfg
        feasible = {w.rid: self.feasible_tbt(w.slo.tbt_ms, w.seq_len) for w in view.waiting if w.slo.tbt_ms}
        cands, binding_ms = order_waiting(
            view,
            self.latency,
            binding_ms=None if limit_s is None else limit_s * 1e3,
            feasible_tbt=feasible,
            group_ratio=cfg.slo_group_ratio,
            urgent_slack_frac=cfg.urgent_slack_frac,
            starve_s=cfg.starve_s,
            grouping=cfg.slo_priority,
            sec_per_token=sec_per_token if cfg.slo_priority and cfg.slack_pruning else 0.0,
            group_mode=cfg.slo_group_mode,
            chunk_yields=cfg.chunk_yield,
        )
        if not cfg.slo_priority:  # A2 off: first come, first served (chunked request still first)
            cands.sort(key=lambda c: (c.tier != 0, c.req.arrival_s))
        return cands, binding_ms

    def plan(self, view: SchedulerView) -> IterationPlan:
        cfg = self.cfg
        self.gate.begin(view)
        decode_ctx = tuple(r.seq_len for r in view.running)
        limit_s, best_effort = self.iteration_limit_s(view, decode_ctx)
        cap_s = self.ttft_cap_s(view)
        nd = len(decode_ctx)
        chunked = next((w for w in view.waiting if w.rid == view.chunked_rid), None)
        chunk_ctx = max(chunked.cached_len, chunked.prefilled_len) if chunked is not None else 0
        late_mode = cfg.late_gap_share > 0 and cfg.dynamic_chunk and self._floor_is_late(limit_s, decode_ctx, chunk_ctx)
        if late_mode:
            cap_s = None  # late iterations are bounded by the stretch; the guard would only shrink their chunks
        urgent = late_mode and self.late_gaps.must_prefill(view)
        size_s = self.late_gaps.sizing_limit_s(view, decode_ctx, urgent) if late_mode else limit_s
        if late_mode and size_s is not None and limit_s is not None and size_s > limit_s:
            target_s: float | None = size_s  # a late iteration: bounded by the stretch (under the stall factor)
        else:  # an on-time one: within the SLO over the measured error margin
            target_s = self.target_s(cap_s if size_s is None else size_s if cap_s is None else min(size_s, cap_s))
        floor = cfg.min_budget if urgent or not late_mode else 0
        if cfg.dynamic_chunk:
            budget = self.sizer.budget(target_s, decode_ctx, chunk_ctx, floor)
        else:
            budget = max(cfg.pivot_tokens, nd)
        spt = 0.0
        if view.waiting and budget > nd:
            shape = BatchShape(prefill=((budget - nd, chunk_ctx),), decode_ctx=decode_ctx)
            spt = self.latency.iteration_s(shape) / (budget - nd)
        cands, binding_ms = self.order(view, limit_s, spt)
        prefill: list[tuple[int, int]] = []

        def fit(c: Candidate, t: int) -> int:
            if target_s is None or not cfg.dynamic_chunk:
                return t
            base = nd + sum(n for n, _ in prefill)
            if base + t <= floor:  # the floor: progress even when the SLO cannot be met
                return t
            shape = BatchShape(prefill=(*prefill, (t, c.ctx)), decode_ctx=decode_ctx)
            if self.latency.iteration_s(shape) <= target_s:
                return t
            lo, hi = max(floor - base, 0), t  # largest t' with the shape within the limit
            while hi - lo > 1:
                mid = (lo + hi) // 2
                s = BatchShape(prefill=(*prefill, (mid, c.ctx)), decode_ctx=decode_ctx)
                lo, hi = (mid, hi) if self.latency.iteration_s(s) <= target_s else (lo, mid)
            return lo

        def record(c: Candidate, t: int) -> None:
            if t > 0:
                prefill.append((t, c.ctx))

        kv_free = view.pool.available_tokens - view.pool.reserve_tokens - nd
        usable = [c for c in cands if c.req.seq_len < view.pool.capacity_tokens - nd]  # the rest can never fit
        kw = {"window": cfg.pack_window, "multi_resource": cfg.multi_resource and self.packing, "strict": self.strict}
        chunk_c = next((c for c in usable if c.req.rid == view.chunked_rid), None)
        if chunk_c is None or chunk_c is usable[0]:
            admits, used = pack(usable, max(budget - nd, 0), kv_free, self.gate, fit, record, **kw)
        else:
            admits, used = self._pack_yielding(usable, chunk_c, max(budget - nd, 0), kv_free, fit, prefill,
                                               view.pool.page_size, kw)  # fmt: skip
        if self.cfg.late_gap_share > 0 and self.costly_extends and limit_s is not None and prefill:
            shape = BatchShape(prefill=tuple(prefill), decode_ctx=decode_ctx)
            self.late_gaps.charge(view, self.latency.iteration_s(shape) * self.margin * 1e3)
        notes = {"budget": float(budget), "prefill_tokens": float(used), "decodes": float(nd)}
        if cap_s is not None:
            notes["ttft_cap_ms"] = cap_s * 1e3
        if limit_s is not None:
            notes["limit_ms"] = limit_s * 1e3
            notes["margin"] = self.margin
        if binding_ms is not None:
            notes["binding_ms"] = binding_ms
        if best_effort:
            notes["best_effort"] = float(best_effort)
        hold = getattr(self.gate, "hold", None)  # gates that reserve future KV (CacheOPT's) state what they hold
        draws = getattr(self.gate, "reserve_draws", None)
        return IterationPlan(
            admit=tuple(admits),
            token_budget=budget,
            topups=self.gate.topups(),
            reserve_draws=draws() if draws is not None else (),
            kv_hold=hold() if hold is not None else None,
            run_decodes=True,
            notes=notes,
        )

    def _pack_yielding(
        self,
        cands: list[Candidate],
        chunk: Candidate,
        tokens: int,
        kv_free: int,
        fit: Callable[[Candidate, int], int],
        prefill: list[tuple[int, int]],
        page: int,
        kw: dict,
    ) -> tuple[list[Admit], int]:
        """A2's chunk yield (``--ext-accelgen-chunk-yield``): the candidates ahead of the in-progress chunk in the
        A2 order join whole, then the chunk takes what is left of the budget (at least a page, reserved in the
        iteration's shape from the start, so A1's limit holds for the whole plan); when it finishes its prompt the
        rest of the order may follow. The chunk's admission is listed first, as SGLang continues it first (its
        tokens are capped through SGLang's ``chunked_req_limit``)."""

        def record(c: Candidate, t: int) -> None:
            if t > 0:
                prefill.append((t, c.ctx))

        if tokens <= 0:  # the decodes take the whole budget: nothing is prefilled, as without the yield
            return [], 0
        i = cands.index(chunk)
        least = min(chunk.remaining, page)
        prefill.append((least, chunk.ctx))  # reserved: the chunk's minimum is part of every shape checked
        ahead, used = pack(cands[:i], max(tokens - least, 0), kv_free, self.gate, fit, record, whole_only=True, **kw)
        prefill.pop(0)
        want = min(chunk.remaining, max(tokens - used, least))
        t = max(fit(chunk, want), least)
        adm = self.gate.admit(chunk.req, t)
        if adm is None:  # no KV for its next chunk: the requests ahead still go
            return ahead, used
        prefill.insert(0, (t, chunk.ctx))
        admits, used = [adm, *ahead], used + t
        if t == chunk.remaining and tokens > used:
            rest, more = pack(cands[i + 1 :], tokens - used, kv_free, self.gate, fit, record, **kw)
            admits += rest
            used += more
        return admits, used

    def ttft_cap_s(self, view: SchedulerView) -> float | None:
        """A1's TTFT guard (``--ext-accelgen-ttft-guard``): an iteration may last at most this fraction of the
        tightest TTFT SLO among the requests waiting in the last :data:`TTFT_WINDOW_S` seconds. Why: A1 sizes for
        the *running* requests' TBT; with none running (or only loose ones) an iteration may grow to the maximum
        budget, and a short prompt arriving meanwhile waits for all of it — a tight TTFT class is missed at any
        load. With the cap, a new arrival waits at most one iteration and is prefilled in the next: at the default
        half of its TTFT SLO, those two iterations fit in it. (A third was measured too: it cost 2-9 points of the
        tight class's attainment on mixed-code-conv's relative SLOs, where one tiny prompt's 5x-isolated TTFT then
        caps every iteration, and gained nothing on tight-chat-long.) TTFT SLOs below the shortest possible
        iteration are ignored (infeasible, as A1's best-effort TBT class)."""
        frac = self.cfg.ttft_guard
        if frac <= 0:
            return None
        now = view.now_s
        floor = self._min_tbt_ms(1)
        tight = min((w.slo.ttft_ms for w in view.waiting
                     if w.slo.ttft_ms is not None and w.first_token_s is None and w.slo.ttft_ms >= floor),
                    default=None)  # fmt: skip
        seen = self._tight_ttft
        if tight is not None and (seen is None or tight <= seen[0] or now - seen[1] > TTFT_WINDOW_S):
            self._tight_ttft = seen = (tight, now)
        if seen is None or now - seen[1] > TTFT_WINDOW_S:
            self._tight_ttft = None
            return None
        return frac * seen[0] / 1e3

    def choose_victims(self, view: SchedulerView, tokens_needed: int) -> tuple[Preempt, ...]:
        return self.gate.victims(view, tokens_needed)

    def on_finish(self, rid: str, output_len: int) -> None:
        self.late_gaps.forget(rid)
        hook = getattr(self.gate, "on_finish", None)  # gates with a ledger (CacheOPT) release the allocation
        if hook is not None:
            hook(rid)
        learn = getattr(self.gate, "observe_output", None)  # AccelGen's demand gate learns the mean output
        if learn is not None:
            learn(output_len)
