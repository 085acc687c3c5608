"""C5 — swap or recompute, whichever is faster.

Swapping moves the request's own KV (not the shared prefix, which stays in the radix cache) to host memory and back:
two PCIe transfers from the latency model, plus a fixed per-block cost for the many small copies a paged pool makes.
Recomputing drops the KV and prefills the whole sequence (prompt + generated tokens) again later, after the prefix
the radix cache still holds. CacheOPT picks the cheaper; with C5 off the choice is always recompute (SGLang's
retraction path). Hosts without a host KV pool (SGLang on CPU) log the decision and recompute.
"""

from __future__ import annotations

from policies.latency import LatencyModel
from policies.views import PreemptMode, RunningView


def swap_cost_s(tokens: int, latency: LatencyModel, block_tokens: int, block_overhead_s: float) -> float:
    """Out and back over PCIe, plus the per-block copy overhead both ways."""
    if tokens <= 0:
        return 0.0
    blocks = -(-tokens // block_tokens)
    return 2.0 * (latency.swap_s(tokens) + blocks * block_overhead_s)


def recompute_cost_s(r: RunningView, latency: LatencyModel) -> float:
    """Prefill of everything the request had, after what the prefix cache still holds."""
    return latency.prefill_s(max(r.seq_len - r.cached_len, 0), r.cached_len)


def choose_mode(
    r: RunningView, latency: LatencyModel, enabled: bool, block_tokens: int, block_overhead_s: float
) -> tuple[PreemptMode, float]:
    """(mode, its cost in seconds): the faster of swap and recompute when enabled, else recompute."""
    recompute = recompute_cost_s(r, latency)
    if not enabled:
        return PreemptMode.RECOMPUTE, recompute
    swap = swap_cost_s(max(r.kv_used - r.cached_len, 0), latency, block_tokens, block_overhead_s)
    if swap < recompute:
        return PreemptMode.SWAP, swap
    return PreemptMode.RECOMPUTE, recompute
