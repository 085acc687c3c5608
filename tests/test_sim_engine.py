"""The simulator's physics: timing from the latency model, hidden lengths, rejection, stall detection, radix
cache sharing, swap and recompute preemption."""

from __future__ import annotations

import pytest

from eval.sim import PolicyError, SimulationStalled, Simulator
from eval.workloads import RequestSpec
from policies.base import Policy, create
from policies.config import ExtConfig, SGLangBaselineConfig
from policies.latency import BatchShape, IterationLatencyModel
from policies.views import (
    Admit,
    IterationPlan,
    LengthEstimate,
    OracleRunningView,
    OracleWaitingView,
    Preempt,
    PreemptMode,
    SchedulerView,
)

LAT = IterationLatencyModel(c0_s=0.01, c_tok_s=0.001, kv_bytes_per_token=1e6, pcie_bytes_per_s=1e9)


def spec(rid: str, t: float, prompt: int, out: int, max_new: int = 64, hashes=(), block=0) -> RequestSpec:
    return RequestSpec(rid, t, prompt, out, max_new, prefix_hash_ids=hashes, prefix_block_tokens=block)


def test_single_request_timing_and_length():
    sim = Simulator(create("sglang", LAT), LAT, pool_tokens=1000, check_invariants=True)
    res = sim.run([spec("a", 1.0, 100, 5)])
    rec = res.records[0]
    assert rec.ok and rec.output_len == 5 and rec.preemptions == 0
    prefill = LAT.iteration_s(BatchShape(prefill=((100, 0),)))
    assert rec.ttft_s == pytest.approx(prefill)
    assert rec.gaps_s == pytest.approx([LAT.iteration_s(BatchShape(decode_ctx=(101 + i,))) for i in range(4)])
    assert res.summary["completed"] == 1


def test_output_stops_at_visible_cap():
    res = Simulator(create("vllm", LAT), LAT, pool_tokens=1000).run([spec("a", 0, 10, 500, max_new=7)])
    assert res.records[0].output_len == 7


class Spy(Policy):
    """Records what it is shown; admits everything that fits, one request at a time."""

    def __init__(self, latency, config=None, host=None):
        super().__init__(latency, config, host)
        self.seen: list = []

    def plan(self, view: SchedulerView) -> IterationPlan:
        self.seen.extend(view.waiting)
        self.seen.extend(view.running)
        for w in view.waiting:
            todo = w.seq_len - max(w.prefilled_len, w.cached_len)
            if todo + w.cached_len + len(view.running) + 1 <= view.pool.available_tokens:  # the hit is pinned
                return IterationPlan(admit=(Admit(w.rid, todo),))
            break
        return IterationPlan()

    def choose_victims(self, view, tokens_needed):
        return (Preempt(view.running[-1].rid),)


class OracleSpy(Spy):
    needs_oracle = True


def test_true_length_hidden_except_for_oracle():
    specs = [spec("a", 0, 10, 3), spec("b", 0, 10, 4)]
    plain = Spy(LAT)
    Simulator(plain, LAT, pool_tokens=1000).run(specs)
    assert plain.seen and not any(isinstance(v, OracleWaitingView | OracleRunningView) for v in plain.seen)
    assert not any(hasattr(v, "true_output_len") for v in plain.seen)
    oracle = OracleSpy(LAT)
    Simulator(oracle, LAT, pool_tokens=1000).run(specs)
    assert {v.true_output_len for v in oracle.seen if v.rid == "b"} == {4}


def test_estimator_never_sees_true_length():
    got = []

    def est(s: RequestSpec) -> LengthEstimate:
        got.append(s.output_len)
        return LengthEstimate(point=10, bound=20, confidence=0.9)

    pol = Spy(LAT)
    Simulator(pol, LAT, pool_tokens=1000, estimator=est).run([spec("a", 0, 10, 3)])
    assert got == [-1]
    assert pol.seen[0].estimate == LengthEstimate(10, 20, 0.9)


def test_prompt_larger_than_pool_is_rejected_with_reason():
    res = Simulator(create("sglang", LAT), LAT, pool_tokens=100).run([spec("big", 0, 500, 3), spec("ok", 0, 10, 2)])
    big, ok = res.records
    assert big.error and "does not fit" in big.error and ok.ok
    assert res.summary["submitted"] == 2 and res.summary["failed"] == 1


class Idle(Spy):
    def plan(self, view):
        return IterationPlan()


def test_policy_that_never_admits_fails_loudly():
    with pytest.raises(SimulationStalled, match="admits nothing"):
        Simulator(Idle(LAT), LAT, pool_tokens=1000).run([spec("a", 0, 10, 3)])


class Greedy(Spy):
    owns_kv_accounting = False  # no engine budget in the way: only the physical pool can stop it

    def plan(self, view):
        return IterationPlan(admit=tuple(Admit(w.rid, w.seq_len) for w in view.waiting))


def test_over_commit_is_a_policy_error():
    with pytest.raises(PolicyError, match="over-committed"):
        Simulator(Greedy(LAT), LAT, pool_tokens=100).run([spec(f"r{i}", 0, 40, 3) for i in range(3)])


class GreedyReserver(Greedy):
    """Owns its KV accounting, so its plans are executed under the engine's prefill budget (host.budget)."""

    owns_kv_accounting = True


def test_reserving_policy_is_held_to_the_engine_budget_and_refusals_are_counted():
    sim = Simulator(GreedyReserver(LAT), LAT, pool_tokens=100, check_invariants=True)
    res = sim.run([spec(f"r{i}", 0, 40, 3) for i in range(3)])
    assert all(r.ok for r in res.records)  # the third waits until the first two leave instead of over-committing
    assert sim.core.counters["budget_refusals"] >= 1


def test_shared_prefix_blocks_hit_the_radix_cache():
    specs = [spec("a", 0, 40, 2, hashes=(1, 2), block=16), spec("b", 5, 40, 2, hashes=(1, 3), block=16)]
    sim = Simulator(create("sglang", LAT), LAT, pool_tokens=1000, check_invariants=True)
    res = sim.run(specs)
    assert sim.stats.cache_hit_tokens == 16 and all(r.ok for r in res.records)
    assert sim.stats.prefill_tokens == 40 + 24


def test_recompute_preemption_requeues_and_reprefills():
    # an optimistic ratio (conservativeness 0.1) admits four requests whose KV outgrows the pool: sglang
    # retracts, and the retracted request re-prefills prompt + outputs later
    specs = [spec(c, t, 20, 95, max_new=100) for c, t in zip("abcd", (0, 0, 0.1, 0.2), strict=True)]
    cfg = ExtConfig(sglang=SGLangBaselineConfig(schedule_conservativeness=0.1))
    sim = Simulator(create("sglang", LAT, config=cfg), LAT, pool_tokens=300, check_invariants=True)
    res = sim.run(specs)
    assert all(r.ok and r.output_len == 95 for r in res.records)
    assert sim.stats.preemptions >= 1 and res.summary["preemptions"] == sim.stats.preemptions
    assert sim.stats.cache_hit_tokens > 0  # the retracted prompt was still in the radix cache


class Swapper(Spy):
    def choose_victims(self, view, tokens_needed):
        return (Preempt(view.running[-1].rid, PreemptMode.SWAP),)


def test_swap_preemption_moves_kv_to_host_and_back():
    specs = [spec("a", 0, 20, 30), spec("b", 0, 20, 30)]
    sim = Simulator(Swapper(LAT), LAT, pool_tokens=80, check_invariants=True)
    res = sim.run(specs)
    assert all(r.ok and r.output_len == 30 for r in res.records)
    assert sim.stats.swaps_out >= 1 and sim.stats.swaps_in == sim.stats.swaps_out
    assert sim.pool.host_used == 0
    slow = max(r.stall_s for r in res.records)
    assert slow >= 2 * LAT.swap_s(40)  # the swapped request waited at least for its KV out and back


def test_swap_falls_back_to_recompute_without_host_memory():
    sim = Simulator(Swapper(LAT), LAT, pool_tokens=80, host_tokens=0, check_invariants=True)
    res = sim.run([spec("a", 0, 20, 30), spec("b", 0, 20, 30)])
    assert all(r.ok for r in res.records) and sim.stats.swaps_out == 0 and sim.stats.swap_fallbacks >= 1


class Observer(Spy):
    def __init__(self, latency, config=None, host=None):
        super().__init__(latency, config, host)
        self.observed: list = []

    def observe_iteration(self, shape, seconds):
        self.observed.append((shape, seconds))


def test_iterations_are_reported_to_policies_that_observe_them():
    pol = Observer(LAT)
    Simulator(pol, LAT, pool_tokens=1000).run([spec("a", 0, 10, 3)])
    assert [s for _, s in pol.observed] == [LAT.iteration_s(sh) for sh, _ in pol.observed]
    assert pol.observed[0][0] == BatchShape(prefill=((10, 0),)) and len(pol.observed) == 3
