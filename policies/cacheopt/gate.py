"""``CacheOptGate``: CacheOPT's KV management (C1-C5) as a :class:`~policies.kv_gate.KVGate`.

A batching policy (CacheOPT's own SGLang-style batching, or AccelGen in ``cacheopt+accelgen``) decides order and
token budget; this gate decides whether each candidate's KV fits and what it is charged, extends allocations before
they run out, and picks victims. It keeps no allocation state across iterations: allocations, loans and reserve
draws live in the host's ledger (``host.ledger``) and come back in the views. One planning pass::

    begin(view)          the promised growth of the live requests, C3 top-ups (they come first), the engine hold
    admit(req, chunk)*   C1 demand -> the admission rule -> own allocation, a loan (C2), or refuse
    topups() / reserve_draws() / hold()   for the plan (IterationPlan.topups, .reserve_draws, .kv_hold)
    victims(view, need)  C4 order with C5's swap-or-recompute per victim

Two admission rules (``--ext-cacheopt-admission``):

* ``pool`` (default): the peak of the live requests' summed remaining demand, from their predictive distributions,
  with a shared margin at the target confidence, must stay within the free pool beside the reserve
  (:mod:`policies.cacheopt.risk`). A request whose own allocation no longer fits the sum of allocations lives in the
  batch's unused tails (lender ``BATCH``, C2 reuse generalised); with C2 off that is refused.
* ``paper``: each request's bound at the load-adapted confidence (C1) is its allocation; the sum of outstanding
  allocations plus the reserve must fit the free pool; a request that does not fit may live in one running
  request's unused tail (the paper's pairwise condition, :class:`HostIndex`).

Contract with hosts (``host.budget``): the plan's ``kv_hold`` is the free KV kept back (promised growth + reserve
left), each ``Admit.budget_tokens`` what the engine's budget charges it. Every admission is checked here with the
engine's own arithmetic (``charge + pinned prefix < remaining``, the remaining shrinking by what the engine reserves),
so SGLang's ``PrefillBudget`` executes the plan as decided; physically, admitted chunks (each + a page) never exceed
``free + evictable`` beside the next decode step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import attrgetter

import numpy as np

from policies.cacheopt.allocation import HostIndex
from policies.cacheopt.demand import demand, length_distribution, overran
from policies.cacheopt.pool_rule import LEVELS, PoolRule
from policies.cacheopt.risk import margin_z, row_quantile
from policies.cacheopt.swap import choose_mode
from policies.cacheopt.victim import cacheopt_order, pick_victims, sglang_order
from policies.common import ceil_page, decode_need
from policies.config import CacheOptConfig
from policies.latency import LatencyModel
from policies.length_dist import LengthDistribution
from policies.views import Admit, Preempt, PreemptMode, RunningView, SchedulerView, WaitingView

BATCH = "*batch*"  # the lender of a request admitted into the batch's unused tails (= host.ledger.BATCH)
MAX_HORIZON = 1 << 17


class CacheOptGate:
    """KV admission, reuse, top-up and victim choice of CacheOPT, usable by any batching policy. ``mixed``: the
    host runs decodes with prefill chunks (SGLang charges them to the prefill budget); ``swap``: the host can
    swap KV to host memory (C5)."""

    def __init__(self, config: CacheOptConfig, latency: LatencyModel, *, mixed: bool = False, swap: bool = True):
        self.cfg = config
        self.latency = latency
        self.mixed = mixed
        self.swap = swap
        self.counters: dict[str, float] = {}
        self.permanent_reject = False  # the last refused request can never fit (prompt alone exceeds the pool)
        self._dists: dict[str, tuple[object, np.ndarray | None]] = {}  # rid -> (estimate, log quantiles) memo
        self._view: SchedulerView | None = None
        self._topups: list[tuple[str, int]] = []
        self._draws: list[tuple[str, int]] = []
        self._hosts: HostIndex | None = None
        self._rule = PoolRule(self._log_row)
        self._page = 1
        self._capacity = 0
        self._evictable = 0
        self._phys = 0  # physical tokens left for this pass's chunks
        self._debt: dict[str, int] = {}  # rest of the prompts of admitted chunked prefills, held physically
        self.blocked = 0  # tokens a continuing chunk lacks physically (the policy preempts to make room)
        self._remaining = 0  # the engine budget's remaining_total (SGLang's arithmetic)
        self._hold = 0
        self._reserve = 0  # reserve left
        self._reserve_size = 0
        self._outstanding = 0  # promised growth of own allocations + pairwise guests (paper accounting)
        self._peak = 0.0  # pool rule: current peak of E[S] + z sd[S]
        self._used = 0.0  # pool rule: private KV in use now
        self._free = 0  # free + evictable KV left after this pass's placements (paper accounting)
        self._z = 0.0
        self._idle = False

    # --- the pass ----------------------------------------------------------------------------------------------
    def reserve_size(self, view: SchedulerView) -> int:
        """The global reserve (C3): the host's live decision (``pool.reserve_tokens``, e.g. the predictor
        service's), else the config; none with C3 off."""
        if not self.cfg.topup:
            return 0
        return view.pool.reserve_tokens if view.pool.reserve_tokens > 0 else self.cfg.reserve_tokens

    def begin(self, view: SchedulerView) -> None:
        cfg = self.cfg
        pool = view.pool
        page = self._page = pool.page_size
        running = view.running
        pending = []  # admitted requests whose prefill is under way: hosts list them first (SchedulerView)
        for w in view.waiting:
            if w.kv_allocated <= 0:
                break
            if not w.swapped_out:
                pending.append(w)
        self._view = view
        self._hosts = None
        self._capacity = pool.capacity_tokens
        self._evictable = pool.evictable_tokens
        self._idle = not running and not pending
        avail = pool.available_tokens - (len(running) if self.mixed else 0)
        # physically free KV for this pass, minus the next decode step and the rest of every admitted prompt whose
        # chunked prefill is under way (SGLang continues a chunk whatever happens: it must always fit)
        self._debt = {w.rid: ceil_page(w.seq_len, page) - ceil_page(w.prefilled_len, page) for w in pending}
        # one pass over the batch (decision time: every per-request Python loop costs ~30-50 us at 256 running)
        rooms, private, drawn, promised = _running_columns(running)
        self._phys = pool.available_tokens - decode_need(running, page) - sum(self._debt.values())
        self.blocked = 0
        size = self._reserve_size = self.reserve_size(view)
        reserve = max(size - drawn, 0)
        outstanding = promised
        outstanding += sum(max(w.kv_allocated - w.prefilled_len, 0) for w in pending)
        if cfg.admission == "pool":
            self._begin_pool(view, pending, private)
            growth = max(math.ceil(self._peak - self._used), 0)
        else:
            growth = outstanding
        # C3: top up requests about to exhaust their allocation, from unpromised space, else from the reserve
        self._topups, self._draws = [], []
        if cfg.topup and running:
            unallocated = avail - growth - reserve
            # least room first; ties by arrival and id (not by how the host lists its batch); only the few below
            # the horizon are sorted
            short = np.flatnonzero(rooms < cfg.topup_horizon).tolist()
            for i in sorted(short, key=lambda k: (rooms[k], running[k].arrival_s, running[k].rid)):
                r = running[i]
                t = cfg.topup_tokens
                if unallocated >= t:
                    unallocated -= t
                elif reserve > 0 and overran(r, cfg.demand):
                    t = min(t, reserve)
                    reserve -= t
                    self._draws.append((r.rid, t))
                else:
                    continue
                self._topups.append((r.rid, t))
                if cfg.admission == "paper":
                    growth += t
                outstanding += t
        self._outstanding = outstanding
        self._reserve = reserve
        self._hold = growth + (0 if self._idle else reserve)
        self._remaining = avail - self._hold
        self._free = avail
        self.counters = {
            "topups": float(len(self._topups)),
            "reserve_draws": float(len(self._draws)),
            "reserve_left": float(reserve),
            "hold": float(self._hold),
            "committed": float(outstanding),
            "reuse": 0.0,
            "admits": 0.0,
            "z": self._z,
        }

    def admit(self, req: WaitingView, prefill_tokens: int) -> Admit | None:
        self.permanent_reject = False
        page = self._page
        swap_in = req.swapped_out and prefill_tokens == 0
        placed = req.seq_len - req.cached_len if swap_in else prefill_tokens
        immediate = ceil_page(placed, page) + page  # its KV now and the page of its first decode
        if req.kv_allocated > 0 and not req.swapped_out:
            # A chunk of an admitted request continues first, as SGLang's ``add_chunked_req`` does whatever the
            # plan says; its size follows SGLang's rule: cut to the budget's remaining when that is positive.
            if 0 < self._remaining < prefill_tokens:
                prefill_tokens = max(self._remaining // page * page, 1)
                immediate = ceil_page(prefill_tokens, page) + page
            paid = min(self._debt.pop(req.rid, 0), ceil_page(prefill_tokens, page))
            if immediate > self._phys + paid:
                self._debt[req.rid] = paid
                self.blocked = immediate - self._phys - paid  # the running batch must shrink first (plan.preempt)
                return None
            self._phys += paid
            self._phys -= immediate
            self._remaining -= immediate
            alloc = req.kv_allocated - req.cached_len
            return Admit(req.rid, prefill_tokens, reserve_tokens=alloc, budget_tokens=immediate)
        d = demand(req, self.cfg.demand)
        if d.prompt + page > self._capacity:
            self.permanent_reject = True  # its prompt alone can never fit: the host rejects it with a reason
            return None
        pin = min(req.cached_len, self._evictable) if not req.swapped_out else 0
        if immediate + pin > self._phys:
            return None
        whole = swap_in or prefill_tokens >= d.prompt  # SGLang reserves the output only with the last chunk
        if self.cfg.admission == "pool":
            decision = self._admit_pool(req, d.prompt, immediate, pin)
        else:
            decision = self._admit_paper(req, d.prompt, d.output, immediate, pin)
        if decision is None:
            return None
        charge, alloc, lender = decision
        if self._idle_first():  # alone in an idle pool: the engine must let it in whatever its demand
            charge = max(min(charge, self._remaining - pin - 1), immediate)
        self._phys -= immediate + pin
        self._evictable -= pin
        self._free -= immediate + pin
        self._remaining -= pin + (charge if whole else immediate)
        self.counters["admits"] += 1
        if lender is not None:
            self.counters["reuse"] += 1
        else:
            self._outstanding += alloc - d.prompt
        return Admit(req.rid, prefill_tokens, reserve_tokens=alloc, host_rid=lender, budget_tokens=charge)

    def end(self) -> None:
        """The pass is over: let go of its view. Why: a host frees the views it built for a pass once the plan is
        applied; a reference kept here until the next ``begin`` made that pass free ~256 running views (~14 us at
        256 running) inside its own decision time. Optional for a batching policy: ``begin`` replaces them anyway."""
        self._view = None
        self._hosts = None
        self._rule.end()

    def credit(self, tokens: int) -> None:
        """Preemptions decided in this pass free ``tokens`` of KV before the admissions run."""
        self._phys += tokens
        self._remaining += tokens
        self.blocked = 0

    def topups(self) -> tuple[tuple[str, int], ...]:
        return tuple(self._topups)

    def reserve_draws(self) -> tuple[tuple[str, int], ...]:
        return tuple(self._draws)

    def hold(self) -> int:
        """Free KV the plan keeps back in the engine's budget: promised growth (net of this pass's pairwise loans)
        and the reserve left (C3)."""
        return max(self._hold, 0)

    # --- the two admission rules ---------------------------------------------------------------------------------
    def _admit_pool(
        self, req: WaitingView, prompt: int, immediate: int, pin: int
    ) -> tuple[int, int, str | None] | None:
        cand = self._rule.candidate(req, prompt)
        peak = self._rule.peak_with(cand, self._z)
        charge = max(math.ceil(peak - self._peak), immediate)
        if not self._idle_first() and charge + pin >= self._remaining - self._idle_reserve():
            return None
        cap_left = max(req.max_new_tokens - req.output_len, 1)
        out = self._alloc_output(req, self._log_row(req.rid, req.estimate), cap_left)
        alloc = prompt + out
        lender = None
        if self._outstanding + out + self._reserve > self._free - immediate - pin:  # its own allocation does not fit
            if not self.cfg.reuse and not self._idle_first():
                return None
            lender = BATCH  # it lives in the batch's allocated-but-unused tails (C2)
        self._rule.add(req.rid, cand)
        self._peak = peak
        return charge, alloc, lender

    def _admit_paper(
        self, req: WaitingView, prompt: int, output: int, immediate: int, pin: int
    ) -> tuple[int, int, str | None] | None:
        alloc = prompt + output
        charge = immediate + max(alloc - ceil_page(prompt, self._page), 0)
        if self._idle_first() or charge + pin < self._remaining - self._idle_reserve():
            return charge, alloc, None
        if not self.cfg.reuse:
            return None
        if self._hosts is None:
            assert self._view is not None
            self._hosts = HostIndex(self._view.running, min_room=self.cfg.reuse_buffer + 3)
        found = self._hosts.take(prompt + 2 * output + self.cfg.reuse_buffer, alloc)
        if found is None:
            return None
        lender, room = found
        credit = min(alloc, max(room, 0))  # the lender's outstanding shrinks by the loan: the engine credits it
        if immediate + pin >= self._remaining + credit:
            self._hosts = None  # the index already lent: rebuild it if another guest comes
            return None
        self._remaining += credit
        self._hold -= credit
        return immediate, alloc, lender

    def _idle_first(self) -> bool:
        """Nothing runs and nothing was admitted yet: a request that fits the pool physically must run, whatever
        its demand (nobody can overrun, so the reserve does not keep it waiting)."""
        return self._idle and self.counters.get("admits", 0.0) == 0.0

    def _idle_reserve(self) -> int:
        """In an idle pass the engine holds no reserve; after the first admission the gate still keeps it."""
        return self._reserve_size if self._idle else 0

    # --- pool rule: the live requests' demand profile --------------------------------------------------------
    def _begin_pool(self, view: SchedulerView, pending: list[WaitingView], private: np.ndarray) -> None:
        """``private``: the running requests' private KV now (used minus their cached prefix)."""
        cfg = self.cfg
        running = view.running
        used_now = private.astype(float)
        if pending:
            used_now = np.concatenate([used_now, [float(w.seq_len - w.cached_len) for w in pending]])
        self._rule.begin(running, pending, view.waiting[: cfg.waiting_window], used_now)
        used = float(used_now.sum())
        conf = cfg.pool_confidence / (1.0 + cfg.pool_rate_beta * max(view.arrival_rate, 0.0))
        self._z = margin_z(conf)
        self._used = float(used)
        self._peak = max(self._rule.peak(self._z), self._used)
        if len(self._dists) > 8 * max(len(running) + cfg.waiting_window, 64):
            live = {r.rid for r in running} | {w.rid for w in view.waiting}
            self._dists = {k: v for k, v in self._dists.items() if k in live}

    def _log_row(self, rid: str, estimate: object) -> np.ndarray | None:
        """Log quantiles of a request's length at :data:`LEVELS` (memoised per request and estimate); None when
        it has no estimate or C1 is off (it then runs to its visible cap)."""
        if not self.cfg.demand or estimate is None:
            return None
        memo = self._dists.get(rid)
        if memo is not None and (memo[0] is estimate or memo[0] == estimate):
            return memo[1]
        dist: LengthDistribution | None = length_distribution(estimate)  # type: ignore[arg-type]
        row = None if dist is None else np.log([dist.quantile(q) for q in LEVELS])
        self._dists[rid] = (estimate, row)
        return row

    def _alloc_output(self, req: WaitingView, row: np.ndarray | None, cap_left: int) -> int:
        """Output tokens of a request's ledger allocation: the ``alloc_quantile`` of its remaining length."""
        if row is None:
            return cap_left
        total = row_quantile(row, self.cfg.alloc_quantile, float(req.output_len))
        return int(min(max(math.ceil(total) - req.output_len, 1), cap_left))

    # --- C4/C5 ---------------------------------------------------------------------------------------------------
    def victims(self, view: SchedulerView, tokens_needed: int) -> tuple[Preempt, ...]:
        cfg = self.cfg
        overhead_s = cfg.swap_block_overhead_us * 1e-6
        swap = cfg.swap_or_recompute and self.swap
        if cfg.victim:
            ordered = cacheopt_order(
                view.running, self.latency, cfg.victim_tolerance, swap, cfg.swap_block_tokens, overhead_s
            )
        else:
            ordered = [
                (r, Preempt(r.rid, choose_mode(r, self.latency, swap, cfg.swap_block_tokens, overhead_s)[0]))
                for r in sglang_order(view.running)
            ]
        out = pick_victims(ordered, tokens_needed)
        self.counters["preempt_swap"] = float(sum(p.mode is PreemptMode.SWAP for p in out))
        self.counters["preempt_recompute"] = float(len(out)) - self.counters["preempt_swap"]
        return out

    def on_finish(self, rid: str) -> None:
        self._dists.pop(rid, None)
        self._rule.forget(rid)


def _running_columns(running: Sequence[RunningView]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """What the pass reads of the running batch: each request's room (allocated - used - lent) and private KV (used
    minus its cached prefix), the reserve drawn by all (C3), and the growth promised to all: the positive rooms of
    requests that are not guests of the batch's tails (lender ``BATCH``, C2: they live in others' rooms).

    Why this shape (decision time): one C-level map per attribute, no per-request Python loop; loans (C2), reserve
    draws (C3) and cached prefixes are zero for most requests of most passes, so those columns are only built when
    one is not (an ``any`` over the views costs ~5 us, a column ~9 us plus its arithmetic)."""
    n = len(running)
    used = np.fromiter(map(_USED, running), np.int64, n)
    rooms = np.fromiter(map(_ALLOCATED, running), np.int64, n) - used
    if any(map(_LENT, running)):
        rooms -= np.fromiter(map(_LENT, running), np.int64, n)
    private = used
    if any(map(_CACHED, running)):
        private = used - np.fromiter(map(_CACHED, running), np.int64, n)
    drawn = sum(map(_DRAWN, running))
    lenders = list(map(_LENDER, running))
    guests = lenders.count(BATCH)
    if guests == n:
        promised = 0
    elif guests == 0:
        promised = int(np.maximum(rooms, 0).sum())
    else:
        promised = int(np.maximum(rooms, 0)[np.array(lenders, object) != BATCH].sum())
    return rooms, private, drawn, promised


_USED = attrgetter("kv_used")
_ALLOCATED = attrgetter("kv_allocated")
_LENT = attrgetter("kv_lent")
_CACHED = attrgetter("cached_len")
_DRAWN = attrgetter("reserve_drawn")
_LENDER = attrgetter("lender")
