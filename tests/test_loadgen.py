"""The load generator (eval.loadgen) against small fake streaming servers: request bodies per mode, token timing
with multi-token chunks, preemption deltas, errors, a server that dies mid-run and one that hangs (no hang here)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from eval.loadgen import LoadgenError, main, prompt_ids, run_load
from eval.metrics import SUMMARY_FIELDS, read_records
from eval.slo import absolute
from eval.workloads import RequestSpec, load_workload

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Fake:
    """Behaviour and observations of the fake SGLang server."""

    model_dir: str = ""
    retractions: int = 5  # counter value before the run; +1 per 3 requests served
    metrics: bool = True
    die_at: int | None = None  # os._exit when this many /generate requests have arrived (subprocess only)
    hang: bool = False
    no_processor: bool = False  # started without --enable-custom-logit-processor
    bodies: list[dict[str, Any]] = field(default_factory=list)
    flushed: int = 0
    served: int = 0


def make_app(fake: Fake) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        if fake.hang and fake.bodies:  # healthy at the start, frozen once the run is under way
            await asyncio.sleep(3600)
        return web.Response(text="ok")

    async def metrics(_: web.Request) -> web.Response:
        if not fake.metrics:
            return web.Response(status=404)
        return web.Response(
            text="# HELP sglang:num_retracted_requests_total Total number of retracted requests.\n"
            "# TYPE sglang:num_retracted_requests_total counter\n"
            f'sglang:num_retracted_requests_total{{model_name="tiny"}} {float(fake.retractions)}\n'
        )

    async def model_info(_: web.Request) -> web.Response:
        return web.json_response({"model_path": fake.model_dir})

    async def flush(_: web.Request) -> web.Response:
        fake.flushed += 1
        return web.Response(text="Cache flushed.")

    async def generate(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        fake.bodies.append(body)
        if fake.die_at is not None and len(fake.bodies) >= fake.die_at:
            os._exit(1)
        if fake.hang:
            await asyncio.sleep(3600)
        sp = body["sampling_params"]
        if body["rid"].endswith("-bad"):
            return web.Response(status=400, text="custom_params: ttft_slo_ms must be positive")
        n = sp["custom_params"]["target_len"] if "custom_logit_processor" in body else sp["max_new_tokens"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if fake.no_processor and "custom_logit_processor" in body:
            msg = (
                "The server is not configured ... Please set `--enable-custom-logit-processor` to enable this feature."
            )
            await resp.write(b"data: " + json.dumps({"error": {"message": msg}}).encode() + b"\n\ndata: [DONE]\n\n")
            return resp
        if body["rid"].endswith("-refused"):  # SGLang's queue-full refusal on a stream: an abort finish reason
            fr = {"type": "abort", "status_code": 503, "message": "The request queue is full."}
            meta = {"completion_tokens": 0, "prompt_tokens": 1, "finish_reason": fr}
            await resp.write(b"data: " + json.dumps({"text": "", "meta_info": meta}).encode() + b"\n\ndata: [DONE]\n\n")
            return resp
        if body["rid"].endswith("-slowstart"):
            await asyncio.sleep(1.5)  # a long queue before the first token
        done, prompt = 0, len(body.get("input_ids") or body.get("text", "").split())
        while done < n:
            done += 2 if done % 4 == 1 and done + 2 <= n else 1  # some chunks carry two tokens
            await asyncio.sleep(0.003)
            if body["rid"].endswith("-stall") and done == 3:
                await asyncio.sleep(3.0)  # a mid-stream stall past the bound
            if body["rid"].endswith("-err") and done > 2:
                await resp.write(b'data: {"error": {"message": "scheduler crashed"}}\n\n')
                break
            big = body["rid"].endswith("-big")
            meta = {"completion_tokens": done, "prompt_tokens": prompt, "num_retractions": int(big),
                    "finish_reason": {"type": "stop"} if done == n else None}  # fmt: skip
            pad = "y" * 100_000 if big else ""  # an event beyond aiohttp's line limit
            await resp.write(b"data: " + json.dumps({"text": "x" * done + pad, "meta_info": meta}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        fake.served += 1
        if fake.served % 3 == 0:
            fake.retractions += 1
        return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/model_info", model_info)
    app.router.add_post("/flush_cache", flush)
    app.router.add_post("/generate", generate)
    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_in_thread(fake: Fake) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(make_app(fake), shutdown_timeout=0.5)
    port = _free_port()
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@contextmanager
def serve_in_subprocess(fake: Fake) -> Iterator[str]:
    port = _free_port()
    code = (f"from tests.test_loadgen import Fake, make_app; from aiohttp import web; "
            f"web.run_app(make_app(Fake(model_dir={fake.model_dir!r}, die_at={fake.die_at!r})), "
            f"host='127.0.0.1', port={port}, print=None)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, "the fake server exited during start-up"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 300}))
    return Fake(model_dir=str(tmp_path))


def _specs(n: int = 12, rate: float = 60.0) -> list[RequestSpec]:
    return load_workload("azure-conv", num_requests=n, rate=rate, scale=16.0, seed=4, slo=absolute(900.0, 50.0))


def test_cap_mode(fake: Fake) -> None:
    specs = _specs()
    with serve_in_thread(fake) as url:
        records, summary = run_load(url, specs, mode="cap", flush_cache=True, progress=False, metadata={"w": 1})
    assert tuple(summary)[: len(SUMMARY_FIELDS)] == SUMMARY_FIELDS
    assert summary["mode"] == "cap" and summary["workload"] == {"w": 1} and summary["aborted"] is None
    assert summary["completed"] == 12 and summary["length_mismatches"] == 0 and fake.flushed == 1
    assert summary["preemptions"] == 4  # 12 requests: the fake's counter went 5 -> 9
    assert summary["finish_reasons"] == {"stop": 12}
    for spec, rec, body in zip(
        specs, records, sorted(fake.bodies, key=lambda b: int(b["rid"].rsplit("-", 1)[1])), strict=True
    ):
        sp = body["sampling_params"]
        assert "ignore_eos" not in sp and "custom_logit_processor" in body and body["stream"] is True
        assert sp["max_new_tokens"] == spec.max_new_tokens > spec.output_len
        assert sp["custom_params"] == {"target_len": spec.output_len, "ttft_slo_ms": 900.0, "tbt_slo_ms": 50.0,
                                       "slo_class": "abs"}  # fmt: skip
        assert len(body["input_ids"]) == spec.prompt_len and max(body["input_ids"]) < 300
        assert rec.output_len == spec.output_len == rec.target_output_len
        assert rec.arrival_s >= spec.arrival_s - 1e-6 and rec.ttft_s is not None and rec.ttft_s > 0
        assert all(b >= a for a, b in zip(rec.token_times_s, rec.token_times_s[1:], strict=False))
        assert rec.finish_s == rec.token_times_s[-1] and rec.ttft_slo_ms == 900.0
    two_token_chunks = sum(int((r.gaps_s == 0).sum()) for r in records)
    assert two_token_chunks > 0  # a chunk carrying two tokens gave both the same arrival time


def test_exact_mode_and_text_prompts(fake: Fake) -> None:
    specs = load_workload("alpaca", num_requests=4, rate=100.0, scale=20.0)
    with serve_in_thread(fake) as url:
        records, summary = run_load(url, specs, mode="exact", progress=False)
    assert summary["mode"] == "exact" and summary["completed"] == 4
    for spec, body in zip(specs, sorted(fake.bodies, key=lambda b: specs.index(next(
            s for s in specs if b["rid"].endswith(s.rid)))), strict=True):  # fmt: skip
        assert body["text"] == spec.prompt_text and "input_ids" not in body
        assert body["sampling_params"]["ignore_eos"] is True
        assert body["sampling_params"]["max_new_tokens"] == spec.output_len
        assert "custom_logit_processor" not in body
    assert all(r.output_len == r.target_output_len for r in records)


def test_prefix_blocks_give_shared_ids() -> None:
    a, b = load_workload("mooncake", num_requests=2, scale=8.0)
    assert a.prefix_hash_ids[0] == b.prefix_hash_ids[0] and a.prefix_hash_ids[1] != b.prefix_hash_ids[1]
    ia, ib = prompt_ids(a, 0, 1, 1000), prompt_ids(b, 1, 1, 1000)
    assert len(ia) == a.prompt_len and len(ib) == b.prompt_len
    assert ia[:64] == ib[:64] and ia[64:128] != ib[64:128]
    plain = replace(a, prefix_hash_ids=(), prefix_block_tokens=0)
    assert prompt_ids(plain, 0, 1, 1000) == prompt_ids(plain, 0, 1, 1000) != prompt_ids(plain, 0, 2, 1000)


def test_errors_become_failed_records_and_metrics_may_be_missing(fake: Fake) -> None:
    specs = _specs(6)
    specs[1] = replace(specs[1], rid=specs[1].rid + "-bad", output_len=8)
    specs[2] = replace(specs[2], rid=specs[2].rid + "-err", output_len=8)
    specs[3] = replace(specs[3], rid=specs[3].rid + "-big", output_len=5)
    specs[4] = replace(specs[4], rid=specs[4].rid + "-refused", output_len=5)
    fake.metrics = False
    with serve_in_thread(fake) as url:
        records, summary = run_load(url, specs, progress=False)
    by = {r.rid: r for r in records}
    assert by[specs[1].rid].error == "HTTP 400: custom_params: ttft_slo_ms must be positive"
    assert by[specs[2].rid].error == "server error: scheduler crashed"
    assert by[specs[3].rid].ok and by[specs[3].rid].output_len == 5
    assert by[specs[4].rid].error == "aborted by the server: 503 The request queue is full."  # refused, not done
    assert summary["failed"] == 3 and summary["completed"] == 3 and summary["aborted"] is None
    assert summary["finish_reasons"] == {"stop": 3, "abort": 1}
    assert summary["preemptions"] == 1 and summary["preemptions_source"].startswith("meta_info")


def test_stall_bound_starts_at_the_first_token(fake: Fake) -> None:
    specs = _specs(3)
    specs[0] = replace(specs[0], rid=specs[0].rid + "-slowstart", output_len=6)
    specs[1] = replace(specs[1], rid=specs[1].rid + "-stall", output_len=8)
    with serve_in_thread(fake) as url:
        records, summary = run_load(url, specs, progress=False, stall_timeout_s=1.0)
    assert records[0].ok and records[0].ttft_s > 1.4  # queueing is not a stall
    assert records[1].error is not None and records[1].error.startswith("timeout (no token for 1.0 s")
    assert records[2].ok and summary["aborted"] is None  # the server still answers: only that request failed


def test_cap_mode_without_processor_flag_stops_at_once(fake: Fake) -> None:
    fake.no_processor = True
    with serve_in_thread(fake) as url:
        _, summary = run_load(url, _specs(20, rate=10.0), progress=False, abort_grace_s=0.5)
    assert summary["completed"] == 0 and "--enable-custom-logit-processor" in summary["aborted"]
    assert len(fake.bodies) < 20  # the rest were never sent


def test_unreachable_server_fails_at_once() -> None:
    t0 = time.monotonic()
    with pytest.raises(LoadgenError, match="not reachable"):
        run_load(f"http://127.0.0.1:{_free_port()}", _specs(2), progress=False, connect_timeout_s=2.0)
    assert time.monotonic() - t0 < 5


def test_server_dying_mid_run_stops_the_run(fake: Fake) -> None:
    fake.die_at = 5
    specs = _specs(30, rate=40.0)  # ~0.75 s of arrivals; the server dies at the 5th request
    t0 = time.monotonic()
    with serve_in_subprocess(fake) as url:
        records, summary = run_load(url, specs, progress=False, connect_timeout_s=2.0)
    assert time.monotonic() - t0 < 15
    assert summary["aborted"] and str(url) in summary["aborted"]
    assert summary["failed"] >= 25 and summary["completed"] + summary["failed"] == 30
    assert all(r.error for r in records if not r.ok)
    assert any(r.error.startswith("not sent") for r in records if r.error)


def test_hung_server_is_bounded(fake: Fake) -> None:
    specs = _specs(6, rate=20.0)
    with serve_in_thread(fake) as url:
        fake.hang = True
        t0 = time.monotonic()
        records, summary = run_load(url, specs, progress=False, connect_timeout_s=1.0, health_interval_s=0.5,
                                    abort_grace_s=0.5, vocab_size=300)  # fmt: skip
        elapsed = time.monotonic() - t0
        fake.hang = False
    assert elapsed < 8
    assert summary["completed"] == 0 and summary["failed"] == 6 and "stopped answering" in summary["aborted"]
    assert {r.error.split(" ")[0] for r in records if r.error} <= {"timeout", "not", "aborted:"}


def test_cli_writes_summary_and_records(fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, recs = tmp_path / "s.json", tmp_path / "r.jsonl"
    common = ["--scale", "16", "--out", str(out), "--no-progress"]
    with serve_in_thread(fake) as url:
        rc = main(["--url", url, "--workload", "azure-code", "--num-requests", "5", "--rate", "50",
                   "--slo", "abs:500:40", "--requests-out", str(recs), *common])  # fmt: skip
        assert rc == 0
        summary = json.loads(out.read_text())
        assert summary["mode"] == "cap" and summary["workload"]["workload"] == "azure-code"
        records = read_records(recs)
        assert len(records) == summary["completed"] == 5 and all(r.ok and r.tbt_slo_ms == 40.0 for r in records)
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["completed"] == 5
        assert main(["--url", url, "--workload", "sharegpt", "--num-requests", "5", *common]) == 2
        assert "give a rate" in capsys.readouterr().err
        rc = main(["--url", url, "--workload", "sharegpt", "--num-requests", "9", "--rate", "80", "--slo", "default",
                   "--slo-profile", "h100-llama3-8b", *common])  # fmt: skip
    assert rc == 0
    summary = json.loads(out.read_text())
    assert set(summary["by_class"]) <= {"tight", "medium", "loose"} and len(summary["by_class"]) >= 2
