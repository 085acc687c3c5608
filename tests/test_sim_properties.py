"""Property tests (hypothesis) of every registered policy in the simulator, over random arrivals and lengths:
the pool is never over-committed and no allocation is negative (checked after every iteration), every admitted
request finishes with its true length (or its cap), and nothing is lost (submitted = completed + failed with a
reason)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eval.sim import Simulator, make_policy
from eval.workloads import RequestSpec
from policies.base import available
from policies.latency import IterationLatencyModel
from policies.views import LengthEstimate

LAT = IterationLatencyModel(
    c0_s=0.002, c_tok_s=2e-5, c_attn_decode_s=1e-8, c_seq_s=1e-5, kv_bytes_per_token=1e5, pcie_bytes_per_s=1e9
)
POLICIES = available()


@st.composite
def workloads(draw):
    n = draw(st.integers(1, 25))
    block = draw(st.sampled_from([16, 32]))
    t = 0.0
    specs = []
    for i in range(n):
        t += draw(st.floats(0, 0.2))
        prompt = draw(st.integers(1, 300))
        out = draw(st.integers(1, 120))
        cap = draw(st.integers(1, 160))
        shared = draw(st.integers(0, 2))  # a few common prefixes make the radix cache matter
        nb = -(-prompt // block)
        hashes = tuple([shared * 1000 + j for j in range(min(nb, 2))] + [10_000 + i * 100 + j for j in range(2, nb)])
        specs.append(RequestSpec(f"r{i}", t, prompt, out, cap, prefix_hash_ids=hashes, prefix_block_tokens=block))
    return specs


def estimator(spec: RequestSpec) -> LengthEstimate:
    guess = max(1, spec.max_new_tokens // 2)
    return LengthEstimate(point=guess, bound=spec.max_new_tokens, confidence=0.9)


@pytest.mark.parametrize("name", POLICIES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=workloads(), pool=st.integers(200, 1200), page=st.sampled_from([1, 16]), est=st.booleans())
def test_pool_safety_and_nothing_lost(name, specs, pool, page, est):
    sim = Simulator(
        make_policy(name, LAT, page_size=page),
        LAT,
        pool_tokens=pool,
        page_size=page,
        host_tokens=pool,
        estimator=estimator if est else None,
        check_invariants=True,
        max_iterations=200_000,
    )
    res = sim.run(specs)
    recs = {r.rid: r for r in res.records}
    assert len(recs) == len(specs)
    assert res.summary["submitted"] == res.summary["completed"] + res.summary["failed"]
    for s in specs:
        rec = recs[s.rid]
        if not rec.ok:
            assert rec.error, f"{s.rid} failed without a reason"
            continue
        room = sim.pool.capacity - sim.pool.pages(s.prompt_len) - page - 1
        cap = min(s.max_new_tokens, sim.pool.capacity - 2 - s.prompt_len, room)
        assert rec.output_len == min(s.output_len, cap)
        assert rec.token_times_s == sorted(rec.token_times_s) and rec.token_times_s[0] >= s.arrival_s
    assert not sim.waiting and not sim.running and not sim.prefilling
    assert sim.pool.free + sim.pool.cache.cached_tokens == sim.pool.capacity and sim.pool.host_used == 0
    assert res.summary["preemptions"] == sim.stats.preemptions
