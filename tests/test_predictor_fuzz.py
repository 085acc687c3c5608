"""A predictor service that input cannot kill (issue 13.4): the ZMQ protocol fuzzed with hypothesis (NaN, +-inf,
negatives, huge numbers, wrong types, truncated and extra frames, wrong versions, random bytes). The service
answers with an error or ignores, never raises out of its loop, never dies, counts what it refused, and its
decisions stay sane (finite confidence in (0, 1], non-negative reserve). The client survives garbage replies."""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from predictors.client import PredictorClient
from predictors.protocol import REPLY_TYPES, TYPES, pack, unpack
from predictors.service import SHIPPED_MODEL, PredictorService, spawn, wait_ready

NASTY_NUMBERS = (math.nan, math.inf, -math.inf, -1, -1.5, 0, 0.5, 1e308, 2**63 - 1, -(2**63), 2**64 - 1, 1e-310)
SLOW_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=SLOW_OK)


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NASTY_NUMBERS), st.text(max_size=20), st.binary(max_size=20),
)  # fmt: skip
anything = st.recursive(
    leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)
number_like = st.one_of(st.sampled_from(NASTY_NUMBERS), st.integers(-(2**63), 2**64 - 1), st.floats(), anything)
item = st.fixed_dictionaries({}, optional={
    "rid": st.one_of(st.text(max_size=8), anything, st.just("x" * 600)),
    "text": st.one_of(st.text(max_size=40), st.binary(max_size=20), anything),
    "token_ids": st.one_of(st.lists(st.integers(-5, 40000), max_size=20), st.lists(number_like, max_size=5), anything),
    "max_new_tokens": number_like, "source": anything, "class": st.one_of(st.text(max_size=200), anything),
})  # fmt: skip
message = st.fixed_dictionaries(
    {"v": st.sampled_from([2, 2, 2, 1, 3, 0, "2", 2.0, True, None]), "type": st.sampled_from([*TYPES, "boom", 7])},
    optional={
        "items": st.one_of(st.lists(item, max_size=4), anything), "arrival_rate": number_like,
        "pool": st.one_of(st.fixed_dictionaries({}, optional={k: number_like for k in
                          ("capacity_tokens", "used_tokens", "running")}), anything),
        "rid": st.one_of(st.text(max_size=8), anything), "output_len": number_like, "t": anything,
    },
)  # fmt: skip


def encode(msg: dict[str, Any]) -> bytes:
    try:
        return pack(msg)
    except (OverflowError, TypeError, ValueError):  # an int msgpack cannot hold: send it as raw garbage instead
        return repr(msg).encode()[:512]


frames = st.one_of(
    message.map(lambda m: [encode(m)]),
    st.binary(max_size=300).map(lambda b: [b]),
    st.tuples(message, st.integers(0, 60)).map(lambda mt: [encode(mt[0])[: mt[1]]]),  # truncated
    st.tuples(message, st.binary(max_size=30)).map(lambda mb: [encode(mb[0]), mb[1]]),  # extra frame
    st.just([pack({"v": 2, "type": "stats", "arrival_rate": math.inf,
                   "pool": {"capacity_tokens": 100, "used_tokens": 0, "running": 1}})]),
    st.just([pack({"v": 2, "type": "stats", "arrival_rate": 1.0,
                   "pool": {"capacity_tokens": math.inf, "used_tokens": 0, "running": 1}})]),
)  # fmt: skip


@pytest.fixture(scope="module")
def svc() -> Iterator[PredictorService]:
    s = PredictorService(SHIPPED_MODEL, free_endpoint())  # stepped by hand: an exception fails the test
    yield s
    s.sock.close(0)


@pytest.fixture(scope="module")
def dealer(svc: PredictorService) -> Iterator[zmq.Socket]:
    d = zmq.Context.instance().socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(svc.endpoint)
    yield d
    d.close(0)


def exchange(svc: PredictorService, dealer: zmq.Socket, parts: list[bytes], wait_s: float = 0.5) -> list[dict]:
    """Send, step the service until it has handled the message, return the (decoded) replies."""
    before = svc.counters["messages"]
    dealer.send_multipart(parts)
    end = time.monotonic() + 5
    while svc.counters["messages"] == before and time.monotonic() < end:
        svc.sock.poll(20)
        svc.step()
    assert svc.counters["messages"] == before + 1, "the service did not receive the message"
    out = []
    while dealer.poll(int(wait_s * 1000) if not out else 0):
        out.append(unpack(dealer.recv(), types=REPLY_TYPES))  # every reply is itself valid v2
    return out


def assert_sane(svc: PredictorService, dealer: zmq.Socket) -> None:
    pong = [r for r in exchange(svc, dealer, [pack({"v": 2, "type": "ping"})], wait_s=2) if r["type"] == "pong"]
    assert pong, "no pong after the fuzzed message"
    assert math.isfinite(svc.conf) and 0 < svc.conf <= 1 and svc.reserve_tokens >= 0
    assert pong[0]["refused"]["total"] == sum(svc.refused.values())


@FUZZ
@given(parts=frames)
def test_fuzzed_frames_get_an_error_or_nothing_and_the_service_lives(svc: PredictorService, dealer: zmq.Socket,
                                                                      parts: list[bytes]) -> None:  # fmt: skip
    refused = sum(svc.refused.values())
    replies = exchange(svc, dealer, parts, wait_s=0.05)
    errors = [r for r in replies if r["type"] == "error"] + [e for r in replies if r["type"] == "predict"
                                                             for e in r["errors"]]  # fmt: skip
    assert sum(svc.refused.values()) - refused == len(errors)  # every refusal is counted, nothing else is
    assert all(isinstance(e.get("error") or e.get("rid"), str) for e in errors)
    assert_sane(svc, dealer)


def test_infinite_capacity_and_rate_are_refused_and_leave_the_decision(svc: PredictorService,
                                                                        dealer: zmq.Socket) -> None:  # fmt: skip
    good = {"v": 2, "type": "stats", "arrival_rate": 100.0,
            "pool": {"capacity_tokens": 10_000, "used_tokens": 10, "running": 3}}  # fmt: skip
    (r,) = exchange(svc, dealer, [pack(good)])
    conf = r["conf"]
    assert r["type"] == "reservation" and conf == pytest.approx(0.95 / 1.1)
    for bad in ({**good, "arrival_rate": math.inf}, {**good, "arrival_rate": math.nan},
                {**good, "arrival_rate": -3.0}, {**good, "pool": {**good["pool"], "capacity_tokens": math.inf}},
                {**good, "pool": {**good["pool"], "used_tokens": 2**70 + 0.5}}):  # fmt: skip
        (e,) = exchange(svc, dealer, [pack(bad)])
        assert e["type"] == "error" and e["error"] == "value" and ("finite" in e["detail"] or "in [" in e["detail"]
                                                                   or "whole" in e["detail"])  # fmt: skip
        assert svc.conf == conf  # the last good decision stays in force
    (p,) = exchange(
        svc,
        dealer,
        [pack({"v": 2, "type": "predict", "items": [{"rid": "z", "text": "Hello there", "max_new_tokens": 100}]})],
    )
    assert 0 < p["items"][0]["conf"] == conf


def test_old_clients_get_a_clear_version_error(svc: PredictorService, dealer: zmq.Socket) -> None:
    (e,) = exchange(svc, dealer, [msgpack.packb({"v": 1, "type": "predict", "items": []})])
    assert e["error"] == "version" and "v2" in e["detail"] and "version 1" in e["detail"]


def test_the_real_process_survives_a_barrage_and_counts_it(tmp_path: Path) -> None:
    import random

    ep = f"ipc://{tmp_path}/fuzz.sock"
    proc = spawn(SHIPPED_MODEL, ep, "--log-level", "ERROR", log_path=str(tmp_path / "svc.log"))
    try:
        assert wait_ready(ep, 30) is not None
        d = zmq.Context.instance().socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.connect(ep)
        rng = random.Random(0)
        sent = 0
        for _ in range(300):
            d.send_multipart([rng.randbytes(rng.randrange(0, 200))])
            sent += 1
        for bad in ({"v": 2, "type": "stats", "arrival_rate": math.inf, "pool": {}},
                    {"v": 2, "type": "stats", "arrival_rate": 1.0, "pool": {"capacity_tokens": math.inf}},
                    {"v": 2, "type": "finish", "rid": "x", "output_len": math.nan}, {"v": 9, "type": "ping"},
                    {"v": 2, "type": "predict",
                     "items": [{"rid": "r", "token_ids": [math.inf], "max_new_tokens": 5}]}):  # fmt: skip
            d.send(pack(bad))
            sent += 1
        d.send_multipart([pack({"v": 2, "type": "ping"}), b"extra"])
        d.send(pack({"v": 2, "type": "ping"})[:3])
        time.sleep(0.5)
        assert proc.poll() is None, "the service died"
        pong = wait_ready(ep, 10)
        assert pong is not None and pong["refused"]["total"] >= 300
        c = PredictorClient(ep)
        c.submit("ok", text="Write a haiku about autumn", max_new_tokens=100)
        end = time.monotonic() + 10
        while c.estimate("ok") is None and time.monotonic() < end:
            c.poll()
            time.sleep(0.01)
        est = c.estimate("ok")
        assert est is not None and est.dist is not None and est.bound <= 100
        c.close()
        d.close(0)
    finally:
        proc.kill()
        proc.wait(5)


@FUZZ
@given(parts=st.lists(st.one_of(frames.map(lambda f: f[0]), message.map(lambda m: encode({**m, "type": "predict"})),
                                st.just(pack({"v": 2, "type": "predict", "levels": [0.9, 0.5],
                                              "items": [{"rid": "a", "point": 1, "bound": 2, "conf": 0.5,
                                                         "q": [5, 1]}]}))), min_size=1, max_size=3))  # fmt: skip
def test_client_survives_garbage_replies(parts: list[bytes]) -> None:
    ep = free_endpoint()
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(ep)
    c = PredictorClient(ep, ping_interval_s=0.0)
    try:
        c.submit("a", text="hello", max_new_tokens=10)
        end = time.monotonic() + 5
        while not router.poll(10) and time.monotonic() < end:
            c.poll()  # a send before the connection is up is kept and resent by poll()
        assert router.poll(0)
        ident = router.recv_multipart()[0]
        for p in parts:
            router.send_multipart([ident, p])
        time.sleep(0.02)
        c.poll()
        assert c.counters["client_errors"] == 0
        est = c.get("a", 10)
        assert est.bound >= 1 and est.point >= 1
    finally:
        c.close()
        router.close(0)
