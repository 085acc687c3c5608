"""``cacheopt+accelgen`` composes through the KVGate interface: AccelGen's plan, CacheOPT's KV decisions."""

from __future__ import annotations

from policies.accelgen.policy import AccelGenPolicy
from policies.base import create
from policies.cacheopt.gate import CacheOptGate
from policies.latency import BatchShape, IterationLatencyModel
from policies.views import SLO, PoolView, RunningView, SchedulerView, WaitingView

MODEL = IterationLatencyModel(c0_s=0.0015, c_tok_s=2.2e-5, c_attn_prefill_s=1.06e-9, c_attn_decode_s=5.6e-8)


def view(free: int) -> SchedulerView:
    running = tuple(RunningView(f"r{i}", 0.0, 500, 5, 256, 505, 600, SLO(None, 30.0)) for i in range(4))
    waiting = tuple(WaitingView(f"w{i}", 0.0, 400, 256, SLO(1000.0, 30.0)) for i in range(6))
    return SchedulerView(0.1, waiting, running, PoolView(20_000, free))


def test_factory_builds_accelgen_with_cacheopt_gate() -> None:
    pol = create("cacheopt+accelgen", MODEL)
    assert isinstance(pol, AccelGenPolicy) and isinstance(pol.gate, CacheOptGate)
    assert pol.name == "cacheopt+accelgen"


def test_combined_plan_keeps_accelgen_budget_and_gate_accounting() -> None:
    v = view(free=19_000)
    combined, plain = create("cacheopt+accelgen", MODEL), create("accelgen", MODEL)
    pc, pa = combined.plan(v), plain.plan(v)
    assert pc.token_budget == pa.token_budget and pc.run_decodes
    shape = BatchShape(prefill=tuple((a.prefill_tokens, 0) for a in pc.admit), decode_ctx=(505,) * 4)
    assert MODEL.iteration_s(shape) <= 0.030
    # CacheOPT accounts each admission for its lifetime demand (prompt + bounded output), not the chunk only.
    assert all(a.reserve_tokens > a.prefill_tokens + 1 for a in pc.admit)


def test_combined_admits_less_under_kv_pressure_and_victims_come_from_gate() -> None:
    tight = view(free=1_200)
    pol = create("cacheopt+accelgen", MODEL)
    plan = pol.plan(tight)
    assert sum(a.reserve_tokens for a in plan.admit) <= 20_000
    assert len(plan.admit) < 6
    victims = pol.choose_victims(tight, 600)
    assert victims and {p.rid for p in victims} <= {r.rid for r in tight.running}
