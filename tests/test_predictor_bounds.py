"""Bounds (C1) and the reservation decision (C1+C3): Hoeffding exactness, conformal coverage, clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictors.bounds import (
    BOUND_KINDS,
    Calibration,
    PoolStats,
    adapt_confidence,
    conformal_quantile,
    hoeffding_padding,
    overcommit_confidence,
    reservation_decision,
)


def test_hoeffding_padding_is_the_paper_formula() -> None:
    assert hoeffding_padding(100.0, 0.95) == pytest.approx(math.sqrt(-(100.0**2 / 2) * math.log(0.05)))
    assert hoeffding_padding(100.0, 0.95) == pytest.approx(122.38734, rel=1e-6)  # sqrt(5000 * ln 20)
    assert hoeffding_padding(0.0, 0.9) == 0.0
    # the note in papers.md: t exceeds R once conf > 1 - e^-2 (~0.8647)
    assert hoeffding_padding(1.0, 0.86) < 1.0 < hoeffding_padding(1.0, 0.87)
    with pytest.raises(ValueError):
        hoeffding_padding(1.0, 1.0)


def test_adapt_confidence_paper_rule() -> None:
    assert adapt_confidence(0.95, 0.001, 0.0) == pytest.approx(0.95)
    assert adapt_confidence(0.95, 0.001, 100.0) == pytest.approx(0.95 / 1.1)
    assert adapt_confidence(0.95, 0.001, 10.0) > adapt_confidence(0.95, 0.001, 20.0)


def test_overcommit_rule_fits_expected_overrun_in_reserve() -> None:
    conf = overcommit_confidence(running=100, reserve_tokens=500, mean_overrun=50)
    assert 100 * (1 - conf) * 50 <= 500 + 1e-9
    assert overcommit_confidence(0, 500, 50) == 0.99


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    point = rng.uniform(50, 800, n)
    spread = 0.4 * point
    true = np.maximum(1, point * np.exp(rng.normal(0, 0.5, n)))
    return point, spread, true


@pytest.mark.parametrize("conf", [0.8, 0.9, 0.95])
@pytest.mark.parametrize("kind", ["conformal", "conformal_log"])
def test_conformal_coverage_on_exchangeable_data(kind: str, conf: float) -> None:
    p, s, y = _synthetic(500, 1)
    calib = Calibration.fit(p, s, y, train_true=y, train_prompt=np.ones_like(y))
    covs = []
    for seed in range(2, 12):
        pt, st_, yt = _synthetic(2000, seed)
        b = calib.bounds(kind, pt, st_, np.ones_like(pt), np.full(pt.size, 10**6), conf)
        covs.append((yt <= b).mean())
    assert np.mean(covs) >= conf - 0.01  # finite-sample guarantee is >= conf in expectation


def test_conformal_quantile_finite_sample_rank() -> None:
    s = np.arange(1.0, 10.0)  # n = 9
    assert conformal_quantile(s, 0.5) == 5.0  # ceil(10 * 0.5) = 5th smallest
    assert conformal_quantile(s, 0.9) == 9.0
    assert conformal_quantile(s, 0.95) == math.inf  # ceil(9.5) = 10 > n


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(BOUND_KINDS),
    conf=st.floats(0.5, 0.99),
    cap=st.integers(1, 8192),
    point=st.floats(1, 5000),
)
def test_every_bound_is_clipped_between_point_and_cap(kind: str, conf: float, cap: int, point: float) -> None:
    p, s, y = _synthetic(200, 0)
    calib = Calibration.fit(p, s, y, train_true=y, train_prompt=np.arange(y.size, dtype=float))
    b = calib.bounds(kind, np.array([point]), np.array([0.3 * point]), np.array([40]), np.array([cap]), conf)[0]
    assert min(math.ceil(point), cap) <= b <= cap


def test_bounds_grow_with_confidence() -> None:
    p, s, y = _synthetic(300, 0)
    calib = Calibration.fit(p, s, y, train_true=y, train_prompt=np.ones_like(y))
    for kind in ("hoeffding", "conformal", "conformal_log", "quantile", "linear"):
        lo = calib.bounds(kind, p, s, np.ones_like(p), np.full(p.size, 10**6), 0.8)
        hi = calib.bounds(kind, p, s, np.ones_like(p), np.full(p.size, 10**6), 0.95)
        assert (hi >= lo).all(), kind


def test_hoeffding_pads_only_where_under_prediction_is_expected() -> None:
    point = np.array([10.0, 20, 30, 40, 100, 200, 300, 400])
    true = np.array([5.0, 15, 25, 35, 150, 250, 350, 450])  # low buckets over-predicted, high under-predicted
    calib = Calibration.fit(point, np.ones(8), true, train_true=true, train_prompt=np.ones(8))
    b = calib.bounds("hoeffding", point, np.ones(8), np.ones(8), np.full(8, 10**6), 0.9)
    t = hoeffding_padding(calib.hoeffding_range, 0.9)
    assert calib.hoeffding_range == pytest.approx(50 - (-5))
    assert (b[:2] == point[:2]).all() and (b[-2:] == np.ceil(point[-2:] + t)).all()


def test_calibration_json_round_trip_and_refit() -> None:
    p, s, y = _synthetic(300, 0)
    calib = Calibration.fit(p, s, y, train_true=y, train_prompt=np.ones_like(y))
    again = Calibration.from_json(calib.to_json())
    args = (p, s, np.ones_like(p), np.full(p.size, 10**6), 0.9)
    assert np.array_equal(again.bounds("conformal", *args), calib.bounds("conformal", *args))
    again.refit(p, s, 3 * y, n_online=300)  # the world got 3x longer: bounds must widen
    assert again.bounds("conformal", *args).mean() > calib.bounds("conformal", *args).mean()
    assert again.n_online == 300


def test_reservation_decision() -> None:
    pool = PoolStats(capacity_tokens=100_000, used_tokens=50_000, running=200, overruns=(40.0,) * 10)
    conf, reserve = reservation_decision(10.0, pool, alpha=0.95, beta=0.001)
    assert conf == pytest.approx(adapt_confidence(0.95, 0.001, 10.0))
    assert reserve % 8 == 0 and reserve >= math.ceil(200 * (1 - conf) * 40)
    assert reservation_decision(0.0, PoolStats(1000, 0, 0), 0.95, 0.001)[1] == 64  # paper: 8 blocks of 8 tokens
    big = PoolStats(capacity_tokens=1000, used_tokens=0, running=10_000, overruns=(500.0,))
    assert reservation_decision(0.0, big, 0.95, 0.001)[1] <= 100  # never more than 10% of the pool
    conf2, _ = reservation_decision(10.0, pool, 0.95, 0.001, rule="overcommit")
    assert 0.5 <= conf2 <= 0.95
