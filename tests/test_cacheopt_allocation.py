"""C2: admission against estimated demand, reuse of allocated-but-unused KV, waiting order."""

from __future__ import annotations

from policies.cacheopt.allocation import Timeline, order_waiting
from policies.cacheopt.gate import CacheOptGate
from tests.cacheopt_views import FakeLatency, config, running, view, waiting

LAT = FakeLatency()


def gate(**kw) -> CacheOptGate:
    kw.setdefault("reuse_scope", "host")  # the paper's pairwise condition; batch reuse is tested below
    return CacheOptGate(config(**kw), LAT)


def test_admit_reserves_prompt_plus_bound() -> None:
    g = gate(reserve_tokens=0)
    g.begin(view(wait=[waiting("a", prompt=100, bound=50)], capacity=1000))
    a = g.admit(waiting("a", prompt=100, bound=50), 100)
    assert a is not None and a.reserve_tokens == 150 and a.host_rid is None


def test_refuses_when_allocations_plus_reserve_exceed_capacity() -> None:
    g = gate(reserve_tokens=100, reuse=False)
    r = running("r", prompt=100, out=0, alloc=700)  # holds 100, allocated 700
    g.begin(view([r], capacity=1000))
    # committed 700 + reserve 100 leaves 200: a 150-token demand fits, a second does not
    assert g.admit(waiting("a", prompt=100, bound=50), 100) is not None
    assert g.admit(waiting("b", prompt=100, bound=50), 100) is None
    assert g.permanent_reject is False


def test_physical_pool_bounds_admission_even_when_accounting_allows() -> None:
    g = gate(reserve_tokens=0)
    g.begin(view(capacity=1000, free=120))
    assert g.admit(waiting("a", prompt=200, bound=10), 200) is None  # 200 + 1 decode slot > 120 free
    assert g.admit(waiting("b", prompt=100, bound=10), 100) is not None


def test_prompt_larger_than_pool_is_a_permanent_reject() -> None:
    g = gate(reserve_tokens=64)
    g.begin(view(capacity=1000))
    assert g.admit(waiting("a", prompt=1000, bound=10), 500) is None
    assert g.permanent_reject


def test_reserve_does_not_block_a_request_that_fits_an_idle_pool() -> None:
    """Prompt 990 fits the 1000-token pool but not pool - reserve: with nothing running it must still run."""
    g = gate(reserve_tokens=64)
    g.begin(view(capacity=1000))
    a = g.admit(waiting("a", prompt=990, bound=10), 500)
    assert a is not None and not g.permanent_reject
    assert a.reserve_tokens <= 1000


def test_demand_above_the_pool_is_capped_so_it_can_run_alone() -> None:
    g = gate(reserve_tokens=0, demand=False)
    g.begin(view(capacity=1000))
    a = g.admit(waiting("a", prompt=100, max_new=5000), 100)
    assert a is not None and a.reserve_tokens == 1000


def test_reuse_condition_boundary() -> None:
    # host: allocated 500, holds 110 -> room 390. guest prompt 100, output 50: 100 + 2*50 + 8 = 208 <= 390
    host = running("h", prompt=100, out=10, alloc=500)
    for prompt, fits in ((282, True), (283, False)):  # 282 + 100 + 8 = 390; 283 -> 391
        g = gate(reserve_tokens=0, reuse_buffer=8)
        g.begin(view([host], capacity=500))  # no unallocated space at all
        a = g.admit(waiting("g", prompt=prompt, bound=50), prompt)
        assert (a is not None) is fits
        if a is not None:
            assert a.host_rid == "h" and a.reserve_tokens == prompt + 50


def test_reuse_never_double_counts_and_room_returns_when_guest_leaves() -> None:
    g = gate(reserve_tokens=0, reuse_buffer=8)
    host = running("h", prompt=100, out=10, alloc=600)  # room 490
    g.begin(view([host], capacity=600))
    assert g.counters["committed"] == 600
    a = g.admit(waiting("g1", prompt=100, bound=50), 100)
    assert a is not None and a.host_rid == "h"
    assert g.counters["committed"] == 600  # the guest lives inside the host's allocation
    # room left for the host itself: 490 - 150 = 340; a second guest needs 100 + 2*150 + 8 = 408 -> no
    assert g.admit(waiting("g2", prompt=100, bound=150), 100) is None
    # next iteration, the guest runs inside the host; committed is still the host's allocation
    guest = running("g1", prompt=100, out=1, alloc=150)
    g.begin(view([host, guest], capacity=600))
    assert g.counters["committed"] == 600
    assert g.ledger.borrowed == {"h": 150}
    # the guest finished: its tokens return to the host, a larger guest fits again
    g.begin(view([host], capacity=600))
    assert g.ledger.borrowed == {} and g.ledger.guest == {}
    assert g.admit(waiting("g2", prompt=100, bound=150), 100) is not None


def test_host_leaving_makes_the_guest_independent() -> None:
    g = gate(reserve_tokens=0)
    host = running("h", prompt=100, out=10, alloc=600)
    g.begin(view([host], capacity=600))
    assert g.admit(waiting("g", prompt=100, bound=50), 100) is not None
    g.begin(view([running("g", prompt=100, out=5, alloc=150)], capacity=600))
    assert g.ledger.guest == {} and g.counters["committed"] == 150


def test_best_fit_host() -> None:
    g = gate(reserve_tokens=0)
    hosts = [running("big", out=0, alloc=2000), running("small", out=0, alloc=400)]  # rooms 1900, 300
    g.begin(view(hosts, capacity=2400))
    a = g.admit(waiting("g", prompt=100, bound=50), 100)
    assert a is not None and a.host_rid == "small"


def test_guests_are_never_hosts() -> None:
    g = gate(reserve_tokens=0)
    filler = running("f", prompt=1500, out=0, alloc=1600)  # rooms: filler 100, host 900
    g.begin(view([running("h", prompt=100, out=0, alloc=1000), filler], capacity=2600, free=1000))
    a = g.admit(waiting("g", prompt=50, bound=400), 50)  # needs 858: only h fits; borrows 450
    assert a is not None and a.host_rid == "h"
    g.ledger.alloc["g"] = 2000  # as if topped up: the guest now has a large empty tail of its own
    run = [running("h", prompt=100, out=1, alloc=1000), running("g", prompt=50, out=1, alloc=2000), filler]
    g.begin(view(run, capacity=4150, free=1000))
    assert g.counters["committed"] == 1000 + 2000 - 450 + 1600 == 4150
    x = waiting("x", prompt=100, bound=250)  # needs 608: host's own room is 449, the guest's 1949
    assert g.admit(x, 100) is None


def test_chunked_continuation_keeps_its_allocation() -> None:
    g = gate(reserve_tokens=0)
    w = waiting("a", prompt=1000, bound=100)
    g.begin(view(wait=[w], capacity=5000))
    assert g.admit(w, 256).reserve_tokens == 1100
    w2 = waiting("a", prompt=1000, bound=100, prefilled_len=256)
    g.begin(view(wait=[w2], capacity=5000, free=5000 - 256, chunked_rid="a"))
    assert g.counters["committed"] == 1100
    assert g.admit(w2, 256).reserve_tokens == 1100
    assert g.counters["committed"] == 1100


def test_swapped_request_needs_its_kv_back_physically() -> None:
    g = gate(reserve_tokens=0)
    w = waiting("a", prompt=400, bound=100, output_len=50, swapped_out=True)
    g.begin(view(wait=[w], capacity=5000, free=300))
    assert g.admit(w, 0) is None  # 450 tokens must come back, only 300 free
    g.begin(view(wait=[w], capacity=5000, free=600))
    assert g.admit(w, 0) is not None


def test_order_resumed_first_then_least_ttft_slack() -> None:
    w = [
        waiting("late", arrival=0.0, ttft_ms=5000),
        waiting("tight", arrival=1.0, ttft_ms=500),
        waiting("none", arrival=0.0),
        waiting("resumed", arrival=2.0, output_len=5, first_token_s=2.5),
    ]
    assert [x.rid for x in order_waiting(w, now_s=1.2, window=10, latency=LAT)] == ["resumed", "tight", "late", "none"]


def test_order_no_slos_is_queue_order_and_window_bounds_it() -> None:
    w = [waiting(str(i), arrival=float(10 - i)) for i in range(10)]
    assert [x.rid for x in order_waiting(w, 0.0, window=3, latency=LAT)] == ["0", "1", "2"]


def test_host_overrunning_its_own_share_is_counted() -> None:
    g = gate(reserve_tokens=0)
    g.begin(view([running("h", prompt=100, out=0, alloc=600)], capacity=600))
    assert g.admit(waiting("g", prompt=100, bound=50), 100).host_rid == "h"  # lends 150
    # the host outgrew its estimate: it holds 500 of its 600, the guest's 150 are still lent -> 650 committed
    run = [running("h", prompt=100, out=400, alloc=600), running("g", prompt=100, out=1, alloc=150)]
    g.begin(view(run, capacity=600, free=0))
    assert g.counters["committed"] == 650


def brute_peak(entries, horizon=2000):
    return max(sum(u + k for u, e in entries if k <= e) for k in range(horizon))


def test_timeline_peak_matches_brute_force() -> None:
    entries = [(100, 5), (50, 40), (300, 0), (10, 12), (70, 40)]
    t = Timeline.of(entries)
    assert t.peak() == brute_peak(entries)
    for now, steps in ((20, 3), (20, 12), (200, 100), (1, 0), (5, 40)):
        assert t.peak_with(now, steps) == brute_peak([*entries, (now, steps)])
    t.add(20, 12)
    assert t.peak() == brute_peak([*entries, (20, 12)])
    assert Timeline.of([]).peak_with(10, 5) == 15


def test_batch_reuse_admits_into_tails_that_free_in_time() -> None:
    # two requests allocated 500 each (capacity 1000: nothing unallocated); "soon" ends in 10 steps
    run = [running("soon", prompt=100, out=0, alloc=110), running("late", prompt=100, out=0, alloc=890)]
    g = CacheOptGate(config(reserve_tokens=0), LAT)
    g.begin(view(run, capacity=1000))
    # peak with a guest of 300 + 50: max(before soon ends: 100+10 + 100+10 + 301+10 = 531, later: 100+50+301+50 = 501)
    a = g.admit(waiting("g", prompt=300, bound=50), 300)
    assert a is not None and a.host_rid is None and g.counters["reuse"] == 1
    assert g.counters["committed"] == 1000  # the guest is not added to the sum: it borrows the tails
    # a second, bigger guest would push the peak past the pool: 100+790+301+... > 1000
    assert g.admit(waiting("h", prompt=400, bound=400), 400) is None


def test_host_scope_refuses_what_batch_scope_admits() -> None:
    # three requests end in 10 steps, three in 100; the pool is fully allocated (sum 930)
    run = [running(f"r{i}", prompt=100, out=0, alloc=110 if i < 3 else 200) for i in range(6)]
    w = waiting("g", prompt=60, bound=20)  # pairwise needs 60 + 40 + 8 = 108 > the largest room (100)
    g = CacheOptGate(config(reserve_tokens=0, reuse_scope="host"), LAT)
    g.begin(view(run, capacity=930))
    assert g.admit(w, 60) is None
    g = CacheOptGate(config(reserve_tokens=0, reuse_scope="batch"), LAT)
    g.begin(view(run, capacity=930))
    assert g.admit(w, 60) is not None  # predicted peak with it: 6 * (101 + 10) + 61 + 10 = 737 <= 930


def test_pinned_cached_prefix_counts_against_physical_room() -> None:
    from policies.views import PoolView, SchedulerView

    g = gate(reserve_tokens=0)
    w = waiting("a", prompt=300, bound=10, cached_len=200)  # 200 tokens sit in the radix cache, evictable
    v = SchedulerView(0.0, (w,), (), PoolView(1000, 100, evictable_tokens=200))  # available 300
    g.begin(v)
    assert g.admit(w, 100) is None  # 100 new + 1 decode + 200 pinned > 300 available
    v = SchedulerView(0.0, (w,), (), PoolView(1000, 150, evictable_tokens=200))
    g.begin(v)
    assert g.admit(w, 100) is not None  # 301 <= 350


def test_idle_pool_admits_a_request_the_reserve_would_block() -> None:
    g = gate(reserve_tokens=300)
    g.begin(view(capacity=1000))
    a = g.admit(waiting("a", prompt=800, bound=100), 800)  # 900 > 1000 - 300, but nothing runs to overrun
    assert a is not None and g.counters["reserve_left"] == 100
