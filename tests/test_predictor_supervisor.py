"""A predictor service that comes back when it dies (issue 13.4): the plugin's supervisor restarts it with back-off
and logs each restart, the client reconnects and is answered again, the reservation decision expires to the
configured default while the service is silent, and service mode starts with the shipped model by default."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import zmq

from policies.config import PredictorConfig
from predictors.client import PredictorClient
from predictors.protocol import pack
from predictors.service import SHIPPED_MODEL, wait_ready
from predictors.supervisor import ServiceSupervisor

pytestmark = pytest.mark.slow


def answered(c: PredictorClient, rid: str, timeout_s: float = 20.0) -> bool:
    end = time.monotonic() + timeout_s
    while c.estimate(rid) is None and time.monotonic() < end:
        c.poll()
        time.sleep(0.01)
    return c.estimate(rid) is not None


def wait_for(cond: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    end = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < end:
        time.sleep(0.05)
    return bool(cond())


def test_killed_service_is_restarted_with_back_off_and_the_client_reconnects(tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/sup.sock"
    lines: list[str] = []
    sup = ServiceSupervisor(SHIPPED_MODEL, ep, ("--log-level", "WARNING"), log_path=str(tmp_path / "svc.log"),
                            min_backoff_s=0.2, max_backoff_s=1.0, report=lines.append)  # fmt: skip
    try:
        first = sup.start().pid
        assert wait_ready(ep, 30) is not None
        c = PredictorClient(ep, ping_interval_s=0.05, dead_after_s=0.5)
        c.submit("before", text="Explain photosynthesis", max_new_tokens=500)
        assert answered(c, "before")
        assert wait_for(lambda: c.poll() >= 0 and c.instance is not None)
        first_instance = c.instance
        for n in (1, 2):
            pid = sup.pid
            os.kill(pid, signal.SIGKILL)
            assert wait_for(lambda n=n: sup.restarts == n), lines
            assert sup.pid != pid and wait_ready(ep, 30) is not None
        assert sup.pid != first
        exits = [ln for ln in lines if "exited" in ln]
        assert len(exits) == 2 and "restarting in 0.2s" in exits[0] and "restarting in 0.4s" in exits[1]
        assert sum("restarted (restart #" in ln for ln in lines) == 2
        c.submit("after", text="Write a limerick about a cat", max_new_tokens=300)
        assert answered(c, "after")
        assert wait_for(lambda: c.poll() >= 0 and c.instance != first_instance)  # the client sees the new instance
        assert c.counters["restarts_seen"] >= 1 and c.counters["client_errors"] == 0
        c.close()
    finally:
        sup.stop()
    assert sup.proc is not None and sup.proc.poll() is not None  # stopped for good: no restart after stop()
    time.sleep(0.5)
    assert sup.restarts == 2


def test_reservation_expires_to_the_default_when_the_service_is_silent() -> None:
    now = [0.0]
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    c = PredictorClient(f"tcp://127.0.0.1:{port}", reservation_ttl_s=2.0, dead_after_s=100.0, clock=lambda: now[0])
    try:
        end = time.monotonic() + 5
        while not router.poll(10) and time.monotonic() < end:
            c.push_stats(3.0, 1000, 10, 2)
            c.poll()
        ident = router.recv_multipart()[0]
        router.send_multipart([ident, pack({"v": 2, "type": "reservation", "conf": 0.9, "reserve_tokens": 128,
                                            "arrival_rate": 3.0, "refused": 0})])  # fmt: skip
        end = time.monotonic() + 5
        while c.reservation() is None and time.monotonic() < end:
            c.poll()
        assert c.reservation() == (0.9, 128)
        now[0] = 100.0  # an idle host asks nothing: the service is not silent, the decision holds
        assert c.reservation() == (0.9, 128) and c.silence() == 0.0
        c.push_stats(3.0, 1000, 10, 2)  # asked at t=100; the service never answers
        now[0] = 101.9
        assert c.reservation() == (0.9, 128)
        now[0] = 102.1  # unanswered for longer than the TTL
        assert c.reservation() is None and c.counters["reservation_expired"] == 1
    finally:
        c.close()
        router.close(0)


def test_service_mode_without_a_model_path_uses_the_shipped_model(capsys: pytest.CaptureFixture[str]) -> None:
    from sglang_ext.plugin import _start_predictor_service

    cfg = SimpleNamespace(predictor=PredictorConfig(mode="service"))
    old = os.environ.pop("SGLANG_EXT_PREDICTOR_ENDPOINT", None)
    sup = _start_predictor_service(cfg)
    try:
        err = capsys.readouterr().err
        assert "using the shipped model" in err and f"pid={sup.pid}" in err
        ep = os.environ["SGLANG_EXT_PREDICTOR_ENDPOINT"]
        pong = wait_ready(ep, 30)
        assert pong is not None and pong["model"] == Path(SHIPPED_MODEL).name and pong["bound"] == "conformal"
    finally:
        sup.stop()
        os.environ.pop("SGLANG_EXT_PREDICTOR_ENDPOINT", None)
        if old is not None:
            os.environ["SGLANG_EXT_PREDICTOR_ENDPOINT"] = old
