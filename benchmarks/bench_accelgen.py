"""Benchmark: AccelGen's per-iteration decision time (A1 chunk-size decision with its error margin and TTFT guard;
target <= 50 us), the whole ``plan()`` (A1 + A2 + A3) and the per-iteration measurement hook (error margin + online
refit), on a GPU latency profile with realistic batch shapes.

Prints one line per configuration: median and p99 of the time per decision, in microseconds. A script, not a
timed unit test: numbers depend on the machine. Usage::

    .venv/bin/python -m benchmarks.bench_accelgen [--profile h100-llama3-8b] [--reps 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from policies.accelgen.chunk import ChunkSizer
from policies.base import create
from policies.latency import BatchShape
from policies.views import SLO, PoolView, RunningView, SchedulerView, WaitingView
from profiles import get


def _view(n_running: int, n_waiting: int, rng: np.random.Generator) -> SchedulerView:
    slos = (25.0, 50.0, 100.0, None)
    running = tuple(
        RunningView(f"r{i}", 0.0, int(p), int(o), 1024, int(p + o), int(p + o), SLO(None, slos[i % 4]))
        for i, (p, o) in enumerate(zip(rng.integers(50, 4000, n_running), rng.integers(1, 500, n_running), strict=True))
    )
    waiting = tuple(
        WaitingView(f"w{i}", float(rng.uniform(0, 1)), int(p), 1024, SLO(2000.0, slos[i % 4]))
        for i, p in enumerate(rng.integers(20, 8000, n_waiting))
    )
    return SchedulerView(1.0, waiting, running, PoolView(400_000, 200_000))


def _time(fn, reps: int) -> tuple[float, float]:
    samples = np.empty(reps)
    for k in range(reps):
        t0 = time.perf_counter_ns()
        fn()
        samples[k] = (time.perf_counter_ns() - t0) / 1e3
    return float(np.median(samples)), float(np.percentile(samples, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="h100-llama3-8b")
    ap.add_argument("--reps", type=int, default=2000)
    args = ap.parse_args()
    prof = get(args.profile)
    rng = np.random.default_rng(0)
    print(f"profile {args.profile}; times in microseconds per decision (median / p99), {args.reps} reps")
    for n_run, n_wait in ((8, 4), (64, 16), (256, 64), (512, 128)):
        view = _view(n_run, n_wait, rng)
        ctx = tuple(r.seq_len for r in view.running)
        pol = create("accelgen", prof)
        limit = min(r.slo.tbt_ms for r in view.running if r.slo.tbt_ms) / 1e3

        def a1(ctx=ctx, pol=pol, view=view) -> None:  # the decision as made in plan(): limits, margin, budget
            lim, _ = pol.iteration_limit_s(view, ctx)
            cap = pol.ttft_cap_s(view)
            pol.sizer.budget(pol.target_s(lim if cap is None else min(lim, cap)), ctx, 0)

        generic = ChunkSizer(_Generic(prof), 32, 8192)
        med, p99 = _time(a1, args.reps)
        # The fallback search, with a limit that leaves room for a chunk (so it searches rather than gives up).
        room = max(limit, 1.5 * prof.iteration_s(BatchShape(decode_ctx=ctx)))
        gmed, gp99 = _time(lambda ctx=ctx, g=generic, room=room: g.budget(room, ctx, 0), args.reps)
        pmed, pp99 = _time(lambda pol=pol, view=view: pol.plan(view), max(args.reps // 4, 50))
        # Per measured iteration: the error margin's update and the refit's bookkeeping (a refit every
        # refit_interval calls is included, amortised), against a truth 10% slower than the model.
        shape = BatchShape(prefill=((256, 0),), decode_ctx=ctx)
        seconds = 1.1 * prof.iteration_s(shape)
        omed, op99 = _time(lambda pol=pol, s=shape, t=seconds: pol.observe_iteration(s, t), args.reps)
        print(
            f"running={n_run:4d} waiting={n_wait:4d}  A1 chunk decision {med:7.1f} / {p99:7.1f}"
            f"   (protocol-only search {gmed:7.1f} / {gp99:7.1f})   full plan() {pmed:8.1f} / {pp99:8.1f}"
            f"   observe_iteration {omed:7.1f} / {op99:8.1f}"
        )


class _Generic:
    """The profile seen through the bare LatencyModel protocol (no closed form): the fallback search path."""

    def __init__(self, prof) -> None:
        self.prof = prof

    def iteration_s(self, shape) -> float:
        return self.prof.iteration_s(shape)

    def prefill_s(self, tokens: int, context_before: int = 0) -> float:
        return self.prof.prefill_s(tokens, context_before)

    def swap_s(self, tokens: int) -> float:
        return self.prof.swap_s(tokens)


if __name__ == "__main__":
    main()
