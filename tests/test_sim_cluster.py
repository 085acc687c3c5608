"""Simulated replicas behind a router (issue 14): one replica driven by the cluster is ``Simulator.run`` step for step;
round-robin and SGLang router's cache-aware rule route as the router does; the cluster rate is every replica's;
``python -m eval.simulate --replicas N --router ...`` writes one combined summary."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import profiles
from eval.metrics import SUMMARY_FIELDS, read_records, summarize
from eval.sim import Simulator, make_policy
from eval.sim.cluster import Cluster, ClusterRate, replica_loads
from eval.sim.routing import CacheAware, RoundRobin, request_blocks
from eval.simulate import main
from eval.workloads import RequestSpec, load_workload
from host.rate import ArrivalRate
from policies.base import Policy
from policies.config import ExtConfig
from policies.latency import IterationLatencyModel
from policies.views import Admit, IterationPlan, Preempt, SchedulerView

PROFILE = profiles.get("h100-llama3-8b")


def sims(policy: str, pool: int, cfg: ExtConfig | None = None):
    def make(_i: int = 0) -> Simulator:
        return Simulator(make_policy(policy, PROFILE, cfg or ExtConfig(policy=policy), page_size=16), PROFILE,
                         pool_tokens=pool, page_size=16)  # fmt: skip

    return make


def mooncake(n: int = 60, rate: float | None = 6.0, start: int = 0):
    return load_workload("mooncake", num_requests=n, rate=rate, seed=3, scale=4, start=start)


def same_records(a, b) -> None:
    assert [r.rid for r in a] == [r.rid for r in b]
    for x, y in zip(a, b, strict=True):
        assert (x.token_times_s, x.finish_s, x.error, x.preemptions) == (y.token_times_s, y.finish_s, y.error,
                                                                          y.preemptions), x.rid  # fmt: skip


@pytest.mark.parametrize("policy", ["sglang", "cacheopt"])
def test_one_replica_is_simulator_run_step_for_step(policy: str) -> None:
    specs = mooncake(80, rate=9.0)  # a pool of 12k tokens under ~9 req/s of ~1.7k-token prompts: queues, idle gaps
    pool = 12_000
    alone = sims(policy, pool)().run(specs)
    res = Cluster(sims(policy, pool), 1, "rr").run(specs)
    same_records(sorted(alone.records, key=lambda r: r.arrival_s), res.records)
    assert res.summary == alone.summary and res.stats == alone.stats
    assert alone.stats.preemptions + alone.stats.cache_hit_tokens > 0  # the run exercised the pool and the cache


def test_round_robin_routes_in_turn_and_the_summary_is_over_all_replicas() -> None:
    specs = mooncake(30)
    res = Cluster(sims("sglang", 40_000), 3, "rr").run(specs)
    assert res.routed == [10, 10, 10]
    for k, rep in enumerate(res.replicas):
        assert {r.rid for r in rep.records} == {s.rid for i, s in enumerate(specs) if i % 3 == k}
    assert res.summary == summarize(res.records) and res.summary["submitted"] == 30
    out = res.to_json()
    assert tuple(out)[: len(SUMMARY_FIELDS)] == SUMMARY_FIELDS and len(out["cluster"]["per_replica"]) == 3
    assert out["cluster"]["stats"]["iterations"] == sum(r.stats.iterations for r in res.replicas)


def spec(rid: str, prompt: int, hashes: tuple[int, ...], t: float = 0.0) -> RequestSpec:
    return RequestSpec(rid, t, prompt, 10, 20, prefix_hash_ids=hashes, prefix_block_tokens=100)


def test_cache_aware_follows_the_longest_routed_prefix_while_balanced() -> None:
    r = CacheAware(3, block_tokens=100)
    assert r.route(spec("a", 400, (1, 2, 3, 4)), [0, 0, 0]) == 0  # nothing routed yet: the least loaded (first)
    assert r.route(spec("b", 400, (9, 8, 7, 6)), [1, 0, 0]) == 1  # no match: the least loaded
    assert r.route(spec("c", 450, (1, 2, 3, 5, 6)), [1, 1, 0]) == 0  # 300/450 matched > 0.3: where it went
    assert r.route(spec("d", 400, (1, 7, 7, 7)), [2, 1, 0]) == 2  # 100/400 = 0.25 <= 0.3: the least loaded
    assert r.route(spec("e", 400, (9, 8, 7, 1)), [9, 3, 0]) == 1  # 300/400 on replica 1, busier but balanced
    assert r.decisions == {"imbalanced": 0, "cache_hit": 2, "cache_miss": 3}
    assert r.tree_tokens == [400 + 150, 400 + 100, 400]  # c and e added their private tails


def test_cache_aware_balances_by_queue_when_both_thresholds_are_crossed() -> None:
    r = CacheAware(2, block_tokens=100)
    r.route(spec("a", 400, (1, 2, 3, 4)), [0, 0])
    assert r.route(spec("b", 400, (1, 2, 3, 4)), [100, 30]) == 1  # 70 > 64 and 100 > 45: shortest queue wins
    assert r.route(spec("c", 400, (1, 2, 3, 4)), [100, 40]) in (0, 1)  # now both hold it
    assert r.route(spec("d", 400, (1, 2, 3, 9)), [60, 0]) == r._match(*request_blocks(spec("d", 400, (1, 2, 3, 9)),
                                                                                      100))[1]  # fmt: skip
    assert r.decisions["imbalanced"] == 1  # 60 - 0 is within the absolute threshold: cache-aware


def test_prefix_routing_keeps_conversations_together_and_hits_more_cache_than_round_robin() -> None:
    specs = mooncake(300, rate=None, start=3000)  # the trace's own times: later turns of sessions share prefixes
    rr = Cluster(sims("sglang", 60_000), 4, "rr").run(specs)
    px = Cluster(sims("sglang", 60_000), 4, "prefix").run(specs)
    assert px.stats.cache_hit_tokens > rr.stats.cache_hit_tokens
    assert px.router["decisions"]["cache_hit"] > 0 and sum(px.routed) == 300


def test_cluster_rate_is_every_replicas_arrivals() -> None:
    specs = [RequestSpec(f"r{i}", i * 0.1, 50, 5, 10) for i in range(200)]  # 10 req/s for 20 s
    per = Cluster(sims("sglang", 50_000), 4, "rr")
    per.run(specs)
    glob = Cluster(sims("sglang", 50_000), 4, "rr", rate_scope="cluster")
    glob.run(specs)
    t = 19.95
    assert per.replicas[0].sim.core.arrival_rate(t) == pytest.approx(50 / 19.95, rel=0.05)  # its quarter
    assert glob.replicas[0].sim.core.arrival_rate(t) == pytest.approx(200 / 19.95, rel=0.05)  # all of them
    assert glob.replicas[0].sim.core.rate is glob.replicas[3].sim.core.rate


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 500, allow_nan=False), min_size=1, max_size=60), st.floats(0, 600), st.floats(1, 100))
def test_cluster_rate_matches_one_host_estimate_at_any_reading_time(times, now, window) -> None:
    times = sorted(times)
    now = max(now, times[-1])
    one, shared = ArrivalRate(window), ClusterRate(window)
    for t in times:
        one.observe(t)
        shared.observe(t)
    assert shared.rate(now) == pytest.approx(one.rate(now))
    assert shared.rate(times[0]) >= 0.0  # a replica behind the others reads only what had arrived by its clock


def test_loads_count_requests_in_flight() -> None:
    specs = [RequestSpec(f"r{i}", 0.0, 100, 50, 60) for i in range(6)]
    c = Cluster(sims("sglang", 50_000), 2, "rr")
    res = c.run(specs)
    end = max(r.finish_s for r in res.records)
    assert replica_loads(c, 0.0) == [3, 3] and replica_loads(c, end) == [0, 0]
    assert RoundRobin(2).route(specs[0], [5, 0]) == 0  # round-robin ignores load


def test_cli_replicas_and_router(tmp_path, capsys) -> None:
    out, recs = tmp_path / "s.json", tmp_path / "r.jsonl"
    argv = ["--policy", "sglang", "--profile", "h100-llama3-8b", "--workload", "mooncake", "--num-requests", "40",
            "--scale", "4", "--out", str(out), "--requests-out", str(recs)]  # fmt: skip
    assert main([*argv, "--replicas", "2", "--router", "prefix", "--slo", "abs:2000:80"]) == 0
    s = json.loads(out.read_text())
    assert s["submitted"] == 40 and s["cluster"]["replicas"] == 2 and sum(s["cluster"]["routed"]) == 40
    assert s["cluster"]["router"]["policy"] == "prefix" and len(read_records(recs)) == 40
    assert {(r.ttft_slo_ms, r.tbt_slo_ms) for r in read_records(recs)} == {(2000.0, 80.0)}
    assert "2 x h100-llama3-8b, router prefix" in capsys.readouterr().err
    assert main([*argv, "--replicas", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --replicas: must be >= 1, got 0"
    assert main([*argv, "--slo", "abs:fast"]) == 2 and "abs:TTFT_MS:TBT_MS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--replicas", "2", "--router", "random"])


class Pairs(Policy):
    """Admits only pairs: with one request waiting and nothing running it admits nothing (the host waits for the
    next arrival), which exercises the blocked path of the cluster's replica loop."""

    def plan(self, view: SchedulerView) -> IterationPlan:
        new = [w for w in view.waiting if w.prefilled_len == 0]
        if view.running or len(new) >= 2 or view.chunked_rid is not None:
            admit = tuple(Admit(w.rid, w.seq_len - max(w.prefilled_len, w.cached_len)) for w in view.waiting)
            return IterationPlan(admit=admit)
        return IterationPlan()

    def choose_victims(self, view, tokens_needed):
        return (Preempt(view.running[-1].rid),)


def test_a_replica_that_admits_nothing_waits_for_its_next_arrival_as_in_run() -> None:
    lat = IterationLatencyModel(c0_s=0.01, c_tok_s=0.001, kv_bytes_per_token=1e6, pcie_bytes_per_s=1e9)
    specs = [RequestSpec(f"r{i}", t, 20, 3, 8) for i, t in enumerate((0.0, 0.5, 0.6, 3.0, 3.2, 9.0, 9.05))]
    alone = Simulator(Pairs(lat), lat, pool_tokens=1000).run(specs)
    c = Cluster(lambda i: Simulator(Pairs(lat), lat, pool_tokens=1000), 1, "rr")
    res = c.run(specs)
    same_records(alone.records, res.records)
    assert all(r.ok for r in res.records) and res.records[0].ttft_s > 0.5  # r0 waited for r1 (blocked)
    assert all(not r.busy() and not r.blocked for r in c.replicas)


PROMPT_AND_LOADS = st.tuples(
    st.lists(st.integers(0, 5), min_size=1, max_size=6), st.lists(st.integers(0, 200), min_size=3, max_size=3)
)


@settings(max_examples=60, deadline=None)
@given(st.lists(PROMPT_AND_LOADS, min_size=1, max_size=40))
def test_cache_aware_rule_holds_for_any_sequence(reqs) -> None:
    """Whatever the prompts and loads: imbalanced -> the least loaded; balanced and matched above the threshold ->
    a replica the matched prefix was routed to; else the least loaded."""
    r = CacheAware(3, block_tokens=10)
    sent: dict[tuple, set[int]] = {}
    for i, (hashes, loads) in enumerate(reqs):
        s = spec(f"q{i}", 10 * len(hashes), tuple(hashes))
        s = replace(s, prefix_block_tokens=10)
        blocks = tuple(hashes)
        holders, depth = set(), 0
        for d in range(len(blocks), 0, -1):
            if blocks[:d] in sent:
                holders, depth = sent[blocks[:d]], d
                break
        k = r.route(s, loads)
        least = min(range(3), key=lambda j: (loads[j], j))
        if max(loads) - min(loads) > 64 and max(loads) > 1.5 * min(loads):
            assert k == least
        elif depth * 10 > 0.3 * s.prompt_len:
            assert k in holders
        else:
            assert k == least
        for d in range(1, len(blocks) + 1):
            sent.setdefault(blocks[:d], set()).add(k)
