"""Predictor service benchmark (CacheOPT C1): p99 round trip of a 64-prompt batch over loopback with quantile output
(protocol v2: five calibrated quantiles per request plus the bound), and predictions/s of the service pinned to one
core. Prints both with the load average before and after (the targets, p99 <= 2 ms and >= 10,000 predictions/s,
are for a machine at load < 1: on a shared machine the tail is other jobs' scheduling, and the output says so).

The service is the real one (``predictors.service``, a separate process, pinned to one CPU with
``sched_setaffinity``); prompts are the 805 AlpacaEval instructions, sent as token ids (what the scheduler has at
arrival: SGLang tokenized them already) or as text (``--input text``: the service tokenizes).

    python benchmarks/bench_predictor.py [--model predictors/models/alpaca-mistral] [--input ids|text] [--source S]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from predictors.features import load_tokenizer
from predictors.protocol import REPLY_TYPES, VERSION, pack, unpack
from predictors.service import PredictorService, spawn, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def make_items(texts: list[str], mode: str, source: str | None) -> list[dict]:
    named = {"source": source} if source else {}
    if mode == "text":
        return [{"rid": str(i), "text": t, "max_new_tokens": 4096, **named} for i, t in enumerate(texts)]
    ids = load_tokenizer().encode(texts)
    return [{"rid": str(i), "token_ids": x, "max_new_tokens": 4096, **named} for i, x in enumerate(ids)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "predictors/models/alpaca-mistral"))
    ap.add_argument("--data", default=str(ROOT / "data/prompts/alpacaeval_Mistral-7B-Instruct-v0.2.json"))
    ap.add_argument("--input", choices=("ids", "text"), default="ids")
    ap.add_argument("--source", default=None, help="answer source named in every request (default: none)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1000, help="latency samples")
    ap.add_argument("--inflight", type=int, default=16, help="batches in flight for the throughput run")
    ap.add_argument("--seconds", type=float, default=5.0, help="throughput run length")
    ap.add_argument("--core", type=int, default=None, help="CPU to pin the service to (default: the last one)")
    a = ap.parse_args()
    texts = [r["instruction"] for r in json.loads(Path(a.data).read_text())]
    items = make_items(texts, a.input, a.source)
    load_before = os.getloadavg()[0]
    ep = free_endpoint()
    proc = spawn(a.model, ep, "--log-level", "WARNING")
    core = a.core if a.core is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(proc.pid, {core})
    try:
        if wait_ready(ep, 30) is None:
            raise SystemExit("service did not start")
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(ep)
        rng = np.random.default_rng(0)
        batches = [pack({"v": VERSION, "type": "predict",
                         "items": [items[j] for j in rng.choice(len(items), a.batch)]}) for _ in range(64)]  # fmt: skip
        lat = []
        for k in range(a.rounds + 50):
            t0 = time.perf_counter()
            s.send(batches[k % len(batches)])
            msg = unpack(s.recv(), types=REPLY_TYPES)
            if k >= 50:  # warm-up excluded
                lat.append(time.perf_counter() - t0)
            assert len(msg["items"]) == a.batch and len(msg["items"][0]["q"]) == len(msg["levels"]), msg.get("errors")
        lat_ms = np.array(lat) * 1e3
        sent = done = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < a.seconds:
            while sent - done < a.inflight:
                s.send(batches[sent % len(batches)])
                sent += 1
            unpack(s.recv(), types=REPLY_TYPES)
            done += 1
        while done < sent:
            unpack(s.recv(), types=REPLY_TYPES)
            done += 1
        rate = done * a.batch / (time.perf_counter() - t0)
        s.close(0)
    finally:
        proc.terminate()
        proc.wait(10)
    svc = PredictorService(a.model, free_endpoint())  # the same code path without sockets: compute alone
    svc._reply = lambda ident, msg: None  # type: ignore[method-assign]
    msgs = [unpack(b) for b in batches]
    comp, cpu = [], []
    for k in range(300):
        t0, c0 = time.perf_counter(), time.thread_time()
        svc._predict([(b"x", msgs[k % len(msgs)])])
        comp.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    comp_ms, cpu_ms = np.array(comp[20:]) * 1e3, np.array(cpu[20:]) * 1e3
    svc.sock.close(0)
    load_after = os.getloadavg()[0]
    busy = " (busy machine: the tail is other jobs' scheduling; re-measure at load < 1)" if load_after >= 1 else ""
    print(f"input={a.input} batch={a.batch} quantile output ({len(svc.levels)} levels) service pinned to CPU {core} "
          f"of {os.cpu_count()}; load average {load_before:.1f} before, {load_after:.1f} after{busy}")  # fmt: skip
    print(f"compute only (in-process, no sockets) batch of {a.batch}: p50 {np.percentile(comp_ms, 50):.3f} ms, "
          f"p99 {np.percentile(comp_ms, 99):.3f} ms -> {a.batch / np.percentile(comp_ms, 50) * 1e3:,.0f} "
          "predictions/s at p50")  # fmt: skip
    print(f"compute CPU time (thread_time: what the batch itself costs, less sensitive to other jobs) batch of "
          f"{a.batch}: p50 {np.percentile(cpu_ms, 50):.3f} ms, p99 {np.percentile(cpu_ms, 99):.3f} ms")  # fmt: skip
    print(
        f"latency batch of {a.batch} over loopback: p50 {np.percentile(lat_ms, 50):.3f} ms, "
        f"p99 {np.percentile(lat_ms, 99):.3f} ms, max {lat_ms.max():.3f} ms (n={lat_ms.size}; target p99 <= 2 ms)"
    )
    print(f"throughput on one core: {rate:,.0f} predictions/s (target >= 10,000)")  # fmt: skip


if __name__ == "__main__":
    main()
