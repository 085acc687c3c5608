"""The ZMQ predictor service and its client (C1): round trip, batching, bad input, feedback refits, and a
service killed during load with zero lost requests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from predictors.client import PredictorClient
from predictors.features import FeatureSpec
from predictors.model import TrainParams
from predictors.protocol import REPLY_TYPES, pack, unpack
from predictors.service import PredictorService, spawn, wait_ready
from predictors.train import train

MISTRAL = str(Path(__file__).resolve().parent.parent / "data" / "prompts" / "alpacaeval_Mistral-7B-Instruct-v0.2.json")


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("svc-model")
    train([MISTRAL], str(out), spec=FeatureSpec(n_hash=64), params=TrainParams(rounds=30))
    return str(out)


@contextlib.contextmanager
def running_service(model_dir: str, **kw: Any) -> Iterator[PredictorService]:
    """A real service on a free loopback port, serving in a thread; stopped whatever the test does."""
    svc = PredictorService(model_dir, free_endpoint(), **kw)
    th = threading.Thread(target=svc.serve, kwargs={"max_seconds": 30}, daemon=True)
    th.start()
    try:
        yield svc
    finally:
        svc.stop()
        th.join(5)


@contextlib.contextmanager
def dealer(endpoint: str) -> Iterator[zmq.Socket]:
    """A raw DEALER socket connected to ``endpoint`` (frames exactly as a client sends them)."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    try:
        yield s
    finally:
        s.close(0)


@pytest.fixture()
def service(model_dir: str) -> Iterator[PredictorService]:
    with running_service(model_dir, refit_every=5) as svc:
        yield svc


@pytest.fixture()
def raw(service: PredictorService) -> Iterator[zmq.Socket]:
    with dealer(service.endpoint) as s:
        yield s


def ask(s: zmq.Socket, *frames: bytes) -> dict:
    s.send_multipart(list(frames))
    assert s.poll(5000), "no reply"
    return unpack(s.recv(), types=REPLY_TYPES)


def still_serving(s: zmq.Socket) -> bool:
    return ask(s, pack({"v": 2, "type": "ping"}))["type"] == "pong"


def predict(*items: dict) -> bytes:
    return pack({"v": 2, "type": "predict", "items": list(items)})


def test_round_trip_predict_stats_finish(raw: zmq.Socket, service: PredictorService) -> None:
    r = ask(raw, predict({"rid": "a", "text": "Write a poem about rain", "max_new_tokens": 512},
                         {"rid": "b", "token_ids": [1, 1824, 349, 272], "max_new_tokens": 64}))  # fmt: skip
    assert {i["rid"] for i in r["items"]} == {"a", "b"} and r["errors"] == []
    assert r["levels"] == [0.5, 0.8, 0.9, 0.95, 0.99]
    for it in r["items"]:
        cap = 512 if it["rid"] == "a" else 64
        assert 1 <= it["point"] <= it["bound"] <= cap
        assert len(it["q"]) == 5 and it["q"] == sorted(it["q"]) and it["q"][-1] <= cap
    res = ask(raw, pack({"v": 2, "type": "stats", "arrival_rate": 50.0,
                         "pool": {"capacity_tokens": 10000, "used_tokens": 100, "running": 4}}))  # fmt: skip
    assert res["type"] == "reservation" and res["conf"] == pytest.approx(0.95 / 1.05) and res["reserve_tokens"] >= 64
    r2 = ask(raw, predict({"rid": "c", "text": "Hi", "max_new_tokens": 512}))
    assert r2["items"][0]["conf"] == pytest.approx(0.95 / 1.05)
    assert ask(raw, pack({"v": 2, "type": "finish", "rid": "a", "output_len": 100}))["type"] == "ack"


def test_messages_that_arrive_together_are_predicted_in_one_batch(model_dir: str) -> None:
    svc = PredictorService(model_dir, free_endpoint())  # not looping: we step it by hand
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(svc.endpoint)
    try:
        for i in range(20):
            s.send(predict({"rid": f"r{i}", "text": f"Question number {i}?", "max_new_tokens": 100}))
        end = time.monotonic() + 5
        handled = 0
        while handled < 20 and time.monotonic() < end:
            if svc.sock.poll(50):
                time.sleep(0.05)  # let the rest arrive, as a busy service would find them queued
                handled += svc.step()
        assert handled == 20 and svc.counters["batches"] == 1 and svc.counters["predictions"] == 20
        got = {unpack(s.recv(), types=REPLY_TYPES)["items"][0]["rid"] for _ in range(20) if s.poll(2000)}
        assert got == {f"r{i}" for i in range(20)}
    finally:
        s.close(0)
        svc.sock.close(0)


BAD_CASES = {
    "garbage": (b"\xc1\x00garbage", "malformed"),
    "not a map": (msgpack.packb([1, 2, 3]), "malformed"),
    "old version": (pack({"v": 1, "type": "ping"}), "version"),
    "unknown version": (pack({"v": 3, "type": "ping"}), "version"),
    "unknown type": (pack({"v": 2, "type": "explode"}), "type"),
    "non-utf8 str": (
        msgpack.packb(
            {"v": 2, "type": "predict", "items": [{"rid": "x", "text": b"\xff\xfe", "max_new_tokens": 5}]},
            use_bin_type=False,
        ),
        "encoding",
    ),
    "oversized": (b"\x00" * (5 << 20), "oversized"),
    "bad stats": (pack({"v": 2, "type": "stats", "arrival_rate": "fast", "pool": {}}), "malformed"),
    "bad finish": (pack({"v": 2, "type": "finish", "rid": 3}), "malformed"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_frames_get_an_error_reply_and_service_keeps_serving(raw: zmq.Socket, service: PredictorService,
                                                                 case: str) -> None:  # fmt: skip
    frame, code = BAD_CASES[case]
    r = ask(raw, frame)
    assert r["type"] == "error" and r["error"] == code and r["detail"]
    assert service.counters[f"error_{code}"] == 1
    assert still_serving(raw)


def test_multi_frame_message_is_malformed(raw: zmq.Socket) -> None:
    r = ask(raw, pack({"v": 2, "type": "ping"}), b"extra")
    assert r["error"] == "malformed" and still_serving(raw)


def test_bad_items_are_reported_alone(raw: zmq.Socket, service: PredictorService) -> None:
    r = ask(raw, predict({"rid": "ok", "text": "Tell me a joke", "max_new_tokens": 50},
                         {"rid": "empty", "text": "   ", "max_new_tokens": 50},
                         {"rid": "bin", "text": b"\xff\xfe\xfd", "max_new_tokens": 50},
                         {"rid": "ids", "token_ids": [5, 10**9], "max_new_tokens": 50},
                         {"rid": "cap", "text": "hello", "max_new_tokens": 0}))  # fmt: skip
    assert [i["rid"] for i in r["items"]] == ["ok"]
    errs = {e["rid"]: e["error"] for e in r["errors"]}
    assert errs["empty"] == "empty prompt" and "UTF-8" in errs["bin"]
    assert "out of range" in errs["ids"] and "max_new_tokens" in errs["cap"]
    assert service.counters["error_item"] == 4 and still_serving(raw)


def test_100k_token_prompt_is_answered_logged_and_counted(raw: zmq.Socket, service: PredictorService) -> None:
    ids = [1] + [1824] * 100_000
    r = ask(raw, predict({"rid": "long-ids", "token_ids": ids, "max_new_tokens": 256},
                         {"rid": "long-text", "text": "word " * 100_000, "max_new_tokens": 256}))  # fmt: skip
    assert {i["rid"] for i in r["items"]} == {"long-ids", "long-text"}
    assert service.counters["long_prompt"] == 2 and still_serving(raw)


def test_finishes_refit_the_calibration_online(raw: zmq.Socket, service: PredictorService) -> None:
    items = [{"rid": f"f{i}", "text": f"Explain topic {i} briefly", "max_new_tokens": 4096} for i in range(10)]
    r = ask(raw, predict(*items))
    b0 = {i["rid"]: i["bound"] for i in r["items"]}
    for i in range(10):
        raw.send(pack({"v": 2, "type": "finish", "rid": f"f{i}", "output_len": 4000}))  # all far above bounds
        assert unpack(raw.recv(), types=REPLY_TYPES)["type"] == "ack"
    assert service.counters["refits"] == 2 and service.calib.n_online == 10
    r2 = ask(raw, predict(*[{**it, "rid": "g" + it["rid"]} for it in items]))
    assert sum(i["bound"] for i in r2["items"]) >= sum(b0.values())


def test_client_round_trip_and_fallback(service: PredictorService) -> None:
    c = PredictorClient(service.endpoint, fallback="max_new_tokens")
    assert c.estimate("nope") is None
    fb = c.get("nope", 300)
    assert fb.fallback and fb.bound == 300 and c.counters["fallbacks"] == 1
    c.submit("x", text="Write a haiku", max_new_tokens=200)
    c.submit("y", text="", max_new_tokens=200)
    end = time.monotonic() + 10
    while (c.estimate("x") is None or c.reservation() is None or "y" not in c.errors) and time.monotonic() < end:
        c.push_stats(5.0, 1000, 10, 1)  # periodic, as a scheduler pushes them (a send before connect is dropped)
        c.poll()
        time.sleep(0.005)
    est = c.estimate("x")
    assert est is not None and not est.fallback and est.point <= est.bound <= 200
    assert c.errors["y"] == "empty prompt" and c.reservation() is not None
    c.report_finish("x", 17)
    c.close()


def test_service_killed_during_load_loses_no_request(model_dir: str, tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/pred.sock"
    proc = spawn(model_dir, ep, log_path=str(tmp_path / "svc.log"))
    try:
        assert wait_ready(ep, 20) is not None
        c = PredictorClient(ep, ping_interval_s=0.05, dead_after_s=0.3)
        rids: list[str] = []
        fallbacks = 0
        for phase in ("up", "dead", "restarted"):
            if phase == "dead":
                proc.kill()
                proc.wait(5)
            if phase == "restarted":
                proc = spawn(model_dir, ep, log_path=str(tmp_path / "svc2.log"))
            for i in range(60):
                rid = f"{phase}-{i}"
                c.submit(rid, text=f"Describe item {i} in detail", max_new_tokens=1000)
                rids.append(rid)
                c.poll()
                time.sleep(0.005)
                est = c.get(rids[-5], 1000) if len(rids) >= 5 else None  # the scheduler considers a recent one
                fallbacks += bool(est and est.fallback)
        end = time.monotonic() + 60  # a restarted service imports xgboost and loads the model: slow on a loaded machine
        while any(c.estimate(r) is None for r in rids) and time.monotonic() < end:
            c.poll()
            time.sleep(0.01)
        missing = [r for r in rids if c.estimate(r) is None]
        assert missing == [], f"lost {len(missing)} requests"
        while c.counters["reconnects"] + c.counters["restarts_seen"] == 0 and time.monotonic() < end:
            c.poll()  # the new instance's pong may come after the last answer
            time.sleep(0.01)
        assert fallbacks > 0 and c.counters["fallbacks"] == fallbacks
        assert c.counters["reconnects"] + c.counters["restarts_seen"] >= 1
        assert c.counters["client_errors"] == 0
        c.close()
    finally:
        proc.kill()
        proc.wait(5)


def test_answers_carry_the_distribution_and_the_exact_final_length_reaches_the_service(
    service: PredictorService,
) -> None:
    import numpy as np

    c = PredictorClient(service.endpoint)
    c.submit("x", text="Write a haiku about the sea", max_new_tokens=200, cls="poems")
    end = time.monotonic() + 10
    while c.estimate("x") is None and time.monotonic() < end:
        c.poll()
        time.sleep(0.005)
    est = c.estimate("x")
    assert est is not None and est.dist is not None and est.dist.levels == (0.5, 0.8, 0.9, 0.95, 0.99)
    assert est.dist.quantile(0.99) <= 200 and abs(est.bound - est.dist.quantile(est.confidence)) <= 1
    c.report_finish("x", 137)
    c.report_finish("y", 12.5)  # not a length: refused here, never sent
    c.report_finish("z", np.int64(5))  # a numpy integer is exact: sent (the service does not know "z")
    end = time.monotonic() + 10
    while service.counters["finishes"] < 2 and time.monotonic() < end:
        c.poll()
        time.sleep(0.005)
    assert c.counters["finish_invalid"] == 1 and service.counters["finishes"] == 2
    assert service.counters["finish_unknown_rid"] == 1
    assert service.feedback[-1][2] == 137.0 and service.online.seen["poems"] == 1
    assert service.online.misses["poems"].tolist() == [float(b < 137) for b in est.dist.values]
    c.close()
