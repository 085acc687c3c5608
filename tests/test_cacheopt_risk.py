"""The pool rule's risk model (C1 at pool level): the vectorised length table equals LengthDistribution, the demand
profile's mean and variance match a Monte-Carlo simulation of the live requests, and the padding is shared."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.cacheopt.pool_rule import LEVELS, ZS
from policies.cacheopt.risk import DemandProfile, LengthTable, refined_grid, row_quantile, step_grid
from policies.length_dist import LengthDistribution

dists = st.builds(LengthDistribution.lognormal, st.floats(2.0, 3000.0), st.floats(0.05, 1.5), st.just(LEVELS))


@settings(max_examples=60, deadline=None)
@given(st.lists(dists, min_size=1, max_size=5), st.lists(st.floats(1.0, 20000.0), min_size=1, max_size=6))
def test_table_survival_equals_length_distribution(ds, xs) -> None:
    table = LengthTable.of(ds, LEVELS)
    x = np.asarray([xs] * len(ds))
    got = table.survival(x)
    want = np.asarray([[d.survival(v) for v in xs] for d in ds])
    assert np.allclose(got, want, atol=2e-6)


@settings(max_examples=40, deadline=None)
@given(dists, st.floats(0.5, 0.99), st.integers(0, 500))
def test_row_quantile_equals_conditional_quantile(d, q, produced) -> None:
    row = np.log(np.asarray(d.values))
    assert row_quantile(row, q, float(produced)) == pytest.approx(d.conditional_quantile(q, produced), rel=1e-5)


def test_grid_and_refinement() -> None:
    g = step_grid(1000)
    assert g[0] == 0 and g[1] == 1 and 1000 <= g[-1] <= 1050 and np.all(np.diff(g) > 0)  # horizon in a 5% bucket
    r = refined_grid(g, int(np.searchsorted(g, 200)))
    assert r.size > g.size and set(g) <= set(r)


def test_profile_matches_monte_carlo() -> None:
    rng = np.random.default_rng(7)
    n = 40
    ds = [LengthDistribution.lognormal(float(rng.integers(50, 400)), float(rng.uniform(0.3, 1.0))) for _ in range(n)]
    produced = rng.integers(0, 100, n).astype(float)
    used = rng.integers(10, 300, n).astype(float) + produced
    cap_left = np.full(n, 1e9)
    prof = DemandProfile(step_grid(3000), 0.0)
    mean, var = prof.contributions(used, produced, cap_left, LengthTable(ZS, np.log([d.values for d in ds])), None)
    prof.add(mean, var)
    # sample each request's total length conditioned on L > produced, by inverse CDF on the same representation
    samples = 4000
    t = prof.grid
    totals = np.empty((samples, n))
    for i, d in enumerate(ds):
        f0 = d.cdf(produced[i])
        u = f0 + rng.uniform(size=samples) * (1 - f0)
        totals[:, i] = [d.quantile(min(x, 1 - 1e-12)) for x in u]
    alive = totals[:, :, None] > (produced[None, :, None] + t[None, None, :])
    alive[:, :, 0] = True
    s = (alive * (used[None, :, None] + t[None, None, :])).sum(axis=1)
    assert np.allclose(prof.mean, s.mean(axis=0), rtol=0.03, atol=5 * 1 + 0.03 * s.std(axis=0).max())
    assert np.allclose(np.sqrt(prof.var), s.std(axis=0), rtol=0.1, atol=15)


def test_shared_margin_grows_with_the_square_root_of_the_batch() -> None:
    d = LengthDistribution.lognormal(200, 0.7)
    row = np.log(d.values)
    margins = []
    for n in (16, 64):
        prof = DemandProfile(step_grid(3000), 1.645)
        prof.add(
            *prof.contributions(
                np.full(n, 50.0), np.zeros(n), np.full(n, 1e9), LengthTable(ZS, np.tile(row, (n, 1))), None
            )
        )
        margins.append(prof.peak() - float(np.max(prof.mean)))
    assert margins[1] / margins[0] == pytest.approx(2.0, rel=0.15)  # sqrt(64 / 16)
