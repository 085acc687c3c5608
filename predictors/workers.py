"""Per-worker state of the predictor service when several schedulers share it (issue 14; CacheOPT C1 + C3).

Why per worker: with SGLang's ``--dp-size N`` (or several servers behind SGLang's router) every scheduler has its
own KV pool, its own running batch and its own share of the arrivals. One shared confidence/reserve, overwritten by
whichever worker pushed statistics last, would hand worker 0 the reserve sized for worker 1's pool. So the pool
statistics, the arrival rate, the confidence and the reserve decision are kept per worker name (the ``worker``
field of the protocol), and a predict is answered at its sender's confidence.

What stays global, and why: the calibration (online per-source/class quantile tracking, the single-bound refits)
and the overrun history. Every worker serves the same model, so a finished request teaches the length
distribution of all of them; splitting it would only make each calibration learn N times slower.

The cluster rate: the sum of the arrival rates of the workers heard from within ``ttl_s`` (a worker that stopped
pushing statistics, e.g. a removed server, stops counting). A policy that wants the whole service's load in C1's
confidence asks for it with ``rate_scope="cluster"``; the default is the worker's own rate, which is what competes
for its pool (and what one server alone would see).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from predictors.bounds import PoolStats, reservation_decision
from predictors.protocol import MAX_WORKERS, WORKER_TTL_S


@dataclass(slots=True)
class WorkerState:
    conf: float
    reserve_tokens: int = 0
    arrival_rate: float = 0.0
    capacity_tokens: int = 0
    used_tokens: int = 0
    running: int = 0
    stats: int = 0
    predictions: int = 0
    seen: float = 0.0  # clock time this worker was last heard from


class WorkerTable:
    """Bounded map worker name -> :class:`WorkerState` (least recently heard dropped past ``max_workers``)."""

    def __init__(self, default_conf: float, *, max_workers: int = MAX_WORKERS, ttl_s: float = WORKER_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.default_conf = default_conf
        self.max_workers, self.ttl_s, self.clock = max_workers, ttl_s, clock
        self._w: OrderedDict[str, WorkerState] = OrderedDict()

    def touch(self, name: str) -> WorkerState:
        """The state of ``name`` (created at the default confidence), marked as heard from now."""
        w = self._w.pop(name, None)
        if w is None:
            w = WorkerState(self.default_conf)
        w.seen = self.clock()
        self._w[name] = w
        while len(self._w) > self.max_workers:
            self._w.popitem(last=False)
        return w

    def decide(self, name: str, scope: str, rate: float, pool: PoolStats, alpha: float, beta: float,
               rule: str) -> WorkerState:  # fmt: skip
        """Record ``name``'s statistics and make its (confidence, reserve) decision (C1 + C3) from its own rate, or
        from the cluster rate (its own included) when ``scope == "cluster"``."""
        w = self.touch(name)
        w.arrival_rate, w.capacity_tokens, w.used_tokens, w.running = rate, pool.capacity_tokens, pool.used_tokens, \
            pool.running  # fmt: skip
        used_rate = self.cluster_rate() if scope == "cluster" else rate
        w.conf, w.reserve_tokens = reservation_decision(used_rate, pool, alpha, beta, rule)
        w.stats += 1
        return w

    def conf(self, name: str) -> float:
        """The confidence predicts from ``name`` are answered at (the default before its first statistics)."""
        w = self._w.get(name)
        return w.conf if w is not None else self.default_conf

    def live(self) -> list[tuple[str, WorkerState]]:
        now = self.clock()
        return [(k, w) for k, w in self._w.items() if now - w.seen <= self.ttl_s]

    def cluster_rate(self) -> float:
        """Requests/s into all live workers together (the sum of their last reported rates)."""
        return float(sum(w.arrival_rate for _, w in self.live()))

    def summary(self) -> dict[str, dict[str, Any]]:
        """Every known worker's state for the pong (``age_s``: seconds since it was last heard from)."""
        now = self.clock()
        out = {}
        for k, w in self._w.items():
            d = asdict(w)
            d["age_s"] = round(now - d.pop("seen"), 3)
            out[k] = d
        return out

    def __len__(self) -> int:
        return len(self._w)
