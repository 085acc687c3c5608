"""Unit tests of the ``vllm`` and ``sarathi`` baselines on hand-made views, and the check behind the statement in
``policies/sarathi.py``: where ``sarathi`` equals ``sglang`` with mixed chunk at the same budget and where not."""

from __future__ import annotations

import pytest

from eval.sim import SimResult, Simulator, make_policy
from eval.workloads import RequestSpec
from policies.base import create
from policies.capabilities import HostCapabilities
from policies.config import ExtConfig, SGLangBaselineConfig
from policies.latency import IterationLatencyModel
from policies.views import PoolView, RunningView, SchedulerView, WaitingView
from tests.sglang_harness import script

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


# --- sarathi vs sglang with SGLang's mixed chunk (the statement in policies/sarathi.py) ---------------------------


def _steps(name: str, reqs, pool: int, page: int = 1, chunk: int = 64) -> tuple[list[tuple], SimResult]:
    """Every plan (admissions, preemptions, whether decodes ran with it) and victim choice of ``name``."""
    cfg = ExtConfig(sglang=SGLangBaselineConfig(chunked_prefill_size=chunk, mixed_chunk=True))
    lat = IterationLatencyModel(c0_s=1.0, c_tok_s=0.0)
    pol = make_policy(name, lat, cfg, page_size=page)
    steps: list[tuple] = []
    plan, victims = pol.plan, pol.choose_victims

    def rec_plan(view):
        p = plan(view)
        steps.append(("plan", tuple((a.rid, a.prefill_tokens) for a in p.admit), tuple(x.rid for x in p.preempt),
                      p.run_decodes and bool(view.running)))  # fmt: skip
        return p

    def rec_victims(view, need):
        v = victims(view, need)
        steps.append(("victims", tuple(x.rid for x in v)))
        return v

    pol.plan, pol.choose_victims = rec_plan, rec_victims
    specs = [RequestSpec(rid, float(t), p, o, m) for t, rid, p, o, m in reqs]
    res = Simulator(pol, lat, pool_tokens=pool, page_size=page, prefix_cache=False).run(specs)
    assert all(r.ok for r in res.records)
    return steps, res


def _first_difference(a: list, b: list) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sarathi_equals_sglang_mixed_when_kv_never_binds(seed):
    reqs = script(seed)
    ours, _ = _steps("sglang", reqs, pool=100_000)
    sarathi, _ = _steps("sarathi", reqs, pool=100_000)
    assert ours == sarathi
    mixed = [s for s in ours if s[0] == "plan" and s[1] and s[3]]  # prefill chunks with the decodes
    chunked = [rid for s in mixed for rid, _ in s[1]]
    assert mixed and len(set(chunked)) < len(chunked), "script should mix decodes with prompts cut into chunks"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sarathi_and_sglang_mixed_differ_with_pages(seed):
    reqs = script(seed)
    ours, _ = _steps("sglang", reqs, pool=100_000, page=16)
    sarathi, _ = _steps("sarathi", reqs, pool=100_000, page=16)
    i = _first_difference(ours, sarathi)
    assert i is not None
    # SGLang charges page-rounded extends to the chunk budget: it prefills fewer tokens in that step
    assert sum(n for _, n in ours[i][1]) < sum(n for _, n in sarathi[i][1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sarathi_and_sglang_mixed_differ_when_kv_binds(seed):
    reqs = script(seed)
    ours, res_ours = _steps("sglang", reqs, pool=700)
    sarathi, res_sarathi = _steps("sarathi", reqs, pool=700)
    i = _first_difference(ours, sarathi)
    assert i is not None and ours[i][0] == sarathi[i][0] == "plan"
    # the first difference: Sarathi admits a prompt that SGLang holds back for the running requests' outputs
    assert set(ours[i][1]) < set(sarathi[i][1])
    # admit-until-full then preempts far more often than SGLang's reservation retracts
    assert res_sarathi.stats.preemptions > res_ours.stats.preemptions


def test_kv_admission_differs_on_one_view():
    cfg = ExtConfig(sglang=SGLangBaselineConfig(mixed_chunk=True))
    running = [RunningView("a", 0.0, 9, 1, 100, kv_used=10, kv_allocated=10)]
    v = view([w("x", 50)], running, free=120, cap=1000)
    # Sarathi: the whole prompt fits beside the watermark (10) and the decode (1)
    assert [a.rid for a in create("sarathi", LAT, cfg).plan(v).admit] == ["x"]
    # SGLang: 50 + 100 + 1 < 120 - 1 (decode) - 0.7 * 99 (ratio x remaining output) fails
    plan = create("sglang", LAT, cfg).plan(v)
    assert plan.admit == () and plan.run_decodes


def test_victim_order_differs():
    cfg = ExtConfig(sglang=SGLangBaselineConfig(mixed_chunk=True))
    running = [RunningView("old", 0.0, 10, 30, 100, 40, 40), RunningView("new", 0.0, 10, 50, 100, 60, 60)]
    v = view([], running, free=0)
    assert [x.rid for x in create("sarathi", LAT, cfg).choose_victims(v, 1)] == ["new"]  # most recently scheduled
    assert [x.rid for x in create("sglang", LAT, cfg).choose_victims(v, 1)] == ["old"]  # fewest outputs
