"""The pool rule's state across planning passes: the live requests' demand profile, kept incrementally.

Why incremental: the profile of 256 running requests on ~40 future steps costs about a millisecond to compute from
their distributions, and a plan must cost under ~100 us. Between two passes the live set changes by a few requests
(admissions, finishes, preemptions): a departed request's row is subtracted, an admitted one's row was added when it
was admitted. The whole profile is recomputed every ``refresh`` passes (or when much of the set changed), so no row is
more than ``refresh`` decode steps old — small beside the hundreds to thousands of steps the rule looks ahead, and
conservative for requests whose peak already passed. Candidate rows (a waiting request's demand from the moment it is
admitted) do not change while it waits, so they are cached per request until the grid changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from policies.cacheopt.risk import DemandProfile, LengthTable, horizon_steps, refined_grid, step_grid
from policies.length_dist import z_of
from policies.views import RunningView, WaitingView

LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)  # quantile levels of the rule's length table
ZS = np.asarray([z_of(q) for q in LEVELS])
MAX_HORIZON = 1 << 17
REFRESH_PASSES = 32  # recompute the whole profile at least this often (decode steps of staleness)
CHANGE_SHARE = 0.25  # ... or when this share of the live set changed since


class PoolRule:
    """Keeps ``E[S(t)]`` / ``Var[S(t)]`` of the live requests (see :mod:`policies.cacheopt.risk`)."""

    def __init__(self, log_row: Callable[[str, object], np.ndarray | None], refresh: int = REFRESH_PASSES) -> None:
        self._log_row = log_row  # rid, estimate -> log quantiles at LEVELS, or None (runs to its cap)
        self.refresh = refresh
        self.profile: DemandProfile | None = None
        self._rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # live rid -> its (mean, var) row
        self._cand: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}  # waiting rid -> its row if admitted now
        self._age = 0
        self._window: Sequence[WaitingView] = ()
        self.full_recomputes = 0

    # --- the live set -------------------------------------------------------------------------------------------
    def begin(
        self, running: Sequence[RunningView], pending: Sequence[WaitingView], window: Sequence[WaitingView]
    ) -> None:
        self._window = window
        live = [r.rid for r in running] + [w.rid for w in pending]
        rows = self._rows
        if self.profile is not None and self._age < self.refresh:
            live_set = set(live)
            gone = [rid for rid in rows if rid not in live_set]
            new = [rid for rid in live if rid not in rows]
            if len(gone) + len(new) <= CHANGE_SHARE * max(len(live), 8) and not new:
                for rid in gone:
                    m, v = rows.pop(rid)
                    self.profile.mean -= m
                    self.profile.var -= v
                np.maximum(self.profile.var, 0.0, out=self.profile.var)
                self._age += 1
                return
        self._recompute(running, pending, window)

    def _recompute(
        self, running: Sequence[RunningView], pending: Sequence[WaitingView], window: Sequence[WaitingView]
    ) -> None:
        """All rows from scratch: the live requests and the candidate window, on a geometric grid refined around
        the peak of the live profile and of the live profile with every candidate admitted (sharp sawtooth peaks
        of near-certain lengths fall between coarse steps)."""
        live_ids = {r.rid for r in running} | {w.rid for w in pending}
        cands = [w for w in window if w.rid not in live_ids]
        n_live = len(running) + len(pending)
        n = n_live + len(cands)
        rids: list[str] = []
        used = np.empty(n)
        produced = np.empty(n)
        cap_left = np.empty(n)
        logs = np.zeros((n, ZS.size))
        fixed = np.full(n, -1.0)
        i = 0
        for r in running:
            rids.append(r.rid)
            used[i], produced[i], cap_left[i] = r.kv_used - r.cached_len, r.output_len, r.max_new_tokens - r.output_len
            i += 1
        for w in (*pending, *cands):
            rids.append(w.rid)
            used[i], produced[i], cap_left[i] = w.seq_len - w.cached_len, w.output_len, w.max_new_tokens - w.output_len
            i += 1
        np.maximum(cap_left, 1.0, out=cap_left)
        for i, x in enumerate((*running, *pending, *cands)):
            self._fill(logs, fixed, i, x.rid, x.estimate, cap_left[i])
        table = LengthTable(ZS, logs)
        grid = step_grid(min(horizon_steps(table, produced, cap_left, fixed), MAX_HORIZON))
        prof = DemandProfile(grid, 0.0)
        if n:
            mean, var = prof.contributions(used, produced, cap_left, table, fixed)
            live_m, live_v = mean[:n_live].sum(axis=0), var[:n_live].sum(axis=0)
            peaks = {int(np.argmax(live_m + 1.6 * np.sqrt(live_v)))}
            if cands:
                peaks.add(
                    int(np.argmax(live_m + mean[n_live:].sum(axis=0) + 1.6 * np.sqrt(live_v + var[n_live:].sum(0))))
                )
            grid2 = grid
            for k in peaks:
                grid2 = np.union1d(grid2, refined_grid(grid, k))
            if grid2.size != grid.size:  # evaluate again with steps around the coarse peaks
                prof = DemandProfile(grid2, 0.0)
                mean, var = prof.contributions(used, produced, cap_left, table, fixed)
            prof.add(mean[:n_live], var[:n_live])
            self._rows = {rids[i]: (mean[i], var[i]) for i in range(n_live)}
            self._cand = {rids[i]: (mean[i], var[i], int(used[i])) for i in range(n_live, n)}
        else:
            self._rows, self._cand = {}, {}
        self.profile = prof
        self._age = 0
        self.full_recomputes += 1

    def _fill(self, logs: np.ndarray, fixed: np.ndarray, i: int, rid: str, estimate: object, cap_left: float) -> None:
        row = self._log_row(rid, estimate)
        if row is None:
            fixed[i] = max(cap_left, 1.0)
        else:
            logs[i] = row

    # --- candidates -------------------------------------------------------------------------------------------------
    def candidate(self, req: WaitingView, prompt: int) -> tuple[np.ndarray, np.ndarray]:
        """The (mean, var) row ``req`` adds from the moment it is admitted with ``prompt`` private tokens. Rows of
        the whole candidate window are computed together (one vectorised pass) and cached while the grid holds."""
        hit = self._cand.get(req.rid)
        if hit is not None and hit[2] == prompt:
            return hit[0], hit[1]
        todo = [(w, w.seq_len - w.cached_len) for w in self._window if w.rid not in self._cand and w.rid != req.rid]
        todo.append((req, prompt))
        prof = self.profile
        assert prof is not None
        n = len(todo)
        used = np.fromiter((float(p) for _, p in todo), float, n)
        produced = np.fromiter((float(w.output_len) for w, _ in todo), float, n)
        cap_left = np.fromiter((float(max(w.max_new_tokens - w.output_len, 1)) for w, _ in todo), float, n)
        logs = np.zeros((n, ZS.size))
        fixed = np.full(n, -1.0)
        for i, (w, _) in enumerate(todo):
            self._fill(logs, fixed, i, w.rid, w.estimate, cap_left[i])
        m, v = prof.contributions(used, produced, cap_left, LengthTable(ZS, logs), fixed)
        for i, (w, p) in enumerate(todo):
            self._cand[w.rid] = (m[i], v[i], p)
        return m[-1], v[-1]

    def peak(self, z: float) -> float:
        p = self.profile
        return 0.0 if p is None else float(np.max(p.mean + z * np.sqrt(p.var)))

    def peak_with(self, row: tuple[np.ndarray, np.ndarray], z: float) -> float:
        p = self.profile
        assert p is not None
        return float(np.max(p.mean + row[0] + z * np.sqrt(p.var + row[1])))

    def add(self, rid: str, row: tuple[np.ndarray, np.ndarray]) -> None:
        """``rid`` was admitted: its row joins the live profile."""
        p = self.profile
        assert p is not None
        p.mean += row[0]
        p.var += row[1]
        self._rows[rid] = row
        self._cand.pop(rid, None)

    def forget(self, rid: str) -> None:
        self._cand.pop(rid, None)
