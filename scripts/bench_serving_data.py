"""Write a workload from ``data/`` as a dataset for SGLang's own benchmark client (``python -m sglang.bench_serving
--dataset-name custom --dataset-path FILE``), so stock SGLang and the extension can be compared with SGLang's tool.

Why a file: bench_serving reads local traces only as its ``custom`` JSONL (``{"conversations": [{"content":
PROMPT}, {"content": COMPLETION}]}``; it takes the prompt as is and the completion's token count as the request's
output length) or as ``mooncake`` (native ``/generate`` only, so no per-request SLOs through ``--extra-request-body``
without replacing every sampling parameter). Lengths come from the real trace (``eval.workloads``: Azure 2023
conversation/code, Mooncake, ShareGPT/arXiv length statistics; ``--scale`` divides them for the tiny CPU model);
the text is seeded random words that the served model's tokenizer counts exactly (real prompt text for ``alpaca``),
different per request so the radix cache sees no sharing the trace does not have. ``--max-context`` clips prompt +
output like ``eval.loadgen``. Arrival times are bench_serving's own (``--request-rate``, Poisson).

Usage: ``python scripts/bench_serving_data.py --workload azure-conv --num-requests 200 --scale 4 --out F.jsonl``
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.workloads import available_workloads, load_workload  # noqa: E402

TINY_MODEL = ROOT / "models" / "tiny-llama"


class Words:
    """Seeded text of an exact token count: single-token lowercase words of the tokenizer's vocabulary."""

    def __init__(self, tokenizer: object, seed: int) -> None:
        self.tok = tokenizer
        self.rng = np.random.default_rng(seed)
        vocab = tokenizer.get_vocab()  # type: ignore[attr-defined]
        cands = sorted(p for p in vocab if re.fullmatch("\u2581[a-z]{3,9}", p))
        words = [p[1:] for p in cands]
        single = [w for w, ids in zip(words, self._encode_many(words), strict=True) if len(ids) == 1]
        if len(single) < 100:
            raise SystemExit(f"bench_serving_data: the tokenizer at {TINY_MODEL} has too few single-token words")
        self.words = np.array(single)

    def _encode_many(self, words: list[str]) -> list[list[int]]:
        return [self.count_ids(w) for w in words]

    def count_ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]

    def text(self, n_tokens: int) -> str:
        """Text that encodes to exactly ``n_tokens`` tokens (no BOS); adjusted by whole words if a merge differs."""
        n = max(n_tokens, 1)
        words = list(self.rng.choice(self.words, n))
        for _ in range(8):
            have = len(self.count_ids(" ".join(words)))
            if have == n:
                break
            words = words[: n - (have - n)] if have > n else words + list(self.rng.choice(self.words, n - have))
        return " ".join(words)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="azure-conv", help=f"one of: {', '.join(available_workloads())}")
    ap.add_argument("--num-requests", type=int, default=200)
    ap.add_argument("--scale", type=float, default=4.0, help="divide every length by this (4: the demo's setting)")
    ap.add_argument("--max-context", type=int, default=4096, help="clip prompt + output to this many tokens")
    ap.add_argument("--start", type=int, default=0, help="first trace row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", default=str(TINY_MODEL), help="the served model's tokenizer (bench_serving's)")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    from transformers import AutoTokenizer

    try:
        specs = load_workload(a.workload, num_requests=a.num_requests, rate=1.0, seed=a.seed, scale=a.scale,
                              max_context=a.max_context, start=a.start)  # fmt: skip
    except ValueError as e:
        print(f"bench_serving_data: {e}", file=sys.stderr)
        return 2
    words = Words(AutoTokenizer.from_pretrained(a.tokenizer), a.seed)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("w") as f:
        for s in specs:
            prompt = s.prompt_text if s.prompt_text is not None else words.text(s.prompt_len)
            completion = words.text(s.output_len)  # bench_serving's output length = the completion's token count
            f.write(json.dumps({"conversations": [{"content": prompt}, {"content": completion}]}) + "\n")
    mean_in = np.mean([s.prompt_len for s in specs])
    mean_out = np.mean([s.output_len for s in specs])
    print(f"wrote {len(specs)} requests of {a.workload} (scale 1/{a.scale:g}, mean prompt {mean_in:.0f}, "
          f"mean output {mean_out:.0f} tokens) to {a.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
