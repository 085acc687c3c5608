"""Overload and drain on the real server: measure a server's capacity, drive it at a multiple of it, check that every
request completed or was refused with a clear error, that SGLang's free KV count is back at its initial value, and
that a SIGTERM during load drains what was in flight before the process exits. Shared by
``tests/test_server_overload.py`` (reduced duration) and ``benchmarks/bench_overload.py`` (the full 60 s).

Why these checks: faults must lose no request and hang nothing. Under overload the policies (CacheOPT C1-C5,
AccelGen A1-A3) hold requests back and preempt; a leaked reservation or a request stuck in a policy's ledger would
show as KV that never comes back or a request that never ends. The free KV count is SGLang's own (``/v1/loads``:
``max_total_num_tokens - num_used_tokens``, read live from the scheduler's pool; cached prefixes count as free,
being evictable), and the refusals are SGLang's own (``--max-queued-requests``: HTTP 503 "The request queue is
full."). Traffic goes to the loopback server only, and every run is bounded in requests and time.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from eval.loadgen import forcer_ref, run_load
from eval.metrics import RequestRecord
from eval.server import ServerProcess
from eval.workloads import RequestSpec, load_workload

REFUSAL = "queue is full"  # SGLang's message when --max-queued-requests refuses a request
WORKLOAD = {"name": "azure-conv", "scale": 8.0, "max_context": 1024}


def workload(n: int, rate: float, start: int, seed: int = 0) -> list[RequestSpec]:
    return load_workload(WORKLOAD["name"], num_requests=n, rate=rate, seed=seed, scale=WORKLOAD["scale"],
                         max_context=WORKLOAD["max_context"], start=start)  # fmt: skip


def kv_state(base_url: str) -> dict[str, int]:
    """SGLang's live pool and queue counts (``/v1/loads``, DP rank 0)."""
    load = httpx.get(base_url + "/v1/loads", timeout=30).json()["loads"][0]
    total, used = int(load["max_total_num_tokens"]), int(load["num_used_tokens"])
    return {"total": total, "used": used, "free": total - used, "running": int(load["num_running_reqs"]),
            "waiting": int(load["num_waiting_reqs"])}  # fmt: skip


def wait_drained(base_url: str, free: int, timeout_s: float = 60.0) -> dict[str, int]:
    """Poll until nothing runs or waits and ``free`` KV tokens are free again (or the timeout); returns the last
    state."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = kv_state(base_url)
        if (state["free"] == free and state["running"] == 0 and state["waiting"] == 0) or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


def capacity_rps(base_url: str, n: int = 24, start: int = 0) -> float:
    """Requests/s the server completes from a burst of ``n`` requests (first arrival to last finish)."""
    records, summary = run_load(base_url, workload(n, math.inf, start), mode="cap", progress=False)
    done = [r for r in records if r.ok]
    if len(done) < n or summary["aborted"]:
        raise RuntimeError(f"capacity probe failed: {summary['completed']}/{n} completed, errors {summary['errors']}")
    span = max(r.finish_s for r in done if r.finish_s is not None) - min(r.arrival_s for r in done)
    return len(done) / max(span, 1e-3)


@dataclass
class OverloadResult:
    capacity_rps: float
    rate_rps: float
    duration_s: float
    sent: int
    completed: int
    refused: int
    other_errors: dict[str, int]
    length_mismatches: int
    kv_before: dict[str, int]
    kv_after: dict[str, int]
    wall_s: float
    aborted: str | None

    @property
    def ok(self) -> bool:
        return (
            not self.other_errors
            and self.aborted is None
            and self.completed + self.refused == self.sent
            and self.length_mismatches == 0
            and self.kv_after["free"] == self.kv_before["free"]
            and self.kv_after["running"] == self.kv_after["waiting"] == 0
        )


def classify(records: list[RequestRecord]) -> tuple[int, int, dict[str, int]]:
    """(completed, refused with SGLang's queue-full error, other errors by message)."""
    completed = sum(r.ok for r in records)
    refused = sum(1 for r in records if r.error and REFUSAL in r.error)
    other: dict[str, int] = {}
    for r in records:
        if not r.ok and not (r.error and REFUSAL in r.error):
            key = (r.error or "no finish")[:160]
            other[key] = other.get(key, 0) + 1
    return completed, refused, other


def overload(base_url: str, capacity: float, *, factor: float = 2.0, duration_s: float = 15.0, start: int = 100,
             max_requests: int = 2000) -> OverloadResult:  # fmt: skip
    """Open-loop arrivals at ``factor`` x ``capacity`` for ``duration_s`` (bounded by ``max_requests``), then wait
    for every request and for the pool to drain back."""
    rate = factor * capacity
    n = max(1, min(max_requests, math.ceil(rate * duration_s)))
    before = wait_drained(base_url, kv_state(base_url)["total"], timeout_s=30)
    t0 = time.monotonic()
    records, summary = run_load(base_url, workload(n, rate, start, seed=1), mode="cap", progress=False,
                                stall_timeout_s=120.0, request_timeout_s=max(600.0, 10 * duration_s))  # fmt: skip
    wall = time.monotonic() - t0
    after = wait_drained(base_url, before["free"])
    completed, refused, other = classify(records)
    return OverloadResult(capacity, rate, duration_s, n, completed, refused, other, summary["length_mismatches"],
                          before, after, wall, summary["aborted"])  # fmt: skip


@dataclass
class DrainResult:
    sent_before_sigterm: int
    completed: int
    not_sent: int
    refused_after_exit: int
    lost: dict[str, int]
    exit_code: int | None
    exit_s: float | None
    children_left: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.lost and self.exit_code is not None and not self.children_left


def sigterm_during_load(srv: ServerProcess, rate: float, *, duration_s: float = 8.0, sigterm_after_s: float = 3.0,
                        start: int = 2000, exit_timeout_s: float = 120.0) -> DrainResult:  # fmt: skip
    """Open-loop load at ``rate``; SIGTERM to the launcher after ``sigterm_after_s`` (what an orchestrator sends).
    The client stops sending when ``/health`` says the server is going (503 twice) and waits for what it sent."""
    assert srv.pid is not None
    forcer_ref()  # the load generator's one-time import happens before the clock of the SIGTERM starts
    n = max(2, math.ceil(rate * duration_s))
    outcome: dict[str, Any] = {}

    def terminate() -> None:
        time.sleep(sigterm_after_s)
        t = time.monotonic()
        outcome["sigterm_at"] = t
        outcome["code"], outcome["left"] = srv.drain(timeout_s=exit_timeout_s)
        outcome["exit_s"] = time.monotonic() - t

    th = threading.Thread(target=terminate, daemon=True)
    t_load = time.monotonic()
    th.start()
    records, _ = run_load(srv.base_url, workload(n, rate, start, seed=2), mode="cap", progress=False,
                          health_interval_s=1.0, abort_grace_s=exit_timeout_s, stall_timeout_s=60.0,
                          request_timeout_s=exit_timeout_s + 60)  # fmt: skip
    th.join(timeout=exit_timeout_s + 30)
    sigterm_rel = outcome.get("sigterm_at", float("inf")) - t_load
    completed = sum(r.ok for r in records)
    not_sent = sum(1 for r in records if r.error and r.error.startswith("not sent"))
    refused = sum(1 for r in records if r.error and r.error.startswith("connection refused"))
    lost: dict[str, int] = {}
    for r in records:
        if not r.ok and not (r.error and (r.error.startswith("not sent") or r.error.startswith("connection refused"))):
            key = (r.error or "no finish")[:160]
            lost[key] = lost.get(key, 0) + 1
    return DrainResult(
        sent_before_sigterm=sum(1 for r in records if r.arrival_s < sigterm_rel and not r.error),
        completed=completed,
        not_sent=not_sent,
        refused_after_exit=refused,
        lost=lost,
        exit_code=outcome.get("code"),
        exit_s=outcome.get("exit_s"),
        children_left=list(outcome.get("left", [])),
    )
