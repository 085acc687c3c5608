"""Fidelity (issue 3 item 6): the comparison machinery without a server (fast), and a reduced real-server run
(``server`` marker) that bounds the simulator's error against the real tiny CPU server.

The bounds of the real-server check come from the committed measurement (docs/results/fidelity/): see
``REAL_BOUNDS`` for the numbers they were set from.
"""

from __future__ import annotations

import dataclasses

import pytest

from eval import fidelity as fd
from eval import fidelity_probe as fp
from eval import fidelity_report as fr
from eval.metrics import RequestRecord
from eval.workloads import RequestSpec
from policies.latency import BatchShape, IterationLatencyModel
from profiles import Profile
from sglang_ext import config

LAT = IterationLatencyModel(c0_s=0.002, c_tok_s=1e-5, c_attn_decode_s=1e-7, c_seq_s=1e-5)
PROFILE = Profile("test", LAT, 4096, "test", "unit test")
INFO = {
    "max_total_tokens": 600,
    "max_total_num_tokens": 600,
    "chunked_prefill_size": -1,
    "page_size": 1,
    "disable_radix_cache": True,
    "enable_mixed_chunk": True,
    "schedule_policy": "lpm",
    "schedule_conservativeness": 0.5,
    "max_prefill_tokens": 16384,
    "max_running_requests": None,
    "disable_overlap_schedule": False,
}


def specs(n: int = 40, gap_s: float = 0.01) -> list[RequestSpec]:
    """Short prompts, long outputs with a tight cap: SGLang's optimistic ratio lets the running batch outgrow a
    600-token pool (its admission check reserves the whole cap only for the request being admitted)."""
    return [RequestSpec(f"r{i}", i * gap_s, 20 + (i * 7) % 30, 100 + (i * 37) % 100, 100 + (i * 37) % 100)
            for i in range(n)]  # fmt: skip


def test_settings_come_from_the_server_report() -> None:
    s = fd.server_settings(INFO)
    assert s.pool_tokens == 600 and s.page_size == 1
    assert s.chunked_prefill_size == 600  # -1 = no chunking: one chunk can hold the whole pool
    assert not s.prefix_cache and s.mixed_chunk and s.overlap_schedule
    assert s.schedule_policy == "lpm" and s.schedule_conservativeness == 0.5


@pytest.mark.parametrize("policy", ["sglang", "vllm", "none"])
def test_simulation_uses_the_server_pool_and_preempts_under_pressure(policy: str) -> None:
    """A 600-token pool with 40 requests of up to 250 tokens each arriving at once: both baselines must preempt
    and still finish everything."""
    res = fd.simulate(policy, specs(), PROFILE, fd.server_settings(INFO))
    assert res.summary["completed"] == 40 and res.summary["failed"] == 0
    assert res.stats.preemptions > 0
    again = fd.simulate(policy, specs(), PROFILE, fd.server_settings(INFO))
    assert again.summary == res.summary  # deterministic: one simulated run per real rate is enough


def test_larger_pool_means_fewer_preemptions() -> None:
    small = fd.simulate("sglang", specs(), PROFILE, fd.server_settings(INFO))
    big = fd.simulate("sglang", specs(), PROFILE, fd.server_settings(INFO | {"max_total_num_tokens": 8000}))
    assert big.stats.preemptions < small.stats.preemptions


def test_compare_signed_error_and_spread() -> None:
    reals = [{"ttft_p50_ms": 100.0, "preemptions": 1, "completed": 5}, {"ttft_p50_ms": 300.0, "preemptions": 3}]
    row = fr.compare(reals, {"ttft_p50_ms": 150.0, "preemptions": 2, "completed": 5})
    t = row["ttft_p50_ms"]
    assert t["real"] == 200.0 and t["real_spread"] == pytest.approx(1.0)
    assert t["rel_err"] == pytest.approx(-0.25)
    assert row["preemptions"] == {"real_runs": [1, 3], "sim": 2}
    assert row["tbt_p99_ms"]["rel_err"] is None  # missing on both sides: no number invented
    assert fr.relerr(1.0, 0.0) is None


def test_overhead_variant_matches_the_lone_step_and_adds_once_per_iteration() -> None:
    lat = fp.with_overhead(PROFILE, 25.0)
    assert lat.iteration_s(fp.LONE_SHAPE) == pytest.approx(0.025)
    big = BatchShape(((512, 0),), (100,) * 8)
    assert lat.iteration_s(big) - LAT.iteration_s(big) == pytest.approx(0.025 - LAT.iteration_s(fp.LONE_SHAPE))
    assert fp.with_overhead(PROFILE, 0.0) == LAT  # a faster server than the profile: nothing removed


def test_scaled_variant_scales_every_iteration() -> None:
    lat = fp.ScaledLatency(PROFILE, 3.0)
    shape = BatchShape(((64, 10),), (50, 60))
    assert lat.iteration_s(shape) == pytest.approx(3 * LAT.iteration_s(shape))


def test_table_has_one_row_per_policy_and_rate() -> None:
    reals = [{"ttft_p50_ms": 100.0, "tbt_p50_ms": 10.0, "throughput_tok_s": 50.0, "preemptions": 0}]
    sim = {"ttft_p50_ms": 90.0, "tbt_p50_ms": 12.0, "throughput_tok_s": 50.0, "preemptions": 1}
    rate = {"compare": {v: fr.compare(reals, sim) for v in fr.VARIANTS}, "contention_factor": 2.0,
            "lone_decode_ms": 9.0}  # fmt: skip
    doc = {
        "policies": [{"policy": "sglang", "rates": {"1": rate, "2": rate}}, {"policy": "vllm", "rates": {"1": rate}}]
    }
    for which in fr.VARIANTS:
        md = fr.table(doc, which)
        rows = [ln for ln in md.splitlines() if ln.startswith("| sglang") or ln.startswith("| vllm")]
        assert len(rows) == 3
    assert "**-10%**" in md and "**+20%**" in md and "0 / 1" in md


def test_cli_rejects_unknown_policy_and_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert fd.main(["--policies", "bogus", "--out", "/tmp/unused-fidelity"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert fd.main(["--profile", "nope", "--out", "/tmp/unused-fidelity"]) == 2
    assert "valid:" in capsys.readouterr().err


def test_quick_config_is_reduced() -> None:
    q = fd.config_from_args(fd.build_parser().parse_args(["--quick"]))
    full = fd.config_from_args(fd.build_parser().parse_args([]))
    assert q.num_requests < full.num_requests and q.repeats == 1 and len(q.rates) == 1
    assert dataclasses.replace(q, rates=(1.0, 2.0)).specs(2.0)[0].prompt_len == q.specs(1.0)[0].prompt_len


def test_iteration_stats_count_clusters_of_token_times() -> None:
    a = RequestRecord("a", 0.0, 10, 8, 3, token_times_s=[0.010, 0.020, 0.030])
    b = RequestRecord("b", 0.0, 10, 8, 3, token_times_s=[0.0101, 0.0201, 5.0])  # 5 s: after an idle gap
    it = fr.iteration_stats([a, b], tol_s=0.001)
    assert it["events"] == 4 and it["tokens_per_event"] == pytest.approx(1.5)
    assert it["gap_p50_ms"] == pytest.approx(10.0, rel=0.02)  # the idle gap is not an iteration
    exact = fr.iteration_stats([a, b])
    assert exact["events"] == 6


def test_render_reports_every_variant_and_the_iteration_table() -> None:
    res = fd.simulate("sglang", specs(), PROFILE, fd.server_settings(INFO))
    sim = fd._short(res.summary) | {"iterations": fr.iteration_stats(res.records)}
    real = sim | {"loadavg_before": 1.0, "loadavg_after": 2.0}
    rate = {"real": [real], **{v: sim for v in fr.VARIANTS}, "contention_factor": 1.0, "lone_decode_ms": 2.0,
            "compare": {v: fr.compare([real], sim) for v in fr.VARIANTS}}  # fmt: skip
    cfg = fd.FidelityRun(policies=("sglang",), num_requests=40, repeats=1)
    doc = {"date": "today", "config": dataclasses.asdict(cfg), "profile": {"name": "test", "source": "unit"},
           "policies": [{"policy": "sglang", "settings": dataclasses.asdict(fd.server_settings(INFO)),
                         "rates": {"1": rate}}]}  # fmt: skip
    md = fr.render(doc)
    assert md.count("**+0%**") == 5 * len(fr.VARIANTS)  # sim == real: zero error on every metric, every table
    assert "radix cache off, mixed chunk on" in md and "| sglang | 1 | real #0 |" in md


# Bounds of the reduced real-server check, set from the committed measurement (docs/results/fidelity/README.md):
# on the shared 2-core machine (load average 2-11 during the runs) the simulated throughput was 0% to +72% of the
# real one below capacity (the real server falls behind when the machine is busy, the simulator never does), and
# every simulated latency percentile was below the real one (the profile is a bare forward pass: no HTTP,
# tokenizer/detokenizer, scheduler overhead or contention). A simulator that drops or duplicates work, runs the
# wrong settings, or becomes slower than the real server fails these.
REAL_BOUNDS = {"throughput_min_err": -0.10, "throughput_max_err": 1.0}


@pytest.mark.server
def test_reduced_fidelity_against_the_real_server(tmp_path) -> None:
    """40 requests of the slice at 2 req/s through the real server with ``--ext-policy sglang``, then simulated
    with the server's reported settings (< 3 min)."""
    cfg = fd.FidelityRun(policies=("sglang",), rates=(2.0,), num_requests=40, repeats=1, pool_tokens=2048)
    # the bare-forward profile: faster than the server at every step, so the simulated latencies bound the real ones
    # from below (the server-fitted cpu-tiny, eval.fidelity's default, lands on either side of them)
    res = fd.run_policy("sglang", cfg, fd.pick_profile("cpu-tiny-torch"), tmp_path)
    s = res["settings"]
    assert s["pool_tokens"] == 2048 and s["page_size"] == 1 and s["prefix_cache"] and not s["mixed_chunk"]
    r = res["rates"]["2"]
    real = r["real"][0]
    assert real["completed"] == 40 and real["length_mismatches"] == 0 and not real["aborted"]
    for v in fr.VARIANTS:
        assert r[v]["completed"] == 40
    c = r["compare"]["sim"]
    err = c["throughput_tok_s"]["rel_err"]
    assert REAL_BOUNDS["throughput_min_err"] <= err <= REAL_BOUNDS["throughput_max_err"], c["throughput_tok_s"]
    for m in ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tbt_p99_ms", "e2e_p50_ms"):
        assert c[m]["sim"] <= c[m]["real"], (m, c[m])
    assert c["preemptions"]["real_runs"][0] is not None  # the server's retraction counter was read


def test_server_log_runs_split_at_flushes_and_time_busy_decodes() -> None:
    line = "[t] Decode batch, #running-req: {}, #token: {}, token usage: 0.5, cpu graph: False, gen throughput (token/s): {}, #queue-req: {}"  # noqa: E501
    log = "\n".join([
        line.format(1, 10, 100.0, 0),  # warm-up, before any run: ignored
        "[t] Cache flushed successfully!",
        line.format(4, 900, 40.0, 3),  # busy: 4 / 40 tok/s = 100 ms per decode iteration
        line.format(2, 300, 10.0, 0),  # queue empty: idle time may be inside, not timed
        "[t] Cache flushed successfully!",
        line.format(8, 1500, 400.0, 5),
    ])  # fmt: skip
    runs = fr.server_log_runs(log)
    assert len(runs) == 2
    assert runs[0]["busy_iteration_ms_p50"] == pytest.approx(100.0) and runs[0]["decode_logs"] == 2
    assert runs[0]["max_token_usage"] == 900 and runs[1]["busy_running_p50"] == 8
    assert runs[1]["busy_iteration_ms_p50"] == pytest.approx(20.0)


def test_demo_scenario_runs_each_side_with_its_own_flags() -> None:
    """The demo fidelity pair: stock with SGLang's mixed chunk, CacheOPT with the demo's flags; the simulator side
    is configured from the same flags (mixed chunk, online length bound)."""
    from eval.demo import DEFAULT_EXT_ARGS, DEFAULT_STOCK_ARGS

    cfg = fd.config_from_args(fd.build_parser().parse_args(["--scenario", "demo"]))
    assert cfg.policies == ("none", "cacheopt") and (cfg.scale, cfg.output_scale, cfg.pool_tokens) == (8, 16, 2048)
    assert cfg.flags("none") == ["--ext-policy", "none", *DEFAULT_STOCK_ARGS.split()]
    assert cfg.flags("cacheopt") == ["--ext-policy", "cacheopt", *DEFAULT_EXT_ARGS.split()]
    ext = config.from_argv([*cfg.flags("cacheopt"), "--model-path", "x"])
    assert ext.predictor.mode == "online" and ext.cacheopt.mixed_chunk
    base_specs = fd.SCENARIOS["baselines"].specs(1.5)
    demo_specs = cfg.specs(1.5)
    mean_out = sum(s.output_len for s in demo_specs) / len(demo_specs)
    assert mean_out > 1.5 * sum(s.output_len for s in base_specs) / len(base_specs)  # outputs x2 against / 4
    custom = fd.config_from_args(fd.build_parser().parse_args(["--policy-args", "vllm=--page-size 16"]))
    assert custom.flags("vllm")[-2:] == ["--page-size", "16"]
    assert fd.main(["--policy-args", "no-equals-sign", "--out", "/tmp/unused-fidelity"]) == 2


def test_online_estimates_in_the_simulator_learn_from_finished_requests() -> None:
    """``--ext-predictor-mode online`` in the simulator: estimates are the cap until 16 requests finished, then
    the distribution of finished lengths, re-issued to live requests at every finish."""
    from eval.estimates import OnlineEstimator
    from eval.sim import Simulator, sim_capabilities
    from policies import base
    from policies.config import ExtConfig, PredictorConfig

    cfg = ExtConfig(policy="cacheopt", predictor=PredictorConfig(mode="online"))
    pol = base.create("cacheopt", LAT, cfg, sim_capabilities("cacheopt", cfg, page_size=1))
    est = OnlineEstimator(0.95, 0.001)
    work = specs(60, 0.2)
    res = Simulator(pol, LAT, pool_tokens=2000, estimator=est).run(work)
    assert res.summary["completed"] == 60
    dist = est.bound.distribution()
    lengths = sorted(s.output_len for s in work)
    assert dist is not None and dist.values[0] == lengths[30]  # its median: it saw every finished length
    assert est.rate() > 0  # it reads the simulator's arrival-rate estimate
    e = est.current(400, 0)
    assert not e.fallback and e.bound <= max(lengths) and e.point >= min(lengths)
    assert est.current(400, max(lengths)).bound == 400  # past everything seen: only its cap bounds it
    fresh = OnlineEstimator(0.95, 0.001)
    assert fresh(work[0]).fallback and fresh(work[0]).bound == work[0].max_new_tokens  # nothing finished yet
