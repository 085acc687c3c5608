"""Overload and drain on the real CPU server with the extension (``cacheopt`` and ``accelgen``), one server per
policy: its capacity is measured with a burst, then it is driven at 2x that capacity for a reduced duration
(``SGLANG_EXT_OVERLOAD_S``, 15 s by default; ``benchmarks/bench_overload.py`` runs the full 60 s). Every request
completes at its length or is refused with SGLang's clear queue-full error, nothing hangs, and SGLang's free KV count
(``/v1/loads``) comes back to its initial value. Then a SIGTERM to the launcher during load: everything that was
sent completes, the rest is not sent or refused by a closed port, and the server and its children exit. Loopback
only; every run is bounded in requests and time (eval.overload)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from eval import overload
from eval.server import ServerProcess, cpu_server_args

pytestmark = pytest.mark.server

DURATION_S = float(os.environ.get("SGLANG_EXT_OVERLOAD_S", "15"))
QUEUE_LIMIT = 48


@pytest.fixture(scope="module", params=["cacheopt", "accelgen"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("overload") / f"server-{request.param}.log"
    extra = ["--ext-policy", request.param, "--ext-predictor-mode", "online", "--ext-default-tbt-slo-ms", "300",
             "--max-queued-requests", str(QUEUE_LIMIT)]  # fmt: skip
    with ServerProcess(cpu_server_args(pool_tokens=2048, extra=extra), log_path=log) as srv:
        yield srv


@pytest.fixture(scope="module")
def capacity(server: ServerProcess) -> float:
    return overload.capacity_rps(server.base_url)


def test_twice_capacity_completes_or_refuses_and_frees_all_kv(server: ServerProcess, capacity: float) -> None:
    res = overload.overload(server.base_url, capacity, factor=2.0, duration_s=DURATION_S)
    assert res.aborted is None, res  # the server kept answering
    assert res.other_errors == {}, res  # no timeout, no dropped stream, no error other than a clear refusal
    assert res.completed + res.refused == res.sent and res.completed > 0, res
    assert res.length_mismatches == 0, res
    assert res.kv_after["free"] == res.kv_before["free"] == res.kv_before["total"], res
    assert res.kv_after["running"] == res.kv_after["waiting"] == 0, res
    log = Path(server.log_path).read_text(errors="replace")
    assert "memory leak detected" not in log and "Traceback" not in log


def test_sigterm_during_load_drains_and_exits(server: ServerProcess, capacity: float) -> None:
    res = overload.sigterm_during_load(server, rate=capacity, duration_s=8.0, sigterm_after_s=3.0)
    assert res.lost == {}, res  # every request that was sent completed
    assert res.completed >= 1 and res.sent_before_sigterm >= 1, res
    assert res.exit_code is not None, res  # the launcher exited by itself
    assert res.children_left == [], res  # and its scheduler and detokenizer with it
    assert not server.alive()
