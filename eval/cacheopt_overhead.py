"""Per-iteration decision overhead of the ``cacheopt`` policy (issue target: <= 100 us median at 256 running /
1,000 waiting). A benchmark script: prints figures, asserts nothing.

Three planning situations, each on a fresh, realistic view (lengths drawn from Azure-conv-like distributions,
TTFT/TBT SLOs on every request, every running request with an estimate and an allocation):

* ``decode``: the pool is fully allocated, the head of the queue does not fit and no host can take it (the common
  case under load: one failed admission, top-up scan, decode step);
* ``reuse``: no unallocated space but running requests have large empty tails: admissions go through the
  best-fit host index;
* ``admit``: plenty of space: a prefill batch is formed (chunked-prefill budget 2048 tokens).

``--in-sim RATE`` measures instead every ``plan()`` of a simulated run (Azure conversations at RATE req/s, 3,000
requests, estimates with the real predictor's error), by running-batch size: the decision sequence a server sees,
where candidates' survival rows are computed once per request and most steps admit nothing (the views above are
fresh each time, so every pass pays the cold costs).

Usage: ``python -m eval.cacheopt_overhead [--profile h100-llama3-8b] [--running 256] [--waiting 1000]
[--in-sim 30]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import policies.cacheopt  # noqa: F401
from policies.base import create
from policies.views import SLO, IterationPlan, LengthEstimate, PoolView, RunningView, SchedulerView, WaitingView
from profiles import get as get_profile


def make_view(kind: str, n_run: int, n_wait: int, rng: np.random.Generator) -> SchedulerView:
    prompts = rng.lognormal(6.8, 0.8, n_run + n_wait).astype(int).clip(8, 4000)
    outs = rng.lognormal(4.9, 0.9, n_run + n_wait).astype(int).clip(1, 1500)
    running = []
    for i in range(n_run):
        done = int(rng.integers(0, outs[i]))
        bound = int(outs[i] * 1.3)
        alloc = prompts[i] + bound * (4 if kind == "reuse" else 1)
        running.append(
            RunningView(
                f"r{i}", 0.0, int(prompts[i]), done, 2048, int(prompts[i]) + done, int(alloc),
                slo=SLO(2000.0, 100.0 if i % 2 else 200.0), estimate=LengthEstimate(int(outs[i]), bound, 0.9),
            )
        )  # fmt: skip
    waiting = tuple(
        WaitingView(
            f"w{j}", 0.001 * j, int(prompts[n_run + j]), 2048, slo=SLO(1000.0 if j % 3 else 5000.0, 100.0),
            estimate=LengthEstimate(int(outs[n_run + j]), int(outs[n_run + j] * 1.3), 0.9),
        )
        for j in range(n_wait)
    )  # fmt: skip
    allocated = sum(r.kv_allocated for r in running)
    used = sum(r.kv_used for r in running)
    capacity = allocated + (10**7 if kind == "admit" else 0)
    pool = PoolView(capacity, capacity - used)
    return SchedulerView(1.0, waiting, tuple(running), pool, arrival_rate=10.0)


def bench(kind: str, profile: str, n_run: int, n_wait: int, repeats: int, seed: int) -> dict[str, float]:
    lat = get_profile(profile)
    rng = np.random.default_rng(seed)
    times = []
    notes = {}
    for _ in range(repeats):
        view = make_view(kind, n_run, n_wait, rng)
        pol = create("cacheopt", lat)
        pol.plan(view)  # first pass: the ledger learns the running batch
        t0 = time.perf_counter_ns()
        plan = pol.plan(view)
        times.append((time.perf_counter_ns() - t0) / 1e3)
        notes = plan.notes
    arr = np.asarray(times)
    return {
        "kind": kind,
        "median_us": float(np.median(arr)),
        "p90_us": float(np.percentile(arr, 90)),
        "admits": notes.get("admits", 0.0),
        "reuse": notes.get("reuse", 0.0),
        "topups": notes.get("topups", 0.0),
    }


def in_sim(profile: str, rate: float, num_requests: int, seed: int) -> list[dict[str, float]]:
    """Median / p90 ``plan()`` time of a simulated run, for iterations with at least 64 / 128 / 256 running."""
    from eval.estimates import simulated_estimator
    from eval.sim import Simulator, sim_capabilities
    from eval.workloads import load_workload
    from policies.config import ExtConfig

    lat = get_profile(profile)
    specs = load_workload("azure-conv", num_requests=num_requests, rate=rate, seed=seed, max_new_tokens=2048)
    cfg = ExtConfig(policy="cacheopt")
    pol = create("cacheopt", lat, cfg, sim_capabilities("cacheopt", cfg, page_size=1))
    rec: list[tuple[int, int, int]] = []
    plan = pol.plan

    def timed(view: SchedulerView) -> IterationPlan:
        t0 = time.perf_counter_ns()
        out = plan(view)
        rec.append((time.perf_counter_ns() - t0, len(view.running), len(out.admit)))
        return out

    pol.plan = timed  # type: ignore[method-assign]
    est = simulated_estimator(specs, regime="in-distribution", rate=rate, alpha=0.95, beta=0.001)
    Simulator(pol, lat, pool_tokens=lat.kv_capacity_tokens, estimator=est).run(specs)
    a = np.asarray(rec, dtype=float)
    rows = []
    for lo in (64, 128, 256):
        m = a[:, 1] >= lo
        if m.any():
            idle = m & (a[:, 2] == 0)
            rows.append(
                {
                    "min_running": lo,
                    "iterations": int(m.sum()),
                    "median_us": float(np.median(a[m, 0])) / 1e3,
                    "p90_us": float(np.percentile(a[m, 0], 90)) / 1e3,
                    "no_admit_median_us": float(np.median(a[idle, 0])) / 1e3 if idle.any() else float("nan"),
                }
            )
    return rows  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="h100-llama3-8b")
    ap.add_argument("--running", type=int, default=256)
    ap.add_argument("--waiting", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--in-sim", type=float, default=None, metavar="RATE", help="time plan() in a simulated run")
    ap.add_argument("--num-requests", type=int, default=3000, help="with --in-sim")
    a = ap.parse_args()
    if a.in_sim is not None:
        rows = in_sim(a.profile, a.in_sim, a.num_requests, a.seed)
        print(f"cacheopt plan() in a simulated run: azure-conv at {a.in_sim:g} req/s, {a.num_requests} requests")
        for r in rows:
            print(
                f"  >= {r['min_running']:3d} running ({r['iterations']} plans): median {r['median_us']:6.1f} us, "
                f"p90 {r['p90_us']:6.1f} us, steps admitting nothing: median {r['no_admit_median_us']:6.1f} us"
            )
        if a.out:
            a.out.write_text(json.dumps({"in_sim": a.in_sim, "rows": rows}, indent=1))
        return
    rows = [bench(k, a.profile, a.running, a.waiting, a.repeats, a.seed) for k in ("decode", "reuse", "admit")]
    print(f"cacheopt plan() overhead, {a.running} running / {a.waiting} waiting, {a.repeats} views each")
    for r in rows:
        print(f"  {r['kind']:7s} median {r['median_us']:7.1f} us  p90 {r['p90_us']:7.1f} us  "
              f"(admits {r['admits']:.0f}, reuse {r['reuse']:.0f}, topups {r['topups']:.0f})")  # fmt: skip
    if a.out:
        a.out.write_text(json.dumps({"running": a.running, "waiting": a.waiting, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
