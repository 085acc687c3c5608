"""Measure iteration times on the real SGLang server from the client side (the cpu-tiny profile's source).

The simulator's fidelity is judged against the real tiny CPU server, so its profile is fitted to iteration times
seen there (scheduler, attention backend and HTTP streaming included), not to a bare forward pass:

* decode of ``b`` sequences at context ``ctx``: ``b`` concurrent streams with ``ignore_eos``; once every stream
  has its first token and before any finishes, every iteration is a decode of exactly ``b`` — the median
  per-token gap there is the iteration time;
* prefill of ``n`` tokens after ``c`` cached ones: a background stream A decodes alone; request B (its first ``c``
  tokens warmed in the radix cache by an earlier request, ``max_new_tokens=1``) is sent. With mixed chunking off
  (SGLang's default) B's prefill runs as its own iteration between two of A's decode steps, so A's longest gap
  while B is in flight minus A's median gap is the prefill iteration.

Writes the same ``*.measured.json`` format as scripts/profile_iterations.py; scripts/fit_profile.py fits it.
    python -m eval.server_probe --out data/profiles/cpu-tiny.measured.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import httpx

Events = list[tuple[float, int]]  # (arrival time, completion tokens so far)
BACKGROUND_NEW = 600  # tokens the background stream A may decode (bounded so that A and B fit the pool)
PROBE_TIMEOUT_S = 60.0


async def stream(client: httpx.AsyncClient, ids: list[int], max_new: int, events: Events) -> None:
    body = {"input_ids": ids, "stream": True,
            "sampling_params": {"max_new_tokens": max_new, "ignore_eos": True, "temperature": 0.0}}  # fmt: skip
    async with client.stream("POST", "/generate", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                events.append((time.perf_counter(), int(json.loads(line[5:])["meta_info"]["completion_tokens"])))


def per_token_gaps(events: Events, lo: float, hi: float) -> list[float]:
    return [
        (t1 - t0) / (k1 - k0) for (t0, k0), (t1, k1) in itertools.pairwise(events) if k1 > k0 and lo <= t0 and t1 <= hi
    ]


class Probe:
    def __init__(self, base_url: str, vocab: int, seed: int = 0) -> None:
        self.client = httpx.AsyncClient(base_url=base_url, timeout=120.0)
        self.rng = random.Random(seed)
        self.vocab = vocab

    def ids(self, n: int) -> list[int]:
        return [self.rng.randrange(100, self.vocab) for _ in range(n)]

    async def decode(self, b: int, ctx: int, new: int) -> tuple[float, float] | None:
        """(median iteration seconds, mean context during the window), or None if the window was too short."""
        evs: list[Events] = [[] for _ in range(b)]
        await asyncio.gather(*(stream(self.client, self.ids(ctx), new, e) for e in evs))
        lo, hi = max(e[0][0] for e in evs), min(e[-1][0] for e in evs)
        gaps = [g for e in evs for g in per_token_gaps(e, lo, hi)]
        if len(gaps) < 5:
            return None
        toks = [k for e in evs for t, k in e if lo <= t <= hi]
        return statistics.median(gaps), ctx + statistics.mean(toks)

    async def prefill(self, n: int, ctx: int) -> tuple[float, int, int] | None:
        """(prefill iteration seconds, new tokens, cached tokens) or None when no clear gap was seen."""
        prefix = self.ids(ctx)
        if ctx:
            r = await self.client.post(
                "/generate", json={"input_ids": prefix, "sampling_params": {"max_new_tokens": 1}}
            )
            r.raise_for_status()
        ev: Events = []
        bg = asyncio.create_task(stream(self.client, self.ids(8), BACKGROUND_NEW, ev))
        try:
            while len(ev) < 12 and not bg.done():
                await asyncio.sleep(0.005)
            t_send = time.perf_counter()
            body = {"input_ids": prefix + self.ids(n), "sampling_params": {"max_new_tokens": 1}}
            r = await self.client.post("/generate", json=body)
            r.raise_for_status()
            t_done = time.perf_counter()
            cached = int(r.json()["meta_info"].get("cached_tokens", 0))
            k_done = ev[-1][1] if ev else 0
            while ev and ev[-1][1] < k_done + 3 and not bg.done():
                await asyncio.sleep(0.005)
            if bg.done():  # A ended before B's prefill was bracketed by two of its steps
                return None
        finally:
            bg.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await bg
        base = statistics.median(per_token_gaps(ev, 0.0, t_send))
        during = [t1 - t0 for (t0, _), (t1, _) in itertools.pairwise(ev) if t1 >= t_send and t0 <= t_done]
        if not during or max(during) <= base:  # no visible stall: contention hid it; a clipped 0 would poison the fit
            return None
        return max(during) - base, n + ctx - cached, cached


async def run(args: argparse.Namespace) -> list[dict]:
    probe = Probe(args.url, args.vocab, args.seed)
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        print(f"warning: load average {os.getloadavg()[0]:.1f} exceeds the core count; iteration times measured now "
              "are dominated by other processes (see docs/latency-profiles.md)", file=sys.stderr)  # fmt: skip
    budget = args.pool_tokens * 0.8
    dec = [(b, c) for c in (16, 128, 512, 1024) for b in (1, 2, 4, 8, 16, 32) if b * (c + args.decode_new) <= budget]
    room = args.pool_tokens - BACKGROUND_NEW - 64
    pre = [(n, c) for c in (0, 512, 1536) for n in (16, 64, 256, 1024, 2048) if n + c <= room]
    found: dict[tuple, list] = {}
    start = time.perf_counter()
    for r in range(args.rounds):
        jobs = [("decode", *x) for x in dec] + [("prefill", *x) for x in pre]
        probe.rng.shuffle(jobs)
        for kind, a, c in jobs:
            if time.perf_counter() - start > args.time_budget_s:
                break
            coro = probe.decode(a, c, args.decode_new) if kind == "decode" else probe.prefill(a, c)
            try:
                res = await asyncio.wait_for(coro, PROBE_TIMEOUT_S)
            except TimeoutError:
                print(f"{kind} {a} {c}: no answer in {PROBE_TIMEOUT_S:.0f} s, skipped", file=sys.stderr)
                continue
            if res is not None:
                found.setdefault((kind, a, c), []).append(res)
        print(f"round {r + 1}/{args.rounds} done at {time.perf_counter() - start:.0f} s", file=sys.stderr)
    await probe.client.aclose()
    samples = []
    for (kind, a, c), rs in sorted(found.items()):
        if kind == "decode":
            rec = {"kind": kind, "decode_batch": a, "decode_ctx": round(statistics.median(x[1] for x in rs))}
        else:
            new, cached = statistics.median_low(x[1] for x in rs), statistics.median_low(x[2] for x in rs)
            rec = {"kind": kind, "prefill": [[new, cached]], "requested": [a, c]}
        # Other processes only ever add time, so the fastest round is the server's own iteration time.
        times = [x[0] for x in rs]
        rec |= {"seconds": min(times), "median_s": statistics.median(times), "rounds": times}
        samples.append(rec)
        print(f"{kind:7s} {a:5d} {c:5d}  {rec['seconds'] * 1e3:8.2f} ms", file=sys.stderr)
    return samples


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="", help="a running server; default: start the tiny CPU server (eval/server.py)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--pool-tokens", type=int, default=4096)
    ap.add_argument("--decode-new", type=int, default=48, help="tokens generated per stream in decode probes")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-budget-s", type=float, default=600.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    from eval.server import ServerProcess, cpu_server_args

    load_at_start = os.getloadavg()
    srv = None
    server_args: list[str] = []
    if not args.url:
        server_args = cpu_server_args(pool_tokens=args.pool_tokens, chunked_prefill_size=4096)
        srv = ServerProcess(server_args).start()
        args.url = srv.base_url
    try:
        samples = asyncio.run(run(args))
    finally:
        if srv is not None:
            srv.stop()
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "cpu")
    out = {
        "backend": "sglang-server",
        "config": "models/tiny-llama",
        "server_args": server_args or f"external server at {args.url}",
        "device": f"{cpu} ({len([ln for ln in lines if ln.startswith('processor')])} cores), SGLang CPU server",
        "device_kind": "cpu",
        "date": dt.date.today().isoformat(),
        "rounds": args.rounds,
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "kv_bytes_per_token": 2 * 2 * 4 * 16 * 2,  # tiny-llama: K+V x 2 layers x 4 kv heads x 16 dims x bf16
        "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {len(samples)} samples to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
