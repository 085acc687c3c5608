"""The ``cacheopt`` policy: SGLang's batching with CacheOPT's KV management (C1-C5) through :class:`CacheOptGate`.

Batching follows SGLang 0.5.23's default so that differences against the ``sglang`` baseline come from KV
management: when any waiting request can be admitted, the iteration is a prefill batch of up to
``chunked_prefill_size`` tokens (the last request may be chunked; a chunk in progress continues first), otherwise
it is a decode step. ``--ext-cacheopt-mixed-chunk`` lets decodes ride along with the prefill chunk instead.

Candidates are the first ``waiting_window`` waiting requests in C2's pick order (resumed first, then least TTFT
slack). Admission stops at the first request that does not fit (no backfilling, so a large request is not starved by
smaller ones); a request that can never fit (its prompt alone exceeds the pool minus the reserve) is skipped and
counted in ``notes['never_fit']`` so the host can reject it with a reason.
"""

from __future__ import annotations

from policies.base import Policy, register
from policies.cacheopt.allocation import order_waiting
from policies.cacheopt.gate import CacheOptGate
from policies.capabilities import HostCapabilities
from policies.config import ExtConfig
from policies.latency import LatencyModel
from policies.views import Admit, IterationPlan, Preempt, SchedulerView, WaitingView

_PLAN_TOTALS = ("admits", "reuse", "topups", "reserve_draws", "never_fit")
_TOTALS = (*_PLAN_TOTALS, "preempt_swap", "preempt_recompute")


@register("cacheopt")
class CacheOptPolicy(Policy):
    """The global reserve's size is ``--ext-cacheopt-reserve-tokens`` unless the host passes the predictor
    service's live decision in ``PoolView.reserve_tokens``."""

    def __init__(
        self, latency: LatencyModel, config: ExtConfig | None = None, host: HostCapabilities | None = None
    ) -> None:
        super().__init__(latency, config, host)
        self.cfg = self.config.cacheopt
        self.chunk = self.host.chunked_prefill_size or self.config.sglang.chunked_prefill_size
        self.gate = CacheOptGate(self.cfg, latency, mixed=self.mixed, swap=self.host.swap)
        self._prefill_memo: dict[tuple[str, int, int], float] = {}
        self.totals: dict[str, float] = dict.fromkeys(_TOTALS, 0.0)  # decision counters over the whole run

    def plan(self, view: SchedulerView) -> IterationPlan:
        gate = self.gate
        gate.begin(view)
        budget = self.chunk
        admits: list[Admit] = []
        preempt: tuple[Preempt, ...] = ()
        prefill = 0
        never_fit = 0
        for req in self._candidates(view):
            if budget <= 0:
                break
            if req.swapped_out and req.prefilled_len == 0:
                chunk = 0  # resumed by swap-in: KV comes back over PCIe, no forward tokens
            else:
                chunk = min(max(req.seq_len - max(req.prefilled_len, req.cached_len), 1), budget)
            a = gate.admit(req, chunk)
            if a is None and gate.blocked > 0 and not preempt:
                # the chunk in progress cannot continue physically (SGLang would continue it anyway and run out of
                # memory): preempt running requests by C4/C5 first, within this plan
                preempt = gate.victims(view, gate.blocked)
                if preempt:
                    out = {p.rid for p in preempt}
                    gate.credit(sum(r.kv_used - r.cached_len for r in view.running if r.rid in out))
                    a = gate.admit(req, chunk)
            if a is None:
                if gate.permanent_reject:
                    never_fit += 1
                    continue
                break
            admits.append(a)
            budget -= a.prefill_tokens
            prefill += a.prefill_tokens
        run_decodes = self.mixed or prefill == 0
        notes = dict(gate.counters)
        notes["never_fit"] = float(never_fit)
        totals = self.totals
        for k in _PLAN_TOTALS:
            totals[k] += notes[k]
        plan = IterationPlan(
            admit=tuple(admits),
            token_budget=prefill + (len(view.running) if run_decodes else 0),
            preempt=preempt,
            topups=gate.topups(),
            reserve_draws=gate.reserve_draws(),
            kv_hold=gate.hold(),
            run_decodes=run_decodes,
            notes=notes,
        )
        gate.end()
        return plan

    @classmethod
    def needs_mixed_chunk(cls, config: ExtConfig) -> bool:
        return config.cacheopt.mixed_chunk

    def choose_victims(self, view: SchedulerView, tokens_needed: int) -> tuple[Preempt, ...]:
        out = self.gate.victims(view, tokens_needed)
        self.totals["preempt_swap"] += self.gate.counters["preempt_swap"]
        self.totals["preempt_recompute"] += self.gate.counters["preempt_recompute"]
        return out

    def on_finish(self, rid: str, output_len: int) -> None:
        self.gate.on_finish(rid)

    def _candidates(self, view: SchedulerView) -> list[WaitingView]:
        cfg = self.cfg
        ordered = order_waiting(view.waiting, view.now_s, cfg.waiting_window, self.latency, self._prefill_memo,
                                late_last=cfg.late_last, starve_s=cfg.starve_s)  # fmt: skip
        chunked = view.chunked_rid
        if chunked is None:
            return ordered
        first = next((w for w in view.waiting if w.rid == chunked), None)
        if first is None:
            return ordered
        return [first, *(w for w in ordered if w.rid != chunked)]
