"""C2 — reuse of allocated-but-unused KV (pairwise lenders, the batch's predicted peak) and the order waiting
requests are considered in. The allocations themselves live in the host's ledger (``host.ledger``); policies read
them back from the views.

Accounting (all in tokens, private KV: beyond the prefix the radix cache held at admission). The paper rule keeps
the promised growth of the running requests and the global reserve within the free pool::

    outstanding = sum over own requests of (alloc - used - lent) + sum over pairwise guests of (alloc - used)
    outstanding + reserve_left <= free + evictable          (the engine budget holds exactly this: kv_hold)

Reuse (CacheOPT's allocated-but-unused KV): a running request's allocation covers its future output, so most of it is
empty for most of its life. A waiting *guest* may live inside a *host*'s empty tail when the tail holds the guest's
prompt and output *and* the host's growth during the guest's life (one token per step while the guest runs)::

    guest_prompt + 2 * guest_output + buffer <= host_alloc - host_used - already_lent

The guest borrows ``guest_prompt + guest_output`` tokens; the host's own outstanding excludes them, so nothing is
counted twice and the engine's budget credits the loan (a guest is charged against its host's unused tail). When
the guest finishes its tokens return to the host's room; when the host leaves first the guest stands on its own.

The pool-level admission (:mod:`policies.cacheopt.risk`, ``--ext-cacheopt-admission pool``) generalises reuse to
the whole batch: a request may be admitted into the batch's unused tails (lender ``BATCH``) when the predicted peak
of the summed remaining demand stays within the pool at the target confidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from policies.latency import LatencyModel
from policies.views import RunningView, WaitingView


class HostIndex:
    """Running requests that can lend part of their allocated-but-unused tail to a guest, for best-fit lookups (C2
    pairwise reuse).

    Best fit (the smallest room that holds the guest) keeps large tails for large guests. Guests are never lenders
    (no chains of loans). Rooms come from the views (the host's ledger: allocation minus use minus what is already
    lent). Built lazily, once per planning pass, only when an admission does not fit otherwise; a lookup is one
    vectorised pass (cheaper than sorting for the few lookups a pass makes).
    """

    __slots__ = ("_rids", "_rooms")

    def __init__(self, running: Sequence[RunningView], min_room: int) -> None:
        n = len(running)
        rooms = np.fromiter((r.kv_allocated - r.kv_used - r.kv_lent for r in running), np.int64, n)
        guests = [i for i, r in enumerate(running) if r.lender is not None]
        if guests:
            rooms[guests] = -1
        keep = np.flatnonzero(rooms >= min_room)
        self._rooms = rooms[keep]
        self._rids = [running[i].rid for i in keep]

    def take(self, need: int, lend: int) -> tuple[str, int] | None:
        """The best-fit lender with room >= ``need`` and its room before lending; its room shrinks by ``lend``."""
        rooms = self._rooms
        if rooms.size == 0:
            return None
        i = int(np.where(rooms >= need, rooms, _NO_ROOM).argmin())
        if rooms[i] < need:
            return None
        before = int(rooms[i])
        rooms[i] -= lend
        return self._rids[i], before


_NO_ROOM = np.iinfo(np.int64).max


def order_waiting(
    waiting: Sequence[WaitingView],
    now_s: float,
    window: int,
    latency: LatencyModel,
    prefill_memo: dict[tuple[str, int, int], float] | None = None,
    late_last: bool = False,
    starve_s: float = math.inf,
) -> list[WaitingView]:
    """Up to ``window`` waiting requests in C2's pick order (CacheOPT picks waiting requests "with their TTFT and TBT
    SLOs in view").

    Key, ascending: resumed requests first (they already streamed tokens, so every waiting moment is a stall against
    their TBT SLO), then least TTFT slack (deadline - now - predicted prefill time; no TTFT SLO = infinite slack),
    then tighter TBT SLO, then arrival. With ``late_last`` a request whose TTFT deadline can no longer be met goes
    after every request that can still meet its own (oldest first among the late), unless it has waited
    ``starve_s``; the candidates are then the oldest and the newest ``window / 2`` of the queue, since under
    overload the requests that can still be on time are the newest. Only a bounded part of the queue is looked at
    per iteration so the cost does not grow with the queue. A request's predicted prefill time does not change while
    it waits, so ``prefill_memo`` (kept by the caller) computes it once per request.
    """
    if late_last and len(waiting) > window:
        half = max(window // 2, 1)
        tail = waiting[-half:]
        seen = {w.rid for w in tail}
        head = [w for w in waiting[: window - len(tail)] if w.rid not in seen] + list(tail)
    else:
        head = list(waiting[:window])
    if not any(w.slo.ttft_ms is not None or w.output_len for w in head):
        return head  # no SLOs and no resumed requests: queue (FCFS) order
    memo = prefill_memo if prefill_memo is not None else {}
    if len(memo) > 8 * window:
        memo.clear()
    inf = math.inf
    keyed = []
    for w in head:
        slo = w.slo
        tbt = slo.tbt_ms if slo.tbt_ms is not None else inf
        if w.output_len or w.first_token_s is not None:
            keyed.append(((0, 0.0, tbt, w.arrival_s), w))
            continue
        ttft = slo.ttft_ms
        if ttft is None:
            slack = inf
        else:
            ctx = max(w.cached_len, w.prefilled_len)
            k = (w.rid, w.seq_len - ctx, ctx)
            t = memo.get(k)
            if t is None:
                t = memo[k] = latency.prefill_s(max(k[1], 0), ctx)
            slack = w.arrival_s + ttft * 1e-3 - now_s - t
        if late_last and slack < 0:
            tier = 1 if now_s - w.arrival_s >= starve_s else 3
            keyed.append(((tier, w.arrival_s, tbt, w.arrival_s), w))
        else:
            keyed.append(((2 if late_last else 1, slack, tbt, w.arrival_s), w))
    keyed.sort(key=_first)
    return [w for _, w in keyed]


def _first(pair: tuple) -> tuple:
    return pair[0]
