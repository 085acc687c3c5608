"""``python -m profiles [NAME ...]``: predicted iteration times of a few shapes per profile (markdown).

``python -m profiles --bench``: cost of the per-iteration chunk-sizing call (A1 budget: <= 50 us) and of one
online refit over a full window.

``python -m profiles --sizing [NAME ...]``: what SGLang 0.5.23 decides per GPU profile (profiles/sizing.py): its
device-default chunk, ``mem_fraction_static``, the KV pool and the model's context length (markdown).
"""

from __future__ import annotations

import sys
import timeit

import numpy as np

import profiles
from policies.latency import BatchShape, OnlineLatencyFitter

SHAPES = {
    "decode 1 @1k": BatchShape(decode_ctx=(1024,)),
    "decode 32 @1k": BatchShape(decode_ctx=(1024,) * 32),
    "decode 128 @2k": BatchShape(decode_ctx=(2048,) * 128),
    "prefill 512": BatchShape(prefill=((512, 0),)),
    "prefill 2048": BatchShape(prefill=((2048, 0),)),
    "chunk 512 @4k + 32 dec": BatchShape(prefill=((512, 4096),), decode_ctx=(1024,) * 32),
}


def main(names: list[str]) -> None:
    names = names or profiles.available()
    tail = " | pivot tok | chunk in 50 ms (32 dec @1k) | KV pool tok | swap 1k tok |"
    print("| profile | " + " | ".join(SHAPES) + tail)
    print("|---" * (len(SHAPES) + 5) + "|")
    for name in names:
        p = profiles.get(name)
        cells = [f"{p.iteration_s(s) * 1e3:.2f} ms" for s in SHAPES.values()]
        chunk = p.max_tokens_within(0.05, [1024] * 32)
        print(
            f"| {name} | " + " | ".join(cells) + f" | {p.latency.pivot_tokens:.0f} | {chunk} | "
            f"{p.kv_capacity_tokens} | {p.swap_s(1000) * 1e3:.2f} ms |"
        )


def sizing(names: list[str]) -> None:
    names = names or [n for n in profiles.available() if profiles.get(n).chunked_prefill_size]
    print("| profile | chunk (device default) | mem_fraction_static | KV pool tokens | context |")
    print("|---|---|---|---|---|")
    for name in names:
        p = profiles.get(name)
        print(
            f"| {name} | {p.chunked_prefill_size} | {p.mem_fraction_static} | {p.kv_capacity_tokens:,} | "
            f"{p.context_len} |"
        )


def bench() -> None:
    model = profiles.get("h100-llama3-8b").latency
    decodes = list(range(512, 768))  # 256 running requests
    n = 20000
    per_call = min(timeit.repeat(lambda: model.max_tokens_within(0.05, decodes, 1000), number=n, repeat=5)) / n
    print(f"max_tokens_within, 256 decodes: {per_call * 1e6:.2f} us per call (best of 5 x {n})")
    rng = np.random.default_rng(0)
    fitter = OnlineLatencyFitter(model, refit_every=1 << 30, window=2048)
    for _ in range(2048):
        b = int(rng.integers(1, 256))
        shape = BatchShape(prefill=((int(rng.integers(1, 2048)), 0),), decode_ctx=(int(rng.integers(16, 4096)),) * b)
        fitter.observe(shape, model.iteration_s(shape) * float(rng.uniform(1.0, 1.2)))
    fitter.refit()  # imports scipy
    per_refit = min(timeit.repeat(fitter.refit, number=5, repeat=3)) / 5
    print(f"OnlineLatencyFitter.refit, 2048-sample window: {per_refit * 1e3:.2f} ms")


if __name__ == "__main__":
    if "--bench" in sys.argv:
        bench()
    elif "--sizing" in sys.argv:
        sizing([a for a in sys.argv[1:] if a != "--sizing"])
    else:
        main(sys.argv[1:])
