"""Calibration of the per-request length distribution (C1): split-conformal offsets per level, the vectorised
quantile read exactly like ``LengthDistribution``, and online quantile tracking that restores coverage at every
level under a shift, per class, with delayed feedback, exact lengths and bounded state."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.length_dist import LengthDistribution
from predictors.calibration import (
    GLOBAL,
    OnlineCalibrator,
    StaticCalibration,
    calibrated,
    conformal_offsets,
    quantile_at,
)

LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)


def static_zero() -> StaticCalibration:
    return StaticCalibration(LEVELS, {GLOBAL: [0.0] * len(LEVELS)}, {GLOBAL: 0})


def test_conformal_offsets_are_the_finite_sample_order_statistic() -> None:
    rng = np.random.default_rng(0)
    y = np.exp(rng.normal(5, 0.7, 199))
    lp = np.full((199, len(LEVELS)), 5.0)
    off = conformal_offsets(lp, y, LEVELS)
    s = np.sort(np.log(y) - 5.0)
    for j, q in enumerate(LEVELS):
        assert off[j] == s[math.ceil(200 * q) - 1]
    tiny = conformal_offsets(lp[:10], y[:10], LEVELS)  # ceil(11 * 0.99) > 10: the largest score
    assert tiny[-1] == np.max(np.log(y[:10]) - 5.0)


def test_static_offsets_cover_exchangeable_data_at_every_level() -> None:
    """Marginal guarantee, checked by simulation: calibrate on 300, test on 3000 draws of the same law."""
    rng = np.random.default_rng(1)
    mu = rng.normal(5, 0.5, 3300)
    y = np.exp(mu + rng.normal(0, 0.6, 3300))
    lp = np.stack([mu + 0.6 * z for z in (0.0, 0.3, 0.5, 0.7, 1.0)], 1)  # a miscalibrated model
    off = conformal_offsets(lp[:300], y[:300], LEVELS)
    cov = (y[300:, None] <= calibrated(lp[300:], off)).mean(0)
    assert np.all(cov >= np.array(LEVELS) - 0.03), cov


def test_calibrated_quantiles_are_monotone_and_at_least_one() -> None:
    lp = np.array([[3.0, 2.0, 4.0, 3.5, 5.0], [-3.0, -2.0, -1.0, 0.0, 0.1]])
    out = calibrated(lp, np.zeros(5))
    assert (np.diff(out, axis=1) >= 0).all() and (out >= 1).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(1.0, 1e5), min_size=5, max_size=5), st.floats(0.001, 0.999))
def test_quantile_at_is_length_distribution_quantile(vals: list[float], q: float) -> None:
    v = tuple(sorted(vals))
    assert quantile_at(np.array([v]), LEVELS, q)[0] == pytest.approx(LengthDistribution(LEVELS, v).quantile(q))


def stream(seed: int, n: int, shift_at: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Log-normal lengths around a model's median; from ``shift_at`` on the truth is ``exp(shift)`` times longer
    (the model does not know)."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(5.5, 0.6, n)
    y = np.exp(mu + rng.normal(0, 0.7, n) + np.where(np.arange(n) >= shift_at, shift, 0.0))
    lp = np.stack([mu + 0.7 * z for z in (0.0, 0.8416, 1.2816, 1.6449, 2.3263)], 1)
    return lp, y


@pytest.mark.parametrize("delay", [0, 16])
def test_tracking_restores_coverage_at_every_level_after_a_shift(delay: int) -> None:
    """Static calibration under-covers once answers get 1.7x longer; quantile tracking gets every level back
    near its target over the stream, with feedback immediate or 16 requests late."""
    lp, y = stream(0, 3000, 500, math.log(1.7))
    cal = OnlineCalibrator(static_zero())
    issued = np.zeros_like(lp)
    for t in range(len(y)):
        issued[t] = cal.issue([str(t)], lp[t : t + 1], [None])[0]
        if t >= delay:
            assert cal.observe(str(t - delay), round(float(y[t - delay])))
    cov = (y[:, None] <= issued).mean(0)
    static_cov = (y[:, None] <= calibrated(lp, np.zeros(5))).mean(0)
    assert np.all(np.abs(cov - np.array(LEVELS)) <= 0.02), cov
    assert static_cov[2] < 0.8  # the shift is real: static 0.9 covers far less
    if delay:
        assert cal.lag == pytest.approx(delay, abs=0.5) and cal.step_now() < cal.step / 4


def test_classes_track_separately_and_new_classes_start_conservatively() -> None:
    """Two interleaved classes, one 2x longer: per-class offsets hold both near target; one shared offset would
    over-cover one and under-cover the other."""
    lp, y = stream(2, 4000, 0, 0.0)
    names = ["short" if i % 2 else "long" for i in range(len(y))]
    y = np.where(np.array(names) == "long", y * 2.0, y)
    per_class, shared = OnlineCalibrator(static_zero()), OnlineCalibrator(static_zero())
    got: dict[str, list[np.ndarray]] = {"per": [], "shared": []}
    for t in range(len(y)):
        got["per"].append(per_class.issue([str(t)], lp[t : t + 1], [names[t]])[0])
        got["shared"].append(shared.issue([str(t)], lp[t : t + 1], [None])[0])
        per_class.observe(str(t), int(y[t]))
        shared.observe(str(t), int(y[t]))
    j = LEVELS.index(0.9)
    for name in ("short", "long"):
        m = np.array(names) == name
        per = (y[m] <= np.array(got["per"])[m, j]).mean()
        one = (y[m] <= np.array(got["shared"])[m, j]).mean()
        assert abs(per - 0.9) <= 0.015, (name, per)
        assert abs(one - 0.9) > 0.03, (name, one)
    cal = OnlineCalibrator(StaticCalibration(LEVELS, {GLOBAL: [0.1] * 5, "known": [0.5] * 5}))
    cal.theta[GLOBAL] = np.full(5, -0.4)  # "*" has learned shorter answers
    assert cal.theta[cal.class_of("known")].tolist() == [0.5] * 5  # calibrated offline: its own offsets
    assert cal.theta[cal.class_of("new")].tolist() == [0.1] * 5  # never tighter than the static "*" offsets


def test_exact_final_length_decides_a_miss() -> None:
    cal = OnlineCalibrator(static_zero(), step=0.1)
    b = cal.issue(["a", "b"], np.log(np.array([[100.0, 200, 300, 400, 500]] * 2)), [None, None])
    before = cal.theta[GLOBAL].copy()
    assert cal.observe("a", int(b[0, 2]))  # exactly the 0.9 bound: covered
    assert cal.misses[GLOBAL][2] == 0 and cal.theta[GLOBAL][2] < before[2]
    assert cal.observe("b", int(b[1, 2]) + 1)  # one token more: a miss at 0.9
    assert cal.misses[GLOBAL][2] == 1
    assert not cal.observe("b", 5) and not cal.observe("never-issued", 5)


def test_state_stays_bounded() -> None:
    cal = OnlineCalibrator(static_zero(), max_classes=4, max_pending=100)
    lp = np.zeros((1, 5))
    for i in range(1000):
        cal.issue([f"r{i}"], lp, [f"class-{i}"])
    assert len(cal.theta) == 4 and cal.overflow == 997 and len(cal.pending) == 100
    for i in range(1000):
        cal.observe(f"r{i}", 10**9)  # absurd lengths: offsets are clamped
    assert np.all(np.abs(cal.theta[GLOBAL]) <= cal.clamp)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="step"):
        OnlineCalibrator(static_zero(), step=float("nan"))
    with pytest.raises(ValueError, match="needs"):
        StaticCalibration.fit(LEVELS, {"x": (np.zeros((3, 5)), np.ones(3))})
