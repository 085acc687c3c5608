"""``python -m eval.profiles [NAME ...]``: predicted iteration times of a few shapes per profile (markdown)."""

from __future__ import annotations

import sys

from eval import profiles
from policies.latency import BatchShape

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


if __name__ == "__main__":
    main(sys.argv[1:])
