"""SGLang's own priority scheduling (``--enable-priority-scheduling``) in the ``sglang`` baseline: against SGLang
0.5.23's real classes (the harness of ``tests/test_sglang_faithful.py``) for the queue order, preemption to schedule
when the request slots are full, and ``--retraction-policy priority``; plus the rules on hand-made views and the
class -> priority mapping the simulator applies."""

from __future__ import annotations

import pytest

from eval.sim import Simulator, make_policy
from eval.workloads import RequestSpec
from policies.base import create
from policies.capabilities import HostCapabilities
from policies.config import ConfigError, ExtConfig, SGLangBaselineConfig
from policies.latency import IterationLatencyModel
from policies.views import PoolView, RunningView, SchedulerView, WaitingView
from tests.sglang_harness import Mode, StockSGLang, priorities, script, simulate
from tests.test_sglang_faithful import assert_same, server_args, sglang_ready  # noqa: F401

LAT = IterationLatencyModel(c0_s=0.001, c_tok_s=1e-5)

# (seed, page, mixed, low values first, retraction policy, request slots): each case preempts to schedule
PREEMPT_CASES = [(2, 1, False, False, "length", 6), (6, 1, False, False, "length", 6),
                 (6, 1, True, True, "priority", 5), (2, 16, True, False, "priority", 6),
                 (6, 16, False, True, "length", 4)]  # fmt: skip


def _mode(seed: int, page: int, mixed: bool, low: bool, retraction: str, slots: int | None) -> Mode:
    prio = priorities(seed, [rid for _, rid, *_ in script(seed)])
    if low:  # the same urgency with low values first
        prio = {rid: None if p is None else 30 - p for rid, p in prio.items()}
    return Mode(page, mixed=mixed, max_running=slots, prio=prio, low_first=low, retraction=retraction)


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "page", "mixed", "low", "retraction", "slots"), PREEMPT_CASES)
def test_priority_preemption_same_steps_as_stock_sglang(server_args, seed, page, mixed, low, retraction, slots):  # noqa: F811
    mode = _mode(seed, page, mixed, low, retraction, slots)
    server_args(mode)
    reqs = script(seed)
    stock = StockSGLang(mode=mode).run(reqs)
    assert any(kind == "X" for kind, _ in stock), "script should make stock SGLang preempt to schedule"
    assert_same(stock, simulate(reqs, mode=mode))


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "page"), [(0, 1), (2, 16)])
def test_priority_order_same_steps_as_stock_sglang(server_args, seed, page):  # noqa: F811
    """Unbounded request slots: no preemption, only the order; it must change SGLang's batches."""
    mode = _mode(seed, page, False, False, "length", None)
    server_args(mode)
    reqs = script(seed)
    stock = StockSGLang(mode=mode).run(reqs)
    assert not any(kind == "X" for kind, _ in stock)
    server_args(Mode(page))
    assert stock != StockSGLang(mode=Mode(page)).run(reqs), "priorities should change the batches"
    server_args(mode)
    assert_same(stock, simulate(reqs, mode=mode))


# --- the rules on hand-made views ---------------------------------------------------------------------------------


def _pol(slots: int | None = None, **kw):
    cfg = ExtConfig(sglang=SGLangBaselineConfig(enable_priority_scheduling=True, **kw))
    return create("sglang", LAT, cfg, HostCapabilities(max_running_requests=slots))


def _w(rid: str, prompt: int, prio: int | None, max_new: int = 100, **kw) -> WaitingView:
    return WaitingView(rid, 0.0, prompt, max_new, priority=prio, **kw)


def _r(rid: str, prio: int | None, out: int = 10, max_new: int = 100) -> RunningView:
    return RunningView(rid, 0.0, 20, out, max_new, kv_used=20 + out, kv_allocated=20 + out, priority=prio)


def _view(waiting=(), running=(), free=5000) -> SchedulerView:
    return SchedulerView(0.0, tuple(waiting), tuple(running), PoolView(10_000, free, 0, 1), 0.0, None)


def test_queue_sorted_by_priority_then_queue_entry():
    q = [_w("low", 10, 0), _w("none", 10, None), _w("high", 10, 20), _w("high2", 10, 20)]
    assert [a.rid for a in _pol().plan(_view(q)).admit] == ["high", "high2", "low", "none"]
    low_first = _pol(schedule_low_priority_values_first=True).plan(_view(q)).admit
    assert [a.rid for a in low_first] == ["low", "high", "high2", "none"]  # no priority = the lowest either way


def test_preempts_only_when_slots_are_full_and_the_gap_exceeds_the_threshold():
    running = [_r("a", 15), _r("b", 15)]
    assert _pol(slots=2).plan(_view([_w("x", 10, 25)], running)).preempt == ()  # 25 - 15 is not above 10
    plan = _pol(slots=2).plan(_view([_w("x", 10, 26)], running))
    assert [p.rid for p in plan.preempt] == ["a"] and [a.rid for a in plan.admit] == ["x"]
    assert _pol(slots=3).plan(_view([_w("x", 10, 26)], running)).preempt == ()  # a free slot: no preemption
    assert _pol(slots=2, disable_priority_preemption=True).plan(_view([_w("x", 10, 26)], running)).preempt == ()


def test_preemption_ignores_the_prompt_of_a_request_never_considered():
    """SGLang charges a candidate ``len(full_untruncated_fill_ids)``, empty until the loop first reaches it: for
    a new 500-token prompt it preempts as if only its 100 output tokens were needed, then cannot admit it."""
    running = [_r("a", 0), _r("b", 0)]  # each expected to take 0.7 * 90 = 63 more tokens
    pol = _pol(slots=2)
    plan = pol.plan(_view([_w("x", 500, 20)], running, free=200))
    assert [p.rid for p in plan.preempt] == ["a"] and plan.admit == ()  # (a tie: the host's order)
    # the next time x's prompt is known (the loop reached it): releasing both would not cover 500 + 100 - remaining
    running = [_r("a", 0), _r("c", 0)]
    assert pol.plan(_view([_w("x", 500, 20), _w("b", 20, None, output_len=10)], running, free=230)).preempt == ()


def test_priority_retraction_order():
    running = [_r("vip", 30, out=1), _r("a", 0, out=50), _r("b", 0, out=5)]
    victims = _pol(retraction_policy="priority").choose_victims(_view((), running, free=0), 3)
    assert [v.rid for v in victims] == ["b"]  # lowest priority first, then fewest outputs
    victims = create("sglang", LAT).choose_victims(_view((), running, free=0), 3)
    assert [v.rid for v in victims] == ["vip"]  # length order ignores priorities


def test_config_refuses_what_sglang_refuses():
    with pytest.raises(ConfigError, match="--ext-sglang-enable-priority-scheduling"):
        SGLangBaselineConfig(enable_priority_scheduling=True, schedule_policy="lpm")
    with pytest.raises(ConfigError, match="--ext-sglang-retraction-policy"):
        SGLangBaselineConfig(retraction_policy="priority")
    with pytest.raises(ConfigError, match="--ext-sglang-priority-by-class"):
        SGLangBaselineConfig(priority_by_class="tight=high")
    with pytest.raises(ConfigError, match="given twice"):
        SGLangBaselineConfig(priority_by_class="tight=1,tight=2")
    assert SGLangBaselineConfig(priority_by_class=" tight=2, loose=0 ").priority_map() == {"tight": 2, "loose": 0}


def test_simulator_maps_slo_classes_to_priorities():
    cfg = ExtConfig(sglang=SGLangBaselineConfig(enable_priority_scheduling=True, priority_by_class="tight=20,loose=0"))
    pol = make_policy("sglang", LAT, cfg)
    seen: dict[str, int | None] = {}
    plan = pol.plan

    def rec(view):
        seen.update({w.rid: w.priority for w in view.waiting})
        return plan(view)

    pol.plan = rec
    specs = [RequestSpec("l", 0.0, 10, 2, 4, slo_class="loose"), RequestSpec("t", 0.0, 10, 2, 4, slo_class="tight"),
             RequestSpec("u", 0.0, 10, 2, 4, slo_class="other")]  # fmt: skip
    res = Simulator(pol, LAT, pool_tokens=1000).run(specs)
    assert seen == {"l": 0, "t": 20, "u": None}
    first = {r.rid: r.token_times_s[0] for r in res.records}
    assert first["t"] <= first["l"] <= first["u"]


def test_plugin_mirrors_sglangs_flags_into_the_baseline():
    """In the server SGLang's own flags are the truth for the ``sglang`` section; ``--ext-sglang-mixed-chunk``
    asks for SGLang's mixed chunk (the plugin then turns it on)."""
    from types import SimpleNamespace

    from sglang_ext.plugin import _mirror_sglang_flags, _needs_mixed_chunk

    sa = SimpleNamespace(schedule_policy="fcfs", schedule_conservativeness=0.5, chunked_prefill_size=8192,
                         retraction_policy="priority", enable_mixed_chunk=False, enable_priority_scheduling=True,
                         schedule_low_priority_values_first=True, priority_scheduling_preemption_threshold=3,
                         disable_priority_preemption=False)  # fmt: skip
    cfg = ExtConfig(policy="sglang", sglang=SGLangBaselineConfig(mixed_chunk=True))
    sg = _mirror_sglang_flags(cfg, sa).sglang
    assert (sg.chunked_prefill_size, sg.enable_priority_scheduling, sg.schedule_low_priority_values_first) == (
        8192, True, True)  # fmt: skip
    assert sg.priority_scheduling_preemption_threshold == 3 and sg.retraction_policy == "priority"
    assert sg.mixed_chunk and _needs_mixed_chunk(_mirror_sglang_flags(cfg, sa))
    assert not _mirror_sglang_flags(ExtConfig(policy="sglang"), sa).sglang.mixed_chunk
