"""C3: proactive top-up from space nobody was promised, and the global reserve for requests that overran.
Allocations and draws live in the host's ledger; the gate reads them from the views (``kv_allocated``,
``reserve_drawn``) and reports its decisions in the plan (``topups``, ``reserve_draws``, ``kv_hold``)."""

from __future__ import annotations

from policies.cacheopt.gate import CacheOptGate
from tests.cacheopt_views import FakeLatency, paper, running, view


def gate(**kw) -> CacheOptGate:
    return CacheOptGate(paper(**kw), FakeLatency())


def test_topup_before_running_out_from_unpromised_space() -> None:
    g = gate(topup_horizon=2, topup_tokens=32, reserve_tokens=64)
    near = running("near", prompt=100, out=49, alloc=150, bound=50)  # room 1 < 2
    far = running("far", prompt=100, out=10, alloc=150, bound=50)  # room 40
    g.begin(view([near, far], capacity=1000))
    assert g.topups() == (("near", 32),) and g.reserve_draws() == ()
    assert g.hold() == 1 + 40 + 32 + 64  # promised growth (with the top-up) and the reserve


def test_reserve_only_for_requests_that_overran_their_estimate() -> None:
    over = running("over", prompt=100, out=50, alloc=151, bound=50)  # produced its bound: overran
    under = running("under", prompt=100, out=30, alloc=131, bound=60)  # its allocation was small, no overrun
    g = gate(topup_tokens=32, reserve_tokens=64)
    g.begin(view([over, under], capacity=151 + 131 + 64 - 2))  # free = 64 - 2 + 2 rooms of 1: all promised
    assert g.topups() == (("over", 32),) and g.reserve_draws() == (("over", 32),)
    assert g.counters["reserve_left"] == 32


def test_reserve_left_counts_draws_recorded_in_the_ledger() -> None:
    g = gate(topup_tokens=48, reserve_tokens=64)
    g.begin(view([running("over", prompt=100, out=60, alloc=200, bound=50, drawn=48)], capacity=1000))
    assert g.counters["reserve_left"] == 16
    g.begin(view([], capacity=1000))  # the drawing request left: its draw returned with its allocation
    assert g.counters["reserve_left"] == 64


def test_reserve_never_negative_and_partial_last_draw() -> None:
    g = gate(topup_tokens=40, reserve_tokens=64)
    reqs = [running(f"o{i}", prompt=10, out=20, alloc=30, bound=20) for i in range(3)]
    g.begin(view(reqs, capacity=90 + 64))
    assert [t for _, t in g.reserve_draws()] == [40, 24]
    assert g.counters["reserve_left"] == 0


def test_reserve_size_from_the_host() -> None:
    g = gate(reserve_tokens=64)
    assert g.reserve_size(view()) == 64
    assert g.reserve_size(view(reserve=500)) == 500  # the host's live decision (predictor service) wins


def test_c3_off_no_topups_no_reserve() -> None:
    g = gate(topup=False, reserve_tokens=64)
    g.begin(view([running("near", prompt=100, out=50, alloc=150, bound=50)], capacity=1000))
    assert g.topups() == () and g.counters["reserve_left"] == 0 and g.hold() == 0


def test_lender_tops_up_on_its_own_room_after_lending() -> None:
    g = gate(reserve_tokens=0, topup_horizon=2, topup_tokens=16)
    lender = running("h", prompt=100, out=109, alloc=400, lent=190)  # own room 400 - 209 - 190 = 1 < 2
    guest = running("g", prompt=100, out=80, alloc=190, lender="h")
    g.begin(view([lender, guest], capacity=1000))
    assert ("h", 16) in g.topups()


def test_pool_rule_tops_up_too_and_keeps_the_reserve_in_the_hold() -> None:
    from tests.cacheopt_views import config

    g = CacheOptGate(config(topup_tokens=16, reserve_tokens=64), FakeLatency())
    g.begin(view([running("near", prompt=100, out=50, alloc=151, bound=50)], capacity=1000))
    assert g.topups() == (("near", 16),)
    assert g.hold() >= 64
