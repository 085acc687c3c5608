"""Calibrated per-request length distributions: static conformal offsets per quantile level, adapted online from
finished requests (CacheOPT C1).

Static part (conformalized quantile regression, Romano, Patterson & Candes 2019, in log space). For each level
``q`` the model gives a raw quantile ``Q_q(x)``; on held-out calibration rows the score ``s = log y - log Q_q(x)``
is computed and the offset ``c_q`` is its ``ceil((n+1) q)``-th smallest value, so ``Q_q(x) * exp(c_q)`` covers a
new exchangeable request with probability >= q. Offsets are kept per *class* (the answer source the model was
calibrated on, plus ``"*"`` over all calibration rows with the source hidden).

Online part. Exchangeability breaks exactly when it matters (new traffic, another model, a prompt mix that drifts),
so each class's offsets are updated on the stream with **quantile tracking**, the P-controller of *Conformal PID
Control for Time Series Prediction* (Angelopoulos, Candes & Tibshirani, NeurIPS 2023), which is adaptive conformal
inference (ACI, Gibbs & Candes, NeurIPS 2021) run on the score scale instead of the miss-rate scale::

    theta_q <- theta_q + eta * (err - (1 - q)),    err = 1{y > issued q-bound}

For any sequence of lengths, bounded scores and any delay in feedback, the long-run miss rate tends to ``1 - q``:
the sum of ``err - (1 - q)`` over any stretch of requests equals ``(theta_end - theta_start) / eta``, so coverage
over a window of ``m`` requests is off by at most the offset's excursion over ``eta * m``. The step ``eta`` (log
units) trades that window error against the jitter of the bound.

Feedback delay. On a server a request's length is known only when it finishes, after ``d`` later requests were
already issued; the tracker then acts on stale errors and, like any P-controller with dead time, oscillates once
``eta * f * d`` passes ~1 (``f``: density of the score at the quantile, ~0.25 per log unit here), inflating the
bounds. So the step in use is ``step / (1 + d / lag_scale)`` with ``d`` the running mean of the measured lag
(requests issued between a request's issue and its finish): the full step when lengths come back at once, about
``1 / d`` of it under a deep queue. ``step`` and ``lag_scale`` were chosen on a validation stream (calib
instructions, ``predictors.stream_eval``), never on the test stream. A class seen for the first time starts from its
static offsets when the model was calibrated on it, else from the ``"*"`` tracker, which every finish updates
(with the bound ``"*"`` would have issued), so unnamed traffic and new classes start from what the stream has
taught so far. Offsets are clamped to +-``clamp`` (a factor e^3 = 20 each way) and classes are capped in number:
input cannot grow the state without bound.

The bounds issued at each level are made monotone (cumulative maximum over levels) and handed on as a
:class:`policies.length_dist.LengthDistribution`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

GLOBAL = "*"
LAG_EWMA = 0.05  # weight of one finish in the running mean of the feedback lag


def conformal_offsets(log_pred: np.ndarray, y: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Per-level split-conformal offsets on log scores (the largest score where ``ceil((n+1) q) > n``)."""
    s = np.sort(np.log(np.maximum(np.asarray(y, np.float64), 1.0))[:, None] - log_pred, axis=0)
    n = s.shape[0]
    if n == 0:
        return np.zeros(len(levels))
    k = np.minimum([math.ceil((n + 1) * q) for q in levels], n)
    return s[k - 1, np.arange(len(levels))]


def calibrated(log_pred: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Quantiles in tokens: ``exp(log_pred + offsets)``, at least 1, non-decreasing across levels (last axis)."""
    return np.maximum.accumulate(np.maximum(np.exp(log_pred + offsets), 1.0), axis=-1)


@dataclass
class StaticCalibration:
    levels: tuple[float, ...]
    offsets: dict[str, list[float]] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)

    @classmethod
    def fit(cls, levels: Sequence[float], groups: dict[str, tuple[np.ndarray, np.ndarray]]) -> StaticCalibration:
        """``groups``: class -> (log raw quantiles (n, L), true lengths (n,)); must include :data:`GLOBAL`."""
        if GLOBAL not in groups:
            raise ValueError(f"static calibration needs the {GLOBAL!r} class")
        c = cls(tuple(levels))
        for name, (lp, y) in groups.items():
            c.offsets[name] = conformal_offsets(lp, y, levels).tolist()
            c.n[name] = len(y)
        return c

    def offsets_for(self, name: str) -> np.ndarray:
        return np.asarray(self.offsets.get(name, self.offsets[GLOBAL]), dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "offsets": self.offsets, "n": self.n}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StaticCalibration:
        return cls(tuple(d["levels"]), {k: list(v) for k, v in d["offsets"].items()}, dict(d.get("n", {})))


@dataclass
class _Issued:
    name: str
    bound: np.ndarray  # (L,) tokens issued under the class's offsets
    bound_global: np.ndarray  # (L,) what the "*" offsets would have issued
    at: int  # the calibrator's issue count when it was issued


class OnlineCalibrator:
    """Quantile tracking per class (module docstring). ``issue`` calibrates a batch and remembers what it issued;
    ``observe`` feeds a finished request's exact length back. Pure computation: no clock, no I/O."""

    def __init__(self, static: StaticCalibration, step: float = 0.2, lag_scale: float = 4.0, clamp: float = 3.0,
                 max_classes: int = 256, max_pending: int = 200_000, adapt: bool = True) -> None:  # fmt: skip
        if not (step >= 0 and math.isfinite(step)) or lag_scale <= 0 or clamp <= 0 or max_classes < 1:
            raise ValueError(f"OnlineCalibrator: step >= 0, lag_scale > 0, clamp > 0, max_classes >= 1; got "
                             f"{step}, {lag_scale}, {clamp}, {max_classes}")  # fmt: skip
        self.static, self.levels = static, static.levels
        self.alpha = 1.0 - np.asarray(self.levels)
        self.step, self.lag_scale, self.clamp, self.max_classes, self.max_pending, self.adapt = (
            step, lag_scale, clamp, max_classes, max_pending, adapt)  # fmt: skip
        self.issued = 0  # requests issued so far (the clock feedback lag is counted in)
        self.lag = 0.0  # running mean of requests issued between a request's issue and its finish
        self.theta: dict[str, np.ndarray] = {GLOBAL: static.offsets_for(GLOBAL).copy()}
        self.seen: dict[str, int] = {GLOBAL: 0}
        self.misses: dict[str, np.ndarray] = {GLOBAL: np.zeros(len(self.levels))}
        self.pending: OrderedDict[str, _Issued] = OrderedDict()
        self.overflow = 0  # requests whose class was folded into "*" because the class table was full

    def class_of(self, name: str | None) -> str:
        """The tracked class for a request's ``class``/``source`` field (created on first use, capped)."""
        if not name or name == GLOBAL:
            return GLOBAL
        if name not in self.theta:
            if len(self.theta) >= self.max_classes:
                self.overflow += 1
                return GLOBAL
            start = (
                self.static.offsets[name]
                if name in self.static.offsets
                else np.maximum(self.theta[GLOBAL], self.static.offsets_for(GLOBAL))
            )
            self.theta[name] = np.array(start, dtype=np.float64)
            self.seen[name] = 0
            self.misses[name] = np.zeros(len(self.levels))
        return name

    def issue(self, rids: Sequence[str], log_pred: np.ndarray, names: Sequence[str | None]) -> np.ndarray:
        """Calibrated quantiles (tokens, (n, L)) for a batch; remembered per rid for :meth:`observe`."""
        classes = [self.class_of(n) for n in names]
        th = np.stack([self.theta[c] for c in classes]) if classes else np.zeros((0, len(self.levels)))
        out = calibrated(log_pred, th)
        glob = calibrated(log_pred, self.theta[GLOBAL])
        for i, rid in enumerate(rids):
            self.pending.pop(rid, None)
            self.pending[rid] = _Issued(classes[i], out[i], glob[i], self.issued)
            self.issued += 1
        while len(self.pending) > self.max_pending:
            self.pending.popitem(last=False)
        return out

    def observe(self, rid: str, output_len: int) -> bool:
        """Feed back the exact final length of ``rid``; False when ``rid`` was never issued (or long forgotten)."""
        got = self.pending.pop(rid, None)
        if got is None:
            return False
        y = float(max(output_len, 1))
        self.lag += LAG_EWMA * (self.issued - 1 - got.at - self.lag)
        self._update(got.name, got.bound, y)
        if got.name != GLOBAL:
            self._update(GLOBAL, got.bound_global, y)
        return True

    def _update(self, name: str, bound: np.ndarray, y: float) -> None:
        err = (y > bound).astype(np.float64)
        self.seen[name] += 1
        self.misses[name] += err
        if self.adapt:
            self.theta[name] = np.clip(self.theta[name] + self.step_now() * (err - self.alpha), -self.clamp, self.clamp)

    def step_now(self) -> float:
        """The step in use: ``step / (1 + lag / lag_scale)`` (module docstring: feedback delay)."""
        return self.step / (1.0 + self.lag / self.lag_scale)

    def coverage(self, limit: int = 16) -> dict[str, dict[str, Any]]:
        """Observed coverage per level of the most-seen classes (for the service's status reply)."""
        top = sorted(self.seen, key=lambda k: -self.seen[k])[:limit]
        return {k: {"n": self.seen[k], "coverage": (1.0 - self.misses[k] / max(self.seen[k], 1)).round(4).tolist(),
                    "offsets": self.theta[k].round(4).tolist()} for k in top}  # fmt: skip


def quantile_at(values: np.ndarray, levels: Sequence[float], q: float) -> np.ndarray:
    """The ``q``-quantile of each row's distribution, exactly as :meth:`LengthDistribution.quantile` reads it
    (log length piecewise linear in the normal score, extended with the outer segments' slopes), vectorised."""
    from policies.length_dist import z_of

    zs = np.array([z_of(v) for v in levels])
    logs = np.log(np.maximum(np.asarray(values, np.float64), 1.0))
    z = z_of(q)
    if zs.size == 1:
        return np.exp(logs[:, 0])
    i = int(np.clip(np.searchsorted(zs, z, side="left") - 1, 0, zs.size - 2))
    slope = (logs[:, i + 1] - logs[:, i]) / (zs[i + 1] - zs[i])
    return np.maximum(np.exp(logs[:, i] + (z - zs[i]) * slope), 1.0)
