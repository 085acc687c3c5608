"""The host layer both hosts share (issue 11.1): the ledger, the rate estimate, the iteration filter, and the
prefill-budget rule checked against SGLang 0.5.23's own ``PrefillBudget`` class."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host.budget import PrefillBudgetRule, default_budget_tokens, kv_to_free
from host.ledger import BATCH, AllocationLedger
from host.measure import IterationFilter
from host.rate import ArrivalRate


def test_ledger_private_units_and_outstanding() -> None:
    led = AllocationLedger()
    led.commit("a", alloc=150, cached=900)  # 100 private prompt + 50 output beside a 900-token shared prefix
    assert led.allocated_total("a") == 1050
    assert led.outstanding("a", seq_len=1000) == 50  # prompt placed, no output yet
    assert led.outstanding("a", seq_len=1060) == 0  # overran: nothing promised any more


def test_ledger_pairwise_loan_moves_the_promise_and_returns() -> None:
    led = AllocationLedger()
    led.commit("h", alloc=600)
    led.commit("g", alloc=150, lender="h")
    assert led.lent("h") == 150 and led.get("g").lender == "h"
    assert led.outstanding("h", seq_len=110) == 600 - 110 - 150
    assert led.outstanding("g", seq_len=100) == 50
    led.release("g")
    assert led.lent("h") == 0 and "h" in led.dirty
    led.commit("g2", alloc=100, lender="h")
    led.release("h")  # the lender leaves first: its guest stands on its own
    assert led.get("g2").lender is None and led.outstanding("g2", 50) == 50


def test_ledger_batch_guests_promise_nothing_of_their_own_and_topups_record_draws() -> None:
    led = AllocationLedger()
    led.commit("b", alloc=300, lender=BATCH)
    assert led.outstanding("b", seq_len=10) == 0
    led.commit("a", alloc=100)
    assert led.topup("a", 32, from_reserve=True) and led.drawn_total() == 32
    assert not led.topup("gone", 32)
    assert led.retain({"b"}) == ["a"] and led.drawn_total() == 0
    led.commit("b", alloc=999)  # a continued chunk keeps its allocation
    assert led.get("b").alloc == 300


def test_rate_estimate_window_and_start_up() -> None:
    r = ArrivalRate(window_s=10)
    assert r.rate(5.0) == 0.0
    for t in (0.0, 0.5, 0.9):
        r.observe(t)
    assert r.rate(1.0) == 3.0  # a burst at start-up spans at least one second
    for t in range(1, 30):
        r.observe(float(t))
    assert r.rate(29.0) == pytest.approx(11 / 10)  # arrivals at 19..29 within the 10 s window


def test_iteration_filter_drops_periods_with_idle_time() -> None:
    f = IterationFilter(idle_factor=5, floor_s=0.05)
    assert f.accept(0.04, predicted_s=0.001)  # under the floor
    assert not f.accept(0.2, predicted_s=0.01)  # 20x the prediction: the scheduler slept
    assert f.accept(0.045, predicted_s=0.01) and not f.accept(0.0, 0.01)


def test_kv_to_free() -> None:
    assert kv_to_free(10, 4) == 6 and kv_to_free(3, 10) == 1


class _Alloc:
    def __init__(self, free: int, page: int) -> None:
        self.free, self.page_size = free, page

    def available_size(self) -> int:
        return self.free


class _Tree:
    def __init__(self, evictable: int) -> None:
        self.evictable = evictable

    def evictable_size(self) -> int:
        return self.evictable

    def supports_mamba(self) -> bool:
        return False


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 5000),
    st.integers(0, 2000),
    st.integers(0, 3000),
    st.sampled_from([1, 16]),
    st.integers(0, 64),
    st.lists(st.tuples(st.integers(1, 800), st.integers(0, 600)), max_size=8),
)
def test_budget_rule_is_sglangs_prefill_budget(free, evictable, hold, page, mixed, admits) -> None:
    pb_mod = pytest.importorskip("sglang.srt.mem_cache.prefill_budget")
    alloc, tree = _Alloc(free, page), _Tree(evictable)
    theirs = pb_mod.PrefillBudget(alloc, tree, num_mixed_decode_tokens=mixed)
    theirs.total_offset += hold  # what the adapter adds for the plan's kv_hold
    ours = PrefillBudgetRule(lambda: free + evictable, hold, page, mixed)
    for extend, out in admits:
        total = default_budget_tokens(extend, out, page)
        assert ours.has_capacity() == theirs.has_capacity()
        assert ours.check(total) == theirs.check_prefill(
            extend_input_len=extend, total_tokens=total, max_new_tokens=out, input_tokens=extend,
            swa_host_hit_length=0, chunk_limit=None,
        )[0]  # fmt: skip
        ours.reserve(extend, out)
        theirs.reserve(extend, out)
        assert (ours.remaining_total, ours.remaining_current) == (theirs.remaining_total, theirs.remaining_current)
