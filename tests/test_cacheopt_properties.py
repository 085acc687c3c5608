"""Property tests (hypothesis) for CacheOPT over whole request lifecycles, in the simulator host (the shared host
layer: ledger, engine budget, plan application) with random arrivals, true lengths over- and under-shooting the
predictions, prefix sharing, page sizes 1 and 16, both admission rules and random C1-C5 switches:

* the engine budget never refuses a planned admission: the gate checks every admission with the engine's own
  arithmetic (``host.budget``), so SGLang's ``PrefillBudget`` executes the plan as decided;
* the pool is never over-committed (the simulator's invariants after every iteration);
* the ledger stays consistent: reserve draws within the reserve, every pairwise guest's lender alive;
* liveness: every request finishes (or is rejected with a reason when its prompt cannot fit the pool).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eval.sim import Simulator, make_policy
from eval.workloads import RequestSpec
from host.ledger import BATCH
from policies.config import CacheOptConfig, ExtConfig, SGLangBaselineConfig
from policies.latency import IterationLatencyModel
from policies.length_dist import LengthDistribution
from policies.views import LengthEstimate

LAT = IterationLatencyModel(
    c0_s=0.002, c_tok_s=2e-5, c_attn_decode_s=1e-8, c_seq_s=1e-5, kv_bytes_per_token=1e5, pcie_bytes_per_s=1e9
)

specs_st = st.lists(
    st.tuples(
        st.floats(0, 0.3),  # inter-arrival gap
        st.one_of(st.integers(1, 40), st.integers(1, 300)),  # prompt
        st.integers(1, 150),  # true output
        st.integers(20, 400),  # visible cap
        st.one_of(st.none(), st.floats(0.3, 3.0)),  # median estimate = true * factor (None: no prediction)
        st.integers(0, 2),  # shared prefix group
    ),
    min_size=1,
    max_size=30,
)
configs = st.builds(
    CacheOptConfig,
    admission=st.sampled_from(["pool", "paper"]),
    pool_confidence=st.floats(0.5, 0.99),
    demand=st.booleans(),
    reuse=st.booleans(),
    reuse_buffer=st.integers(0, 16),
    topup=st.booleans(),
    topup_horizon=st.integers(0, 4),
    topup_tokens=st.integers(1, 64),
    reserve_tokens=st.integers(0, 128),
    victim=st.booleans(),
    swap_or_recompute=st.booleans(),
    mixed_chunk=st.booleans(),
    waiting_window=st.integers(1, 16),
)


def build(raw) -> tuple[list[RequestSpec], dict[str, LengthEstimate | None]]:
    specs, ests = [], {}
    t = 0.0
    for i, (gap, prompt, out, cap, factor, group) in enumerate(raw):
        t += gap
        nb = -(-prompt // 16)
        hashes = tuple([group * 1000 + j for j in range(min(nb, 2))] + [10_000 + i * 100 + j for j in range(2, nb)])
        specs.append(RequestSpec(f"r{i}", t, prompt, out, cap, prefix_hash_ids=hashes, prefix_block_tokens=16))
        if factor is None:
            ests[f"r{i}"] = None
        else:
            dist = LengthDistribution.lognormal(max(out * factor, 1.0), 0.6)
            ests[f"r{i}"] = LengthEstimate(int(dist.quantile(0.5)), int(dist.quantile(0.9)), 0.9, dist=dist)
    return specs, ests


@pytest.mark.slow
@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs_st, configs, st.integers(700, 3000), st.sampled_from([1, 16]), st.sampled_from([32, 128, 512]))
def test_cacheopt_lifecycle(raw, cfg, capacity, page, chunk) -> None:
    specs, ests = build(raw)
    ext = ExtConfig(policy="cacheopt", sglang=SGLangBaselineConfig(chunked_prefill_size=chunk), cacheopt=cfg)
    pol = make_policy("cacheopt", LAT, ext, page_size=page)
    sim = Simulator(pol, LAT, pool_tokens=capacity, page_size=page, host_tokens=capacity,
                    estimator=lambda s: ests[s.rid], check_invariants=True, max_iterations=200_000)  # fmt: skip
    core = sim.core
    plan = core.plan

    def checked_plan(view):
        p = plan(view)
        led = core.ledger
        drawn = led.drawn_total()
        assert drawn <= max(pol.gate.reserve_size(view), 0) + max(cfg.topup_tokens, 0)
        live = {r.rid for r in view.running} | {w.rid for w in view.waiting}
        for r in view.running:
            if r.lender not in (None, BATCH):
                assert r.lender in live, f"{r.rid}'s lender {r.lender} left without the guest being freed"
        return p

    core.plan = checked_plan
    res = sim.run(specs)
    assert core.counters["budget_refusals"] == 0, "the engine budget refused a planned admission"
    for r in res.records:
        assert r.ok or (r.error and "does not fit" in r.error), r.error
