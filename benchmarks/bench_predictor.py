"""Predictor service benchmark (CacheOPT C1): p99 round trip of a 64-prompt batch over loopback, and predictions/s
of the service pinned to one core. Prints both; targets are p99 <= 2 ms and >= 10,000 predictions/s.

The service is the real one (``predictors.service``, a separate process, pinned to one CPU with
``sched_setaffinity``); prompts are the 805 AlpacaEval instructions, sent as token ids (what the scheduler has at
arrival: SGLang tokenized them already) or as text (``--input text``: the service tokenizes).

    python benchmarks/bench_predictor.py --model predictors/models/alpaca-mistral [--input ids|text]
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
from predictors.protocol import REPLY_TYPES, pack, unpack
from predictors.service import PredictorService, spawn, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def make_items(texts: list[str], mode: str) -> list[dict]:
    if mode == "text":
        return [{"rid": str(i), "text": t, "max_new_tokens": 4096} for i, t in enumerate(texts)]
    ids = load_tokenizer().encode(texts)
    return [{"rid": str(i), "token_ids": x, "max_new_tokens": 4096} for i, x in enumerate(ids)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "predictors/models/alpaca-mistral"))
    ap.add_argument("--data", default=str(ROOT / "data/prompts/alpacaeval_Mistral-7B-Instruct-v0.2.json"))
    ap.add_argument("--input", choices=("ids", "text"), default="ids")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1000, help="latency samples")
    ap.add_argument("--inflight", type=int, default=16, help="batches in flight for the throughput run")
    ap.add_argument("--seconds", type=float, default=5.0, help="throughput run length")
    ap.add_argument("--core", type=int, default=None, help="CPU to pin the service to (default: the last one)")
    a = ap.parse_args()
    texts = [r["instruction"] for r in json.loads(Path(a.data).read_text())]
    items = make_items(texts, a.input)
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
        batches = [pack({"v": 1, "type": "predict", "items": [items[j] for j in rng.choice(len(items), a.batch)]})
                   for _ in range(64)]  # fmt: skip
        lat = []
        for k in range(a.rounds + 50):
            t0 = time.perf_counter()
            s.send(batches[k % len(batches)])
            msg = unpack(s.recv(), types=REPLY_TYPES)
            if k >= 50:  # warm-up excluded
                lat.append(time.perf_counter() - t0)
            assert len(msg["items"]) == a.batch, msg.get("errors")
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
    comp = []
    for k in range(300):
        t0 = time.perf_counter()
        svc._predict([(b"x", msgs[k % len(msgs)])])
        comp.append(time.perf_counter() - t0)
    comp_ms = np.array(comp[20:]) * 1e3
    svc.sock.close(0)
    print(
        f"input={a.input} batch={a.batch} service pinned to CPU {core} of {os.cpu_count()}; "
        f"load average {os.getloadavg()[0]:.1f} (shared machine)"
    )
    print(f"compute only (in-process, no sockets) batch of {a.batch}: p50 {np.percentile(comp_ms, 50):.3f} ms, "
          f"p99 {np.percentile(comp_ms, 99):.3f} ms -> {a.batch / np.percentile(comp_ms, 50) * 1e3:,.0f} "
          "predictions/s at p50")  # fmt: skip
    print(
        f"latency batch of {a.batch} over loopback: p50 {np.percentile(lat_ms, 50):.3f} ms, "
        f"p99 {np.percentile(lat_ms, 99):.3f} ms, max {lat_ms.max():.3f} ms (n={lat_ms.size}; target p99 <= 2 ms)"
    )
    print(f"throughput on one core: {rate:,.0f} predictions/s (target >= 10,000)")  # fmt: skip


if __name__ == "__main__":
    main()
