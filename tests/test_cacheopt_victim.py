"""C4 victim order (with its tolerance band) and C5 swap-or-recompute."""

from __future__ import annotations

import pytest

from policies.cacheopt.gate import CacheOptGate
from policies.cacheopt.swap import choose_mode, recompute_cost_s, swap_cost_s
from policies.views import PreemptMode
from tests.cacheopt_views import FakeLatency, config, running, view


def victims(run, need, lat=None, **kw):
    g = CacheOptGate(config(**kw), lat or FakeLatency())
    return [(p.rid, p.mode) for p in g.victims(view(run), need)]


def test_loosest_tbt_slo_first_no_slo_loosest_of_all() -> None:
    run = [running("tight", tbt_ms=50), running("none"), running("loose", tbt_ms=200), running("keep", tbt_ms=10)]
    assert [r for r, _ in victims(run, 10**6)] == ["none", "loose", "tight"]  # at least one request is kept


def test_remaining_time_decides_within_the_tbt_band() -> None:
    run = [
        running("short", out=10, point=20, bound=30, tbt_ms=100),
        running("long", out=10, point=500, bound=600, tbt_ms=105),  # within 10% of 100: same band
        running("other", out=10, point=900, bound=900, tbt_ms=300),
    ]
    assert [r for r, _ in victims(run, 10**6)] == ["other", "long"]
    assert [r for r, _ in victims(run, 10**6, victim_tolerance=0.0)] == ["other", "long"]  # 105 > 100 anyway


def test_tolerance_makes_close_remaining_times_similar_so_cost_decides() -> None:
    # same SLO; remaining 400 vs 410 tokens (within 10%); preemption cost: the short sequence is cheaper
    run = [
        running("costly", prompt=3000, out=100, point=500, bound=600, tbt_ms=100),
        running("cheap", prompt=100, out=100, point=510, bound=600, tbt_ms=100),
        running("keep", prompt=100, out=1, point=2, bound=3, tbt_ms=100),
    ]
    assert victims(run, 1)[0][0] == "cheap"
    assert victims(run, 1, victim_tolerance=0.0)[0][0] == "cheap"  # 410 > 400 remaining already decides


def test_stops_once_enough_is_freed() -> None:
    run = [running(f"r{i}", prompt=100, out=10, tbt_ms=100 * (i + 1)) for i in range(5)]
    assert len(victims(run, 110)) == 1 and len(victims(run, 111)) == 2


def test_c4_off_is_sglang_order_fewest_outputs_then_longest_prompt() -> None:
    run = [running("a", prompt=100, out=5), running("b", prompt=300, out=5), running("c", prompt=10, out=1),
           running("d", prompt=10, out=50)]  # fmt: skip
    assert [r for r, _ in victims(run, 10**6, victim=False)] == ["c", "b", "a"]


def test_c5_costs_and_choice() -> None:
    lat = FakeLatency(per_token_s=1e-4, swap_per_token_s=1e-6)
    r = running("a", prompt=1000, out=100, cached=200)
    assert swap_cost_s(900, lat, 16, 0.0) == 2 * 900e-6
    assert swap_cost_s(900, lat, 16, 1e-6) == pytest.approx(2 * (900e-6 + 57e-6))
    assert recompute_cost_s(r, lat) == pytest.approx(0.01 + 900e-4)
    assert choose_mode(r, lat, True, 16, 0.0)[0] is PreemptMode.SWAP
    assert choose_mode(r, lat, False, 16, 0.0)[0] is PreemptMode.RECOMPUTE
    slow_pcie = FakeLatency(per_token_s=1e-6, swap_per_token_s=1e-4)
    assert choose_mode(r, slow_pcie, True, 16, 0.0)[0] is PreemptMode.RECOMPUTE


def test_victims_carry_the_c5_mode_and_count_it() -> None:
    lat = FakeLatency(per_token_s=1e-4, swap_per_token_s=1e-7)
    run = [running("a", prompt=1000, tbt_ms=500), running("b", tbt_ms=50)]
    g = CacheOptGate(config(), lat)
    out = g.victims(view(run), 100)
    assert [(p.rid, p.mode) for p in out] == [("a", PreemptMode.SWAP)]
    assert g.counters["preempt_swap"] == 1 and g.counters["preempt_recompute"] == 0
    assert victims(run, 100, lat, swap_or_recompute=False) == [("a", PreemptMode.RECOMPUTE)]
