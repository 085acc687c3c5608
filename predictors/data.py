"""Prompt/response files and the by-instruction split (CacheOPT C1 training data).

Why split by a hash of the instruction text: the AlpacaEval files hold the *same* 805 instructions answered by
different models. A row-level split would put an instruction in training (answered by Llama-3) and in test
(answered by Mistral), and the test would leak. Hashing the instruction assigns it to one split in every file, for
any set of files, with no state to keep.

True output length = the response's token count under the Mistral SentencePiece tokenizer. That is exact for the
Mistral-7B-Instruct-v0.2 outputs and an approximation for the other models' outputs (their own tokenizers differ).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from predictors.features import load_tokenizer

SPLITS = ("train", "calib", "test")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


@dataclass
class PromptSet:
    """Rows of one or more files: instruction text, true output length (tokens), source file and split."""

    instructions: list[str]
    output_len: np.ndarray
    source: list[str]
    split: np.ndarray  # values from SPLITS

    def subset(self, mask: np.ndarray) -> PromptSet:
        idx = np.flatnonzero(mask)
        return PromptSet([self.instructions[i] for i in idx], self.output_len[idx],
                         [self.source[i] for i in idx], self.split[idx])  # fmt: skip


def split_of(instruction: str, salt: str = "alpaca", fractions: tuple[float, ...] = DEFAULT_FRACTIONS) -> str:
    """train/calib/test for one instruction: a pure function of its text, so every file agrees."""
    h = int.from_bytes(hashlib.sha256(f"{salt}\0{instruction}".encode()).digest()[:8], "big") / 2.0**64
    edges = np.cumsum(fractions)
    return SPLITS[int(np.searchsorted(edges, h, side="right"))] if h < edges[-1] else SPLITS[-1]


def load_prompts(paths: list[str], salt: str = "alpaca", max_new_tokens: int | None = None) -> PromptSet:
    """Load AlpacaEval-shaped JSON files (list of {instruction, output, ...}). Lengths are clipped to
    ``max_new_tokens`` when given: a server with that cap would have stopped there."""
    sp = load_tokenizer()
    ins: list[str] = []
    outs: list[str] = []
    src: list[str] = []
    for p in paths:
        rows = json.loads(Path(p).read_text())
        for r in rows:
            if not isinstance(r, dict) or not str(r.get("instruction", "")).strip():
                continue
            ins.append(str(r["instruction"]))
            outs.append(str(r.get("output", "")))
            src.append(Path(p).stem)
    lens = np.array([len(x) for x in sp.encode(outs)], dtype=np.int64)
    if max_new_tokens:
        lens = np.minimum(lens, max_new_tokens)
    split = np.array([split_of(i, salt) for i in ins])
    return PromptSet(ins, np.maximum(lens, 1), src, split)
