"""Upper bounds on output length and the KV reservation decision (CacheOPT C1, feeding C2/C3).

A bound turns a point estimate into the KV a request is allocated for. Every kind is selectable
(``--ext-predictor-bound``) and all are evaluated side by side by ``predictors.evaluate``:

* ``hoeffding`` — the paper's padding, exactly: ``t = sqrt(-(R^2/2) ln(1-conf))`` with ``R`` the range
  (max - min) of the prediction error ``true - point`` on the calibration split, added to the point estimate
  *when under-prediction is expected*. The paper does not define that test; we read it per predicted-length bucket:
  a request is padded when, on calibration data, requests whose point estimate fell in the same bucket were
  under-predicted (``true > point``) more often than the allowed miss rate ``1 - conf``. For a median predictor
  that is nearly every bucket. Note ``t >= R`` once ``conf > 0.865``: with one sample the bound is near-vacuous.
* ``conformal`` — split-conformal on the scaled residual ``(true - point) / spread`` (``spread`` = the model's
  q0.9 minus its median; this is conformalized quantile regression normalised by the request's own spread, so a
  request the model is unsure about gets a wider bound). The ``ceil((n+1)·conf)``-th smallest calibration score
  gives finite-sample coverage ``>= conf`` on exchangeable data, at any confidence, not only the trained quantiles.
* ``conformal_log`` — split-conformal on the log ratio ``log((true+1)/(point+1))`` (a multiplicative margin).
* ``max_new_tokens`` / ``quantile`` (a fixed quantile of the training lengths) / ``linear`` (prompt-length linear
  regression plus its training-residual quantile): constant or near-constant baselines.

All bounds are clipped to ``[point, max_new_tokens]``: a bound above the cap reserves KV that can never be used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

BOUND_KINDS = ("hoeffding", "conformal", "conformal_log", "max_new_tokens", "quantile", "linear")
QGRID = np.linspace(0.0, 1.0, 1001)  # levels at which constant baselines store their quantiles
N_BUCKETS = 4


def adapt_confidence(alpha: float, beta: float, rate: float) -> float:
    """The paper's rule: ``conf = alpha / (1 + beta * rate)`` (rate in requests/s). Higher load -> lower
    confidence -> smaller paddings, so more requests fit; overruns are then absorbed by the reserve (C3)."""
    return alpha / (1.0 + beta * max(0.0, rate))


def overcommit_confidence(running: int, reserve_tokens: float, mean_overrun: float,
                          lo: float = 0.5, hi: float = 0.99) -> float:  # fmt: skip
    """Documented alternative to :func:`adapt_confidence`: pick the confidence whose *expected total overrun*
    fits the global reserve, ``running * (1 - conf) * mean_overrun <= reserve_tokens``. It targets what actually
    hurts (overruns that no reserve can absorb force preemptions) instead of the arrival rate, which is only a proxy
    for it. ``mean_overrun`` is the mean excess (true - bound) of recent overrunning requests; clipped to [lo, hi]."""
    if running <= 0 or mean_overrun <= 0:
        return hi
    return float(min(hi, max(lo, 1.0 - reserve_tokens / (running * mean_overrun))))


def hoeffding_padding(R: float, conf: float) -> float:
    """``t = sqrt(-(R^2 / 2) * ln(1 - conf))``: exactly the paper's padding."""
    if not 0.0 <= conf < 1.0:
        raise ValueError(f"confidence must be in [0, 1), got {conf}")
    return math.sqrt(-(R * R / 2.0) * math.log(1.0 - conf))


def conformal_quantile(sorted_scores: np.ndarray, conf: float) -> float:
    """The ``ceil((n+1)·conf)``-th smallest score; ``inf`` when too few scores back that confidence."""
    n = sorted_scores.size
    k = math.ceil((n + 1) * conf)
    if n == 0 or k > n:
        return math.inf
    return float(sorted_scores[max(k, 1) - 1])


@dataclass
class Calibration:
    """What every bound needs, fitted from held-out data; JSON-serialisable so it lives beside the model and the
    service can refit it online (:meth:`refit`) without touching the booster."""

    hoeffding_range: float = 0.0
    bucket_edges: list[float] = field(default_factory=list)
    under_share: list[float] = field(default_factory=list)
    scaled_scores: list[float] = field(default_factory=list)
    log_scores: list[float] = field(default_factory=list)
    train_len_q: list[float] = field(default_factory=list)
    linear: list[float] = field(default_factory=lambda: [0.0, 0.0])
    linear_resid_q: list[float] = field(default_factory=list)
    n_offline: int = 0
    n_online: int = 0

    def __post_init__(self) -> None:
        self._scaled = np.sort(np.asarray(self.scaled_scores, dtype=np.float64))
        self._log = np.sort(np.asarray(self.log_scores, dtype=np.float64))

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Calibration:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @classmethod
    def fit(cls, point: np.ndarray, spread: np.ndarray, true: np.ndarray, train_true: np.ndarray,
            train_prompt: np.ndarray) -> Calibration:  # fmt: skip
        """Calibration split (point, spread, true) for the model-based bounds; training lengths and prompt lengths
        for the constant baselines (they are fitted where a model would be: on the training split)."""
        c = cls(train_len_q=np.quantile(train_true, QGRID).tolist())
        A = np.stack([np.ones_like(train_prompt, dtype=np.float64), train_prompt.astype(np.float64)], axis=1)
        coef, *_ = np.linalg.lstsq(A, train_true.astype(np.float64), rcond=None)
        c.linear = coef.tolist()
        c.linear_resid_q = np.quantile(train_true - A @ coef, QGRID).tolist()
        c._fit_model_scores(point, spread, true)
        c.n_offline = int(true.size)
        return c

    def _fit_model_scores(self, point: np.ndarray, spread: np.ndarray, true: np.ndarray) -> None:
        err = true - point
        self.hoeffding_range = float(err.max() - err.min()) if err.size else 0.0
        self.bucket_edges = np.quantile(point, np.linspace(0, 1, N_BUCKETS + 1)[1:-1]).tolist() if err.size else []
        b = np.searchsorted(self.bucket_edges, point, side="right")
        self.under_share = [float((err[b == i] > 0).mean()) if (b == i).any() else 1.0 for i in range(N_BUCKETS)]
        self.scaled_scores = np.sort(err / spread).tolist()
        self.log_scores = np.sort(np.log1p(true) - np.log1p(point)).tolist()
        self.__post_init__()

    def refit(self, point: np.ndarray, spread: np.ndarray, true: np.ndarray, n_online: int) -> None:
        """Re-fit the model-based parts on new (point, spread, true) triples, e.g. offline calibration + recent
        finished requests (online feedback); the constant baselines stay as trained."""
        self._fit_model_scores(point, spread, true)
        self.n_online = n_online

    def const_quantile(self, grid: Sequence[float], conf: float) -> float:
        return float(np.interp(conf, QGRID, np.asarray(grid))) if len(grid) else math.inf

    def bounds(self, kind: str, point: np.ndarray, spread: np.ndarray, prompt_len: np.ndarray,
               max_new_tokens: np.ndarray, conf: float) -> np.ndarray:  # fmt: skip
        """Integer upper bounds, one per request, clipped to ``[ceil(point), max_new_tokens]``."""
        point = np.asarray(point, dtype=np.float64)
        cap = np.asarray(max_new_tokens, dtype=np.float64)
        if kind == "hoeffding":
            b = np.searchsorted(self.bucket_edges, point, side="right")
            pad = np.asarray(self.under_share)[b] > (1.0 - conf) if self.under_share else np.ones(point.size, bool)
            raw = point + pad * hoeffding_padding(self.hoeffding_range, conf)
        elif kind == "conformal":
            raw = point + spread * conformal_quantile(self._scaled, conf)
        elif kind == "conformal_log":
            raw = np.expm1(np.log1p(point) + conformal_quantile(self._log, conf))
        elif kind == "max_new_tokens":
            raw = cap.copy()
        elif kind == "quantile":
            raw = np.full(point.size, self.const_quantile(self.train_len_q, conf))
        elif kind == "linear":
            a, slope = self.linear
            raw = a + slope * np.asarray(prompt_len, dtype=np.float64) + self.const_quantile(self.linear_resid_q, conf)
        else:
            raise ValueError(f"unknown bound kind {kind!r}; valid: {', '.join(BOUND_KINDS)}")
        lo = np.minimum(np.ceil(point), cap)
        return np.clip(np.ceil(np.nan_to_num(raw, posinf=np.inf)), lo, cap).astype(np.int64)


@dataclass(frozen=True)
class PoolStats:
    """Pool statistics the scheduler pushes (tokens). ``overruns`` are recent excesses (true - bound > 0)."""

    capacity_tokens: int
    used_tokens: int
    running: int
    overruns: tuple[float, ...] = ()


def reservation_decision(rate: float, pool: PoolStats, alpha: float, beta: float, rule: str = "paper",
                         min_reserve: int = 64, max_reserve_frac: float = 0.1,
                         block: int = 8) -> tuple[float, int]:  # fmt: skip
    """(confidence, global reserve tokens) for the next requests (C1 + C3).

    Confidence: the paper's arrival-rate rule (``rule='paper'``) or the overcommit alternative
    (``rule='overcommit'``, sized against the current reserve). Reserve: the expected total overrun of the running
    requests, ``running * (1 - conf) * mean recent overrun``, rounded up to whole blocks, at least ``min_reserve``
    (the paper's 8 blocks of 8 tokens) and at most ``max_reserve_frac`` of the pool so the reserve can never starve
    admission.
    """
    mean_over = float(np.mean(pool.overruns)) if pool.overruns else 0.0
    if rule == "paper":
        conf = adapt_confidence(alpha, beta, rate)
    elif rule == "overcommit":
        conf = overcommit_confidence(pool.running, max(min_reserve, max_reserve_frac * pool.capacity_tokens / 2),
                                     mean_over, hi=alpha)  # fmt: skip
    else:
        raise ValueError(f"unknown confidence rule {rule!r}; valid: paper, overcommit")
    want = pool.running * (1.0 - conf) * mean_over
    reserve = block * math.ceil(max(min_reserve, want) / block)
    cap = max(min_reserve, int(max_reserve_frac * pool.capacity_tokens) // block * block)
    return conf, int(min(reserve, cap))
