"""C1: KV demand from the bounded predicted output length."""

from __future__ import annotations

from policies.cacheopt.demand import demand, output_bound, overran, remaining_tokens
from policies.views import LengthEstimate
from tests.cacheopt_views import running, waiting


def test_demand_uses_bound_and_skips_cached_prefix() -> None:
    d = demand(waiting("a", prompt=300, bound=80, cached_len=120), use_estimate=True)
    assert (d.prompt, d.output, d.total) == (180, 80, 260)


def test_bound_capped_by_max_new_tokens() -> None:
    assert demand(waiting("a", prompt=10, bound=900, max_new=256), use_estimate=True).output == 256


def test_no_estimate_falls_back_to_max_new_tokens() -> None:
    d = demand(waiting("a", prompt=10, bound=None, max_new=512), use_estimate=True)
    assert d.output == 512


def test_c1_off_allocates_the_worst_case() -> None:
    assert demand(waiting("a", prompt=10, bound=20, max_new=512), use_estimate=False).total == 10 + 512


def test_requeued_request_reprefills_its_output_and_owes_the_rest() -> None:
    w = waiting("a", prompt=200, bound=100, output_len=60, cached_len=150)
    d = demand(w, use_estimate=True)
    assert d.prompt == 200 + 60 - 150
    assert d.output == 40


def test_requeued_past_its_bound_still_owes_one_token() -> None:
    assert demand(waiting("a", prompt=10, bound=30, output_len=45), use_estimate=True).output == 1


def test_output_bound_floor_is_one() -> None:
    assert output_bound(LengthEstimate(0, 0, 0.9), 100, True) == 1


def test_overran_and_remaining() -> None:
    r = running("a", out=50, bound=50, point=40)
    assert overran(r, True)
    assert not overran(r, False)  # against max_new_tokens (1000) it has not
    assert remaining_tokens(running("b", out=10, bound=60, point=40)) == 30
    assert remaining_tokens(running("c", out=45, bound=60, point=40)) == 15  # past the point: the bound
    assert remaining_tokens(running("d", out=10, bound=None, max_new=100)) == 90
