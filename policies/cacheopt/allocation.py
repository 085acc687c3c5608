"""C2 — allocation against estimated demand, reuse of allocated-but-unused KV, and the order waiting requests are
considered in.

Accounting (all in tokens). Every request the gate admitted has an *allocation* in the :class:`Ledger` (its
admitted demand plus top-ups). A request it did not admit (admitted before a policy switch) counts its view's
``kv_allocated``. A request always counts at least what it physically holds, so an overrun is never hidden::

    committed = sum over live requests of max(alloc, kv_used [+ KV lent to guests, for a host])
                - sum over guests whose host is alive of the tokens they borrowed
    committed + reserve_left <= capacity          (the invariant the gate never breaks)

Reuse (CacheOPT's allocated-but-unused KV): a running request's allocation covers its future output, so most of it is
empty for most of its life. A waiting *guest* may live inside a *host*'s empty tail when the tail holds the guest's
prompt and output *and* the host's growth during the guest's life (one token per step while the guest runs)::

    guest_prompt + 2 * guest_output + buffer <= host_alloc - host_used - already_lent

The guest borrows ``guest_prompt + guest_output`` tokens; they are subtracted from the sum once (they are inside the
host's allocation), so nothing is double counted. When the guest finishes, its borrowed tokens return to the host's
room; when the host leaves first, the guest's allocation simply counts in full (never more than the host freed).

Batch reuse (``--ext-cacheopt-reuse-scope batch``, the default): the pairwise condition above is the two-request case
of a more general one. Every running request frees its whole KV when it ends, and until then grows by one token
per decode step, so the batch's *future* KV use is a sawtooth whose peak is far below the sum of allocations. A
waiting request may borrow the allocated-but-unused tails of the whole batch when the predicted peak, with it,
stays within ``capacity - reserve`` (:class:`Timeline`; each request is assumed to end at its allocation's end,
i.e. at its bounded estimate, and one that already overran to go on for another top-up). Such a *batch guest*
borrows its whole allocation: it is left out of the sum like a pairwise guest, and every later admission (guest or
not) must keep the predicted peak within bounds, so a tail is never lent twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from policies.latency import LatencyModel
from policies.views import RunningView, WaitingView


class Ledger:
    """Per-request allocations, reuse loans and reserve draws, kept across iterations by the gate."""

    __slots__ = ("alloc", "borrowed", "draws", "guest", "guests_of", "output")

    def __init__(self) -> None:
        self.alloc: dict[str, int] = {}  # rid -> tokens accounted (admitted demand + top-ups)
        self.guest: dict[str, tuple[str, int]] = {}  # guest rid -> (host rid, tokens borrowed)
        self.borrowed: dict[str, int] = {}  # host rid -> tokens lent to its live guests
        self.guests_of: dict[str, list[str]] = {}
        self.draws: dict[str, int] = {}  # rid -> reserve tokens drawn (C3)
        self.output: dict[str, int] = {}  # rid -> output tokens its admitted allocation covers (for the timeline)

    def drop(self, rid: str) -> None:
        """Forget a request that finished or was preempted: its allocation and reserve draw return, a guest's loan
        returns to its host, and a host's guests become independent."""
        self.alloc.pop(rid, None)
        self.draws.pop(rid, None)
        self.output.pop(rid, None)
        loan = self.guest.pop(rid, None)
        if loan is not None and loan[0] != BATCH:
            host, tokens = loan
            if host in self.borrowed:
                self.borrowed[host] -= tokens
                self.guests_of[host].remove(rid)
                if not self.guests_of[host]:
                    del self.borrowed[host], self.guests_of[host]
        for g in self.guests_of.pop(rid, ()):
            del self.guest[g]
        self.borrowed.pop(rid, None)

    def reconcile(self, live: dict[str, RunningView], pending: frozenset[str]) -> None:
        """Drop every entry that is neither running nor mid-way through its chunked prefill (``pending``)."""
        stale = [rid for rid in self.alloc if rid not in live and rid not in pending]
        for rid in stale:
            self.drop(rid)

    def lend_batch(self, guest: str, tokens: int) -> None:
        """A batch guest (no single host: it lives in the tails of the whole batch)."""
        self.guest[guest] = (BATCH, tokens)

    def lend(self, host: str, guest: str, tokens: int) -> None:
        self.guest[guest] = (host, tokens)
        self.borrowed[host] = self.borrowed.get(host, 0) + tokens
        self.guests_of.setdefault(host, []).append(guest)

    def scan(
        self, running: Sequence[RunningView], live: dict[str, RunningView], pending: frozenset[str], horizon: int
    ) -> tuple[int, list[RunningView], int, np.ndarray, np.ndarray]:
        """One pass over the running batch: the committed total (left side of the invariant, without the reserve),
        the requests whose own room is below ``horizon`` tokens (C3 top-up candidates), an upper bound on any
        request's room (so a reuse lookup that cannot succeed costs nothing), and the per-request ``kv_used`` and
        allocation arrays (the timeline reuses them). A host's own room excludes what it lent; a request mid-way
        through its chunked prefill (in ``pending``) counts its allocation."""
        alloc = self.alloc
        n = len(running)
        used = np.fromiter((r.kv_used for r in running), np.int64, n)
        allocs = np.fromiter((alloc.get(r.rid, r.kv_allocated) for r in running), np.int64, n)
        room = allocs - used
        total = int(np.maximum(allocs, used).sum())
        max_room = int(room.max()) if n else 0
        low: list[RunningView] = [running[i] for i in np.flatnonzero(room < horizon)]
        for host, lent in self.borrowed.items():
            r = live[host]  # pairwise hosts only: batch guests have no host entry
            a = alloc.get(host, r.kv_allocated)
            u = r.kv_used
            total += max(a, u + lent) - max(a, u)
            if a - u >= horizon > a - u - lent:
                low.append(r)
        for _host, tokens in self.guest.values():
            total -= tokens
        for rid in pending:
            if rid not in live:
                total += alloc.get(rid, 0)
        return total, low, max(max_room, 0), used, allocs

    def host_room(self, r: RunningView) -> int:
        """Empty allocated tail a host still has for itself (after what it lent)."""
        a = self.alloc.get(r.rid, r.kv_allocated)
        return a - r.kv_used - self.borrowed.get(r.rid, 0)


BATCH = ""  # the "host" of a batch guest


class Timeline:
    """Predicted KV use of the running batch over the coming decode steps (C2 batch reuse).

    Request i holds ``used_i`` tokens now, grows one per step and frees everything after ``end_i`` steps. Use only
    drops at an end, so the peak is reached just before one: ``U_j = sum_{end_i >= end_j} (used_i + end_j)``,
    computed for all j at once from the requests sorted by end (suffix sums). A candidate (``now`` tokens at once,
    ``steps`` of output) adds ``now + k`` up to step ``steps``; :meth:`peak_with` evaluates the peak with it.
    """

    __slots__ = ("_ends", "_peak_at", "_used")

    def __init__(self, used: np.ndarray, ends: np.ndarray) -> None:
        order = np.argsort(ends, kind="stable")
        self._used = np.asarray(used, dtype=np.int64)[order]
        self._ends = np.asarray(ends, dtype=np.int64)[order]
        self._refresh()

    @classmethod
    def of(cls, entries: Sequence[tuple[int, int]]) -> Timeline:
        """From ``(tokens now, steps to end)`` pairs."""
        arr = np.asarray(entries, dtype=np.int64).reshape(-1, 2)
        return cls(arr[:, 0], arr[:, 1])

    def _refresh(self) -> None:
        n = self._ends.size
        suffix = np.cumsum(self._used[::-1])[::-1]
        self._peak_at = suffix + self._ends * np.arange(n, 0, -1, dtype=np.int64)

    def peak(self) -> int:
        return int(self._peak_at.max()) if self._ends.size else 0

    def peak_with(self, now: int, steps: int) -> int:
        ends = self._ends
        if ends.size == 0:
            return now + steps
        k = int(np.searchsorted(ends, steps, side="left"))  # requests [k:] end at or after the candidate
        before = self._peak_at[:k] + now + ends[:k]  # events while the candidate is alive
        after = self._peak_at[k:]  # events after it has left
        at_end = int(self._used[k:].sum()) + steps * (ends.size - k) + now + steps
        best = at_end
        if before.size:
            best = max(best, int(before.max()))
        if after.size:
            best = max(best, int(after.max()))
        return best

    def add(self, now: int, steps: int) -> None:
        k = int(np.searchsorted(self._ends, steps, side="left"))
        self._ends = np.insert(self._ends, k, steps)
        self._used = np.insert(self._used, k, now)
        self._refresh()


class HostIndex:
    """Running requests that can host a guest, with their rooms, for best-fit lookups (C2 reuse).

    Best fit (the smallest room that holds the guest) keeps large tails for large guests. Guests are never hosts
    (no chains of loans). Built lazily, once per planning pass, only when an admission does not fit otherwise; a
    lookup is one vectorised pass (cheaper than sorting for the few lookups a pass makes).
    """

    __slots__ = ("_rids", "_rooms")

    def __init__(self, running: Sequence[RunningView], ledger: Ledger, min_room: int) -> None:
        alloc = ledger.alloc
        rooms = np.fromiter((alloc.get(r.rid, r.kv_allocated) - r.kv_used for r in running), np.int64, len(running))
        rids = [r.rid for r in running]
        if ledger.borrowed or ledger.guest:
            lent, guest = ledger.borrowed, ledger.guest
            rooms -= np.fromiter((lent.get(rid, 0) for rid in rids), np.int64, len(rids))
            rooms[[i for i, rid in enumerate(rids) if rid in guest]] = -1
        keep = np.flatnonzero(rooms >= min_room)
        self._rooms = rooms[keep]
        self._rids = [rids[i] for i in keep]

    def take(self, need: int, lend: int) -> str | None:
        """Find the best-fit host with room >= ``need``; its room shrinks by ``lend``. None if no host fits."""
        rooms = self._rooms
        if rooms.size == 0:
            return None
        i = int(np.where(rooms >= need, rooms, _NO_ROOM).argmin())
        if rooms[i] < need:
            return None
        rooms[i] -= lend
        return self._rids[i]


_NO_ROOM = np.iinfo(np.int64).max


def order_waiting(
    waiting: Sequence[WaitingView],
    now_s: float,
    window: int,
    latency: LatencyModel,
    prefill_memo: dict[tuple[str, int, int], float] | None = None,
) -> list[WaitingView]:
    """The first ``window`` waiting requests (host queue order: arrival, preempted first) in C2's pick order.

    Key, ascending: resumed requests first (they already streamed tokens, so every waiting moment is a stall against
    their TBT SLO), then least TTFT slack (deadline - now - predicted prefill time; no TTFT SLO = infinite slack),
    then tighter TBT SLO, then arrival. Only a bounded prefix of the queue is looked at per iteration so the cost
    does not grow with the queue (the plan() budget is 100 us at 1,000 waiting). A request's predicted prefill time
    does not change while it waits, so ``prefill_memo`` (kept by the caller) computes it once per request.
    """
    head = waiting[:window]
    if not any(w.slo.ttft_ms is not None or w.output_len for w in head):
        return list(head)  # no SLOs and no resumed requests: queue (FCFS) order
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
            ctx = w.cached_len + w.prefilled_len
            k = (w.rid, w.seq_len - ctx, ctx)
            t = memo.get(k)
            if t is None:
                t = memo[k] = latency.prefill_s(max(k[1], 0), ctx)
            slack = w.arrival_s + ttft * 1e-3 - now_s - t
        keyed.append(((1, slack, tbt, w.arrival_s), w))
    keyed.sort(key=_first)
    return [w for _, w in keyed]


def _first(pair: tuple) -> tuple:
    return pair[0]
