"""The extension's metrics API (sglang_ext.metrics) in process, against its own registry: what each call counts, that
a chunked prefill continuing is not a new admission, that coverage compares the bound used at admission, that
preemptions carry C5's mode and the latency model's cost, and that the disabled instance does nothing. The same
metrics on a real server's ``/metrics`` are checked in tests/test_server_sglang_tools.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

import profiles
from policies.cacheopt.swap import recompute_cost_s, swap_cost_s
from policies.views import (
    Admit,
    IterationPlan,
    LengthEstimate,
    PoolView,
    Preempt,
    PreemptMode,
    RunningView,
    SchedulerView,
    WaitingView,
)
from sglang_ext.metrics import ExtMetrics

LABELS = {"model_name": "tiny", "policy": "cacheopt", "dp_rank": "0"}
LAT = profiles.get("cpu-tiny-torch")


@pytest.fixture
def reg() -> CollectorRegistry:
    return CollectorRegistry()


def value(reg: CollectorRegistry, name: str, **labels: str) -> float:
    v = reg.get_sample_value("sglang_ext:" + name, {**LABELS, **labels})
    assert v is not None, f"no sample sglang_ext:{name} {labels}"
    return v


def waiting(rid: str, bound: int | None = None, prefilled: int = 0) -> WaitingView:
    est = LengthEstimate(point=bound, bound=bound, confidence=0.9) if bound is not None else None
    return WaitingView(rid=rid, arrival_s=0.0, prompt_len=100, max_new_tokens=500, estimate=est,
                       prefilled_len=prefilled)  # fmt: skip


def view(waiting_reqs: list[WaitingView], running: tuple[RunningView, ...] = (), chunked: str | None = None,
         reserve: int = 0) -> SchedulerView:  # fmt: skip
    pool = PoolView(capacity_tokens=1000, free_tokens=500, reserve_tokens=reserve)
    return SchedulerView(now_s=1.0, waiting=tuple(waiting_reqs), running=running, pool=pool, chunked_rid=chunked)


def test_plan_counts_new_admissions_by_kind_and_not_chunk_continuations(reg: CollectorRegistry) -> None:
    m = ExtMetrics(LABELS, latency=LAT, registry=reg)
    v = view([waiting("a", 40), waiting("b", 60), waiting("c", prefilled=64), waiting("d")], chunked="c")
    plan = IterationPlan(
        admit=(Admit("a", 100, reserve_tokens=140), Admit("b", 100, reserve_tokens=160, host_rid="x"),
               Admit("c", 36, reserve_tokens=170), Admit("d", 100, reserve_tokens=600)),
        token_budget=300, topups=(("x", 32), ("y", 16)), notes={"reserve_left": 77.0},
    )  # fmt: skip
    m.observe_plan(v, plan, 0.002)
    assert value(reg, "admissions_total", kind="own") == 2  # a, d (c continues its chunked prefill)
    assert value(reg, "admissions_total", kind="reuse") == 1
    assert value(reg, "reserved_tokens_total") == 740
    assert value(reg, "reused_tokens_total") == 160
    assert value(reg, "topups_total") == 2 and value(reg, "topup_tokens_total") == 48
    assert value(reg, "reserve_tokens") == 77
    assert value(reg, "chunk_budget_tokens_count") == 1 and value(reg, "chunk_budget_tokens_sum") == 300
    assert value(reg, "policy_decision_seconds_count") == 1
    assert value(reg, "policy_decision_seconds_bucket", le="0.003") == 1
    assert value(reg, "policy_decision_seconds_bucket", le="0.001") == 0
    m.observe_plan(v, plan, 0.002)  # the same admissions again (SGLang could not apply them yet): not new
    assert value(reg, "admissions_total", kind="own") == 2 and value(reg, "reserved_tokens_total") == 740
    m.observe_retracted({"a": (140, 140)}, [SimpleNamespace(rid="a")])
    m.observe_plan(v, plan, 0.002)  # a was preempted: admitted again
    assert value(reg, "admissions_total", kind="own") == 3
    # coverage: a's bound 40, b's 60, d had no estimate
    for rid, out in (("a", 40), ("b", 61), ("d", 5), ("never-admitted", 3)):
        m.observe_finish(rid, out)
    assert value(reg, "finished_requests_total", bound="covered") == 1
    assert value(reg, "finished_requests_total", bound="exceeded") == 1
    assert value(reg, "finished_requests_total", bound="none") == 2


def test_reserve_gauge_falls_back_to_the_pool_reserve(reg: CollectorRegistry) -> None:
    m = ExtMetrics(LABELS, registry=reg)
    m.observe_plan(view([], reserve=123), IterationPlan(), 0.0)
    assert value(reg, "reserve_tokens") == 123
    assert value(reg, "kv_pool_tokens", state="capacity") == 1000 and value(reg, "kv_pool_tokens", state="free") == 500
    assert value(reg, "kv_pool_tokens", state="evictable") == 0
    assert value(reg, "chunk_budget_tokens_count") == 0  # no budget set: the host default, nothing observed


def test_predictor_counts_each_request_once_and_latency_when_answered(reg: CollectorRegistry) -> None:
    m = ExtMetrics(LABELS, registry=reg)
    m.observe_predictor("a", False, 0.001)  # first look: no answer yet -> fallback
    m.observe_predictor("a", False, 0.011)
    m.observe_predictor("a", True, 0.021)  # answer seen later: latency 21 ms
    m.observe_predictor("a", True, 0.031)
    m.observe_predictor("b", True, 0.004)
    assert value(reg, "predictor_requests_total") == 2
    assert value(reg, "predictor_fallbacks_total") == 1
    assert value(reg, "predictor_latency_seconds_count") == 2
    assert value(reg, "predictor_latency_seconds_sum") == pytest.approx(0.025)
    m.observe_finish("a", 10)
    m.observe_predictor("a", True, 0.5)  # a new request reusing the id counts again
    assert value(reg, "predictor_requests_total") == 3


def test_retractions_carry_the_decided_mode_and_cost(reg: CollectorRegistry) -> None:
    m = ExtMetrics(LABELS, latency=LAT, swap_block_tokens=16, swap_block_overhead_s=1e-6, kv_bytes_per_token=512,
                   registry=reg)  # fmt: skip
    r1 = RunningView(rid="s", arrival_s=0, prompt_len=300, output_len=50, max_new_tokens=500, kv_used=350,
                     kv_allocated=400, cached_len=100)  # fmt: skip
    r2 = RunningView(rid="r", arrival_s=0, prompt_len=20, output_len=10, max_new_tokens=500, kv_used=30,
                     kv_allocated=60)  # fmt: skip
    m.observe_victims(view([], (r1, r2)), (Preempt("s", PreemptMode.SWAP), Preempt("r", PreemptMode.RECOMPUTE)))
    # SGLang retracted s and an undecided request u (its own cost estimate: a re-prefill of its own tokens)
    before = {"s": (250, 350), "r": (30, 30), "u": (80, 120)}
    m.observe_retracted(before, [SimpleNamespace(rid="s"), SimpleNamespace(rid="u")])
    assert value(reg, "preemptions_total", mode="swap") == 1
    assert value(reg, "preempted_tokens_total", mode="swap") == 250
    assert value(reg, "preempted_bytes_total", mode="swap") == 250 * 512
    assert value(reg, "preemption_seconds_total", mode="swap") == pytest.approx(swap_cost_s(250, LAT, 16, 1e-6))
    assert value(reg, "swap_fallbacks_total") == 0  # a preemption is not a fallback: the swap manager counts those
    m.observe_swap("out", 4096, 0.002)
    m.observe_swap_fallback()
    assert value(reg, "swap_bytes_total", direction="out") == 4096 and value(reg, "swap_fallbacks_total") == 1
    assert value(reg, "preemptions_total", mode="recompute") == 1
    assert value(reg, "preempted_tokens_total", mode="recompute") == 80
    assert value(reg, "preemption_seconds_total", mode="recompute") == pytest.approx(LAT.prefill_s(80, 40))
    m.observe_retracted(before, [SimpleNamespace(rid="r")])  # decided earlier, retracted now
    assert value(reg, "preempted_tokens_total", mode="recompute") == 110
    assert value(reg, "preemption_seconds_total", mode="recompute") == pytest.approx(
        LAT.prefill_s(80, 40) + recompute_cost_s(r2, LAT)
    )


def test_no_metrics_without_sglangs_metrics_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --enable-metrics SGLang sets no PROMETHEUS_MULTIPROC_DIR: the extension exports nothing and turns
    nothing on (the policy still runs; its counters stay in the log line)."""
    from policies.config import ExtConfig
    from sglang_ext import metrics

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    cfg = ExtConfig(policy="cacheopt")
    assert metrics.scheduler_labels(object(), cfg) is None
    assert metrics.install(object(), cfg) is metrics.get() and not metrics.get().enabled
    assert metrics.scheduler_labels(object(), ExtConfig()) is None  # --ext-policy none: stock, no extension series


def test_disabled_instance_does_nothing() -> None:
    m = ExtMetrics()
    assert not m.enabled and not hasattr(m, "admissions")
    m.observe_plan(view([waiting("a", 5)]), IterationPlan(admit=(Admit("a", 10, 20),), token_budget=8), 0.1)
    m.observe_predictor("a", True, 0.1)
    m.observe_preemption("swap", 10, 0.1)
    m.observe_retracted({"a": (1, 1)}, [SimpleNamespace(rid="a")])
    m.observe_finish("a", 3)
    assert not m._bound and not m._predicted  # nothing tracked either


def test_kv_bytes_per_token_from_sglangs_pool() -> None:
    """Bytes come from SGLang's own KV pool: K and V, every layer (here 2 x 4 heads x 16 dims x 2 B x 2 layers)."""
    import torch
    from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    from sglang_ext.metrics import kv_bytes_per_token

    kv = MHATokenToKVPool(256, 1, torch.bfloat16, 4, 16, 2, "cpu", False)
    alloc = TokenToKVPoolAllocator(256, dtype=torch.bfloat16, device="cpu", kvcache=kv, need_sort=False)
    assert kv_bytes_per_token(alloc) == 2 * 4 * 16 * 2 * 2
    assert kv_bytes_per_token(object()) == 0.0  # an unknown pool reads 0 bytes, never an error
