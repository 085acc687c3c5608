"""Unit tests of ``edf``: SGLang's accounting and batching with the waiting queue in earliest-TTFT-deadline order.
Through the plugin's real hooks it is checked in ``tests/test_adapter_faithful.py``."""

from __future__ import annotations

import math

import pytest

from eval.sim import Simulator, make_policy
from eval.workloads import RequestSpec
from policies.base import create, policy_class
from policies.config import ExtConfig, SGLangBaselineConfig
from policies.edf import EDFPolicy, ttft_deadline_s
from policies.latency import IterationLatencyModel
from policies.views import SLO, PoolView, RunningView, SchedulerView, WaitingView

LAT = IterationLatencyModel(c0_s=0.001, c_tok_s=1e-5)


def w(rid: str, arrival: float, ttft_ms: float | None, prompt: int = 10, **kw) -> WaitingView:
    return WaitingView(rid, arrival, prompt, 100, SLO(ttft_ms, None), **kw)


def view(waiting, running=(), free=5000, chunked=None) -> SchedulerView:
    return SchedulerView(10.0, tuple(waiting), tuple(running), PoolView(10_000, free, 0, 1), 0.0, chunked)


def test_registered_like_sglang():
    assert policy_class("edf") is EDFPolicy
    assert EDFPolicy.owns_kv_accounting is False  # SGLang's own accounting stays in charge in the server
    assert EDFPolicy.needs_mixed_chunk(ExtConfig(sglang=SGLangBaselineConfig(mixed_chunk=True)))
    assert not EDFPolicy.needs_mixed_chunk(ExtConfig())


def test_deadline():
    assert ttft_deadline_s(w("a", 2.0, 500.0)) == pytest.approx(2.5)
    assert ttft_deadline_s(w("a", 2.0, None)) == math.inf


def test_earliest_deadline_first_then_arrival_and_no_slo_last():
    q = [w("late", 0.0, 9_000.0), w("none", 0.0, None), w("soon", 5.0, 1_000.0), w("tie", 4.0, 2_000.0)]
    plan = create("edf", LAT).plan(view(q))
    assert [a.rid for a in plan.admit] == ["tie", "soon", "late", "none"]  # deadlines 6, 6, 9, inf; tie: arrival
    fcfs = create("sglang", LAT).plan(view(q))
    assert [a.rid for a in fcfs.admit] == ["late", "none", "soon", "tie"]


def test_resumed_requests_first_and_chunked_prefill_continues():
    q = [w("long", 0.0, 100.0, prompt=3000, prefilled_len=64), w("new", 0.0, 100.0),
         w("resumed", 3.0, None, output_len=7)]  # fmt: skip
    plan = create("edf", LAT).plan(view(q, chunked="long"))
    assert [a.rid for a in plan.admit] == ["long"]  # the in-progress prefill takes the whole chunk, as SGLang's
    q[0] = w("long", 0.0, 100.0, prompt=100, prefilled_len=64)
    plan = create("edf", LAT).plan(view(q, chunked="long"))
    assert [a.rid for a in plan.admit] == ["long", "resumed", "new"]


def test_same_accounting_as_sglang():
    """Only the order differs: the request SGLang's admission rule refuses is refused here too."""
    running = [RunningView("r", 0.0, 10, 20, 120, kv_used=30, kv_allocated=30)]  # 0.7 * 100 = 70 expected
    q = [w("x", 0.0, None, prompt=50), w("y", 0.0, 100.0, prompt=50)]
    # 50 + 100 + 1 < free - 70 needs free > 221
    assert create("edf", LAT).plan(view(q, running, free=221)).admit == ()
    assert [a.rid for a in create("edf", LAT).plan(view(q, running, free=222)).admit] == ["y"]
    assert [a.rid for a in create("sglang", LAT).plan(view(q, running, free=222)).admit] == ["x"]


def test_edf_meets_more_ttft_deadlines_than_fcfs_in_the_simulator():
    """A burst where early arrivals have loose TTFT SLOs and late ones tight: deadline order serves the tight ones
    first, so more requests make their TTFT."""
    lat = IterationLatencyModel(c0_s=0.01, c_tok_s=1e-4)
    specs = [RequestSpec(f"loose{i}", 0.0, 400, 20, 20, ttft_slo_ms=5_000.0) for i in range(8)]
    specs += [RequestSpec(f"tight{i}", 0.0, 400, 20, 20, ttft_slo_ms=300.0) for i in range(8)]

    def met(name: str) -> int:
        res = Simulator(make_policy(name, lat), lat, pool_tokens=100_000).run(specs)
        return sum(r.token_times_s[0] - r.arrival_s <= r.ttft_slo_ms / 1e3 for r in res.records)

    assert met("edf") > met("sglang")
