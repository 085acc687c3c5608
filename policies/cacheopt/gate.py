"""``CacheOptGate``: CacheOPT's KV management (C1-C5) as a :class:`~policies.kv_gate.KVGate`.

A batching policy (CacheOPT's own SGLang-style batching, or AccelGen in ``cacheopt+accelgen``) decides order and
token budget; this gate decides whether each candidate's KV fits and what it is accounted for, extends allocations
before they run out, and picks victims. One planning pass::

    begin(view)          reconcile the ledger with who is running; top up running requests (C3, they come first)
    admit(req, chunk)*   C1 demand -> C2 own allocation, else reuse of a host's empty tail, else refuse
    topups()             the pass's allocation extensions, for IterationPlan.topups
    victims(view, need)  C4 order with C5's swap-or-recompute per victim

Contract with hosts. ``Admit.reserve_tokens`` is the request's whole allocation (its lifetime demand, not a
per-chunk amount: a continued chunk repeats the same value); ``IterationPlan.topups`` adds to it; hosts report it
back as ``RunningView.kv_allocated``. The gate also keeps its own ledger, so its accounting holds even for a host that
does not track allocations. A swapped-out request is resumed with ``prefill_tokens == 0`` (its KV comes back by
swap-in, ``seq_len - cached_len`` tokens of physical KV). Two guarantees per pass:

* accounting: ``committed + reserve_left <= capacity`` is never broken by an admission or a top-up
  (see :mod:`policies.cacheopt.allocation`);
* physical: admitted chunks (each + one decode page, + the running batch's next decode) never exceed
  ``free + evictable`` tokens.
"""

from __future__ import annotations

import numpy as np

from policies.cacheopt.allocation import HostIndex, Ledger, Timeline
from policies.cacheopt.demand import demand
from policies.cacheopt.swap import choose_mode
from policies.cacheopt.topup import plan_topups, reserve_left
from policies.cacheopt.victim import cacheopt_order, pick_victims, sglang_order
from policies.common import ceil_page
from policies.config import CacheOptConfig
from policies.latency import LatencyModel
from policies.views import Admit, Preempt, PreemptMode, SchedulerView, WaitingView


class CacheOptGate:
    """KV admission, reuse, top-up and victim choice of CacheOPT, usable by any batching policy."""

    def __init__(self, config: CacheOptConfig, latency: LatencyModel, reserve_tokens: int | None = None) -> None:
        self.cfg = config
        self.latency = latency
        self.reserve_override = reserve_tokens  # the predictor service's reservation decision, when given
        self.ledger = Ledger()
        self.counters: dict[str, float] = {}
        self.permanent_reject = False  # the last refused request can never fit (prompt alone exceeds the pool)
        self._view: SchedulerView | None = None
        self._topups: tuple[tuple[str, int], ...] = ()
        self._hosts: HostIndex | None = None
        self._timeline: Timeline | None = None
        self._live: dict = {}
        self._arrays: tuple[np.ndarray, np.ndarray | None] = (np.zeros(0, np.int64), None)
        self._committed = 0
        self._reserve = 0
        self._capacity = 0
        self._physical = 0
        self._evictable = 0
        self._page = 1
        self._max_room = 0

    def reserve_size(self, view: SchedulerView) -> int:
        """The global reserve: the host's live decision (``pool.reserve_tokens``), else the option, else config."""
        if view.pool.reserve_tokens > 0:
            return view.pool.reserve_tokens
        if self.reserve_override is not None:
            return self.reserve_override
        return self.cfg.reserve_tokens

    def _reserve_size(self, view: SchedulerView) -> int:
        return self.reserve_size(view) if self.cfg.topup else 0  # C3 off: no top-ups and no reserve

    def begin(self, view: SchedulerView) -> None:
        cfg = self.cfg
        led = self.ledger
        running = view.running
        live = {r.rid: r for r in running}
        self._live = live
        pending = _prefilling(view, cfg.waiting_window)
        led.reconcile(live, pending)
        horizon = cfg.topup_horizon if cfg.topup else -1 << 62
        committed, low, self._max_room, used, allocs = led.scan(running, live, pending, horizon)
        capacity = view.pool.capacity_tokens
        # Never more reserve than is uncommitted: a request admitted into an idle pool may have squeezed it (admit).
        reserve = min(reserve_left(led, self._reserve_size(view)), max(capacity - committed, 0))
        unallocated = capacity - committed - reserve
        topups: list[tuple[str, int]] = []
        draws = 0
        if low:
            topups, unallocated_after, reserve, draws = plan_topups(
                low, led, max(unallocated, 0), reserve, cfg.topup_tokens, cfg.demand
            )
            committed += max(unallocated, 0) - unallocated_after
        self._view = view
        self._topups = tuple(topups)
        self._hosts = None
        self._timeline: Timeline | None = None
        self._committed = committed
        self._reserve = reserve
        self._capacity = capacity
        page = self._page = view.pool.page_size
        decode = len(running) if page == 1 else page * int(np.count_nonzero(used % page == 0))  # common.decode_need
        self._physical = view.pool.available_tokens - decode
        self._evictable = view.pool.evictable_tokens
        self._arrays = (used, None if topups else allocs)  # a top-up changed allocations: rebuild when needed
        self.counters = {
            "topups": float(len(topups)),
            "reserve_draws": float(draws),
            "reserve_left": float(reserve),
            "committed": float(committed),
            "reuse": 0.0,
            "admits": 0.0,
        }

    def admit(self, req: WaitingView, prefill_tokens: int) -> Admit | None:
        led = self.ledger
        self.permanent_reject = False
        tokens = prefill_tokens if prefill_tokens > 0 or not req.swapped_out else req.seq_len - req.cached_len
        physical = ceil_page(tokens, self._page) + self._page  # its KV now and the slot of its first decode
        known = led.alloc.get(req.rid)
        if known is not None:  # continuing a chunked prefill: its allocation was made at admission
            if physical > self._physical:
                return None
            self._physical -= physical
            return Admit(req.rid, prefill_tokens, reserve_tokens=known, host_rid=_host_of(led, req.rid))
        d = demand(req, self.cfg.demand)
        if d.prompt + self._page > self._capacity:
            self.permanent_reject = True  # its prompt alone can never fit: the host rejects it with a reason
            return None
        # The global reserve exists for running requests that overrun their estimate (C3); with nothing running or
        # committed there is nobody to overrun, so it must not keep a request that fits the pool waiting forever.
        idle = self._committed == 0 and not self._live
        limit = self._capacity - (0 if idle else self._reserve)
        # Its cached prefix gets pinned at admission: those tokens stop being evictable (= available).
        pin = min(req.cached_len, self._evictable) if not req.swapped_out else 0
        physical += pin
        if physical > self._physical:
            return None
        need = min(d.total, limit)  # a demand larger than the pool is capped, so it is admitted when the pool empties
        host = None
        if self._committed + need <= limit and (not led.guest or self._timeline_ok(d.prompt, d.output, limit)):
            self._committed += need
            if idle:  # the reserve shrinks to what this lone request leaves (committed + reserve <= capacity)
                self._reserve = min(self._reserve, self._capacity - self._committed)
                self.counters["reserve_left"] = float(self._reserve)
        elif not self.cfg.reuse:
            return None
        elif self.cfg.reuse_scope == "batch":
            if not self._timeline_ok(d.prompt, d.output, limit):
                return None
            need = d.total  # a batch guest borrows its whole allocation from the batch's tails
            led.lend_batch(req.rid, need)
            self.counters["reuse"] += 1
        else:
            host = self._reuse_host(d.prompt, d.output)
            if host is None:
                return None
            need = d.total  # a guest's allocation is exactly what it borrows from its host
            led.lend(host, req.rid, need)
            if host not in led.alloc:
                led.alloc[host] = self._view_alloc(host)
            self.counters["reuse"] += 1
        if self._timeline is not None:
            self._timeline.add(d.prompt, d.output)
        led.output[req.rid] = d.output
        led.alloc[req.rid] = need
        self._physical -= physical
        self._evictable -= pin
        self.counters["admits"] += 1
        self.counters["committed"] = float(self._committed)
        return Admit(req.rid, prefill_tokens, reserve_tokens=need, host_rid=host)

    def topups(self) -> tuple[tuple[str, int], ...]:
        return self._topups

    def victims(self, view: SchedulerView, tokens_needed: int) -> tuple[Preempt, ...]:
        cfg = self.cfg
        overhead_s = cfg.swap_block_overhead_us * 1e-6
        if cfg.victim:
            ordered = cacheopt_order(
                view.running, self.latency, cfg.victim_tolerance, cfg.swap_or_recompute, cfg.swap_block_tokens,
                overhead_s,
            )  # fmt: skip
        else:
            ordered = [
                (r, Preempt(r.rid, choose_mode(r, self.latency, cfg.swap_or_recompute, cfg.swap_block_tokens,
                                               overhead_s)[0]))
                for r in sglang_order(view.running)
            ]  # fmt: skip
        out = pick_victims(ordered, tokens_needed)
        self.counters["preempt_swap"] = float(sum(p.mode is PreemptMode.SWAP for p in out))
        self.counters["preempt_recompute"] = float(len(out)) - self.counters["preempt_swap"]
        return out

    def on_finish(self, rid: str) -> None:
        """Release a finished request's allocation at once (the next ``begin`` would also notice)."""
        self.ledger.drop(rid)

    def _view_alloc(self, rid: str) -> int:
        assert self._view is not None
        for r in self._view.running:
            if r.rid == rid:
                return r.kv_allocated if r.kv_allocated > r.kv_used else r.kv_used
        return 0

    def _timeline_ok(self, prompt: int, output: int, limit: int) -> bool:
        """C2 batch reuse: does the batch's predicted KV peak, with this request, stay within ``limit``?"""
        if self._timeline is None:
            self._timeline = self._build_timeline()
        return self._timeline.peak_with(prompt + self._page, output) <= limit

    def _build_timeline(self) -> Timeline:
        """(tokens now + a page, steps to its allocation's end) per request: running ones from the view (a host's
        own end excludes what it lent; one past its allocation is expected to go on for another top-up), admitted
        ones not yet running from the ledger."""
        assert self._view is not None
        led = self.ledger
        alloc, lent = led.alloc, led.borrowed
        extra = max(self.cfg.topup_tokens, 1)
        page = self._page  # a partly filled last page per request
        running = self._view.running
        n = len(running)
        used, allocs = self._arrays
        if allocs is None:
            allocs = np.fromiter((alloc.get(r.rid, r.kv_allocated) for r in running), np.int64, n)
        room = allocs - used
        if lent:
            room -= np.fromiter((lent.get(r.rid, 0) for r in running), np.int64, n)
        ends = np.where(room > 0, room, extra)
        used = used + page
        live = self._live
        more = [(a - led.output.get(rid, 0) + page, led.output.get(rid, 0)) for rid, a in alloc.items()
                if rid not in live]  # fmt: skip
        if more:
            extra_arr = np.asarray(more, dtype=np.int64)
            used = np.concatenate([used, extra_arr[:, 0]])
            ends = np.concatenate([ends, extra_arr[:, 1]])
        return Timeline(used, ends)

    def _reuse_host(self, prompt: int, output: int) -> str | None:
        """Best-fit host whose empty tail holds the guest for its whole predicted life (C2 reuse condition)."""
        need = prompt + 2 * output + self.cfg.reuse_buffer
        if need > self._max_room:  # no request has that much room (an upper bound: lending only lowers rooms)
            return None
        if self._hosts is None:
            assert self._view is not None
            self._hosts = HostIndex(self._view.running, self.ledger, min_room=self.cfg.reuse_buffer + 3)
        return self._hosts.take(need, prompt + output)


def _host_of(led: Ledger, rid: str) -> str | None:
    loan = led.guest.get(rid)
    return loan[0] if loan is not None else None


def _prefilling(view: SchedulerView, window: int) -> frozenset[str]:
    """Requests whose chunked prefill is in progress: the host's ``chunked_rid`` and any partly prefilled request
    near the head of the queue (hosts list them first; a batching policy may leave more than one in flight)."""
    out = {w.rid for w in view.waiting[:window] if w.prefilled_len > 0 and not w.swapped_out}
    if view.chunked_rid is not None:
        out.add(view.chunked_rid)
    return frozenset(out)
