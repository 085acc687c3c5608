"""Unit tests of the ``sglang`` baseline on hand-made views: the numbers come from SGLang 0.5.23's source (see
policies/sglang_baseline.py), worked by hand here."""

from __future__ import annotations

import pytest

from policies.base import create
from policies.capabilities import HostCapabilities
from policies.config import ExtConfig, SGLangBaselineConfig
from policies.latency import IterationLatencyModel
from policies.sglang_baseline import SGLangPolicy
from policies.views import PoolView, RunningView, SchedulerView, WaitingView

LAT = IterationLatencyModel(c0_s=0.001, c_tok_s=1e-5)


def pol(**kw) -> SGLangPolicy:
    cfg = ExtConfig(sglang=SGLangBaselineConfig(**kw))
    p = create("sglang", LAT, config=cfg)
    assert isinstance(p, SGLangPolicy)
    return p


def w(rid: str, prompt: int, max_new: int = 100, **kw) -> WaitingView:
    return WaitingView(rid, 0.0, prompt, max_new, **kw)


def r(rid: str, prompt: int, out: int, max_new: int = 100) -> RunningView:
    return RunningView(rid, 0.0, prompt, out, max_new, kv_used=prompt + out, kv_allocated=prompt + out)


def view(waiting=(), running=(), free=1000, evictable=0, page=1, chunked=None) -> SchedulerView:
    return SchedulerView(0.0, tuple(waiting), tuple(running), PoolView(10_000, free, evictable, page), 0.0, chunked)


def test_ratio_constants_follow_conservativeness():
    p = pol()
    assert p.ratio.init == pytest.approx(0.7) and p.ratio.min == pytest.approx(0.098)
    assert p.ratio.decay == pytest.approx((0.7 - 0.098) / 600)
    assert pol(schedule_conservativeness=2.0).ratio.init == 1.0  # clipped at 1


def test_admission_is_strict_and_counts_running_estimate():
    p = pol()
    running = [r("a", 10, 20, max_new=120)]  # remaining 100 * 0.7 = 70
    # need extend 50 + max_new 100 + page 1 = 151 < free - 70  <=>  free > 221
    assert p.plan(view([w("x", 50)], running, free=221)).admit == ()
    assert p.batch_is_full  # NO_TOKEN with a non-empty running batch
    assert pol().plan(view([w("x", 50)], running, free=222)).admit[0].prefill_tokens == 50


def test_batch_full_blocks_until_a_request_leaves():
    p = pol()
    running = [r("a", 10, 20, max_new=120)]
    p.plan(view([w("x", 50)], running, free=221))
    assert p.plan(view([w("x", 50)], running, free=5000)).admit == ()  # still blocked
    p.on_finish("a", 21)
    assert p.plan(view([w("x", 50)], running, free=5000)).admit


def test_admit_runs_prefill_only_and_stops_at_no_token():
    p = pol()
    plan = p.plan(view([w("x", 100), w("y", 100), w("z", 100)], free=420))
    # x: 100+100+1 < 420 -> charged 100+1+100 = 201; y: 201 < 219 -> charged 201; z: 201 < 18 fails
    assert [a.rid for a in plan.admit] == ["x", "y"]
    assert plan.run_decodes is False


def test_long_prompt_is_chunked_and_continues_first():
    p = pol(chunked_prefill_size=256)
    plan = p.plan(view([w("long", 1000), w("b", 10)], free=5000))
    assert [(a.rid, a.prefill_tokens) for a in plan.admit] == [("long", 256)]  # chunk budget spent
    cont = w("long", 1000, prefilled_len=256)
    plan = p.plan(view([cont, w("b", 10)], free=5000, chunked="long"))
    assert [(a.rid, a.prefill_tokens) for a in plan.admit] == [("long", 256)]
    last = w("long", 1000, prefilled_len=768)
    plan = p.plan(view([last, w("b", 10)], free=5000, chunked="long"))
    assert [(a.rid, a.prefill_tokens) for a in plan.admit] == [("long", 232), ("b", 10)]


def test_page_rounding_in_charges():
    p = pol()
    # page 16: x charged ceil16(20)=32 + 16 + 100 = 148; y needs 20+100+16=136 < 300-148=152 -> admitted
    plan = p.plan(view([w("x", 20), w("y", 20)], free=300, page=16))
    assert len(plan.admit) == 2
    assert len(pol().plan(view([w("x", 20), w("y", 20)], free=283, page=16)).admit) == 1


def test_decay_after_decode_steps_and_reset_when_idle():
    p = pol()
    running = [r("a", 10, 5)]
    for _ in range(3):
        assert p.plan(view([], running)).admit == ()
    p.plan(view([], running))
    assert p.ratio.current == pytest.approx(0.7 - 3 * p.ratio.decay)
    p.plan(view([], []))  # nothing to run: idle
    assert p.ratio.current == pytest.approx(0.7)


def test_retraction_order_and_ratio():
    p = pol()
    running = [r("a", 100, 50, 200), r("b", 300, 10, 200), r("c", 100, 10, 200), r("d", 50, 80, 200)]
    # keep-order: most outputs first, then shortest prompt; victims popped from the end: b (10 out, 300 in)
    victims = p.choose_victims(view([], running, free=0), 4)
    assert [v.rid for v in victims] == ["b"]  # frees 310 >= 3 decodes
    kept = [x for x in running if x.rid != "b"]
    exp = (sum(x.output_len for x in kept) + 20 * 3) / (sum(x.max_new_tokens for x in kept) + 1)
    assert p.ratio.current == pytest.approx(exp)


def test_retraction_keeps_last_request():
    p = pol()
    victims = p.choose_victims(view([], [r("a", 10, 1)], free=0), 1)
    assert victims == ()


def test_retraction_continues_until_decode_fits():
    p = pol()
    running = [r("a", 5, 30), r("b", 5, 20), r("c", 5, 10), r("d", 5, 1)]
    # free 0; each victim frees 5+out tokens; need shrinks by 1 per victim
    victims = p.choose_victims(view([], running, free=0), 4)
    assert [v.rid for v in victims] == ["d"]  # d frees 6 >= 3
    victims = pol().choose_victims(view([], [r("a", 1, 1), r("b", 1, 1), r("c", 1, 1)], free=0), 3)
    assert [v.rid for v in victims] == ["c"]  # frees 2 >= 2 remaining decodes


def test_lpm_orders_by_cached_prefix():
    p = pol(schedule_policy="lpm")
    plan = p.plan(view([w("a", 100), w("b", 100, cached_len=64)], free=5000, evictable=64))
    assert [a.rid for a in plan.admit] == ["b", "a"]
    assert plan.admit[0].prefill_tokens == 36


# --- the device-default chunk and SGLang's mixed chunk (--enable-mixed-chunk) -------------------------------------


def test_chunk_is_the_hosts_when_given():
    """The scenario/profile passes SGLang's device default as the host's chunk; the config's is the fallback."""
    p = create("sglang", LAT, ExtConfig(), HostCapabilities(chunked_prefill_size=8192))
    assert p.chunked_prefill_size == 8192
    assert [(a.rid, a.prefill_tokens) for a in p.plan(view([w("long", 9000)], free=20_000)).admit] == [("long", 8192)]
    assert pol(chunked_prefill_size=512).chunked_prefill_size == 512


def mixed(**kw) -> SGLangPolicy:
    p = pol(mixed_chunk=True, **kw)
    assert p.mixed and SGLangPolicy.needs_mixed_chunk(p.config)
    return p


def test_mixed_charges_one_token_per_decode_to_the_chunk_and_the_budget():
    running = [r(f"d{i}", 5, 1, max_new=2) for i in range(10)]  # each still expected to take 0.7 * 1 token
    plan = mixed(chunked_prefill_size=64).plan(view([w("x", 100)], running))
    assert [(a.rid, a.prefill_tokens) for a in plan.admit] == [("x", 54)]  # 64 - 10 decodes
    assert plan.run_decodes  # a mixed step
    assert pol(chunked_prefill_size=64).plan(view([w("x", 100)], running)).admit[0].prefill_tokens == 64
    # the admission check counts the decodes too: 30 + 100 + 1 < free - 10 - 7
    assert mixed().plan(view([w("y", 30)], running, free=148)).admit == ()
    assert mixed().plan(view([w("y", 30)], running, free=149)).admit


def test_mixed_decodes_sit_out_when_the_prefill_leaves_no_room():
    running = [r(f"d{i}", 15, 1, max_new=2) for i in range(4)]  # page 16: each needs a new page (kv 16)
    plan = mixed().plan(view([w("x", 20, max_new=1)], running, free=80, page=16))
    # x passes 20 + 1 + 16 < 80 - 4 - 2.8; its two pages leave 48 < 64 tokens for the decodes' four pages
    assert [a.rid for a in plan.admit] == ["x"] and not plan.run_decodes
    plan = mixed().plan(view([w("x", 20, max_new=1)], running, free=96, page=16))
    assert plan.run_decodes


def test_mixed_step_clears_batch_is_full_and_does_not_decay():
    p = mixed()
    running = [r("a", 10, 20, max_new=120)]
    # y does not fit after x: NO_TOKEN with a non-empty batch
    plan = p.plan(view([w("x", 20, max_new=50), w("y", 50)], running, free=222))
    assert [a.rid for a in plan.admit] == ["x"] and plan.run_decodes
    assert not p.batch_is_full  # the mixed batch becomes the running batch, whose flag starts clear
    ratio = p.ratio.current
    p.plan(view([w("y", 50)], running, free=5000))
    assert p.ratio.current == ratio  # no decode-only step happened in between
    q = pol()
    q.plan(view([w("x", 20, max_new=50), w("y", 50)], running, free=222))
    assert q.batch_is_full  # without mixed chunk the flag stays on the running batch
