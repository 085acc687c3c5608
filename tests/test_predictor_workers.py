"""One predictor service shared by several schedulers (issue 14: ``--dp-size N``, servers behind a router): each
worker's pool statistics, rate, confidence and reserve are its own, predicts are answered at the sender's
confidence, the reply carries the cluster rate, and the client names its worker and reads that rate."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq

from predictors.bounds import PoolStats, adapt_confidence
from predictors.client import PredictorClient
from predictors.protocol import pack
from predictors.service import SHIPPED_MODEL, PredictorService
from predictors.workers import WorkerTable
from tests.test_predictor_service import ask, dealer, running_service


@pytest.fixture()
def service() -> Iterator[PredictorService]:
    with running_service(SHIPPED_MODEL, beta=0.01) as svc:
        yield svc


@pytest.fixture()
def raw(service: PredictorService) -> Iterator[zmq.Socket]:
    with dealer(service.endpoint) as s:
        yield s


def stats(worker: str | None, rate: float, cap: int, running: int, scope: str | None = None) -> bytes:
    msg = {"v": 2, "type": "stats", "arrival_rate": rate, "pool": {"capacity_tokens": cap, "used_tokens": 0,
                                                                     "running": running}}  # fmt: skip
    if worker is not None:
        msg["worker"] = worker
    if scope is not None:
        msg["rate_scope"] = scope
    return pack(msg)


def test_workers_keep_their_own_decisions_and_predicts_use_the_senders(raw: zmq.Socket) -> None:
    a = ask(raw, stats("srv:1/dp0", 10.0, 100_000, 50))
    b = ask(raw, stats("srv:1/dp1", 90.0, 2_000, 1))
    assert a["conf"] == pytest.approx(adapt_confidence(0.95, 0.01, 10.0))
    assert b["conf"] == pytest.approx(adapt_confidence(0.95, 0.01, 90.0))
    assert b["worker"] == "srv:1/dp1" and b["workers"] == 2 and b["cluster_rate"] == pytest.approx(100.0)
    assert a["reserve_tokens"] != b["reserve_tokens"] or a["conf"] != b["conf"]
    # worker 0's decision survives worker 1's statistics: a predict from each is answered at its own confidence
    item = {"rid": "r0", "text": "Write a long essay about the history of rain", "max_new_tokens": 4000}
    r0 = ask(raw, pack({"v": 2, "type": "predict", "worker": "srv:1/dp0", "items": [item]}))
    r1 = ask(raw, pack({"v": 2, "type": "predict", "worker": "srv:1/dp1", "items": [{**item, "rid": "r1"}]}))
    assert r0["items"][0]["conf"] == pytest.approx(a["conf"]) and r1["items"][0]["conf"] == pytest.approx(b["conf"])
    assert r0["items"][0]["bound"] >= r1["items"][0]["bound"]  # lower confidence, no larger bound (same prompt)
    pong = ask(raw, pack({"v": 2, "type": "ping"}))
    seen = pong["workers"]
    assert set(seen) == {"srv:1/dp0", "srv:1/dp1"}
    assert seen["srv:1/dp0"]["predictions"] == 1 and seen["srv:1/dp1"]["stats"] == 1
    assert seen["srv:1/dp1"]["capacity_tokens"] == 2_000


def test_cluster_scope_reads_the_sum_of_rates_and_old_peers_are_the_default_worker(raw: zmq.Socket) -> None:
    ask(raw, stats("w0", 40.0, 10_000, 3))
    c = ask(raw, stats("w1", 60.0, 10_000, 3, scope="cluster"))
    assert c["cluster_rate"] == pytest.approx(100.0)
    assert c["conf"] == pytest.approx(adapt_confidence(0.95, 0.01, 100.0))  # the cluster's rate, not its own 60
    old = ask(raw, stats(None, 5.0, 10_000, 3))  # a v2 peer that names no worker
    assert old["worker"] == "" and old["conf"] == pytest.approx(adapt_confidence(0.95, 0.01, 5.0))
    assert old["cluster_rate"] == pytest.approx(105.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"worker": 7},
        {"worker": "x" * 500},
        {"worker": "w", "rate_scope": "galaxy"},
    ],
)
def test_a_bad_worker_field_is_refused_and_leaves_the_decision(raw: zmq.Socket, service: PredictorService,
                                                                bad: dict) -> None:  # fmt: skip
    first = ask(raw, stats("w", 10.0, 10_000, 3))
    msg = {"v": 2, "type": "stats", "arrival_rate": 999.0, "pool": {"capacity_tokens": 1, "used_tokens": 0,
                                                                      "running": 0}, **bad}  # fmt: skip
    r = ask(raw, pack(msg))
    assert r["type"] == "error" and r["error"] == "malformed" and ("worker" in r["detail"] or "scope" in r["detail"])
    assert service.workers.conf("w") == pytest.approx(first["conf"])
    p = ask(raw, pack({"v": 2, "type": "predict", "worker": 3, "items": [{"rid": "z", "text": "hi",
                                                                           "max_new_tokens": 9}]}))  # fmt: skip
    assert p["type"] == "error" and p["error"] == "malformed"


def test_a_silent_worker_leaves_the_cluster_rate_and_the_table_is_bounded() -> None:
    now = [0.0]
    t = WorkerTable(0.9, max_workers=3, ttl_s=5.0, clock=lambda: now[0])
    pool = PoolStats(1000, 0, 1)
    t.decide("a", "worker", 10.0, pool, 0.95, 0.01, "paper")
    now[0] = 4.0
    t.decide("b", "worker", 20.0, pool, 0.95, 0.01, "paper")
    assert t.cluster_rate() == pytest.approx(30.0)
    now[0] = 6.0  # a was last heard 6 s ago
    assert t.cluster_rate() == pytest.approx(20.0)
    assert t.conf("never-seen") == 0.9
    for name in ("c", "d", "e"):
        t.decide(name, "cluster", 1.0, pool, 0.95, 0.01, "paper")
    assert len(t) == 3 and "a" not in t.summary() and "b" not in t.summary()


def test_client_names_its_worker_and_reads_the_cluster_rate(service: PredictorService) -> None:
    c0 = PredictorClient(service.endpoint, worker="h:1/dp0")
    c1 = PredictorClient(service.endpoint, worker="h:1/dp1")
    with pytest.raises(ValueError, match="worker name"):
        PredictorClient(service.endpoint, worker="x" * 200)
    assert c0.cluster_rate() is None
    c0.submit("q0", text="Tell me a story", max_new_tokens=300)
    end = time.monotonic() + 15
    while time.monotonic() < end and not (c0.cluster_rate() == pytest.approx(12.0) and c0.estimate("q0")):
        c0.push_stats(5.0, 1000, 10, 1)
        c1.push_stats(7.0, 1000, 10, 1)
        c0.poll()
        c1.poll()
        time.sleep(0.01)
    assert c0.cluster_rate() == pytest.approx(12.0) and c0.estimate("q0") is not None
    assert service.workers.summary()["h:1/dp0"]["predictions"] == 1
    c0.close()
    c1.close()
