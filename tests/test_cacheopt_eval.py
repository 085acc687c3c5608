"""The CacheOPT evaluation's own arithmetic: max-rate interpolation and the calibrated estimate model."""

from __future__ import annotations

import numpy as np

from eval.cacheopt_eval import estimator, max_rate, predictor_sigma
from eval.workloads import RequestSpec


def test_max_rate_interpolates_towards_the_first_miss() -> None:
    assert max_rate([1, 2, 3], [0.99, 0.95, 0.85]) == 2 + (0.95 - 0.9) / (0.95 - 0.85)
    assert max_rate([1, 2, 3], [0.99, 0.95, 0.92]) == 3
    assert max_rate([1, 2, 3], [0.5, 0.95, 0.99]) is None  # the lightest rate already misses
    assert max_rate([1, 2], [0.95, None]) == 1


def test_estimates_cover_the_truth_at_the_requested_confidence() -> None:
    specs = [RequestSpec(f"r{i}", 0.0, 100, int(L), 10_000) for i, L in enumerate(np.linspace(20, 800, 4000))]
    est = estimator(specs, 0.65, 0.9, seed=1)
    hits = np.mean([est(s).bound >= s.output_len for s in specs])
    assert 0.88 <= hits <= 0.92
    assert estimator(specs, None, 0.9, 0) is None  # no predictor: every estimate missing


def test_sigma_comes_from_the_committed_predictor() -> None:
    assert 0.3 < predictor_sigma() < 1.2
