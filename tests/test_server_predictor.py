"""With ``--ext-predictor-mode service`` the real CPU server starts the ZMQ predictor service beside itself, its
policy uses the service's bounds (counted in the adapter's log line), and killing the service mid-load loses no
request: answers fall back to the documented bound and the server keeps serving."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from eval.server import ROOT, ServerProcess, cpu_server_args

pytestmark = pytest.mark.server

MODEL = ROOT / "predictors" / "models" / "alpaca-mistral"
PROMPTS = ROOT / "data" / "prompts" / "alpacaeval_Mistral-7B-Instruct-v0.2.json"


def _counters(log: str) -> dict[str, int]:
    found = re.findall(r"sglang_ext counters: (\{.*\})", log)
    return json.loads(found[-1].replace("'", '"')) if found else {}


def test_server_uses_service_bounds_and_survives_its_death(tmp_path: Path) -> None:
    prompts = [row["instruction"] for row in json.loads(PROMPTS.read_text())[:48]]
    extra = ["--ext-policy", "cacheopt", "--ext-predictor-mode", "service", "--ext-predictor-model-path", str(MODEL)]
    with ServerProcess(cpu_server_args(pool_tokens=2048, extra=extra), log_path=tmp_path / "server.log") as srv:
        m = re.search(r"predictor service pid=(\d+)", srv.log_text())
        assert m is not None, srv.log_tail()
        service_pid = int(m.group(1))

        def one(text: str) -> int:
            body = {"text": text, "sampling_params": {"max_new_tokens": 24, "min_new_tokens": 24}}
            r = httpx.post(srv.base_url + "/generate", json=body, timeout=300)
            r.raise_for_status()
            return int(r.json()["meta_info"]["completion_tokens"])

        with cf.ThreadPoolExecutor(8) as ex:
            first = list(ex.map(one, prompts[:24]))
            os.kill(service_pid, signal.SIGKILL)
            second = list(ex.map(one, prompts[24:]))
        assert first == [24] * 24 and second == [24] * 24  # nothing lost, nothing failed
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "predictor_fallbacks" not in _counters(srv.log_text()):
            one(prompts[0])  # keep the scheduler planning until the periodic counter line shows the fallbacks
            time.sleep(1)
        counters = _counters(srv.log_text())
        assert counters.get("predictor_answers", 0) > 0, counters
        assert counters.get("predictor_fallbacks", 0) > 0, counters
        assert srv.alive()
