"""Simulator fidelity, measured (issue 3 item 6): the same workload slice on the real tiny SGLang CPU server and in
the simulator with the fitted CPU latency profile, for the ``sglang`` and ``vllm`` baselines.

Why: every simulated ratio the project reports (CacheOPT C1-C5, AccelGen A1-A4 at GPU scale) rests on the
simulator reproducing a real scheduler's latencies and preemptions. This measures how far it is from a real one.

Per policy, one real server (``eval.server``, the plugin installed, ``--ext-policy P``: the same policy code runs
inside SGLang through the adapter) replays a seeded Poisson slice of the Azure conversation trace (lengths / 4) at
each rate, prefix cache flushed before each run, ``cap`` mode (realistic ``max_new_tokens``, true length via the
EOS forcer). The simulator then runs the same :class:`RequestSpec` list with the same policy and the settings the
server reports on ``/server_info`` (KV pool, chunked-prefill size, page size, radix cache on/off, mixed chunk),
so the only differences left are the latency model and what the simulator does not model (see ``docs``).

    python -m eval.fidelity --out docs/results/fidelity/            # 2 policies x 2 rates x 2 repeats, ~20 min
    python -m eval.fidelity --quick --out /tmp/fidelity             # 1 rate, 1 repeat, 60 requests, ~4 min

Writes ``fidelity.json`` (every real and simulated summary, settings, load average, contention probes, the
scheduler log's iteration times) and ``fidelity.md`` (eval.fidelity_report). The simulated side runs three
latency variants: the profile as fitted, its per-iteration constant raised to the lone decode step measured
around the runs, and every iteration scaled by measured / predicted (the probes: :mod:`eval.fidelity_probe`);
results: docs/results/fidelity/README.md.
Relative error = (sim - real) / real, signed; against the mean over the real repeats, whose spread
((max - min) / mean) is reported beside it so that noise and model error can be told apart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np

import profiles
from eval.demo import DEFAULT_EXT_ARGS, DEFAULT_STOCK_ARGS
from eval.estimates import OnlineEstimator
from eval.fidelity_probe import (
    FidelityError,
    ScaledLatency,
    contention_factor,
    isolated_ttft_ms,
    with_overhead,
)
from eval.fidelity_report import attach_server_log, compare, iteration_stats, render, tpot
from eval.loadgen import LoadgenError, run_load
from eval.metrics import RequestRecord, write_records
from eval.server import ServerError, ServerProcess, cpu_server_args
from eval.sim import Simulator, sim_capabilities
from eval.workloads import RequestSpec, load_workload
from policies import base
from policies.config import SGLangBaselineConfig
from policies.latency import LatencyModel
from sglang_ext import config

ROOT = Path(__file__).resolve().parents[1]
PROFILE_PREFERENCE = ("cpu-tiny", "cpu-tiny-torch")  # server-fitted first, then the bare-forward fit
WARMUP_REQUESTS = 24  # unmeasured, before the first run: a fresh server's first iterations of each shape are slow
REAL_EVENT_TOL_S = 0.003  # a real iteration's tokens reach the client within this (the detokenizer sends a batch)
# a policy name on the real side -> the policy the simulator runs ('none' is stock SGLang = the sglang baseline)
SIM_POLICY = {"none": "sglang"}


@dataclass(frozen=True)
class FidelityRun:
    """What one fidelity measurement replays."""

    policies: tuple[str, ...] = ("sglang", "vllm")
    rates: tuple[float, ...] = (2.0, 5.0)
    num_requests: int = 150
    repeats: int = 2
    pool_tokens: int = 2048
    seed: int = 0
    scale: float = 4.0
    max_context: int = 2048
    workload: str = "azure-conv"
    output_scale: float = 1.0  # multiplies every true output length (the demo's long, heavy-tailed answers)
    profile: str = ""  # empty: the first of PROFILE_PREFERENCE that exists
    server_extra: tuple[str, ...] = ()
    policy_args: tuple[tuple[str, str], ...] = ()  # (policy, its own server flags), e.g. the demo's matched pair
    timeout_s: float = 300.0
    progress: bool = False
    requests_dir: str | None = None  # write per-request JSON lines (real and simulated) here

    def specs(self, rate: float) -> list[RequestSpec]:
        return load_workload(self.workload, num_requests=self.num_requests, rate=rate, seed=self.seed,
                             scale=self.scale, max_context=self.max_context,
                             output_scale=self.output_scale)  # fmt: skip

    def flags(self, policy: str) -> list[str]:
        """Server flags of one policy's side: ``--ext-policy``, its own flags, then the common extras."""
        own = dict(self.policy_args).get(policy, "")
        return ["--ext-policy", policy, *own.split(), *self.server_extra]


# Named configurations. ``demo``: issue 11's live KV-bound scenario as ``eval.demo`` runs it (Azure conversations,
# prompts / 8, outputs x 16 / 8, pool 2,048 tokens, 100 requests at 1.5 req/s, context cut to half the pool) with the
# demo's matched flags per side: stock SGLang with its mixed chunk, and CacheOPT with mixed chunk and the online
# length bound (the trace has no text). Unlike the demo, requests carry no SLOs (fidelity compares latencies), so
# CacheOPT orders its queue by arrival (resumed requests first) rather than by TTFT slack.
SCENARIOS: dict[str, FidelityRun] = {
    "baselines": FidelityRun(),
    "demo": FidelityRun(policies=("none", "cacheopt"), rates=(1.5,), num_requests=100, repeats=3, scale=8.0,
                        output_scale=16.0, max_context=1024,
                        policy_args=(("none", DEFAULT_STOCK_ARGS), ("cacheopt", DEFAULT_EXT_ARGS))),
}  # fmt: skip


@dataclass
class Settings:
    """The scheduler settings the real server runs with, as it reports them; the simulator copies them."""

    pool_tokens: int
    chunked_prefill_size: int
    page_size: int
    prefix_cache: bool
    mixed_chunk: bool
    schedule_policy: str
    schedule_conservativeness: float
    max_prefill_tokens: int
    max_running_requests: int | None
    overlap_schedule: bool
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def pick_profile(name: str = "") -> profiles.Profile:
    """The named profile, else the best CPU profile available (the server-fitted ``cpu-tiny`` when it exists)."""
    if name:
        return profiles.get(name)
    have = profiles.available()
    for p in PROFILE_PREFERENCE:
        if p in have:
            return profiles.get(p)
    raise ValueError(f"no CPU profile found (looked for {', '.join(PROFILE_PREFERENCE)}); valid: {', '.join(have)}")


def server_settings(info: dict[str, Any]) -> Settings:
    """Settings from ``/server_info`` (server args plus the scheduler's ``max_total_num_tokens``)."""
    chunk = int(info.get("chunked_prefill_size") or -1)
    pool = int(info.get("max_total_num_tokens") or info["max_total_tokens"])
    return Settings(
        pool_tokens=pool,
        chunked_prefill_size=chunk if chunk > 0 else pool,
        page_size=int(info.get("page_size") or 1),
        prefix_cache=not bool(info.get("disable_radix_cache")),
        mixed_chunk=bool(info.get("enable_mixed_chunk")),
        schedule_policy=str(info.get("schedule_policy") or "fcfs"),
        schedule_conservativeness=float(info.get("schedule_conservativeness") or 1.0),
        max_prefill_tokens=int(info.get("max_prefill_tokens") or 16384),
        max_running_requests=info.get("max_running_requests"),
        overlap_schedule=not bool(info.get("disable_overlap_schedule")),
        raw={k: info.get(k) for k in ("max_total_tokens", "max_total_num_tokens", "chunked_prefill_size",
                                      "max_running_requests", "enable_mixed_chunk", "disable_overlap_schedule")},
    )  # fmt: skip


def fetch_server_info(base_url: str) -> dict[str, Any]:
    r = httpx.get(base_url + "/server_info", timeout=30.0)
    r.raise_for_status()
    info = r.json()
    flat = dict(info)
    for sched in info.get("internal_states") or []:  # the scheduler's own figures (max_total_num_tokens, ...)
        flat |= {k: v for k, v in sched.items() if k not in flat or flat[k] is None}
    return flat


def simulate(policy: str, specs: list[RequestSpec], profile: LatencyModel, s: Settings, flags: Sequence[str] = ()):
    """The simulator with the real server's settings; the policy sees the same ExtConfig the adapter builds from
    the side's ``flags``, and, with ``--ext-predictor-mode online``, the same online length estimates."""
    sim_policy = SIM_POLICY.get(policy, policy)
    sg = SGLangBaselineConfig(schedule_policy=s.schedule_policy if s.schedule_policy in ("fcfs", "lpm") else "fcfs",
                              schedule_conservativeness=s.schedule_conservativeness,
                              chunked_prefill_size=s.chunked_prefill_size, mixed_chunk=s.mixed_chunk)  # fmt: skip
    cfg = replace(config.from_argv(list(flags)), policy=sim_policy, sglang=sg)
    caps = sim_capabilities(sim_policy, cfg, page_size=s.page_size)
    caps = replace(caps, max_prefill_tokens=s.max_prefill_tokens, max_running_requests=s.max_running_requests)
    pol = base.create(sim_policy, profile, cfg, caps)
    est = OnlineEstimator(cfg.predictor.alpha, cfg.predictor.beta) if cfg.predictor.mode == "online" else None
    sim = Simulator(pol, profile, pool_tokens=s.pool_tokens, page_size=s.page_size, prefix_cache=s.prefix_cache,
                    estimator=est)  # fmt: skip
    return sim.run(specs)


def _short(summary: dict[str, Any]) -> dict[str, Any]:
    keep = ("submitted", "completed", "failed", "duration_s", "throughput_tok_s", "preemptions", "client_max_lag_ms",
            "length_mismatches", "errors", "aborted", "loadavg_before", "loadavg_after", "wall_s", "lone_decode_ms",
            "contention")  # fmt: skip
    pcts = [k for k in summary if k.endswith("_ms") and k.split("_")[0] in ("ttft", "tbt", "stall", "e2e")]
    return {k: summary[k] for k in (*keep, *pcts) if k in summary}


def run_policy(policy: str, cfg: FidelityRun, profile: profiles.Profile, out: Path) -> dict[str, Any]:
    """One real server for ``policy``; per rate: ``repeats`` real replays (each bracketed by a contention probe),
    then the simulator twice (deterministic): with the profile as fitted, and scaled by the measured contention."""
    args = cpu_server_args(pool_tokens=cfg.pool_tokens, extra=cfg.flags(policy))
    res: dict[str, Any] = {"policy": policy, "server_args": args, "rates": {}}
    with ServerProcess(args, log_path=out / f"server_{policy}.log", startup_timeout_s=cfg.timeout_s) as srv:
        settings = server_settings(fetch_server_info(srv.base_url))
        res["settings"] = asdict(settings)
        warm = [replace(x, arrival_s=0.05 * i) for i, x in enumerate(cfg.specs(1.0)[:WARMUP_REQUESTS])]
        run_load(srv.base_url, warm, mode="cap", seed=cfg.seed + 1, progress=False, request_timeout_s=cfg.timeout_s)
        res["isolated_ttft_ms"] = isolated_ttft_ms(srv.base_url)
        res["sim_isolated_ttft_ms"] = profile.prefill_s(64) * 1e3
        print(f"[fidelity] {policy}: server up in {srv.startup_s:.0f} s; {settings}", file=sys.stderr, flush=True)
        for rate in cfg.rates:
            specs = cfg.specs(rate)
            reals, factors, lone = [], [], []
            for rep in range(cfg.repeats):
                ms0, k0 = contention_factor(srv.base_url, profile)
                la0, t0 = os.getloadavg()[0], time.monotonic()
                records, summary = run_load(srv.base_url, specs, mode="cap", seed=cfg.seed, flush_cache=True,
                                            progress=cfg.progress, request_timeout_s=cfg.timeout_s)  # fmt: skip
                wall, la1 = time.monotonic() - t0, os.getloadavg()[0]
                ms1, k1 = contention_factor(srv.base_url, profile)
                factors += [k0, k1]
                lone += [ms0, ms1]
                summary |= {"loadavg_before": la0, "loadavg_after": la1, "wall_s": wall,
                            "lone_decode_ms": [ms0, ms1], "contention": [k0, k1]}  # fmt: skip
                reals.append(
                    _short(summary) | tpot(records) | {"iterations": iteration_stats(records, REAL_EVENT_TOL_S)}
                )
                _dump(cfg, f"real_{policy}_r{rate:g}_{rep}", records)
                print(
                    f"[fidelity] {policy} @ {rate:g} req/s real #{rep}: {_brief(summary)}; lone decode "
                    f"{ms0:.1f}/{ms1:.1f} ms (x{k0:.1f}/x{k1:.1f} the profile)",
                    file=sys.stderr,
                    flush=True,
                )
            k = float(np.median(factors))
            sims: dict[str, Any] = {}
            variants = (("sim", profile), ("sim_overhead", with_overhead(profile, float(np.median(lone)))),
                        ("sim_scaled", ScaledLatency(profile, k)))  # fmt: skip
            for name, lat in variants:
                t0 = time.monotonic()
                sim = simulate(policy, specs, lat, settings, cfg.flags(policy))
                extra = {"wall_s": time.monotonic() - t0, "sim_iterations": sim.stats.iterations,
                         "iterations": iteration_stats(sim.records)}  # fmt: skip
                sims[name] = _short(sim.summary) | tpot(sim.records) | extra
                _dump(cfg, f"{name}_{policy}_r{rate:g}", sim.records)
                print(
                    f"[fidelity] {policy} @ {rate:g} req/s {name}: {_brief(sim.summary)}", file=sys.stderr, flush=True
                )
            res["rates"][f"{rate:g}"] = {
                "real": reals, **sims, "contention_factor": k, "lone_decode_ms": float(np.median(lone)),
                "compare": {name: compare(reals, sims[name]) for name in sims},
            }  # fmt: skip
    attach_server_log(res, srv.log_text())
    return res


def _dump(cfg: FidelityRun, name: str, records: list[RequestRecord]) -> None:
    if cfg.requests_dir:
        Path(cfg.requests_dir).mkdir(parents=True, exist_ok=True)
        write_records(Path(cfg.requests_dir) / f"{name}.jsonl", records)


def _brief(s: dict[str, Any]) -> str:
    def f(k: str, nd: int) -> str:
        return "-" if s.get(k) is None else f"{s[k]:.{nd}f}"

    return (f"{s['completed']}/{s['submitted']} done, TTFT p50/p99 {f('ttft_p50_ms', 0)}/{f('ttft_p99_ms', 0)} ms, "
            f"TBT p50/p99 {f('tbt_p50_ms', 1)}/{f('tbt_p99_ms', 1)} ms, {f('throughput_tok_s', 0)} tok/s, "
            f"preemptions {s['preemptions']}")  # fmt: skip


def run(cfg: FidelityRun, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    profile = pick_profile(cfg.profile)
    doc: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "config": asdict(cfg),
        "profile": {"name": profile.name, "source": profile.source, "date": profile.date},
        "policies": [],
    }
    for policy in cfg.policies:
        doc["policies"].append(run_policy(policy, cfg, profile, out))
        (out / "fidelity.json").write_text(json.dumps(doc, indent=1) + "\n")  # partial results survive a crash
    return doc


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m eval.fidelity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="reduced form: 60 requests, one rate, one repeat")
    ap.add_argument("--scenario", default="baselines", choices=tuple(SCENARIOS),
                    help="baselines: sglang/vllm on Azure conversations (lengths / 4); demo: the live KV-bound "
                         "scenario of eval.demo, stock (mixed chunk) vs cacheopt with the demo's flags")  # fmt: skip
    ap.add_argument("--scale", type=float, default=None, help="divide the trace's lengths by this")
    ap.add_argument("--output-scale", type=float, default=None, help="output multiplier (before --scale)")
    ap.add_argument("--policy-args", action="append", default=[], metavar="POLICY=FLAGS",
                    help="server flags of one policy's side only (repeatable)")  # fmt: skip
    ap.add_argument("--policies", default=None, help="comma-separated --ext-policy values (default sglang,vllm)")
    ap.add_argument("--rates", default=None, help="comma-separated Poisson rates, req/s")
    ap.add_argument("--num-requests", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="real replays per rate (the simulator is deterministic)")
    ap.add_argument("--pool-tokens", type=int, default=None, help="--max-total-tokens of the server (and the sim)")
    ap.add_argument("--profile", default="", help=f"latency profile (default: first of {PROFILE_PREFERENCE})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--server-args", default="", help="extra server flags (space-separated)")
    ap.add_argument("--requests-out", default=None, help="directory for per-request JSON lines")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "fidelity"))
    return ap


def config_from_args(a: argparse.Namespace) -> FidelityRun:
    cfg = SCENARIOS[a.scenario]
    if a.quick:
        cfg = replace(cfg, num_requests=60, rates=cfg.rates[:1], repeats=1)
    kw: dict[str, Any] = {"seed": a.seed, "profile": a.profile, "progress": a.progress,
                          "server_extra": tuple(a.server_args.split()), "requests_dir": a.requests_out}  # fmt: skip
    if a.policies:
        kw["policies"] = tuple(a.policies.split(","))
    if a.rates:
        kw["rates"] = tuple(float(x) for x in a.rates.split(","))
    for k in ("num_requests", "repeats", "pool_tokens", "scale", "output_scale"):
        if getattr(a, k) is not None:
            kw[k] = getattr(a, k)
    if a.policy_args:
        pairs = [x.split("=", 1) for x in a.policy_args]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("--policy-args takes POLICY=FLAGS")
        kw["policy_args"] = tuple((p, f) for p, f in pairs)
    return replace(cfg, **kw)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(a)
        pick_profile(cfg.profile)
        for p in cfg.policies:
            if SIM_POLICY.get(p, p) not in base.available():
                raise ValueError(f"unknown policy {p!r}; valid: {', '.join(base.available())}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    try:
        doc = run(cfg, out)
    except (ServerError, LoadgenError, FidelityError, httpx.HTTPError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)  # partial results stay in fidelity.json
        return 1
    md = render(doc, Path(cfg.requests_dir) if cfg.requests_dir else None)
    (out / "fidelity.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
