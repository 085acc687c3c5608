"""Unit tests of the ``vllm`` and ``sarathi`` baselines on hand-made views."""

from __future__ import annotations

from policies.base import create
from policies.capabilities import HostCapabilities
from policies.latency import IterationLatencyModel
from policies.views import PoolView, RunningView, SchedulerView, WaitingView

LAT = IterationLatencyModel(c0_s=0.001, c_tok_s=1e-5)


def w(rid: str, prompt: int, **kw) -> WaitingView:
    return WaitingView(rid, 0.0, prompt, 100, **kw)


def r(rid: str, kv: int, out: int = 1) -> RunningView:
    return RunningView(rid, 0.0, kv - out, out, 100, kv_used=kv, kv_allocated=kv)


def view(waiting=(), running=(), free=10_000, cap=10_000, page=1) -> SchedulerView:
    return SchedulerView(0.0, tuple(waiting), tuple(running), PoolView(cap, free, 0, page), 0.0, None)


def test_vllm_decodes_first_then_chunks_within_budget():
    p = create("vllm", LAT, host=HostCapabilities(chunked_prefill_size=100))
    plan = p.plan(view([w("x", 80), w("y", 80)], [r("a", 10), r("b", 10)]))
    assert [(a.rid, a.prefill_tokens) for a in plan.admit] == [("x", 80), ("y", 18)]  # 100 - 2 decodes
    assert plan.run_decodes and plan.preempt == ()


def test_vllm_partial_prefill_continues_before_new_requests():
    p = create("vllm", LAT, host=HostCapabilities(chunked_prefill_size=64))
    plan = p.plan(view([w("old", 200, prefilled_len=128), w("new", 10)], [r("a", 10)]))
    assert [(a.rid, a.prefill_tokens) for a in plan.admit] == [("old", 63)]


def test_vllm_admits_until_kv_full_without_reserving_future():
    p = create("vllm", LAT)
    # 2 decodes take 2 tokens; x's 50 fits in 60 - 2, y's 50 does not fit in the 8 left
    plan = p.plan(view([w("x", 50), w("y", 50)], [r("a", 10), r("b", 10)], free=60))
    assert [a.rid for a in plan.admit] == ["x"]


def test_vllm_preempts_newest_when_decodes_do_not_fit_and_admits_nothing():
    p = create("vllm", LAT)
    plan = p.plan(view([w("x", 5)], [r("a", 10), r("b", 20), r("c", 30)], free=2))
    assert [v.rid for v in plan.preempt] == ["c"]  # a and b decode in 2 tokens; x is not admitted
    assert plan.admit == ()


def test_vllm_preempted_requests_go_first():
    p = create("vllm", LAT)
    q = [w("fresh", 10), w("p1", 10, output_len=5), w("p2", 10, output_len=3)]
    plan = p.plan(view(q, []))
    assert [a.rid for a in plan.admit] == ["p2", "p1", "fresh"]
    assert plan.admit[0].prefill_tokens == 13  # prompt + outputs recomputed


def test_vllm_victims_newest_first():
    p = create("vllm", LAT)
    victims = p.choose_victims(view([], [r("a", 10), r("b", 10), r("c", 10)], free=0), 15)
    assert [v.rid for v in victims] == ["c", "b"]


def test_sarathi_mixed_fixed_budget_and_whole_prompt_allocation():
    p = create("sarathi", LAT, host=HostCapabilities(chunked_prefill_size=64))
    plan = p.plan(view([w("x", 100), w("y", 10)], [r("a", 10)], free=1000, cap=1000))
    assert [(a.rid, a.prefill_tokens) for a in plan.admit] == [("x", 63)]
    assert plan.run_decodes and plan.token_budget == 64
    # whole prompt must fit (minus the 1% watermark): 100 > 105 - 1 - 10 fails
    plan = p.plan(view([w("x", 100)], [r("a", 10)], free=105, cap=1000))
    assert plan.admit == ()


def test_sarathi_keeps_room_for_started_prompts():
    p = create("sarathi", LAT, host=HostCapabilities(chunked_prefill_size=512))
    started = w("s", 300, prefilled_len=100)  # still owes 200 tokens
    plan = p.plan(view([started, w("n", 50)], [], free=240, cap=1000))
    assert [a.rid for a in plan.admit] == ["s"]  # 240 - 200 owed leaves 40 < 50 (+ watermark)


def test_sarathi_admits_a_prompt_that_only_fits_without_the_watermark():
    p = create("sarathi", LAT)
    plan = p.plan(view([w("x", 995)], [], free=1000, cap=1000))  # 995 > 1000 - 10 watermark, but it fits
    assert [a.rid for a in plan.admit] == ["x"]
