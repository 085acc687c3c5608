"""Property tests (hypothesis) for CacheOPT's KV accounting over whole request lifecycles.

A deliberately tiny driver (not the simulator: no timing, page size 1, no prefix cache) admits, chunk-prefills,
tops up, decodes, preempts (swap or recompute) and finishes requests exactly as the plan says, with true output
lengths that over- and under-shoot the estimates. After every plan:

* accounting: whenever the pass commits anything from unallocated space (a non-reuse admission or a top-up not
  drawn from the reserve), ``committed + reserve_left <= capacity``, with ``committed`` recomputed here
  independently of the gate from the documented formula;
* physical: the pass's admissions (each + one decode slot) fit in ``free - next decode step``;
* the reserve is never negative and never over-drawn; reuse loans add up and each guest's host is running;
* liveness: every request finishes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policies.cacheopt  # noqa: F401
from policies.base import create
from policies.config import CacheOptConfig, ExtConfig, SGLangBaselineConfig
from policies.views import LengthEstimate, PoolView, PreemptMode, RunningView, SchedulerView, WaitingView
from tests.cacheopt_views import FakeLatency


@dataclass
class Req:
    rid: str
    arrival: int
    prompt: int
    true_out: int
    estimate: LengthEstimate | None
    out: int = 0
    prefilled: int = 0
    alloc: int = 0
    swapped: bool = False
    state: str = "new"  # new -> wait -> run -> done


@dataclass
class Driver:
    capacity: int
    reqs: list[Req]
    queue: list[Req] = field(default_factory=list)
    run: list[Req] = field(default_factory=list)
    chunked: Req | None = None
    steps: int = 0

    def used(self) -> int:
        return sum(r.prompt + r.out for r in self.run) + (self.chunked.prefilled if self.chunked else 0)

    def view(self) -> SchedulerView:
        run = tuple(
            RunningView(r.rid, r.arrival, r.prompt, r.out, 10_000, r.prompt + r.out, r.alloc, estimate=r.estimate)
            for r in self.run
        )
        wait = tuple(
            WaitingView(
                r.rid,
                r.arrival,
                r.prompt,
                10_000,
                output_len=r.out,
                prefilled_len=r.prefilled,
                estimate=r.estimate,
                swapped_out=r.swapped,
            )
            for r in self.queue
        )
        pool = PoolView(self.capacity, self.capacity - self.used())
        return SchedulerView(float(self.steps), wait, run, pool, chunked_rid=self.chunked.rid if self.chunked else None)


def independent_committed(v: SchedulerView, ledger) -> int:
    live = {r.rid: r for r in v.running}
    lent: dict[str, int] = {}
    for host, tokens in ledger.guest.values():
        lent[host] = lent.get(host, 0) + tokens
    total = 0
    for r in v.running:
        a = ledger.alloc.get(r.rid, r.kv_allocated)
        total += max(a, r.kv_used + lent.get(r.rid, 0))
    total += sum(a for rid, a in ledger.alloc.items() if rid not in live)  # pending chunk and this pass's admits
    return total - sum(lent.values())


requests = st.lists(
    st.tuples(
        st.integers(0, 20),  # arrival step
        st.one_of(st.integers(1, 40), st.integers(1, 300)),  # prompt
        st.integers(1, 150),  # true output
        st.one_of(st.none(), st.floats(0.3, 2.0)),  # estimate = true * factor (None: no prediction)
    ),
    min_size=1,
    max_size=30,
)
configs = st.builds(
    CacheOptConfig,
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


@settings(max_examples=80, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests, configs, st.integers(900, 3000), st.integers(16, 512), st.integers(150, 2000))
def test_lifecycle_invariants(specs, cfg, capacity, chunk, max_new) -> None:
    reqs = []
    for i, (arr, prompt, true_out, factor) in enumerate(specs):
        point = max(int(true_out * factor), 1) if factor is not None else 0
        est = None if factor is None else LengthEstimate(point, max(int(point * 1.2), 1), 0.9)
        reqs.append(Req(f"r{i}", arr, prompt, true_out, est))
    ext = ExtConfig(sglang=SGLangBaselineConfig(chunked_prefill_size=chunk), cacheopt=cfg)
    lat = FakeLatency(per_token_s=1e-5, swap_per_token_s=1e-5 if cfg.swap_or_recompute else 1.0)
    pol = create("cacheopt", lat, config=ext)
    gate = pol.gate
    d = Driver(capacity, reqs)
    for d.steps in range(3000):
        for r in reqs:
            if r.state == "new" and r.arrival <= d.steps:
                r.state = "wait"
                d.queue.append(r)
        if all(r.state == "done" for r in reqs):
            break
        v = d.view()
        draws_before = dict(gate.ledger.draws)
        plan = pol.plan(v)
        led = gate.ledger
        reserve_size = gate._reserve_size(v)
        # reserve never negative, never over-drawn
        assert plan.notes["reserve_left"] >= 0
        assert sum(led.draws.values()) <= max(reserve_size, sum(draws_before.values()))
        # reuse loans add up; hosts are running; guests are tracked
        live = {r.rid for r in v.running}
        for host, lent in led.borrowed.items():
            assert host in live and lent == sum(t for h, t in led.guest.values() if h == host)
        assert set(led.guest) <= set(led.alloc) and set(led.draws) <= set(led.alloc)
        # accounting: nothing committed from unallocated space beyond capacity
        drawn = sum(led.draws.get(k, 0) - draws_before.get(k, 0) for k in led.draws)
        from_free = sum(a.reserve_tokens for a in plan.admit if a.host_rid is None and a.rid != v.chunked_rid)
        from_free += sum(t for _, t in plan.topups) - drawn
        if from_free > 0:
            assert independent_committed(v, led) + plan.notes["reserve_left"] <= capacity
        # physical: admissions fit beside the next decode step
        phys = 0
        by_rid = {r.rid: r for r in reqs}
        for a in plan.admit:
            r = by_rid[a.rid]
            phys += (a.prefill_tokens if not (r.swapped and a.prefill_tokens == 0) else r.prompt + r.out) + 1
        assert phys <= v.pool.free_tokens - len(v.running)
        apply(d, plan, by_rid, pol)
        assert d.used() <= capacity
    assert all(r.state == "done" for r in reqs), "every request finishes"


def apply(d: Driver, plan, by_rid: dict[str, Req], pol) -> None:
    for rid, t in plan.topups:
        by_rid[rid].alloc += t
    for a in plan.admit:
        r = by_rid[a.rid]
        r.alloc = a.reserve_tokens
        if r.swapped and a.prefill_tokens == 0:
            r.swapped = False
            r.prefilled = r.prompt + r.out
        else:
            r.prefilled += a.prefill_tokens
        d.queue.remove(r)
        if r.prefilled >= r.prompt + r.out:
            d.chunked = None if d.chunked is r else d.chunked
            r.state = "run"
            d.run.append(r)
        else:
            d.chunked = r
            d.queue.insert(0, r)
    if not plan.run_decodes:
        return
    free = d.capacity - d.used()
    if len(d.run) > free:
        for p in pol.choose_victims(d.view(), len(d.run) - free):
            r = by_rid[p.rid]
            d.run.remove(r)
            r.state, r.prefilled, r.alloc = "wait", 0, 0
            r.swapped = p.mode is PreemptMode.SWAP
            d.queue.insert(0, r)
    free = d.capacity - d.used()
    for r in list(d.run[: max(free, 0)]):
        r.out += 1
        if r.out >= r.true_out:
            r.state = "done"
            d.run.remove(r)
            pol.on_finish(r.rid, r.out)
