"""The simulated estimator (eval.estimates) reproduces the real predictor's measured error: Kendall tau and
coverage at every quantile level within +-0.05 of the table, per source and regime; and it stays a predictor
(monotone quantiles within the visible cap, the paper's load-adapted bound)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import kendalltau

from eval.estimates import LEVELS, QUALITY, PredictorQuality, delivered_length, simulated_estimator
from eval.workloads import load_workload
from predictors.bounds import adapt_confidence

WORKLOADS = {
    "azure-conv": {"rate": 2.0, "max_context": 8192},
    "sharegpt": {"rate": 2.0, "max_context": 4096, "max_prompt": 2048, "max_new_tokens": 2048},
    "mixed-chat-long": {"rate": 2.0, "max_context": 8192},
}


@pytest.mark.parametrize("regime", sorted(QUALITY))
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_tau_and_coverage_match_the_table(workload: str, regime: str) -> None:
    specs = load_workload(workload, num_requests=3000, seed=11, **WORKLOADS[workload])
    est = simulated_estimator(specs, regime=regime, seed=5)
    target = QUALITY[regime]
    for src in {s.source for s in specs}:
        group = [s for s in specs if s.source == src]
        truth = np.asarray([delivered_length(s) for s in group])
        point = np.asarray([est(s).point for s in group])
        assert kendalltau(point, truth)[0] == pytest.approx(target.tau, abs=0.05), src
        for j, q in enumerate(LEVELS):
            cov = float(np.mean([t <= est(s).dist.values[j] for t, s in zip(truth, group, strict=True)]))
            assert cov == pytest.approx(target.coverage_at(q), abs=0.05), (src, q)


def test_estimates_are_a_predictors_output() -> None:
    specs = load_workload("azure-conv", num_requests=500, rate=3.0, seed=2, max_new_tokens=300)
    est = simulated_estimator(specs, rate=3.0, alpha=0.95, beta=0.001, seed=1)
    conf = adapt_confidence(0.95, 0.001, 3.0)
    assert est.confidence == pytest.approx(conf)
    for s in specs:
        e = est(s)
        assert e.dist is not None and e.dist.levels == LEVELS
        assert all(1 <= v <= s.max_new_tokens for v in e.dist.values)
        assert list(e.dist.values) == sorted(e.dist.values)
        assert 1 <= e.point <= e.bound <= s.max_new_tokens and e.confidence == pytest.approx(conf)
    assert est(replace(specs[0], rid="not-in-the-workload")) is None
    again = simulated_estimator(specs, rate=3.0, seed=1)
    assert all(est(s) == again(s) for s in specs)  # seeded
    with pytest.raises(ValueError, match="unknown estimate regime"):
        simulated_estimator(specs, regime="oracle")


def test_unmeasured_levels_follow_the_probit_model() -> None:
    q = PredictorQuality(tau=0.3, coverage={0.9: 0.78}, source="test")
    w = q.spread()
    assert w == pytest.approx(0.7722 / 1.2816, rel=1e-3)
    assert q.coverage_at(0.9) == 0.78 and q.coverage_at(0.5) == pytest.approx(0.5)
    assert q.coverage_at(0.8) < 0.8 and q.coverage_at(0.99) < 0.99
    calibrated = PredictorQuality(tau=0.3, coverage={}, source="test")
    assert all(calibrated.coverage_at(x) == pytest.approx(x) for x in LEVELS)
