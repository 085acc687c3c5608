"""The plugin inside a real SGLang 0.5.23 server on CPU: flags in ``--help``, start-up refusal of bad flags, the
three client paths (/generate, OpenAI-compatible, an SGLang frontend program), the adapter running in the
scheduler process, HTTP 400 for a bad per-request SLO, and a forced retraction seen and counted."""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from eval.server import CPU_ENV, TINY_MODEL, ServerProcess, cpu_server_args

pytestmark = pytest.mark.server

LAUNCH = [sys.executable, "-m", "sglang.launch_server"]
ENV = {**os.environ, **CPU_ENV}


def test_help_lists_extension_flags_in_one_group() -> None:
    out = subprocess.run([*LAUNCH, "--help"], env=ENV, capture_output=True, text=True, timeout=240).stdout
    assert "SGLang extension (CacheOPT / AccelGen)" in out
    group = out.split("SGLang extension (CacheOPT / AccelGen)")[1]
    for flag in (
        "--ext-policy",
        "--ext-cacheopt-reserve-tokens",
        "--ext-accelgen-pivot-tokens",
        "--ext-predictor-mode",
    ):
        assert flag in group


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--ext-policy", "bogus"], "--ext-policy"),
        (["--ext-default-tbt-slo-ms", "-5"], "--ext-default-tbt-slo-ms"),
        (["--ext-default-ttft-slo-ms", "soon"], "--ext-default-ttft-slo-ms"),
        (["--ext-policy", "cacheopt", "--ext-latency-profile", "nope"], "--ext-latency-profile"),
    ],
)
def test_bad_flags_are_refused_at_startup(
    argv: list[str], needle: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process through SGLang's own argument path (prepare_server_args) with the plugin loaded: the same code
    the launcher runs, without paying a server start per case."""
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args

    from sglang_ext.config import ENV_VAR

    monkeypatch.delenv(ENV_VAR, raising=False)
    load_plugins()
    with pytest.raises(SystemExit) as exc:
        prepare_server_args(["--model-path", str(TINY_MODEL), *argv])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1]


def test_missing_model_path_is_refused() -> None:
    proc = subprocess.run([*LAUNCH, "--model-path", "/nonexistent/model", "--device", "cpu"], env=ENV,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert proc.returncode != 0
    assert "/nonexistent/model" in proc.stderr + proc.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("srv") / "server.log"
    extra = ["--ext-policy", "sglang", "--schedule-conservativeness", "0.1"]
    with ServerProcess(cpu_server_args(pool_tokens=600, extra=extra), log_path=log) as srv:
        yield srv
    assert srv.pid is None  # stopped by PID on the way out


def test_generate_endpoint(server: ServerProcess) -> None:
    r = httpx.post(server.base_url + "/generate", json={"text": "Hello, my name is",
                   "sampling_params": {"max_new_tokens": 8, "min_new_tokens": 8}}, timeout=60)  # fmt: skip
    assert r.status_code == 200
    assert r.json()["meta_info"]["completion_tokens"] == 8


def test_openai_endpoint(server: ServerProcess) -> None:
    r = httpx.post(server.base_url + "/v1/completions", json={"model": "default", "prompt": "Once upon a time",
                   "max_tokens": 6, "min_tokens": 6}, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 6


def test_frontend_program(server: ServerProcess) -> None:
    import sglang as sgl

    @sgl.function
    def two_turns(s, topic):  # type: ignore[no-untyped-def]
        s += "Write about " + topic + ": "
        s += sgl.gen("first", max_tokens=5)
        s += " and then "
        s += sgl.gen("second", max_tokens=5)

    sgl.set_default_backend(sgl.RuntimeEndpoint(server.base_url))
    state = two_turns.run(topic="KV caches")
    assert isinstance(state["first"], str) and isinstance(state["second"], str)
    assert "and then" in state.text()


def test_bad_per_request_slo_is_http_400(server: ServerProcess) -> None:
    for bad in (-5, 0, "fast"):
        r = httpx.post(server.base_url + "/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 2,
                       "custom_params": {"tbt_slo_ms": bad}}}, timeout=60)  # fmt: skip
        assert r.status_code == 400, r.text
        assert "tbt_slo_ms" in r.text


def test_adapter_runs_in_scheduler_process_and_retraction_is_counted(server: ServerProcess) -> None:
    def one(i: int) -> dict:
        # Short prompts, long outputs: SGLang admits a new request when prompt + max_new_tokens fits beside the
        # running ones charged at new_token_ratio (0.07 with --schedule-conservativeness 0.1), so ~10 start together
        # and outgrow the 600-token pool.
        body = {"input_ids": list(range(100 + i, 120 + i)), "sampling_params": {"max_new_tokens": 200,
                "min_new_tokens": 200}}  # fmt: skip
        return httpx.post(server.base_url + "/generate", json=body, timeout=300).json()["meta_info"]

    # Whether a burst outgrows the pool depends on how its arrivals interleave with SGLang's admission (its
    # new_token_ratio decays between bursts; a CI run once saw none retract): up to three bursts, fresh prompts each
    metas: list[dict] = []
    for burst in range(3):
        with cf.ThreadPoolExecutor(16) as ex:
            metas = list(ex.map(one, range(1000 * burst, 1000 * burst + 16)))
        assert all(m["completion_tokens"] == 200 for m in metas)
        if sum(m.get("num_retractions", 0) for m in metas) >= 1:
            break
    log = server.log_text()
    m = re.search(r"sglang_ext: adapter active in scheduler pid=(\d+) policy=sglang", log)
    assert m is not None, "the adapter hook did not run in the scheduler"
    assert int(m.group(1)) != server.pid  # the scheduler is a child process, not the launcher
    assert "KV cache pool is full. Retract requests." in log
    assert sum(m.get("num_retractions", 0) for m in metas) >= 1
    metrics = httpx.get(server.base_url + "/metrics", timeout=10).text
    retracted = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("sglang:num_retracted_requests_total")
    ]
    assert retracted and sum(retracted) >= 1
