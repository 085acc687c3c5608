"""The extension scaled out on SGLang's own engine (issue 14), on CPU with the tiny model:

- ``--dp-size 2``: both data-parallel workers serve a burst with per-request SLOs under the extension (their
  ``sglang_ext:`` series on ``/metrics``, labelled by ``dp_rank``), the launcher started exactly one predictor
  service, and that service saw both workers by name (statistics and predictions from each).
- Two extension servers behind SGLang's router (``smg``, cache-aware policy): the load generator, pointed at the
  router, completes every request at its exact length (the EOS forcer's target travels in ``custom_params``, like
  the SLOs), both servers served some under the extension, and an invalid SLO is refused through the router.

Each test prints the load generator's throughput (and, for the router, one server's on the same requests); on this
2-core machine the extra workers share the same cores, so these numbers show the set-up works, not a speed-up.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eval.loadgen import run_load
from eval.router import RouterProcess, router_args
from eval.server import ServerProcess, cpu_server_args
from eval.workloads import load_workload
from predictors.process import wait_ready

pytestmark = [pytest.mark.server, pytest.mark.slow]

TIMEOUTS = {"stall_timeout_s": 120.0, "request_timeout_s": 400.0, "health_interval_s": 10.0, "progress": False}


def burst(n: int = 24) -> list:
    """``n`` AlpacaEval prompts as text (the router's cache-aware policy matches text; outputs / 8) arriving within
    ~1.5 s, each with its own SLOs."""
    specs = load_workload("alpaca", num_requests=n, rate=16.0, scale=8.0, max_context=512, seed=5)
    return [replace(s, ttft_slo_ms=3000.0 + 500 * (i % 3), tbt_slo_ms=200.0 + 100 * (i % 2))
            for i, s in enumerate(specs)]  # fmt: skip


def by_rank(base_url: str, family: str = "sglang_ext:admissions", suffix: str = "_total",
            **labels: str) -> dict[str, float]:  # fmt: skip
    """A ``sglang_ext:`` metric from ``/metrics`` summed per ``dp_rank`` (over the labels not given)."""
    out: dict[str, float] = {}
    text = httpx.get(base_url + "/metrics", timeout=30).text
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            for s in fam.samples:
                if s.name.endswith(suffix) and all(s.labels.get(k) == v for k, v in labels.items()):
                    out[s.labels["dp_rank"]] = out.get(s.labels["dp_rank"], 0.0) + s.value
    return out


def admissions_by_rank(base_url: str) -> dict[str, float]:
    return by_rank(base_url)


def report(label: str, summary: dict) -> None:
    print(json.dumps({"run": label, "completed": summary["completed"], "throughput_tok_s":
                      round(summary["throughput_tok_s"], 1), "slo_attainment": summary["slo_attainment"]}))  # fmt: skip


def test_dp2_workers_serve_under_the_extension_with_one_shared_service(tmp_path: Path) -> None:
    extra = ["--dp-size", "2", "--ext-policy", "cacheopt", "--ext-predictor-mode", "service"]
    env = {"SGLANG_CPU_OMP_THREADS_BIND": "0|1"}  # SGLang on CPU needs the cores of each DP rank named
    with ServerProcess(cpu_server_args(pool_tokens=2048, extra=extra), env=env, log_path=tmp_path / "dp.log") as srv:
        log = srv.log_text()
        assert log.count("predictor service pid=") == 1, log  # started once, by the launcher
        m = re.search(r"predictor service pid=\d+ at (\S+)", log)
        assert m is not None
        specs = burst()
        records, summary = run_load(srv.base_url, specs, **TIMEOUTS)
        report("dp2", summary)
        assert summary["completed"] == len(specs), summary["errors"]
        assert [r.output_len for r in records] == [s.output_len for s in specs]
        admitted = admissions_by_rank(srv.base_url)
        assert set(admitted) == {"0", "1"} and min(admitted.values()) > 0, admitted  # both workers, the extension's
        pools = by_rank(srv.base_url, "sglang_ext:kv_pool_tokens", "", state="capacity")
        assert set(pools) == {"0", "1"} and min(pools.values()) > 0, pools  # each worker reports its own pool
        log = srv.log_text()
        for rank in (0, 1):
            assert re.search(rf"adapter active in scheduler pid=\d+ policy=cacheopt dp_rank={rank} ", log), log[-3000:]
        pong = wait_ready(m.group(1), 30)
        assert pong is not None
        workers = {name: w for name, w in pong["workers"].items() if re.search(r":\d+/dp[01]$", name)}
        assert sorted(n[-3:] for n in workers) == ["dp0", "dp1"], pong["workers"]
        assert all(w["stats"] > 0 and w["predictions"] > 0 for w in workers.values()), workers


def test_two_extension_servers_behind_sglang_router(tmp_path: Path) -> None:
    extra = ["--ext-policy", "cacheopt", "--ext-predictor-mode", "online"]
    args = cpu_server_args(pool_tokens=2048, extra=extra)
    with (
        ServerProcess(args, log_path=tmp_path / "a.log") as a,
        ServerProcess(args, log_path=tmp_path / "b.log") as b,
        RouterProcess(
            router_args([a.base_url, b.base_url], "cache_aware", ["--load-monitor-interval", "1"]),
            log_path=tmp_path / "router.log",
        ) as r,
    ):
        specs = burst()
        records, summary = run_load(r.base_url, specs, **TIMEOUTS)  # first: both servers idle and cold
        report("router, two servers", summary)
        assert summary["completed"] == len(specs), summary["errors"]
        assert [rec.output_len for rec in records] == [s.output_len for s in specs]
        served = {name: admissions_by_rank(s.base_url).get("0", 0.0) for name, s in (("a", a), ("b", b))}
        assert min(served.values()) > 0 and sum(served.values()) >= len(specs), served  # both, under the extension
        httpx.post(a.base_url + "/flush_cache", timeout=30)  # one server alone on the same requests, cold too
        _, alone = run_load(a.base_url, [replace(s, rid=s.rid + "-alone") for s in specs], **TIMEOUTS)
        report("one server", alone)
        bad = {"text": "hi", "sampling_params": {"max_new_tokens": 4, "custom_params": {"ttft_slo_ms": -5}}}
        refused = httpx.post(r.base_url + "/generate", json=bad, timeout=60)
        assert refused.status_code == 400 and "ttft_slo_ms" in refused.text  # SLOs reach the servers unchanged
