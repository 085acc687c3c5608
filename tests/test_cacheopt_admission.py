"""C1/C2 admission of the CacheOPT gate: the paper's rule (bounds + pairwise reuse), the pool rule (shared
padding), the engine-budget arithmetic every admission is checked with, and the waiting order."""

from __future__ import annotations

from policies.cacheopt.allocation import HostIndex, order_waiting
from policies.cacheopt.gate import BATCH, CacheOptGate
from policies.length_dist import LengthDistribution
from policies.views import PoolView, SchedulerView
from tests.cacheopt_views import FakeLatency, config, paper, running, view, waiting

LAT = FakeLatency()


def paper_gate(**kw) -> CacheOptGate:
    return CacheOptGate(paper(**kw), LAT)


# --- the paper's rule ---------------------------------------------------------------------------------------------
def test_paper_admit_allocates_prompt_plus_bound_and_charges_the_engine_that() -> None:
    g = paper_gate(reserve_tokens=0)
    g.begin(view(wait=[waiting("a", prompt=100, bound=50)], capacity=1000))
    a = g.admit(waiting("a", prompt=100, bound=50), 100)
    assert a is not None and a.reserve_tokens == 150 and a.host_rid is None
    assert a.budget_tokens == 151  # SGLang's total_tokens: extend 100 + output 50 + one page


def test_paper_refuses_when_outstanding_plus_reserve_exceed_the_free_pool() -> None:
    g = paper_gate(reserve_tokens=100, reuse=False)
    r = running("r", prompt=100, out=0, alloc=700)  # holds 100, allocated 700: 600 promised
    g.begin(view([r], capacity=1000))  # free 900, hold 600 + 100 reserve: remaining 200
    assert g.hold() == 700
    assert g.admit(waiting("a", prompt=100, bound=50), 100) is not None  # 151 < 200
    assert g.admit(waiting("b", prompt=100, bound=50), 100) is None  # 151 >= 49
    assert g.permanent_reject is False


def test_physical_pool_bounds_admission_even_when_accounting_allows() -> None:
    g = paper_gate(reserve_tokens=0)
    g.begin(view(capacity=1000, free=120))
    assert g.admit(waiting("a", prompt=200, bound=10), 200) is None  # 200 + 1 page > 120 free
    assert g.admit(waiting("b", prompt=100, bound=10), 100) is not None


def test_prompt_larger_than_pool_is_a_permanent_reject() -> None:
    g = paper_gate(reserve_tokens=64)
    g.begin(view(capacity=1000))
    assert g.admit(waiting("a", prompt=1000, bound=10), 500) is None
    assert g.permanent_reject


def test_idle_pool_admits_a_request_the_reserve_or_its_demand_would_block() -> None:
    for cfg in (paper(reserve_tokens=300), config(reserve_tokens=300)):
        g = CacheOptGate(cfg, LAT)
        g.begin(view(capacity=1000))
        a = g.admit(waiting("a", prompt=800, bound=None, max_new=5000), 800)  # demand 5800 > pool
        assert a is not None and not g.permanent_reject
        assert a.budget_tokens < 1000 - g.hold()  # the engine's check passes: alone, it must run


def test_pairwise_reuse_when_the_own_allocation_does_not_fit_and_the_engine_credits_the_loan() -> None:
    # lender: allocated 500, holds 110 -> room 390; guest prompt 100 + 2 * 50 + 8 = 208 <= 390
    lender = running("h", prompt=100, out=10, alloc=500)
    for prompt, fits in ((282, True), (283, False)):  # 282 + 100 + 8 = 390; 283 -> 391
        g = paper_gate(reserve_tokens=0, reuse_buffer=8)
        g.begin(view([lender], capacity=500))  # free 390, all promised: remaining 0
        a = g.admit(waiting("g", prompt=prompt, bound=50), prompt)
        assert (a is not None) is fits
        if a is not None:
            assert a.host_rid == "h" and a.reserve_tokens == prompt + 50
            assert g.hold() == 390 - (prompt + 50)  # the loan leaves the lender's promised growth
            assert a.budget_tokens == prompt + 1 < 500 - 110 - g.hold()  # charged its prompt, inside the tail


def test_best_fit_lender_and_guests_never_lend() -> None:
    hosts = [running("big", out=0, alloc=2000), running("small", out=0, alloc=400)]  # rooms 1900, 300
    g = paper_gate(reserve_tokens=0)
    g.begin(view(hosts, capacity=2400))
    a = g.admit(waiting("g", prompt=100, bound=50), 100)
    assert a is not None and a.host_rid == "small"
    idx = HostIndex([running("h", alloc=900), running("g", alloc=2000, lender="h")], min_room=1)
    assert idx.take(1000, 10) is None  # only h may lend and its room is 790


def test_c2_off_refuses_instead_of_borrowing() -> None:
    g = paper_gate(reserve_tokens=0, reuse=False)
    g.begin(view([running("h", prompt=100, out=10, alloc=500)], capacity=500))
    assert g.admit(waiting("g", prompt=100, bound=50), 100) is None


def test_chunked_continuation_keeps_its_allocation_and_is_charged_its_chunk() -> None:
    g = paper_gate(reserve_tokens=0)
    w = waiting("a", prompt=1000, bound=100, prefilled_len=256, kv_allocated=1100)
    g.begin(view(wait=[w], capacity=5000, free=5000 - 256, chunked_rid="a"))
    assert g.hold() == 1100 - 256  # the rest of its prompt and its output stay promised
    a = g.admit(w, 256)
    assert a.reserve_tokens == 1100 and a.budget_tokens == 257


def test_swapped_request_needs_its_kv_back_physically() -> None:
    g = paper_gate(reserve_tokens=0)
    w = waiting("a", prompt=400, bound=100, output_len=50, swapped_out=True)
    g.begin(view(wait=[w], capacity=5000, free=300))
    assert g.admit(w, 0) is None  # 450 tokens must come back, only 300 free
    g.begin(view(wait=[w], capacity=5000, free=600))
    assert g.admit(w, 0) is not None


def test_pinned_cached_prefix_counts_against_physical_room_and_the_budget() -> None:
    g = paper_gate(reserve_tokens=0)
    w = waiting("a", prompt=300, bound=10, cached_len=200)  # 200 tokens sit in the radix cache, evictable
    g.begin(SchedulerView(0.0, (w,), (), PoolView(1000, 100, evictable_tokens=200)))  # available 300
    assert g.admit(w, 100) is None  # 100 new + 1 page + 200 pinned > 300 available
    g.begin(SchedulerView(0.0, (w,), (), PoolView(1000, 150, evictable_tokens=200)))
    a = g.admit(w, 100)
    assert a is not None and a.reserve_tokens == 110  # private: the cached prefix is nobody's allocation


def test_shared_prefix_is_not_charged_again_to_requests_that_share_it() -> None:
    """Three running requests share a 900-token cached prefix; each has 21 private tokens of 40 allocated."""
    run = [running(f"r{i}", prompt=920, out=1, alloc=900 + 40, cached=900) for i in range(3)]
    g = paper_gate(reserve_tokens=0)
    g.begin(view(run, capacity=2000, free=2000 - 900 - 3 * 21))
    assert g.hold() == 3 * (40 - 21)  # only the private tails are promised
    assert g.admit(waiting("x", prompt=920, cached_len=900, bound=19), 20) is not None


# --- the pool rule ------------------------------------------------------------------------------------------------
def admitted(cfg, n: int, dist: LengthDistribution, capacity: int, prompt: int = 50) -> int:
    """How many of ``n`` identical waiting requests one pass admits into an empty pool."""
    g = CacheOptGate(cfg, LAT)
    wait = [waiting(f"w{i}", prompt=prompt, dist=dist, max_new=4000) for i in range(n)]
    g.begin(view(wait=wait, capacity=capacity))
    return sum(g.admit(w, prompt) is not None for w in wait)


def test_pool_rule_shares_padding_where_per_request_bounds_add_it_up() -> None:
    dist = LengthDistribution.lognormal(200, 0.7)
    pool = admitted(config(reserve_tokens=0, pool_confidence=0.95), 200, dist, 20_000)
    per_request = admitted(paper(reserve_tokens=0), 200, dist, 20_000)  # bound = the 0.9 quantile, 490
    assert pool > 1.3 * per_request


def test_pool_rule_equals_the_sum_when_lengths_are_certain() -> None:
    dist = LengthDistribution((0.5, 0.9), (200.0, 200.0))  # every request ends at 200 together
    n = admitted(config(reserve_tokens=0, reuse=True), 200, dist, 10_000)
    exact = 10_000 // (50 + 199)  # at its peak, step 199, each holds its prompt and 199 outputs
    assert exact - 1 <= n <= exact


def test_pool_rule_without_c2_cannot_overbook_the_allocations() -> None:
    dist = LengthDistribution.lognormal(200, 0.7)
    on = admitted(config(reserve_tokens=0, alloc_quantile=0.9), 200, dist, 20_000)
    off = admitted(config(reserve_tokens=0, alloc_quantile=0.9, reuse=False), 200, dist, 20_000)
    assert off < on
    g = CacheOptGate(config(reserve_tokens=0), LAT)
    wait = [waiting(f"w{i}", prompt=50, dist=dist, max_new=4000) for i in range(200)]
    g.begin(view(wait=wait, capacity=20_000))
    lenders = [a.host_rid for a in (g.admit(w, 50) for w in wait) if a is not None]
    assert BATCH in lenders and lenders[0] is None  # the first requests have their own allocation


def test_pool_rule_charges_the_engine_the_peak_increase() -> None:
    dist = LengthDistribution.lognormal(200, 0.5)
    g = CacheOptGate(config(reserve_tokens=64), LAT)
    run = [running(f"r{i}", prompt=50, out=100, dist=dist, max_new=4000) for i in range(10)]
    g.begin(view(run, capacity=10_000))
    hold0 = g.hold()
    assert hold0 > 64  # the running requests' growth at its peak plus the reserve
    a = g.admit(waiting("w", prompt=50, dist=dist, max_new=4000), 50)
    assert a is not None and a.budget_tokens >= 51 and a.host_rid is None


def test_pool_confidence_adapts_to_the_arrival_rate() -> None:
    g = CacheOptGate(config(pool_confidence=0.95, pool_rate_beta=0.1), LAT)
    g.begin(view(arrival_rate=0.0))
    calm = g.counters["z"]
    g.begin(view(arrival_rate=5.0))
    assert g.counters["z"] < calm


# --- order ----------------------------------------------------------------------------------------------------------
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


def test_late_requests_go_after_those_that_can_still_be_on_time() -> None:
    queue = [waiting(f"old{i}", arrival=50.0 + i, ttft_ms=2000) for i in range(40)]  # waited 11-50 s: all late
    queue.append(waiting("new", arrival=99.5, ttft_ms=2000))  # still on time at t = 100
    queue.append(waiting("starving", arrival=0.0, ttft_ms=2000))  # (a re-queued old request at the back)
    got = [w.rid for w in order_waiting(queue, now_s=100.0, window=8, latency=LAT, late_last=True, starve_s=60)]
    assert got[0] == "starving" and got[1] == "new"  # starving first, then the one that can still make it
    assert got[2:] == sorted(got[2:], key=lambda r: int(r[3:]))  # the late ones oldest first
    plain = [w.rid for w in order_waiting(queue, now_s=100.0, window=8, latency=LAT)]
    assert "new" not in plain  # without late_last only the head of the queue is considered
