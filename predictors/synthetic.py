"""Simulator-side length estimates without prompt text (CacheOPT C1 in the simulator).

Why: the simulator's workloads (Azure, Mooncake, ShareGPT length files) carry true lengths but no prompt text, so the
real model cannot run on them. Giving the simulator's policies the *true* length would flatter CacheOPT; giving them
nothing would cripple it. Instead we draw estimates whose error is the trained model's own held-out error: the model
directory keeps (point, spread, true) for its calibration split (``residuals.json``, never used for training); per
bucket of true length we keep the empirical ratios ``point/true`` and ``spread/true``, and for a request of true
length ``L`` draw one calibration row of ``L``'s bucket, scale it to ``L``, and apply the very bound the service
applies (same :class:`~predictors.bounds.Calibration`, same confidence rule). Seeded, so runs are reproducible.

Buckets are quantiles of the calibration true lengths (at most 6, each with >= 15 rows); a true length outside the
calibrated range uses the nearest bucket (ratios, not absolute tokens, so they transfer across length scales — an
assumption, stated here because Azure/Mooncake lengths differ from AlpacaEval's).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from policies.views import LengthEstimate
from predictors.bounds import BOUND_KINDS, Calibration, adapt_confidence
from predictors.model import CALIB_FILE, META_FILE
from predictors.train import RESIDUALS_FILE

Estimator = Callable[[int, int, float], LengthEstimate]


def _buckets(true: np.ndarray, max_buckets: int = 6, min_rows: int = 15) -> np.ndarray:
    k = max(1, min(max_buckets, true.size // min_rows))
    return np.unique(np.quantile(true, np.linspace(0, 1, k + 1)[1:-1]))


def make_estimator(model_dir: str | Path, bound: str = "conformal", seed: int = 0, alpha: float = 0.95,
                   beta: float = 0.001) -> Estimator:  # fmt: skip
    """``estimate(true_len, max_new_tokens, arrival_rate) -> LengthEstimate`` with the model's held-out error.

    The confidence follows the paper's rule ``alpha / (1 + beta * arrival_rate)`` like the service's."""
    if bound not in BOUND_KINDS:
        raise ValueError(f"--ext-predictor-bound: unknown kind {bound!r}; valid: {', '.join(BOUND_KINDS)}")
    d = Path(model_dir)
    if not (d / META_FILE).exists() or not (d / RESIDUALS_FILE).exists():
        raise FileNotFoundError(f"{d}: needs {META_FILE} and {RESIDUALS_FILE} (run predictors.train)")
    res = json.loads((d / RESIDUALS_FILE).read_text())
    calib = Calibration.from_json(json.loads((d / CALIB_FILE).read_text()))
    true = np.asarray(res["true"], dtype=np.float64)
    r_point = np.asarray(res["point"], dtype=np.float64) / true
    r_spread = np.asarray(res["spread"], dtype=np.float64) / true
    # prompt-length ratio for the `linear` baseline is not meaningful without prompts: its input is the median one
    plen = float(np.median(res.get("prompt_len", [0]) or [0]))
    edges = _buckets(true)
    bucket_of = np.searchsorted(edges, true, side="right")
    members = [np.flatnonzero(bucket_of == b) for b in range(edges.size + 1)]
    rng = np.random.default_rng(seed)

    def estimate(true_len: int, max_new_tokens: int, arrival_rate: float = 0.0) -> LengthEstimate:
        L = max(1, int(true_len))
        rows = members[int(np.searchsorted(edges, L, side="right"))]
        i = rows[rng.integers(rows.size)]
        point = max(1.0, r_point[i] * L)
        spread = max(1.0, r_spread[i] * L)
        conf = adapt_confidence(alpha, beta, arrival_rate)
        b = calib.bounds(bound, np.array([point]), np.array([spread]), np.array([plen]),
                         np.array([max_new_tokens]), conf)[0]  # fmt: skip
        return LengthEstimate(point=int(min(round(point), b)), bound=int(b), confidence=conf)

    return estimate
