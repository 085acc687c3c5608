"""N simulated replicas behind a router (issue 14): the evaluation of the extension at cluster scale.

Each replica is one :class:`~eval.sim.engine.Simulator` (its own KV pool, radix cache, policy and
:class:`~host.core.HostCore`: the same host layer as one replica alone), and the replicas advance together in
simulated time so the router sees what SGLang's router sees when a request arrives: how many requests each worker
has in flight (sent, not yet finished). Arrivals are routed in time order; before routing the arrival at ``t``
every busy replica runs its iterations up to ``t`` (an iteration in progress at ``t`` completes first, as in one
simulator, where an arrival joins at the next iteration). A replica run this way takes exactly the steps
``Simulator.run`` takes on the requests routed to it (``tests/test_sim_cluster.py`` checks one replica against
``Simulator.run``), including its idle scheduling points and waiting for its next arrival when its policy admits
nothing.

Arrival rate (C1's confidence, the pool rule): with ``rate_scope="worker"`` (default) each replica estimates the
rate of its own arrivals, like one server at its share; with ``"cluster"`` all replicas read one estimate over every
arrival (:class:`ClusterRate`), the simulator's counterpart of the predictor service's sum over workers.

One combined result in the :mod:`eval.metrics` schema: the summary of all replicas' request records together (the
cluster's duration is first arrival to last finish), beside per-replica summaries and the router's decisions.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from eval.metrics import RequestRecord, summarize
from eval.sim.engine import SimResult, SimStats, SimulationStalled, Simulator
from eval.sim.request import SimRequest
from eval.sim.routing import CacheAware, RoundRobin, make_router
from eval.workloads import RequestSpec
from host.rate import DEFAULT_WINDOW_S


class ClusterRate:
    """:class:`host.rate.ArrivalRate`'s estimate over the arrivals of all replicas. Replicas read it at their own
    clocks, which differ, so it counts arrivals in ``[now - window, now]`` without discarding any (a replica behind
    another must still see what the one ahead has already passed)."""

    def __init__(self, window_s: float = DEFAULT_WINDOW_S) -> None:
        self.window_s = float(window_s)
        self._times: list[float] = []

    def observe(self, t: float) -> None:
        self._times.append(t)  # routed in time order

    def rate(self, now: float) -> float:
        times = self._times
        hi = bisect.bisect_right(times, now)
        lo = bisect.bisect_left(times, now - self.window_s)
        if hi <= lo:
            return 0.0
        return (hi - lo) / min(self.window_s, max(now - times[0], 1.0))


class Replica:
    """Drives one :class:`Simulator` step by step with the loop of ``Simulator.run``, arrivals given one by one."""

    def __init__(self, index: int, sim: Simulator) -> None:
        self.index, self.sim = index, sim
        self.started = self.blocked = self.idle_planned = False
        self.inflight: list[SimRequest] = []

    def busy(self) -> bool:
        s = self.sim
        return bool(s.waiting or s.prefilling or s.running)

    def advance(self, t: float | None) -> None:
        """Run iterations while the replica has work and its clock is before ``t`` (``None``: until done)."""
        sim = self.sim
        while self.busy() and not self.blocked and (t is None or sim.now < t):
            if not sim._iterate():
                self.blocked = True  # its policy admits nothing: it waits for its next arrival, as in run()
                return
            if sim.stats.iterations > sim.max_iterations:
                raise SimulationStalled(f"replica {self.index}: more than {sim.max_iterations} iterations")

    def submit(self, spec: RequestSpec) -> RequestRecord:
        sim = self.sim
        if spec.arrival_s > sim.now:
            if self.started and not self.busy() and not self.idle_planned:
                sim.core.plan(sim._view())  # the idle scheduling point run() passes before jumping ahead
                self.idle_planned = True
            if not self.busy() or self.blocked:
                sim.now = spec.arrival_s
        elif not self.started:
            sim.now = spec.arrival_s
        self.started, self.blocked, self.idle_planned = True, False, False
        sim._arrive(spec)
        last = sim.requests[-1]
        if isinstance(last, SimRequest):
            self.inflight.append(last)
            return last.record
        return last

    def load(self, t: float) -> int:
        """Requests routed here and not finished by ``t`` (what the router counts in flight)."""
        self.inflight = [r for r in self.inflight if r.record.error is None and
                         (r.record.finish_s is None or r.record.finish_s > t)]  # fmt: skip
        return len(self.inflight)

    def finish(self) -> None:
        self.advance(None)
        if self.busy():
            s = self.sim
            raise SimulationStalled(
                f"replica {self.index}: policy {s.policy.name!r} admits nothing with {len(s.waiting)} waiting, "
                f"{len(s.running)} running, {s.pool.free} of {s.pool.capacity} KV tokens free, and no arrival left"
            )
        reqs = self.sim.requests
        first = min((x.record.arrival_s if isinstance(x, SimRequest) else x.arrival_s) for x in reqs) if reqs else 0.0
        self.sim.stats.span_s = self.sim.now - first if reqs else 0.0  # as Simulator.run: first arrival to the end


@dataclass
class ClusterResult:
    records: list[RequestRecord]
    summary: dict[str, Any]
    replicas: list[SimResult]
    routed: list[int]
    router: dict[str, Any] = field(default_factory=dict)
    stats: SimStats = field(default_factory=SimStats)

    def to_json(self) -> dict[str, Any]:
        """The combined summary (eval.metrics schema) plus a ``cluster`` section: per-replica summaries, requests
        routed to each, the router's decisions and the summed simulator counters."""
        return {
            **self.summary,
            "cluster": {
                "replicas": len(self.replicas),
                "routed": self.routed,
                "router": self.router,
                "stats": {f.name: getattr(self.stats, f.name) for f in fields(SimStats)},
                "per_replica": [r.summary for r in self.replicas],
            },
        }


class Cluster:
    def __init__(self, make_replica: Callable[[int], Simulator], replicas: int, router: str = "rr", *,
                 rate_scope: str = "worker", block_tokens: int | None = None) -> None:  # fmt: skip
        """``make_replica(i)``: a fresh :class:`Simulator` (its own policy instance) for replica ``i``."""
        if replicas < 1:
            raise ValueError(f"--replicas: must be >= 1, got {replicas}")
        if rate_scope not in ("worker", "cluster"):
            raise ValueError(f"--ext-predictor-rate-scope: unknown scope {rate_scope!r}; valid: worker, cluster")
        self.replicas = [Replica(i, make_replica(i)) for i in range(replicas)]
        bt = block_tokens if block_tokens is not None else self.replicas[0].sim.block_tokens
        self.router: RoundRobin | CacheAware = make_router(router, replicas, bt)
        self.rate: ClusterRate | None = None
        if rate_scope == "cluster":
            self.rate = ClusterRate(self.replicas[0].sim.core.rate.window_s)
            for r in self.replicas:
                r.sim.core.rate = self.rate  # every replica's HostCore observes into and reads the one estimate

    def run(self, specs: Iterable[RequestSpec]) -> ClusterResult:
        todo = sorted(specs, key=lambda s: s.arrival_s)
        routed = [0] * len(self.replicas)
        order: list[RequestRecord] = []
        for spec in todo:
            t = spec.arrival_s
            for r in self.replicas:
                r.advance(t)
            k = self.router.route(spec, [r.load(t) for r in self.replicas])
            order.append(self.replicas[k].submit(spec))
            routed[k] += 1
        for r in self.replicas:
            r.finish()
        results = []
        for r in self.replicas:
            recs = [x.record if isinstance(x, SimRequest) else x for x in r.sim.requests]
            results.append(SimResult(recs, summarize(recs), r.sim.stats))
        info: dict[str, Any] = {"policy": self.router.name}
        if isinstance(self.router, CacheAware):
            info |= {"decisions": dict(self.router.decisions), "largest_tree_tokens": self.router.largest_tree_tokens}
        return ClusterResult(order, summarize(order), results, routed, info, _sum_stats(r.stats for r in results))


def _sum_stats(stats: Iterable[SimStats]) -> SimStats:
    out = SimStats()
    for s in stats:
        for f in fields(SimStats):
            if f.name == "span_s":  # the cluster's span is the longest replica's, not a sum of overlapping spans
                out.span_s = max(out.span_s, s.span_s)
            else:
                setattr(out, f.name, getattr(out, f.name) + getattr(s, f.name))
    return out


def replica_loads(cluster: Cluster, t: float) -> Sequence[int]:
    """Requests in flight on each replica at ``t`` (for tests and reports)."""
    return [r.load(t) for r in cluster.replicas]
