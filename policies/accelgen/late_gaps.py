"""AccelGen A1's late-gap allowance (``--ext-accelgen-late-gap-share``, default 8%).

Why: a request meets its TBT SLO with up to 10% of its gaps over it (eval.metrics). Where not even a ``min_budget``
chunk meets the tightest TBT SLO — on the CPU server an extend pass costs a fixed ~11 ms over an ~18 ms decode step
(quiet; 1.3-1.8x more under load), so an iteration carrying a prefill is late for a class whose SLO is 2x a decode
step once a few requests decode — strict A1 could only add floor-sized chunks, each a late gap, and a long prompt
crawled through hundreds of them. With the allowance A1 plans decode-only iterations (on time) and, when every tight
running request can absorb one more late gap within its share (or a new prompt arrives), one late iteration with a
large chunk (up to ``late_gap_stretch`` x the SLO). Where chunks fit the SLO (the GPU profiles) nothing changes: the
plans are strict A1's.

The policy decides when the allowance applies (:meth:`AccelGenPolicy._floor_is_late
<policies.accelgen.policy.AccelGenPolicy._floor_is_late>`); this class keeps the planned late gaps per request and
says which requests can absorb one. It counts *planned* late gaps (predicted iteration time with A1's error margin
over the request's SLO), so it needs no clock; the margin's 2% between the 8% default and the metric's 10% is left
to iterations the model under-predicts.
"""

from __future__ import annotations

from collections.abc import Callable

from policies.config import AccelGenConfig
from policies.views import RunningView, SchedulerView


class LateGaps:
    """Planned late gaps per running request, and the limits they allow (see module docstring).
    ``feasible_tbt(tbt_ms, ctx)``: the TBT SLO that binds for a request (None: none or best-effort)."""

    def __init__(self, cfg: AccelGenConfig, feasible_tbt: Callable[[float | None, int], float | None]) -> None:
        self.cfg = cfg
        self.feasible_tbt = feasible_tbt
        self.late: dict[str, int] = {}

    def absorbs(self, r: RunningView) -> bool:
        """May the gap this iteration gives ``r`` be over its TBT SLO? Yes while its planned late gaps, this one
        included, stay within ``late_gap_share`` of its gaps so far (so its final share does too)."""
        share = self.cfg.late_gap_share
        return share > 0 and self.late.get(r.rid, 0) + 1 <= share * r.output_len

    def sizing_limit_s(self, view: SchedulerView, decode_ctx: tuple[int, ...], urgent: bool = False) -> float | None:
        """The TBT limit A1 sizes this iteration for: the tightest feasible TBT SLO, where a request that can
        absorb a late gap (every request when a prompt is ``urgent``) counts with its SLO times
        ``late_gap_stretch`` (kept under the metric's stall factor)."""
        stretch = self.cfg.late_gap_stretch
        limits = [
            t * (stretch if urgent or self.absorbs(r) else 1.0)
            for r, c in zip(view.running, decode_ctx, strict=True)
            if (t := self.feasible_tbt(r.slo.tbt_ms, c)) is not None
        ]
        return min(limits) / 1e3 if limits else None

    def must_prefill(self, view: SchedulerView) -> bool:
        """Whether a waiting request cannot wait for the allowance to recur: a new prompt with a TTFT SLO or a
        resumed request (waiting for an allowance would only spend its TTFT, or lengthen its stall: its prefill
        makes some iteration late for the tight requests anyway), an in-progress prompt whose TTFT slack is below
        ``urgent_slack_frac`` of its TTFT SLO (A2's urgency), or one older than ``starve_s``. The iteration is then
        sized as a late one for everybody (a large chunk, not a floor-sized one), and the progress floor
        (``min_budget``) comes back. What waits for the allowance is the rest of a long prompt's chunks."""
        now, frac, starve = view.now_s, 1.0 - self.cfg.urgent_slack_frac, self.cfg.starve_s
        for w in view.waiting:
            waited = now - w.arrival_s
            if waited > starve:
                return True
            ttft = w.slo.ttft_ms
            if w.rid != view.chunked_rid and w.prefilled_len == 0 and (ttft is not None or w.output_len):
                return True
            if ttft is not None and w.first_token_s is None and waited * 1e3 >= frac * ttft:
                return True
        return False

    def charge(self, view: SchedulerView, predicted_ms: float) -> None:
        """Charge a late gap to every running request whose TBT SLO the planned iteration (``predicted_ms``, with
        the error margin) exceeds; forget requests no longer running once the table outgrows the batch."""
        for r in view.running:
            t = self.feasible_tbt(r.slo.tbt_ms, r.seq_len)
            if t is not None and predicted_ms > t:
                self.late[r.rid] = self.late.get(r.rid, 0) + 1
        if len(self.late) > 2 * len(view.running) + 64:
            live = {r.rid for r in view.running}
            self.late = {k: v for k, v in self.late.items() if k in live}

    def forget(self, rid: str) -> None:
        self.late.pop(rid, None)
