"""AccelGen A1: SLO-guaranteed dynamic chunking — the iteration's token budget.

Each iteration is *mixed*: every running request decodes one token and the rest of the budget goes to prefill
chunks (SGLang's mixed-chunk path; without it prefill chunks and decode steps alternate and small chunks starve
decodes). The budget is the largest forward size whose predicted iteration time — with the running decodes'
context lengths and the prefill chunk's own context — still meets the tightest TBT SLO among the running
requests, clamped to ``[min_budget, max_budget]``.

Why this shape and not SGLang's ``DynamicChunkSizer`` (prior art, pipeline-parallel only): that sizer solves a
quadratic in the prefix length for a *fixed* target latency taken from the static chunk size. A1's target changes
every iteration (it is the tightest SLO present) and the decodes sharing the iteration cost time too, so the
search is over the whole iteration shape. With the project's roofline model (``IterationLatencyModel``) the
largest chunk has a closed form (``max_tokens_within``, O(1) after one sum over the decode contexts); any other
:class:`LatencyModel` is searched by galloping + bisection from the previous decision (the budget moves little
between iterations, so this is usually two or three model calls).

The pivot (compute-saturation size): below it the GEMMs are bound by streaming the weights, so an iteration of
``pivot`` tokens costs about as much as one of a single token. The largest SLO-feasible size is therefore at or
above the pivot whenever the SLO admits the pivot at all, and the budget is never set below it in that case;
when the SLO is tighter than a pivot-sized iteration, the SLO wins (the budget drops below the pivot).

Infeasible SLOs (bad input): a TBT SLO below the minimum possible iteration time (:func:`min_feasible_tbt_ms`) can
never be met. Such a request is put in the documented *best-effort* class: it is scheduled like a request without
a TBT SLO (it does not constrain the budget — otherwise one impossible SLO would collapse every iteration to the
smallest size — and it is never starved). Hosts can call :func:`min_feasible_tbt_ms` at admission to reject the
request with HTTP 400 instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from policies.latency import BatchShape, LatencyModel


def min_feasible_tbt_ms(latency: LatencyModel, context_len: int = 1) -> float:
    """The smallest TBT any schedule can give a request with ``context_len`` tokens of context: one decode step
    of that request alone in an iteration. A TBT SLO below this is infeasible (best-effort class / HTTP 400)."""
    return 1e3 * latency.iteration_s(BatchShape(decode_ctx=(max(int(context_len), 1),)))


def is_best_effort(latency: LatencyModel, tbt_slo_ms: float | None, context_len: int = 1) -> bool:
    """True when a TBT SLO is present but below the minimum possible iteration time (see module docstring)."""
    return tbt_slo_ms is not None and tbt_slo_ms < min_feasible_tbt_ms(latency, context_len)


def classify_slo(
    latency: LatencyModel, ttft_ms: float | None, tbt_ms: float | None, context_len: int = 1
) -> tuple[str, str]:
    """Admission check a host runs on a request's SLOs: ``("reject", why)`` for a zero, negative or non-finite
    SLO (HTTP 400), ``("best_effort", why)`` for a TBT SLO below :func:`min_feasible_tbt_ms` (served, flagged,
    never starved; the host may choose to reject it instead), else ``("ok", "")``."""
    for name, v in (("ttft", ttft_ms), ("tbt", tbt_ms)):
        if v is not None and not (math.isfinite(v) and v > 0):
            return "reject", f"{name} SLO must be a positive number of milliseconds, got {v}"
    floor = min_feasible_tbt_ms(latency, context_len) if tbt_ms is not None else 0.0
    if tbt_ms is not None and tbt_ms < floor:
        return "best_effort", f"tbt SLO {tbt_ms:g} ms is below the minimum possible iteration time {floor:.2f} ms"
    return "ok", ""


class ChunkSizer:
    """Largest forward size meeting an iteration-time limit (A1). Stateless apart from the search hint."""

    def __init__(self, latency: LatencyModel, min_budget: int, max_budget: int) -> None:
        self.latency = latency
        self.min_budget = min_budget
        self.max_budget = max_budget
        self._fast = getattr(latency, "max_tokens_within", None)
        self._hint = min_budget

    def max_chunk(self, limit_s: float, decode_ctx: Sequence[int], chunk_ctx: int, limit: int) -> int:
        """Largest prefill chunk ``n <= limit`` (tokens, context ``chunk_ctx``) such that the iteration with
        ``decode_ctx`` decodes is predicted within ``limit_s``; 0 when none fits."""
        if limit <= 0:
            return 0
        if self._fast is not None:
            return int(self._fast(limit_s, decode_ctx, chunk_ctx, limit=limit))
        dec = tuple(decode_ctx)

        def fits(n: int) -> bool:
            return self.latency.iteration_s(BatchShape(prefill=((n, chunk_ctx),), decode_ctx=dec)) <= limit_s

        if not fits(1):
            return 0
        lo = min(max(self._hint, 1), limit)  # gallop from the previous answer
        if fits(lo):
            step = max(lo, 1)
            hi = lo + step
            while hi <= limit and fits(hi):
                lo, step = hi, step * 2
                hi = lo + step
            hi = min(hi, limit + 1)  # lo fits, hi does not (or is past the limit)
        else:
            hi, lo = lo, 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        self._hint = lo
        return lo

    def budget(
        self, limit_s: float | None, decode_ctx: Sequence[int], chunk_ctx: int = 0, floor: int | None = None
    ) -> int:
        """The iteration's token budget (decodes + prefill chunk), clamped to ``[floor, max_budget]`` (``floor``
        defaults to ``min_budget``). ``limit_s=None``: no running request has a TBT SLO, so the largest size is
        used."""
        nd = len(decode_ctx)
        if limit_s is None:
            return max(self.max_budget, nd)  # decodes always run; the budget never drops one
        chunk = self.max_chunk(limit_s, decode_ctx, chunk_ctx, max(self.max_budget - nd, 0))
        least = self.min_budget if floor is None else floor
        return min(max(nd + chunk, least), max(self.max_budget, nd))
