"""C3: proactive top-up from unallocated space, and the global reserve for requests that overran."""

from __future__ import annotations

from policies.cacheopt.gate import CacheOptGate
from tests.cacheopt_views import FakeLatency, config, running, view


def gate(reserve_tokens: int | None = None, **kw) -> CacheOptGate:
    return CacheOptGate(config(**kw), FakeLatency(), reserve_tokens=reserve_tokens)


def test_topup_before_running_out_from_unallocated() -> None:
    g = gate(topup_horizon=2, topup_tokens=32, reserve_tokens=64)
    near = running("near", prompt=100, out=49, alloc=150, bound=50)  # room 1 < 2
    far = running("far", prompt=100, out=10, alloc=150, bound=50)  # room 40
    g.begin(view([near, far], capacity=1000))
    assert g.topups() == (("near", 32),)
    assert g.counters["reserve_draws"] == 0
    assert g.ledger.alloc["near"] == 150 + 32  # extended from max(allocated, held)


def test_reserve_only_for_requests_that_overran_their_estimate() -> None:
    # the pool is fully allocated: only the reserve is left
    over = running("over", prompt=100, out=50, alloc=151, bound=50)  # produced its bound: overran
    under = running("under", prompt=100, out=30, alloc=131, bound=60)  # runs out early (alloc was small)
    g = gate(topup_tokens=32, reserve_tokens=64)
    g.begin(view([over, under], capacity=151 + 131 + 64))
    assert g.topups() == (("over", 32),)
    assert g.counters["reserve_draws"] == 1 and g.counters["reserve_left"] == 32


def test_reserve_draws_return_when_the_request_leaves() -> None:
    g = gate(topup_tokens=48, reserve_tokens=64)
    over = running("over", prompt=100, out=50, alloc=151, bound=50)
    g.begin(view([over], capacity=151 + 64))
    assert g.counters["reserve_left"] == 16
    g.begin(view([], capacity=151 + 64))
    assert g.counters["reserve_left"] == 64 and g.ledger.draws == {}


def test_reserve_never_negative_and_partial_last_draw() -> None:
    g = gate(topup_tokens=40, reserve_tokens=64)
    reqs = [running(f"o{i}", prompt=10, out=20, alloc=31, bound=20) for i in range(3)]
    g.begin(view(reqs, capacity=93 + 64))
    assert [t for _, t in g.topups()] == [40, 24]
    assert g.counters["reserve_left"] == 0


def test_reserve_size_from_the_predictor_service() -> None:
    over = running("over", prompt=100, out=50, alloc=151, bound=50)
    g = gate(reserve_tokens=200, topup_tokens=32)  # option overrides config (64)
    assert g.reserve_size(view()) == 200
    assert g.reserve_size(view(reserve=500)) == 500  # the host's live decision wins
    g.begin(view([over], capacity=151 + 200))
    assert g.counters["reserve_left"] == 200 - 32


def test_c3_off_no_topups_no_reserve() -> None:
    g = gate(topup=False)
    g.begin(view([running("near", prompt=100, out=50, alloc=150, bound=50)], capacity=1000))
    assert g.topups() == () and g.counters["reserve_left"] == 0


def test_host_tops_up_on_its_own_room_after_lending() -> None:
    from tests.cacheopt_views import waiting

    g = gate(reserve_tokens=0, topup_horizon=2, topup_tokens=16, reuse_scope="host")
    host = running("h", prompt=100, out=0, alloc=400)  # room 300
    g.begin(view([host], capacity=400))
    assert g.admit(waiting("g", prompt=100, bound=90), 100).host_rid == "h"  # 100 + 180 + 8 <= 300; lends 190
    # much later the host has used 109 more: own room 400 - 209 - 190 = 1 < 2, although a - u = 191
    g.begin(view([running("h", prompt=100, out=109, alloc=400), running("g", prompt=100, out=80, alloc=190)],
                 capacity=1000))  # fmt: skip
    assert ("h", 16) in g.topups()
