"""The in-process online bound (predictor mode ``online``): fallback until enough samples, then an empirical
quantile that covers about ``q`` of future lengths and never exceeds the visible cap."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from predictors.online import OnlineLengthBound


def test_fallback_until_min_samples() -> None:
    b = OnlineLengthBound(alpha=0.9, beta=0.0, min_samples=4)
    for n in (10, 20, 30):
        est = b.estimate(500, 0, 1.0)
        assert est.fallback and est.bound == 500
        b.observe(n)
    b.observe(40)
    assert not b.estimate(500, 0, 1.0).fallback


def test_coverage_close_to_confidence_on_iid_lengths() -> None:
    rng = np.random.default_rng(0)
    b = OnlineLengthBound(alpha=0.9, beta=0.0, window=2000, min_samples=16)
    for x in rng.lognormal(4.0, 0.8, 2000).astype(int) + 1:
        b.observe(int(x))
    future = rng.lognormal(4.0, 0.8, 5000).astype(int) + 1
    bound = b.estimate(100_000, 0, 0.0).bound
    coverage = float(np.mean(future <= bound))
    assert 0.86 <= coverage <= 0.94


def test_rate_lowers_confidence_and_bound() -> None:
    b = OnlineLengthBound(alpha=0.95, beta=0.5, min_samples=1)
    for x in range(1, 201):
        b.observe(x)
    calm, busy = b.estimate(1000, 0, 0.0), b.estimate(1000, 0, 4.0)
    assert busy.confidence < calm.confidence
    assert busy.bound <= calm.bound


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 4000), min_size=1, max_size=300),
    cap=st.integers(1, 5000),
    progress=st.integers(0, 5000),
    rate=st.floats(0, 100),
)
def test_bound_is_sane(lengths: list[int], cap: int, progress: int, rate: float) -> None:
    b = OnlineLengthBound(alpha=0.9, beta=0.01, window=128, min_samples=1)
    for x in lengths:
        b.observe(x)
    assert len(b._sorted) == min(len(lengths), 128)
    assert b._sorted == sorted(lengths[-128:])
    est = b.estimate(cap, progress, rate)
    assert 1 <= est.point <= est.bound <= cap
    if progress < cap and est.bound < cap:
        assert est.bound > progress  # never a bound below what the request already produced


def test_estimate_carries_the_empirical_distribution() -> None:
    from predictors.online import OnlineLengthBound

    b = OnlineLengthBound(0.95, 0.0, window=100, min_samples=10)
    assert b.estimate(500, 0, 0.0).dist is None  # nothing finished yet: the fallback has no distribution
    for n in range(1, 101):
        b.observe(n)
    d = b.estimate(500, 0, 0.0).dist
    assert d is not None and d.levels[0] == 0.5
    assert 45 <= d.quantile(0.5) <= 55 and 95 <= d.quantile(0.99) <= 100.5
