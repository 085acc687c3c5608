"""The comparison's statistics (eval.compare.stats): Student-t intervals over seeds, the interpolated max rate at
a target attainment, and the tie rule."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as sps

from eval.compare.stats import max_rate_at, mean_ci, tie, verdict


def test_interval_is_student_t_over_seeds() -> None:
    xs = [0.8, 0.9, 0.85]
    ci = mean_ci(xs)
    lo, hi = sps.t.interval(0.95, len(xs) - 1, loc=sum(xs) / 3, scale=sps.sem(xs))
    assert ci["mean"] == pytest.approx(0.85) and ci["k"] == 3
    assert (ci["lo"], ci["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    one = mean_ci([5.0, None])
    assert one == {"mean": 5.0, "lo": None, "hi": None, "sd": None, "k": 1}
    assert mean_ci([])["mean"] is None
    clipped = mean_ci([0.99, 1.0, 0.6], upper=1.0)
    assert clipped["hi"] == 1.0 and clipped["lo"] >= 0.0


def test_max_rate_interpolates_towards_the_first_miss() -> None:
    assert max_rate_at([1, 2, 3], [0.99, 0.95, 0.85])["max_rate"] == pytest.approx(2 + 0.05 / 0.10)
    top = max_rate_at([1, 2, 3], [0.99, 0.95, 0.92])
    assert top == {"max_rate": 3.0, "bounded": False, "first_miss": None}  # a lower bound
    assert max_rate_at([1, 2, 3], [0.5, 0.95, 0.99])["max_rate"] is None  # misses at the lowest rate
    assert max_rate_at([1, 2], [0.95, None])["max_rate"] == 1.0
    assert max_rate_at([1, 2, 3], [0.95, 0.8, 0.99])["max_rate"] == pytest.approx(1 + 0.05 / 0.15)  # first miss
    with pytest.raises(ValueError, match="increase"):
        max_rate_at([2, 1], [0.9, 0.9])


@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=8))
def test_max_rate_lies_between_the_bracketing_rates(att: list[float]) -> None:
    rates = [float(i + 1) for i in range(len(att))]
    m = max_rate_at(rates, att)
    miss = next((i for i, a in enumerate(att) if a < 0.9), None)
    if miss is None:
        assert m["max_rate"] == rates[-1] and not m["bounded"]
    elif miss == 0:
        assert m["max_rate"] is None
    else:
        assert rates[miss - 1] <= m["max_rate"] <= rates[miss] and m["first_miss"] == rates[miss]


def test_ties_are_ties() -> None:
    a, b = mean_ci([0.90, 0.92, 0.91]), mean_ci([0.905, 0.915, 0.93])
    assert tie(a, b, points=True) and verdict(a, b, higher_is_better=True, points=True) == "tie"
    c = mean_ci([0.70, 0.71, 0.72])
    assert not tie(a, c) and verdict(a, c, higher_is_better=True) == "better"
    assert verdict(c, a, higher_is_better=True) == "worse"
    assert verdict(mean_ci([100.0]), mean_ci([101.0]), higher_is_better=False) == "tie"  # < 2%, one seed
    assert verdict(mean_ci([100.0]), mean_ci([150.0]), higher_is_better=False) == "better"
    assert verdict(mean_ci([]), a, higher_is_better=True) == "no data"
    assert not math.isnan(mean_ci([1.0, 1.0])["hi"])
