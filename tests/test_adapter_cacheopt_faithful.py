"""CacheOPT executes the same way in both hosts (issue 11): one request script run through SGLang 0.5.23's real
scheduler classes with the plugin's hooks (the adapter, ``PolicyPrefillAdder`` fed the plan's ``kv_hold`` and
charges, the retraction hooks) and through the simulator host gives the same prefill batches, chunk sizes and
retractions, and the same ledger decisions: admissions with their allocations and lenders (C2 reuse), top-ups and
reserve draws (C3), victims (C4). Both hosts see the same estimates and the same clock (one iteration per unit).
Swap is not available in this offline harness (no model), so C5 decides recompute in both.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from eval.sim import Simulator
from eval.workloads import RequestSpec
from host.core import HostCore
from policies.base import create
from policies.capabilities import HostCapabilities
from policies.config import CacheOptConfig, ExtConfig, SGLangBaselineConfig
from policies.latency import IterationLatencyModel
from policies.length_dist import LengthDistribution
from policies.views import LengthEstimate
from sglang_ext.adapter import hooks
from tests.sglang_harness import CHUNK, POOL, StockSGLang, script
from tests.test_adapter_faithful import plugin_hooks  # noqa: F401 - the plugin's hooks on SGLang's classes
from tests.test_sglang_faithful import sglang_ready  # noqa: F401

pytestmark = pytest.mark.slow

LAT = IterationLatencyModel(c0_s=1.0, c_tok_s=0.0)  # one iteration per time unit in both hosts


def estimates(reqs, seed: int) -> dict[str, LengthEstimate]:
    """A noisy predictor (median = true x lognormal noise, sigma 0.5) so requests over- and under-run."""
    rng = random.Random(seed)
    out = {}
    for _, rid, _, true, _ in reqs:
        median = max(1.0, true * rng.lognormvariate(0.0, 0.5))
        d = LengthDistribution.lognormal(median, 0.5)
        out[rid] = LengthEstimate(int(d.quantile(0.5)), int(d.quantile(0.9)), 0.9, dist=d)
    return out


def config(admission: str) -> ExtConfig:
    return ExtConfig(policy="cacheopt", sglang=SGLangBaselineConfig(chunked_prefill_size=CHUNK),
                     cacheopt=CacheOptConfig(admission=admission, reserve_tokens=32, topup_tokens=16))  # fmt: skip


def record(core: HostCore, events: list) -> None:
    """Log the ledger decisions a host executes."""
    committed, plan, victims = core.committed, core.plan, core.victims

    def on_commit(admit, w):
        if admit.rid not in core.ledger:
            events.append(("admit", admit.rid, admit.reserve_tokens, admit.host_rid is not None))
        committed(admit, w)

    def on_plan(view):
        p = plan(view)
        events.extend(("topup", rid, n) for rid, n in p.topups)
        events.extend(("draw", rid, n) for rid, n in p.reserve_draws)
        return p

    def on_victims(view, need):
        v = victims(view, need)
        events.extend(("victim", x.rid, x.mode.value) for x in v)
        return v

    core.committed, core.plan, core.victims = on_commit, on_plan, on_victims


def simulate(reqs, ests, cfg) -> tuple[list, list]:
    pol = create("cacheopt", LAT, cfg, HostCapabilities(chunked_prefill_size=CHUNK, swap=False))
    sim = Simulator(pol, LAT, pool_tokens=POOL, page_size=1, prefix_cache=False, estimator=lambda s: ests[s.rid])
    events: list = []
    record(sim.core, events)
    trace: list[tuple] = []
    plan = sim.core.plan

    def traced(view):
        p = plan(view)
        if p.admit:
            trace.append(("P", tuple((a.rid, a.prefill_tokens) for a in p.admit)))
        elif view.running:
            trace.append(("D", ()))
        return p

    sim.core.plan = traced
    victims = sim.core.victims

    def traced_victims(view, need):
        v = victims(view, need)
        trace[-1] = ("D", trace[-1][1] + tuple(x.rid for x in v))
        return v

    sim.core.victims = traced_victims
    res = sim.run([RequestSpec(rid, float(t), p, o, m) for t, rid, p, o, m in reqs])
    assert all(r.ok for r in res.records) and sim.core.counters["budget_refusals"] == 0
    return trace, events


class AdaptedCacheOpt(StockSGLang):
    """Stock stepping with the plugin's hooks in the path and the cacheopt policy behind them."""

    def __init__(self, cfg: ExtConfig, ests: dict[str, LengthEstimate]) -> None:
        super().__init__()
        from sglang_ext.adapter.state import Adapter

        caps = HostCapabilities(chunked_prefill_size=CHUNK, max_prefill_tokens=16384, swap=False)
        self.adapter = Adapter(cfg, caps, latency=LAT)
        self.adapter.now = lambda: float(self.clock)  # the harness's iteration count is the host clock
        self.adapter._estimate = lambda req: ests[req.rid]
        self.clock = 0
        self.token_to_kv_pool_allocator = self.alloc
        self.tree_cache = self.tc
        self.chunked_prefill_size = CHUNK
        original = self.policy.calc_priority
        self.policy.calc_priority = lambda q, *a, **k: hooks.around_calc_priority(
            lambda _p, q2, *a2, **k2: original(q2, *a2, **k2), self.policy, q, *a, **k
        )

    @property
    def waiting_queue(self) -> list:
        return self.waiting

    @property
    def chunked_req(self):  # type: ignore[no-untyped-def]
        return self.chunked

    def step(self) -> bool:
        ran = super().step()
        self.clock += 1 if ran else 0
        return ran

    def run(self, reqs) -> list[tuple]:
        pending = sorted(reqs, key=lambda x: x[0])
        first = pending[0][0] if pending else 0
        self.clock = first
        return super().run(reqs)

    def prefill_batch(self, running):  # type: ignore[no-untyped-def]
        return hooks.around_prefill_raw(
            lambda sched, _delayer, rb: StockSGLang.prefill_batch(sched, rb), self, None, running
        )


@pytest.fixture
def installed(plugin_hooks) -> Iterator[None]:  # noqa: F811
    yield


@pytest.mark.parametrize(("seed", "admission"), [(0, "pool"), (1, "pool"), (3, "paper"), (4, "paper")])
def test_cacheopt_same_decisions_in_sglang_and_in_the_simulator(sglang_ready, installed, seed, admission):  # noqa: F811
    from sglang_ext.adapter.prefill import PolicyPrefillAdder

    reqs = script(seed)
    t0 = reqs[0][0]
    reqs = [(t - t0, *rest) for t, *rest in reqs]  # both hosts start their clock at the first arrival
    ests = estimates(reqs, seed)
    cfg = config(admission)
    sim_trace, sim_events = simulate(reqs, ests, cfg)
    adapted = AdaptedCacheOpt(cfg, ests)
    hooks._ADAPTER = adapted.adapter
    PolicyPrefillAdder.adapter = adapted.adapter
    events: list = []
    record(adapted.adapter.core, events)
    ours = adapted.run(reqs)
    assert adapted.adapter.counters["budget_refusals"] == 0, "SGLang's budget refused a planned admission"
    assert any(e[0] == "admit" for e in events)
    for i, (a, b) in enumerate(zip(ours, sim_trace, strict=False)):
        assert a == b, f"step {i}: sglang+plugin {a} vs simulator {b}"
    assert len(ours) == len(sim_trace)
    assert events == sim_events
