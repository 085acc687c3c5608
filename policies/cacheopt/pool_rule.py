"""The pool rule's state across planning passes: each live request's survival row, kept incrementally.

Why incremental: a live request's survival row ``s_i(t)`` (the chance it still runs ``t`` steps from now) costs a
log-normal evaluation per grid step; 256 rows on ~40 steps take about a millisecond, and a plan must cost well under
that. The KV a request holds changes every step, its survival row hardly does: the rows are kept in a matrix, and
every pass recomputes the profile from them with each request's *current* KV::

    E[S(t)]   = sum_i s_i(t) (u_i + t)             = u @ S + t * sum_i s_i(t)
    Var[S(t)] = sum_i w_i(t) (u_i + t)^2, w = s(1-s) = u^2 @ W + 2 t (u @ W) + t^2 sum_i w_i(t)

(two matrix-vector products). A departed request's row is dropped, an admitted one's row is added when it is
admitted. The rows themselves are recomputed every ``refresh`` passes (or when much of the set changed), so no row's
conditioning on progress is more than ``refresh`` decode steps old — small beside the hundreds to thousands of steps
the rule looks ahead. Candidate rows (a waiting request's survival from the moment it is admitted) do not change while
it waits, so they are cached per request until the grid changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter

import numpy as np

from policies.cacheopt.risk import DemandProfile, LengthTable, horizon_steps, refined_grid, step_grid
from policies.length_dist import z_of
from policies.views import RunningView, WaitingView

LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)  # quantile levels of the rule's length table
ZS = np.asarray([z_of(q) for q in LEVELS])
ZS_LIST = tuple(ZS.tolist())  # the same scores as plain floats (risk.row_quantile's scalar path)
MAX_HORIZON = 1 << 17
REFRESH_PASSES = 32  # recompute the survival rows at least this often (decode steps of staleness)
CHANGE_SHARE = 0.25  # ... or when this share of the live set changed since


class PoolRule:
    """Keeps ``E[S(t)]`` / ``Var[S(t)]`` of the live requests (see :mod:`policies.cacheopt.risk`)."""

    def __init__(self, log_row: Callable[[str, object], np.ndarray | None], refresh: int = REFRESH_PASSES) -> None:
        self._log_row = log_row  # rid, estimate -> log quantiles at LEVELS, or None (runs to its cap)
        self.refresh = refresh
        self.profile: DemandProfile | None = None
        # survival rows S by slot (an empty slot is a zero row) and beside them W = S(1-S), in one array so that one
        # reduction gives the column sums of both (row by row, as summing each alone does: the same floats)
        self._SW = np.zeros((0, 0))
        self._S = self._SW[:, :0]
        self._W = self._SW[:, 0:]
        self._slot: dict[str, int] = {}
        self._free: list[int] = []
        self._cand: dict[str, tuple[np.ndarray, tuple]] = {}  # waiting rid -> (survival row if admitted now, inputs)
        self._stash: dict[str, tuple[np.ndarray, tuple]] = {}  # admitted rid -> its candidate row and inputs
        self._age = 0
        self._window: Sequence[WaitingView] = ()
        self.full_recomputes = 0
        self._live: list[str] | None = None  # the live rids of the last pass, in order, and their slots
        self._idx = np.zeros(0, np.intp)
        # per-step terms that change only with the rows: t * colsum(S), 2t, t^2 * colsum(W)
        self._terms: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    # --- the live set -------------------------------------------------------------------------------------------
    def begin(
        self,
        running: Sequence[RunningView],
        pending: Sequence[WaitingView],
        window: Sequence[WaitingView],
        used: np.ndarray,
    ) -> None:
        """The live requests (running and mid-prefill, in that order) holding ``used`` private tokens now."""
        self._window = window
        live = list(map(_RID, running))
        if pending:
            live += map(_RID, pending)
        slots = self._slot
        if self.profile is not None and self._age < self.refresh:
            if live == self._live and len(slots) == len(live):  # the same live set as the last pass
                self._age += 1
                self._moments(live, used)
                return
            # every live request has a slot (no None) and few of the slotted ones left: slots differ by rid, so the
            # number gone is the slots not among the live ones' (lookups in C: a Python loop costs ~20 us a pass)
            idx = list(map(slots.get, live))
            if None not in idx:
                n_gone = len(slots) - len(set(idx))
                if n_gone <= CHANGE_SHARE * max(len(live), 8):
                    if n_gone:
                        gone = slots.keys() - set(live)
                        for rid in sorted(gone, key=slots.__getitem__):  # slot order: the same whatever the hash seed
                            i = slots.pop(rid)
                            self._SW[i] = 0.0
                            self._free.append(i)
                        self._terms = None
                    self._age += 1
                    self._live = live
                    self._idx = np.array(idx, np.intp)
                    self._moments(live, used)
                    return
        self._recompute(running, pending, window)
        self._moments(live, used)

    def _changed(self) -> None:
        """The rows or their slots changed: the cached per-pass terms are stale."""
        self._live = None
        self._terms = None

    def _moments(self, live: list[str], used: np.ndarray) -> None:
        prof = self.profile
        assert prof is not None
        S, W = self._S, self._W
        if live != self._live:  # slot of every live request, in the order of ``used``
            self._idx = np.fromiter(map(self._slot.__getitem__, live), np.intp, len(live))
            self._live = live
        t = prof.grid
        if self._terms is None:  # S changes only when requests come or go; KV in use changes every step
            sums = self._SW.sum(axis=0)
            g = S.shape[1]
            self._terms = (t * sums[:g], 2.0 * t, t * t * sums[g:])  # the products the formulas below evaluate
        ts, t2, ttw = self._terms
        u = np.zeros(S.shape[0])
        u[self._idx] = used
        prof.mean = u @ S + ts  # u @ S + t * colsum(S)
        prof.var = (u * u) @ W + t2 * (u @ W) + ttw  # u^2 @ W + 2t (u @ W) + t^2 colsum(W)

    def _recompute(
        self, running: Sequence[RunningView], pending: Sequence[WaitingView], window: Sequence[WaitingView]
    ) -> None:
        """All survival rows from scratch: the live requests and the candidate window, on a geometric grid refined
        around the peak of the live profile and of the live profile with every candidate admitted (sharp sawtooth
        peaks of near-certain lengths fall between coarse steps)."""
        live_ids = {r.rid for r in running} | {w.rid for w in pending}
        cands = [w for w in window if w.rid not in live_ids]
        reqs = (*running, *pending, *cands)
        n_live = len(running) + len(pending)
        n = len(reqs)
        used = np.fromiter((_private(x) for x in reqs), float, n)
        produced, cap_left, table, fixed = self._lengths(reqs)
        grid = step_grid(min(horizon_steps(table, produced, cap_left, fixed), MAX_HORIZON))
        prof = DemandProfile(grid, 0.0)
        S = prof.survival_rows(produced, cap_left, table, fixed) if n else np.zeros((0, grid.size))
        if n:
            mean, var = prof.moments(used, S)
            live_m, live_v = mean[:n_live].sum(axis=0), var[:n_live].sum(axis=0)
            peaks = {int(np.argmax(live_m + 1.6 * np.sqrt(live_v)))}
            if cands:
                all_m, all_v = live_m + mean[n_live:].sum(axis=0), live_v + var[n_live:].sum(axis=0)
                peaks.add(int(np.argmax(all_m + 1.6 * np.sqrt(all_v))))
            grid2 = grid
            for k in peaks:
                grid2 = np.union1d(grid2, refined_grid(grid, k))
            if grid2.size != grid.size:  # evaluate again with steps around the coarse peaks
                prof = DemandProfile(grid2, 0.0)
                S = prof.survival_rows(produced, cap_left, table, fixed)
        self._store(S[:n_live] if n_live else np.zeros((0, prof.grid.size)))
        self._changed()
        self._slot = {x.rid: i for i, x in enumerate(reqs[:n_live])}
        self._free = []
        self._cand = {x.rid: (S[i], _inputs(x)) for i, x in enumerate(reqs) if i >= n_live}
        self._stash = {}
        self.profile = prof
        self._age = 0
        self.full_recomputes += 1

    # --- candidates -------------------------------------------------------------------------------------------------
    def candidate(self, req: WaitingView, prompt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(survival, mean, var) rows ``req`` adds from the moment it is admitted with ``prompt`` private tokens.
        Survival rows of the whole candidate window are computed together (one vectorised pass) and cached while
        the grid holds. An admitted request's row leaves the cache (:meth:`add`) but is kept aside: when it is a
        candidate again with the same inputs (its admission was not executed: a re-planned view, a refused budget)
        the row is taken back instead of computed again (~140 us for a survival pass; each row depends on its own
        request only, so it is the row a new pass would give)."""
        prof = self.profile
        assert prof is not None
        cand = self._cand
        hit = cand.get(req.rid)
        if hit is None:
            todo = [w for w in self._window if w.rid not in cand and w.rid != req.rid]
            todo.append(req)
            if self._stash:
                kept = [(w, self._stash.pop(w.rid, None)) for w in todo]
                for w, k in kept:
                    if k is not None and _same_inputs(k[1], w):
                        cand[w.rid] = k
                todo = [w for w, k in kept if w.rid not in cand]
            if todo:
                S = prof.survival_rows(*self._lengths(todo))
                for i, w in enumerate(todo):
                    cand[w.rid] = (S[i], _inputs(w))
            hit = cand[req.rid]
        s = hit[0]
        # DemandProfile.moments for one row, without its 2-D broadcasting (the same elementwise products, in order)
        size = float(prompt) + prof.grid
        return s, s * size, s * (1.0 - s) * size * size

    def _lengths(
        self, reqs: Sequence[RunningView | WaitingView]
    ) -> tuple[np.ndarray, np.ndarray, LengthTable, np.ndarray]:
        """(tokens produced, cap left, log-quantile table, fixed length or -1) of ``reqs``: what
        :meth:`DemandProfile.survival_rows` reads. A request without a distribution runs to its cap (fixed)."""
        n = len(reqs)
        produced = np.fromiter((x.output_len for x in reqs), float, n)
        cap_left = np.fromiter((max(x.max_new_tokens - x.output_len, 1) for x in reqs), float, n)
        logs = np.zeros((n, ZS.size))
        fixed = np.full(n, -1.0)
        for i, x in enumerate(reqs):
            row = self._log_row(x.rid, x.estimate)
            if row is None:
                fixed[i] = cap_left[i]
            else:
                logs[i] = row
        return produced, cap_left, LengthTable(ZS, logs), fixed

    def peak(self, z: float) -> float:
        p = self.profile
        return 0.0 if p is None else float((p.mean + z * np.sqrt(p.var)).max())  # .max(): np.max's dispatch costs ~2 us

    def peak_with(self, row: tuple[np.ndarray, np.ndarray, np.ndarray], z: float) -> float:
        p = self.profile
        assert p is not None
        return float((p.mean + row[1] + z * np.sqrt(p.var + row[2])).max())

    def add(self, rid: str, row: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """``rid`` was admitted: its row joins the live profile."""
        p = self.profile
        assert p is not None
        p.mean += row[1]
        p.var += row[2]
        if self._free:
            i = self._free.pop()
        else:
            i = self._S.shape[0]
            self._store(np.vstack([self._S, np.zeros((max(8, i // 2), self._S.shape[1] or row[0].size))]))
            self._free.extend(range(self._S.shape[0] - 1, i, -1))
        s = row[0]
        self._S[i] = s
        self._W[i] = s * (1.0 - s)
        self._changed()
        old = self._slot.get(rid)
        if old is not None:
            self._SW[old] = 0.0
            self._free.append(old)
        self._slot[rid] = i
        kept = self._cand.pop(rid, None)
        if kept is not None:
            self._stash[rid] = kept

    def _store(self, S: np.ndarray) -> None:
        """Survival rows ``S`` (one per slot) and their ``S(1-S)`` become the rule's matrices (copied)."""
        n, g = S.shape
        self._SW = np.empty((n, 2 * g))
        self._S, self._W = self._SW[:, :g], self._SW[:, g:]
        self._S[:] = S
        self._W[:] = S * (1.0 - S)

    def end(self) -> None:
        """The planning pass is over: drop its candidate window (the host frees those views; see
        ``CacheOptGate.end``)."""
        self._window = ()

    def forget(self, rid: str) -> None:
        self._cand.pop(rid, None)
        self._stash.pop(rid, None)


_RID = attrgetter("rid")


def _inputs(w: RunningView | WaitingView) -> tuple:
    """What a candidate's survival row depends on besides the grid: tokens produced, its cap, its estimate."""
    return (w.output_len, w.max_new_tokens, w.estimate)


def _same_inputs(inputs: tuple, w: RunningView | WaitingView) -> bool:
    est = inputs[2]
    return inputs[0] == w.output_len and inputs[1] == w.max_new_tokens and (est is w.estimate or est == w.estimate)


def _private(x: RunningView | WaitingView) -> float:
    """Private KV a live request holds (running) or will hold once its prompt is in (waiting, mid-prefill)."""
    if isinstance(x, RunningView):
        return float(x.kv_used - x.cached_len)
    return float(x.seq_len - x.cached_len)
