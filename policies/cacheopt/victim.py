"""C4 — victim selection when a decode step cannot fit.

CacheOPT preempts the request that hurts least and helps most: a *loose* TBT SLO (a stall costs it least), a *long*
remaining job (it would hold its KV longest) and a *short* preemption time (C5's cost). The order is lexicographic
on those three keys, with a tolerance band: values within a factor ``1 + tolerance`` count as similar so the next key
decides. The band is implemented as logarithmic buckets (``floor(log(x) / log(1 + tol))``), which keeps the order
transitive (a pairwise "within 10%" test is not). A request without a TBT SLO has the loosest one.

With C4 off the order is SGLang 0.5.23's ``retract_decode`` (``_get_decode_retraction_order``, policy ``length``):
the request with the fewest generated tokens goes first, ties broken by the longest prompt.

Both orders keep at least one running request, as SGLang does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from policies.cacheopt.demand import remaining_tokens
from policies.cacheopt.swap import choose_mode
from policies.latency import BatchShape, LatencyModel
from policies.views import Preempt, RunningView


def _bucket(x: float, log_base: float) -> float:
    if x == math.inf:
        return math.inf
    if log_base <= 0.0:
        return x
    return float(math.floor(math.log(max(x, 1e-12)) / log_base))


def sglang_order(running: Sequence[RunningView]) -> list[RunningView]:
    """SGLang's retraction order: fewest output tokens first, then longest prompt."""
    return sorted(running, key=lambda r: (r.output_len, -r.prompt_len))


def cacheopt_order(
    running: Sequence[RunningView],
    latency: LatencyModel,
    tolerance: float,
    swap_enabled: bool,
    block_tokens: int,
    block_overhead_s: float,
) -> list[tuple[RunningView, Preempt]]:
    """C4's order: TBT SLO descending, remaining time descending, preemption time ascending (each with the band)."""
    step_s = latency.iteration_s(BatchShape(decode_ctx=tuple(r.seq_len for r in running)))
    log_base = math.log1p(tolerance)
    keyed = []
    for r in running:
        mode, cost = choose_mode(r, latency, swap_enabled, block_tokens, block_overhead_s)
        tbt = r.slo.tbt_ms if r.slo.tbt_ms is not None else math.inf
        remaining_s = remaining_tokens(r) * step_s
        # ties end on arrival and id, so the order never depends on how a host lists its running batch
        key = (-_bucket(tbt, log_base), -_bucket(remaining_s, log_base), _bucket(cost, log_base), cost, -r.arrival_s,
               r.rid)  # fmt: skip
        keyed.append((key, r, Preempt(r.rid, mode)))
    keyed.sort(key=lambda k: k[0])
    return [(r, p) for _, r, p in keyed]


def pick_victims(ordered: Sequence[tuple[RunningView, Preempt]], tokens_needed: int) -> tuple[Preempt, ...]:
    """Take victims in order until ``tokens_needed`` are freed, keeping at least one request running. A victim
    frees all it holds (its radix-cache prefix becomes evictable, which hosts count as available)."""
    out: list[Preempt] = []
    freed = 0
    for r, p in ordered[: max(len(ordered) - 1, 0)]:
        if freed >= tokens_needed:
            break
        out.append(p)
        freed += r.kv_used
    return tuple(out)
