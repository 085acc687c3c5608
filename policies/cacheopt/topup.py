"""C3 — proactive top-up and the global reserve.

A request's allocation covers its *bounded* predicted output, so it runs out only when the prediction was too short.
CacheOPT extends the allocation before that happens (when fewer than ``topup_horizon`` decode iterations of room are
left — one token per iteration), first from unallocated space, and otherwise from a global reserve that only requests
which overran their estimate may draw. A request that runs out with nothing left to draw keeps decoding into free
physical KV if there is any; only when the pool is physically full does the host ask for victims (C4).

The reserve's size comes from the config, unless the predictor service decides it (passed in by the host as
``PoolView.reserve_tokens``, or to the policy as the ``reserve_tokens`` option). Drawn tokens return to the reserve
when the drawing request leaves the running batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.cacheopt.allocation import Ledger
from policies.cacheopt.demand import overran
from policies.views import RunningView


def reserve_left(ledger: Ledger, reserve_size: int) -> int:
    """Reserve tokens not drawn by live requests; never negative (a shrunk reserve just has none left)."""
    return max(reserve_size - sum(ledger.draws.values()), 0)


def plan_topups(
    low: Sequence[RunningView],
    ledger: Ledger,
    unallocated: int,
    reserve: int,
    topup_tokens: int,
    use_estimate: bool,
) -> tuple[list[tuple[str, int]], int, int, int]:
    """Extend the allocations of ``low`` (requests about to run out), the least room first.

    Returns (top-ups, unallocated left, reserve left, number of reserve draws). Each top-up is recorded in the
    ledger: from unallocated space it raises committed by its size; from the reserve it moves tokens from the
    reserve into the allocation, leaving committed + reserve unchanged.
    """
    out: list[tuple[str, int]] = []
    draws = 0
    alloc = ledger.alloc
    for r in sorted(low, key=ledger.host_room):
        rid = r.rid
        if unallocated >= topup_tokens:
            t = topup_tokens
            unallocated -= t
        elif reserve > 0 and overran(r, use_estimate):
            t = min(topup_tokens, reserve)
            reserve -= t
            ledger.draws[rid] = ledger.draws.get(rid, 0) + t
            draws += 1
        else:
            continue
        a = alloc.get(rid, r.kv_allocated)
        held = r.kv_used + ledger.borrowed.get(rid, 0)
        alloc[rid] = (a if a > held else held) + t  # top up above what is held, so the room grows by exactly t
        out.append((rid, t))
    return out, unallocated, reserve, draws
