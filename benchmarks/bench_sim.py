"""Simulator speed and policy decision overhead (issue 3's speed targets), printed, not asserted.

1. Simulated requests per minute on one core: the Azure conversation trace on the ``h100-llama3-8b`` profile,
   replayed at its own timestamps and at a Poisson rate that keeps the engine busy. Target >= 20,000/min.
2. Median wall time of one ``policy.plan(view)`` with 256 running and 1,000 waiting requests (a fresh policy per
   sample, so no state left by one call short-circuits the next). Target <= 100 us.

Usage: ``python -m benchmarks.bench_sim [--requests N] [--policies a,b] [--samples K]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import profiles
from eval.sim import Simulator, make_policy
from eval.workloads import load_workload
from policies.base import available, create
from policies.views import LengthEstimate, PoolView, RunningView, SchedulerView, WaitingView

BASELINES = ("sglang", "vllm", "sarathi")


def sim_rate(policy: str, n: int, rate: float | None) -> tuple[float, dict]:
    prof = profiles.get("h100-llama3-8b")
    specs = load_workload("azure-conv", num_requests=n, rate=rate, seed=0)
    sim = Simulator(make_policy(policy, prof, page_size=16), prof, pool_tokens=prof.kv_capacity_tokens, page_size=16)
    t0 = time.process_time()
    res = sim.run(specs)
    cpu = time.process_time() - t0
    return len(specs) / cpu * 60, {"iterations": sim.stats.iterations, "preemptions": sim.stats.preemptions,
                                   "completed": res.summary["completed"], "cpu_s": round(cpu, 2)}  # fmt: skip


def decision_view(rng: random.Random, running: int = 256, waiting: int = 1000) -> SchedulerView:
    est = LengthEstimate(point=200, bound=400, confidence=0.9)
    run = []
    used = 0
    for i in range(running):
        p, o = rng.randint(100, 2000), rng.randint(1, 300)
        run.append(RunningView(f"r{i}", i * 0.01, p, o, 1024, kv_used=p + o, kv_allocated=p + o + 64, estimate=est))
        used += p + o
    wait = tuple(WaitingView(f"w{i}", 10 + i * 0.01, rng.randint(50, 4000), 1024, estimate=est) for i in range(waiting))
    cap = 448_000
    return SchedulerView(12.0, wait, tuple(run), PoolView(cap, cap - used, 0, 16), 5.0, None)


def decision_us(policy: str, samples: int) -> tuple[float, float]:
    prof = profiles.get("h100-llama3-8b")
    rng = random.Random(0)
    view = decision_view(rng)
    tight = SchedulerView(view.now_s, view.waiting, view.running, PoolView(view.pool.capacity_tokens, 0, 0, 16))
    plans, victims = [], []
    for _ in range(samples):
        pol = create(policy, prof)
        t0 = time.perf_counter()
        pol.plan(view)
        plans.append(time.perf_counter() - t0)
        pol = create(policy, prof)
        t0 = time.perf_counter()
        pol.choose_victims(tight, 256 * 16)
        victims.append(time.perf_counter() - t0)
    return statistics.median(plans) * 1e6, statistics.median(victims) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--policies", default=",".join(BASELINES))
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--busy-rate", type=float, default=30.0, help="Poisson rate (req/s) of the busy run")
    args = ap.parse_args()
    names = [p for p in args.policies.split(",") if p]
    unknown = set(names) - set(available())
    if unknown:
        raise SystemExit(f"unknown policies {sorted(unknown)}; valid: {', '.join(available())}")
    print(f"simulated requests/min on one core (azure-conv, h100-llama3-8b, {args.requests} requests; target >= 20000)")
    for name in names:
        for label, rate in (("trace times", None), (f"{args.busy_rate:g} req/s", args.busy_rate)):
            rpm, info = sim_rate(name, args.requests, rate)
            print(f"  {name:18s} {label:12s} {rpm:10,.0f} req/min  {info}")
    print("median policy decision time, 256 running + 1000 waiting (target plan <= 100 us)")
    for name in names:
        plan_us, victim_us = decision_us(name, args.samples)
        print(f"  {name:18s} plan {plan_us:8.1f} us   choose_victims {victim_us:8.1f} us")


if __name__ == "__main__":
    main()
