"""Load generator: replays a workload against a live SGLang server over HTTP with streaming, open loop.

Why this shape: what users feel (TTFT, every inter-token gap, stalls from preemption; CacheOPT's and AccelGen's
metrics) is only visible token by token on the client, so each request streams from ``POST /generate`` and every
token's arrival time is recorded. Requests go out at their ``RequestSpec.arrival_s`` whether or not earlier ones
finished (open loop), so an overloaded scheduler shows up as queueing, not as a slower client.

Request body (the fields the project's SGLang adapter and the EOS forcer read)::

    {"input_ids": [...] | "text": "...", "stream": true, "rid": "<run>-<spec rid>",
     "custom_logit_processor": ForceEosAtLength.to_str(),            # cap mode only
     "sampling_params": {"max_new_tokens": CAP, "temperature": T, "ignore_eos": <exact mode only>,
                         "custom_params": {"target_len": L,          # cap mode: the EOS forcer's target
                                           "ttft_slo_ms": ..., "tbt_slo_ms": ...,   # per-request SLOs, if any
                                           "slo_class": "..."}}}

Modes: ``cap`` (default) sends the realistic cap as ``max_new_tokens`` and ends the response at the true length
with the EOS forcer (``sglang_ext.logit_processors``; the server needs ``--enable-custom-logit-processor``), never
``ignore_eos``; ``exact`` sends ``max_new_tokens = true length`` + ``ignore_eos`` (other papers' setup: an oracle
cap, and SGLang then reserves the whole cap). Every summary says which mode it used. ``target_len`` is meant for
the forcer only (and for the Oracle policy, A4); schedulers must not read it.

Prompts: the spec's text when it has one, else seeded random token ids of exactly ``prompt_len`` (Mooncake
``prefix_hash_ids`` become identical id blocks for equal hashes, so the radix cache sees the trace's sharing).
Tokens per chunk come from ``meta_info.completion_tokens`` (a chunk may carry several; they share its time).
``preemptions``: the run's delta of the server's Prometheus counter ``sglang:num_retracted_requests_total`` (needs
``--enable-metrics``), else the sum of per-request ``meta_info.num_retractions`` (each record's ``preemptions``);
``preemptions_source`` says which.
A stream that ends with SGLang's ``abort`` finish reason (a refusal such as ``--max-queued-requests``' "The request
queue is full.", or an abort) is a failed request carrying the server's status and message, not a completed one.
A server that dies or hangs mid-run (refused connection, dropped stream or two missed ``/health`` probes) stops the
run: requests not sent or in flight fail with the reason, also in the summary's ``aborted``. Every wait is bounded
(connect, stall after the first token, per-request total, ``/health``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

import profiles
from eval.metrics import RequestRecord, summarize, summarize_by_class, write_records
from eval.slo import parse_slo
from eval.workloads import RequestSpec, available_workloads, load_workload

MODES = ("cap", "exact")
PREEMPTION_METRICS = ("sglang:num_retracted_requests_total",)
LOW_TOKEN_ID = 16  # random prompts avoid the low ids where tokenizers keep special tokens (BOS/EOS/PAD/UNK)


class LoadgenError(RuntimeError):
    """The run cannot start or could not finish: one line saying why."""


@dataclass(frozen=True)
class LoadOptions:
    """How a run is driven (see :func:`run_load`)."""

    mode: str = "cap"
    seed: int = 0
    flush_cache: bool = False
    temperature: float = 0.0
    vocab_size: int | None = None
    progress: bool = True
    connect_timeout_s: float = 5.0
    stall_timeout_s: float = 120.0
    request_timeout_s: float = 600.0
    abort_grace_s: float = 2.0
    health_interval_s: float = 5.0
    preemption_metrics: tuple[str, ...] = PREEMPTION_METRICS
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not min(self.connect_timeout_s, self.stall_timeout_s, self.request_timeout_s) > 0:
            raise ValueError("timeouts must be > 0 s")


@dataclass
class _Run:
    base: str
    session: aiohttp.ClientSession
    t0: float
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str | None = None
    probe_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    max_lag_s: float = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def abort(self, reason: str) -> None:
        self.reason = self.reason or reason
        self.stop.set()


@functools.lru_cache(maxsize=1)
def forcer_ref() -> str:
    """The EOS forcer as SGLang serializes a custom logit processor: ``ForceEosAtLength.to_str()`` (dill ships the
    class by reference; the server imports ``sglang_ext.logit_processors``). The same string for every request: the
    target length is not in it but in ``custom_params``, which no policy view carries. Importing the class loads
    SGLang and torch into this process (~9 s and ~0.9 GB, once per process, before the run's clock starts)."""
    from sglang_ext.logit_processors import ForceEosAtLength

    return ForceEosAtLength.to_str()


def prompt_ids(spec: RequestSpec, index: int, seed: int, vocab_size: int) -> list[int]:
    """Seeded random ids of exactly ``prompt_len``; equal prefix hashes give equal blocks."""
    if spec.prefix_hash_ids and spec.prefix_block_tokens > 0:
        blocks = [
            np.random.default_rng([seed, 0x5EED, h]).integers(LOW_TOKEN_ID, vocab_size, spec.prefix_block_tokens)
            for h in spec.prefix_hash_ids
        ]
        ids = np.concatenate(blocks)[: spec.prompt_len]
        if len(ids) == spec.prompt_len:
            return ids.tolist()
    return np.random.default_rng([seed, index]).integers(LOW_TOKEN_ID, vocab_size, spec.prompt_len).tolist()


def request_body(spec: RequestSpec, mode: str, ids: list[int] | None, rid: str, forcer: str | None, temperature: float):
    params: dict[str, Any] = {}
    for key in ("ttft_slo_ms", "tbt_slo_ms"):
        if getattr(spec, key) is not None:
            params[key] = float(getattr(spec, key))
    if spec.slo_class:
        params["slo_class"] = spec.slo_class
    sp: dict[str, Any] = {"temperature": temperature}
    body: dict[str, Any] = {"stream": True, "rid": rid, "sampling_params": sp}
    if mode == "exact":
        sp |= {"max_new_tokens": spec.output_len, "ignore_eos": True}
    else:
        sp["max_new_tokens"] = spec.max_new_tokens
        params["target_len"] = spec.output_len
        body["custom_logit_processor"] = forcer
    if params:
        sp["custom_params"] = params
    body |= {"text": spec.prompt_text} if spec.prompt_text is not None else {"input_ids": ids}
    return body


async def _get(run: _Run, path: str, timeout_s: float = 5.0) -> tuple[int, str]:
    async with run.session.get(run.base + path, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
        return r.status, await r.text()


async def _server_alive(run: _Run, timeout_s: float) -> bool:
    async with run.probe_lock:
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            return not run.stop.is_set() and (await _get(run, "/health", timeout_s))[0] == 200
        return False


async def _watchdog(run: _Run, cfg: LoadOptions) -> None:
    """Abort when ``/health`` fails twice in a row: a hung server may never answer a request at all."""
    misses = 0
    while not run.stop.is_set():
        await asyncio.sleep(cfg.health_interval_s)
        misses = 0 if await _server_alive(run, cfg.connect_timeout_s) else misses + 1
        if misses >= 2:
            run.abort(f"server at {run.base} stopped answering (/health failed twice)")


async def read_preemptions(run: _Run, names: tuple[str, ...] = PREEMPTION_METRICS) -> float | None:
    """Sum of the named Prometheus samples on ``/metrics``: 0 while SGLang has not created the labelled counter yet
    (it appears at its first increment), ``None`` when the server exposes no SGLang metrics at all."""
    try:
        status, text = await _get(run, "/metrics", 10.0)
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None
    if status != 200:
        return None
    families = list(text_string_to_metric_families(text))
    values = [s.value for fam in families for s in fam.samples if s.name in names]
    if values:
        return float(sum(values))
    return 0.0 if any(fam.name.startswith("sglang:") for fam in families) else None  # a counter not yet incremented


async def _vocab_size(run: _Run) -> int:
    """The served model's vocabulary, from its ``config.json`` (server and client share the machine here)."""
    where = "/model_info"
    try:
        where = json.loads((await _get(run, "/model_info", 10.0))[1])["model_path"]
        return int(json.loads((Path(where) / "config.json").read_text())["vocab_size"])
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, KeyError, TypeError) as e:
        raise LoadgenError(f"cannot read the served model's vocab size ({where}: {e}); pass vocab_size") from None


async def _one(run: _Run, spec: RequestSpec, body: dict[str, Any] | None, rec: RequestRecord, cfg: LoadOptions) -> None:
    delay = spec.arrival_s - run.now()
    if delay > 0:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(run.stop.wait(), timeout=delay)
    if run.stop.is_set():
        rec.error = f"not sent: {run.reason}"
        return
    rec.arrival_s = run.now()
    run.max_lag_s = max(run.max_lag_s, rec.arrival_s - spec.arrival_s)
    timeout = aiohttp.ClientTimeout(total=cfg.request_timeout_s)  # the stall bound starts at the first token
    try:
        async with run.session.post(run.base + "/generate", json=body, timeout=timeout) as resp:
            if resp.status != 200:
                rec.error = f"HTTP {resp.status}: {' '.join((await resp.text())[:300].split())}"
                return
            await _read_stream(run, resp, rec, cfg.stall_timeout_s)
    except aiohttp.ClientConnectorError as e:
        rec.error = f"connection refused: {e}"
        run.abort(f"server at {run.base} unreachable ({e})")
    except asyncio.TimeoutError:
        rec.error = f"timeout (no token for {cfg.stall_timeout_s} s, or over {cfg.request_timeout_s} s in all)"
        if not await _server_alive(run, cfg.connect_timeout_s):
            run.abort(f"server at {run.base} stopped answering (/health failed after a request timed out)")
    except aiohttp.ClientError as e:
        rec.error = f"connection lost: {type(e).__name__}: {e}"
        if not await _server_alive(run, cfg.connect_timeout_s):
            run.abort(f"server at {run.base} went away mid-run ({type(e).__name__})")


async def _read_stream(run: _Run, resp: aiohttp.ClientResponse, rec: RequestRecord, stall_s: float) -> None:
    """Parse the SSE stream by events (a cumulative-text event can exceed aiohttp's line limit). Waiting for the
    first token is bounded only by the request's total timeout (queueing under overload is legitimate); after
    it, no token for ``stall_s`` ends the request."""
    buf, done, finish = b"", 0, None
    while chunk := await asyncio.wait_for(resp.content.readany(), timeout=stall_s if done else None):
        buf += chunk
        *events, buf = buf.split(b"\n\n")
        for ev in events:
            data = ev.strip()
            if not data.startswith(b"data:"):
                continue
            data = data[5:].strip()
            if data == b"[DONE]":
                break
            msg = json.loads(data)
            if "error" in msg:
                err = msg["error"]
                rec.error = f"server error: {err.get('message', err) if isinstance(err, dict) else err}"
                if "--enable-custom-logit-processor" in rec.error:  # every cap-mode request would fail alike
                    run.abort("the server needs --enable-custom-logit-processor for cap mode (or use mode exact)")
                return
            now, meta = run.now(), msg.get("meta_info", {})
            ct = int(meta.get("completion_tokens", done))
            rec.token_times_s.extend([now] * (ct - done))
            done = max(done, ct)
            rec.prompt_len = int(meta.get("prompt_tokens", rec.prompt_len))
            rec.preemptions = int(meta.get("num_retractions", rec.preemptions))
            if meta.get("finish_reason"):
                fr = meta["finish_reason"]
                finish = fr.get("type", str(fr)) if isinstance(fr, dict) else str(fr)
                rec.finish_s = now
                if finish == "abort":  # refused or aborted by the server (e.g. --max-queued-requests): not completed
                    parts = [str(fr.get(k, "")) for k in ("status_code", "message")] if isinstance(fr, dict) else [fr]
                    rec.error, rec.finish_s = "aborted by the server: " + " ".join(p for p in parts if p), None
    if finish is None:
        rec.error, rec.finish_s = "stream ended without a finish reason", None
    else:
        run.finish_reasons[finish] += 1


async def _run(base: str, specs: list[RequestSpec], cfg: LoadOptions) -> tuple[list[RequestRecord], dict[str, Any]]:
    timeout = aiohttp.ClientTimeout(connect=cfg.connect_timeout_s, sock_connect=cfg.connect_timeout_s)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        run = _Run(base, session, time.perf_counter())
        try:
            status, _ = await _get(run, "/health", cfg.connect_timeout_s)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise LoadgenError(f"server at {base} not reachable: {type(e).__name__}: {e}") from None
        if status != 200:
            raise LoadgenError(f"server at {base} not healthy: /health answered {status}")
        if cfg.flush_cache:
            async with session.post(base + "/flush_cache", timeout=aiohttp.ClientTimeout(total=30)) as r:
                if r.status != 200:
                    raise LoadgenError(f"/flush_cache refused: {' '.join((await r.text()).split())}")
        vocab = cfg.vocab_size or (await _vocab_size(run) if any(s.prompt_text is None for s in specs) else 0)
        forcer = forcer_ref() if cfg.mode == "cap" else None
        tag = uuid.uuid4().hex[:8]
        bodies = [
            request_body(s, cfg.mode, None if s.prompt_text else prompt_ids(s, i, cfg.seed, vocab),
                         f"{tag}-{s.rid}", forcer, cfg.temperature)
            for i, s in enumerate(specs)
        ]  # fmt: skip
        records = [
            RequestRecord(s.rid, s.arrival_s, s.prompt_len, b["sampling_params"]["max_new_tokens"], s.output_len,
                          s.ttft_slo_ms, s.tbt_slo_ms, slo_class=s.slo_class)
            for s, b in zip(specs, bodies, strict=True)
        ]  # fmt: skip
        pre = await read_preemptions(run, cfg.preemption_metrics)
        run.t0 = time.perf_counter()
        tasks = [asyncio.create_task(_one(run, s, b, r, cfg)) for s, b, r in zip(specs, bodies, records, strict=True)]
        watchdog = asyncio.create_task(_watchdog(run, cfg))
        with tqdm(total=len(tasks), desc="requests", unit="req", disable=not cfg.progress) as bar:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                bar.update(len(done))
                if run.stop.is_set() and pending:
                    await asyncio.wait(pending, timeout=cfg.abort_grace_s)
                    for t in pending:
                        t.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    bar.update(len(pending))
                    pending = set()
        watchdog.cancel()
        for r in (r for r in records if not r.ok and r.error is None):  # cancelled in flight
            r.error, r.finish_s = f"aborted: {run.reason}", None
        post = None if run.reason else await read_preemptions(run, cfg.preemption_metrics)
    preemptions = None if pre is None or post is None else round(post - pre)
    return records, _summary(records, preemptions, run, cfg)


def _summary(records: list[RequestRecord], preemptions: int | None, run: _Run, cfg: LoadOptions) -> dict[str, Any]:
    """``preemptions``: the server counter's delta; without ``/metrics``, the sum of the per-request
    ``meta_info.num_retractions`` (source ``meta_info``; a lower bound: failed requests report none)."""
    per_request = sum(r.preemptions for r in records)
    summary: dict[str, Any] = summarize(records, preemptions=per_request if preemptions is None else preemptions)
    source = "/metrics " + "+".join(cfg.preemption_metrics) if preemptions is not None else "meta_info"
    summary |= {
        "mode": cfg.mode,
        "workload": cfg.metadata,
        "url": run.base,
        "aborted": run.reason,
        "preemptions_source": source,
        "preemptions_per_request_sum": per_request,
        "length_mismatches": sum(r.output_len != r.target_output_len for r in records if r.ok),
        "finish_reasons": dict(run.finish_reasons),
        "errors": dict(Counter(r.error for r in records if r.error).most_common(5)),
        "client_max_lag_ms": run.max_lag_s * 1e3,
    }
    if len({r.slo_class for r in records}) > 1:
        summary["by_class"] = {k: {f: v for f, v in s.items() if f != "preemptions"}
                               for k, s in summarize_by_class(records).items()}  # fmt: skip
    return summary


def run_load(
    base_url: str, specs: list[RequestSpec], *, mode: str = "cap", **options: Any
) -> tuple[list[RequestRecord], dict[str, Any]]:
    """Replay ``specs`` against ``base_url``; returns per-request records and the summary (metrics schema plus
    ``mode``, ``workload`` metadata and run diagnostics). ``options``: the fields of :class:`LoadOptions`.
    Raises :class:`LoadgenError` if the server is not reachable at the start."""
    if not specs:
        raise ValueError("no requests to send")
    return asyncio.run(_run(base_url.rstrip("/"), specs, LoadOptions(mode=mode, **options)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.loadgen", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:30000")
    ap.add_argument("--workload", required=True, help=f"one of: {', '.join(available_workloads())}")
    ap.add_argument("--num-requests", type=int, default=100)
    ap.add_argument("--rate", type=float, default=None, help="Poisson req/s (inf = burst); omit = trace timestamps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="divide every length by this")
    ap.add_argument("--max-context", type=int, default=None, help="clip prompt + output to this many tokens")
    ap.add_argument("--max-new-tokens", default="auto", help="visible cap policy: auto, exact or an int")
    ap.add_argument("--start", type=int, default=0, help="first trace row")
    ap.add_argument("--slo", default="none", help="SLO spec (eval.slo): none, default, abs:TTFT_MS:TBT_MS, classes")
    ap.add_argument("--slo-profile", default=None, help="latency profile (profiles) for relative SLOs ('<k>x')")
    ap.add_argument("--slo-chunk-tokens", type=int, default=None, help="server chunked-prefill size, for isolated TTFT")
    ap.add_argument("--mode", choices=MODES, default="cap")
    ap.add_argument("--vocab-size", type=int, default=None, help="default: read the served model's config.json")
    ap.add_argument("--flush-cache", action="store_true", help="POST /flush_cache before the run")
    ap.add_argument("--out", required=True, help="summary JSON path")
    ap.add_argument("--requests-out", default=None, help="per-request JSON lines path")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    wl = {k: getattr(a, k) for k in ("num_requests", "rate", "seed", "scale", "max_context", "start")}
    wl["max_new_tokens"] = int(a.max_new_tokens) if a.max_new_tokens.isdigit() else a.max_new_tokens
    try:
        slo = parse_slo(a.slo, profiles.get(a.slo_profile) if a.slo_profile else None, a.slo_chunk_tokens)
        specs = load_workload(a.workload, slo=slo, **wl)
        meta = {"workload": a.workload, **wl, "slo": a.slo, "slo_profile": a.slo_profile}
        records, summary = run_load(a.url, specs, mode=a.mode, seed=a.seed, flush_cache=a.flush_cache,
                                    vocab_size=a.vocab_size, progress=not a.no_progress, metadata=meta)  # fmt: skip
    except (ValueError, LoadgenError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(a.out).write_text(json.dumps(summary, indent=2) + "\n")
    if a.requests_out:
        write_records(a.requests_out, records)
    keys = ("completed", "failed", "throughput_tok_s", "ttft_p99_ms", "tbt_p99_ms", "stall_p99_ms", "preemptions")
    print(json.dumps({k: summary[k] for k in ("mode", *keys)}))
    if summary["aborted"]:
        print(f"error: run aborted: {summary['aborted']}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
