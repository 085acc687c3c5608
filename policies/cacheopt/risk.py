"""Pool-level KV risk (C1 at pool level, the admission of ``--ext-cacheopt-admission pool``).

Why: CacheOPT's paper rule pads every request's predicted length separately at one confidence and reserves the sum
of those bounds. Few requests overrun at once, so the paddings add up to far more than the pool ever needs: with a
realistic predictor (Kendall tau ~0.3) a 95% per-request bound is ~2.5x the true length, and a pool admitted that
way sits ~40% idle while requests queue. Admission here looks at the *sum* of the remaining demands instead:

    S(t) = sum over live requests i of 1[i still running t steps from now] * (used_i + t)

is the private KV in use ``t`` decode steps ahead if no one else is admitted (each running request grows one token
per step until it ends; its KV is freed when it ends). With each request's remaining length drawn from its
predictive distribution (the predictor's quantiles, conditioned on what it already produced) and requests
independent::

    E[S(t)]   = sum_i s_i(t) (u_i + t)                  s_i(t) = P(L_i > o_i + t | L_i > o_i)
    Var[S(t)] = sum_i s_i(t) (1 - s_i(t)) (u_i + t)^2

A candidate is admitted when the peak over future steps of ``E[S(t)] + z * sd[S(t)]`` stays within what the pool
can hold beside the global reserve, ``z`` being the normal score of the target confidence (adapted to the arrival
rate, C1's idea at pool level). The padding is shared: it grows with the square root of the number of requests, not
linearly. C3 (top-ups, reserve), C4 (victims) and C5 (swap) make the rare overflow cheap.

Vectorised over requests and a geometric grid of future steps (numpy; engine-free).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy.special import ndtr

from policies.length_dist import LengthDistribution, z_of

GRID_POINTS = 28  # future steps evaluated: 0, 1, then geometric up to the horizon
REFINE_POINTS = 12  # extra steps around the coarse grid's peak (a sharp sawtooth peak between two coarse points)


def step_grid(horizon: int, points: int = GRID_POINTS) -> np.ndarray:
    """0, 1 and a geometric grid up to ``horizon`` decode steps (distinct integers; the horizon is rounded up to a
    5% bucket so the grid is built once per bucket). Read-only."""
    bucket = 1.05 ** math.ceil(math.log(max(int(horizon), 2)) / math.log(1.05))
    return _grid(math.ceil(bucket), points)


@lru_cache(maxsize=256)
def _grid(horizon: int, points: int) -> np.ndarray:
    g = np.unique(np.rint(np.geomspace(1, horizon, max(points - 1, 2))).astype(np.int64))
    out = np.concatenate([[0], g])
    out.setflags(write=False)
    return out


def refined_grid(grid: np.ndarray, at: int, points: int = REFINE_POINTS) -> np.ndarray:
    """``grid`` plus evenly spaced steps between the neighbours of index ``at`` (where a coarse peak was seen)."""
    lo = grid[max(at - 1, 0)]
    hi = grid[min(at + 1, grid.size - 1)]
    if hi - lo < 2:
        return grid
    extra = np.rint(np.linspace(lo, hi, points + 2)[1:-1]).astype(np.int64)
    return np.union1d(grid, extra)


def horizon_steps(table: LengthTable, produced: np.ndarray, cap_left: np.ndarray, fixed: np.ndarray) -> int:
    """Steps until (almost) every live request has ended: its conditional 0.999-quantile of the remaining length
    (its cap for rows without a distribution), at least 16."""
    if produced.size == 0:
        return 16
    q = table.quantile_at(3.09)  # z of 0.999
    rem = q - produced
    np.copyto(rem, produced * 0.5 + 64.0, where=rem <= 0)  # beyond its tail: it goes on a while
    np.minimum(rem, cap_left, out=rem)
    np.copyto(rem, fixed, where=fixed >= 0)
    return int(max(float(rem.max()), 16.0))


class LengthTable:
    """Predictive distributions of many requests in one array: ``log length`` piecewise linear in the normal score
    (the representation of :class:`LengthDistribution`), one row per request, shared levels."""

    __slots__ = ("logs", "zs")

    def __init__(self, zs: np.ndarray, logs: np.ndarray) -> None:
        self.zs = zs  # (m,) normal scores of the levels
        self.logs = logs  # (n, m) log quantiles

    @classmethod
    def of(cls, dists: Sequence[LengthDistribution], levels: tuple[float, ...]) -> LengthTable:
        zs = np.asarray([z_of(q) for q in levels], dtype=float)
        if not dists:
            return cls(zs, np.zeros((0, len(levels))))
        logs = np.empty((len(dists), len(levels)))
        for i, d in enumerate(dists):
            if d.levels == levels:
                logs[i] = np.log(d.values)
            else:  # another level set: resample (rare: one predictor serves a run)
                logs[i] = [math.log(d.quantile(q)) for q in levels]
        return cls(zs, logs)

    def quantile_at(self, z: float) -> np.ndarray:
        """Each row's quantile at normal score ``z`` (linear extrapolation in z beyond the outer knots)."""
        logs, zs = self.logs, self.zs
        if zs.size == 1:
            return np.exp(logs[:, 0])
        k = min(max(int(np.searchsorted(zs, z)) - 1, 0), zs.size - 2)
        return np.exp(logs[:, k] + (z - zs[k]) / (zs[k + 1] - zs[k]) * (logs[:, k + 1] - logs[:, k]))

    def survival(self, x: np.ndarray) -> np.ndarray:
        """P(L_i > x_i...) for ``x`` of shape (n,) or (n, k): row i of ``x`` against distribution i.

        The normal score is piecewise linear in log x: the first knot's score, plus each segment's slope times the
        part of the segment below x, extended linearly beyond the outer knots (2-D operations per segment, no
        gather: this runs for every live request on every grid step)."""
        logs, zs = self.logs, self.zs
        lx = np.log(np.maximum(x, 1.0))
        squeeze = lx.ndim == 1
        if squeeze:
            lx = lx[:, None]
        m = zs.size
        if m == 1:
            z = np.where(lx < logs[:, :1], -6.0, 6.0)
        else:
            dl = np.diff(logs, axis=1)
            slope = np.divide(np.diff(zs)[None, :], dl, out=np.full_like(dl, 1e6), where=dl > 1e-12)
            z = zs[0] + slope[:, :1] * np.minimum(lx - logs[:, :1], 0.0)
            for j in range(m - 1):
                z += slope[:, j : j + 1] * np.clip(lx - logs[:, j : j + 1], 0.0, dl[:, j : j + 1])
            z += slope[:, m - 2 : m - 1] * np.maximum(lx - logs[:, m - 1 : m], 0.0)
        np.clip(z, -6.0, 6.0, out=z)
        s = ndtr(-z)
        return s[:, 0] if squeeze else s


class DemandProfile:
    """``E[S(t)]`` and ``Var[S(t)]`` of the live requests on a step grid, and the peak with a margin."""

    __slots__ = ("grid", "mean", "var", "z")

    def __init__(self, grid: np.ndarray, z: float) -> None:
        self.grid = grid.astype(float)
        self.z = z
        self.mean = np.zeros(grid.size)
        self.var = np.zeros(grid.size)

    def survival_rows(
        self,
        produced: np.ndarray,
        cap_left: np.ndarray,
        table: LengthTable | None,
        fixed_left: np.ndarray | None = None,
    ) -> np.ndarray:
        """``s_i(t)`` on the grid for requests having produced ``produced``, allowed ``cap_left`` more (their visible
        cap), with distributions ``table``; rows without a distribution (``fixed_left`` >= 0 where given) run
        deterministically for ``fixed_left`` more steps. Column 0 is 1: every live request holds its KV now."""
        t = self.grid[None, :]
        if table is not None and table.logs.shape[0]:
            s0 = table.survival(produced.astype(float))
            st = table.survival(produced[:, None] + t)
            s = np.where(s0[:, None] > 1e-9, st / np.maximum(s0[:, None], 1e-12), (t == 0).astype(float))
            np.minimum(s, 1.0, out=s)
        else:
            s = np.ones((produced.size, self.grid.size))
        if fixed_left is not None:
            det = fixed_left >= 0
            if det.any():
                s[det] = (t < fixed_left[det, None]).astype(float)
        s[t.repeat(s.shape[0], axis=0) >= cap_left[:, None]] = 0.0
        s[:, 0] = 1.0
        return s

    def moments(self, used: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, variance) rows of requests holding ``used`` private tokens now with survival rows ``s``."""
        size = used[:, None] + self.grid[None, :]
        return s * size, s * (1.0 - s) * size * size

    def contributions(
        self,
        used: np.ndarray,
        produced: np.ndarray,
        cap_left: np.ndarray,
        table: LengthTable | None,
        fixed_left: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mean, variance) rows (see :meth:`survival_rows` and :meth:`moments`)."""
        return self.moments(used, self.survival_rows(produced, cap_left, table, fixed_left))

    def add(self, mean: np.ndarray, var: np.ndarray) -> None:
        """Add request rows (from :meth:`contributions`)."""
        if mean.size:
            self.mean += mean.sum(axis=0) if mean.ndim == 2 else mean
            self.var += var.sum(axis=0) if var.ndim == 2 else var

    def peak(self) -> float:
        return float(np.max(self.mean + self.z * np.sqrt(self.var))) if self.grid.size else 0.0

    def peak_with(self, mean: np.ndarray, var: np.ndarray) -> float:
        return float(np.max(self.mean + mean + self.z * np.sqrt(self.var + var)))


def row_quantile(logs: np.ndarray, q: float, produced: float = 0.0) -> float:
    """One request's ``q``-quantile of its total length given it already produced ``produced`` tokens: the fast
    single-row form of :meth:`LengthDistribution.conditional_quantile` on log quantiles at the pool rule's levels.

    Why plain floats: this runs for every admission (C1's allocation, ``CacheOptGate._alloc_output``) and numpy's
    scalar calls (``searchsorted``, ``clip``) cost ~20 us there; ``bisect`` and ``min``/``max`` on the same IEEE
    doubles give the same result in ~3 us."""
    from policies.cacheopt.pool_rule import ZS_LIST as zs

    lg = logs.tolist()
    f0 = 0.0
    if produced >= 1.0:
        f0 = float(ndtr(_z_at(lg, zs, math.log(produced))))
    if f0 >= 1.0 - 1e-12:
        return produced + max(1.0, math.exp(lg[-1]) - math.exp(lg[0]))
    qq = f0 + q * (1.0 - f0)
    z = z_of(qq)
    k = min(max(bisect_left(zs, z) - 1, 0), len(zs) - 2)
    slope = (lg[k + 1] - lg[k]) / (zs[k + 1] - zs[k])
    return max(math.exp(lg[k] + (z - zs[k]) * slope), produced + 1.0, 1.0)


def _z_at(logs: Sequence[float], zs: Sequence[float], lx: float) -> float:
    """Normal score of log length ``lx`` on one row (linear in the segments, extrapolated at the ends)."""
    k = min(max(bisect_right(logs, lx) - 1, 0), len(zs) - 2)
    dl = logs[k + 1] - logs[k]
    if dl <= 1e-12:
        return zs[k + 1] if lx >= logs[k + 1] else zs[k]
    return min(max(zs[k] + (lx - logs[k]) * (zs[k + 1] - zs[k]) / dl, -6.0), 6.0)


def margin_z(confidence: float) -> float:
    """Normal score of the target probability that the pool does not overflow (0 at 50%)."""
    return max(z_of(confidence), 0.0)
