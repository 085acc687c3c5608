"""Prompt features for the output-length predictor (CacheOPT C1).

Why these features: a response's length is set mostly by *what is asked* (a list, a story, code, a yes/no answer,
"in 3 sentences") and a little by how long the prompt is. So the vector is (1) the prompt's token count under the
serving model's tokenizer, (2) hashed token unigrams/bigrams (a bag of n-grams without a vocabulary file: hashing
keeps the dimension fixed and needs nothing but the tokenizer), and (3) a few explicit task cues read from the text
(question words, list/story/essay/code cues, an explicit requested length). Everything is computed from token ids
when the caller has them (the scheduler does: SGLang has already tokenized the prompt), decoding only a bounded
window for the text cues, so the service never re-tokenizes and a 100k-token prompt costs no more than a short one.

Choice made: n-grams are hashed over *token ids* of the Mistral SentencePiece model (``mistral_common``'s
``tokenizer.model.v1``, the serving model's tokenizer), not over words, so the text and token-id paths give the
same vector. ``FEATURE_VERSION`` and :class:`FeatureSpec` are stored in the model directory; loading a model whose
feature version differs fails with :class:`FeatureVersionError`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

FEATURE_VERSION = 1
TOKENIZER_FILE = "tokenizer.model.v1"


class FeatureError(ValueError):
    """A prompt the featurizer refuses (empty, bad token ids). The message is sent back to the client as is."""


class FeatureVersionError(RuntimeError):
    """A model directory built with other feature settings than this code computes."""


@dataclass(frozen=True)
class FeatureSpec:
    """Feature settings stored beside a model. ``max_tokens`` caps the n-gram window (head of the prompt, where
    the instruction usually is); ``cue_chars`` caps the text decoded for cues (head and tail)."""

    n_hash: int = 256
    max_tokens: int = 512
    cue_chars: int = 2000
    version: int = FEATURE_VERSION
    tokenizer: str = TOKENIZER_FILE

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FeatureSpec:
        if d.get("version") != FEATURE_VERSION:
            raise FeatureVersionError(
                f"model was built with feature version {d.get('version')!r}, this code computes version "
                f"{FEATURE_VERSION}: retrain it with `python -m predictors.train`"
            )
        return cls(**d)


def tokenizer_path(name: str = TOKENIZER_FILE) -> str:
    import mistral_common

    return os.path.join(os.path.dirname(mistral_common.__file__), "data", name)


@lru_cache(maxsize=4)
def load_tokenizer(name: str = TOKENIZER_FILE) -> Any:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=tokenizer_path(name))


def tokenizer_id(name: str = TOKENIZER_FILE) -> str:
    """``<file>:<sha256 prefix>``: identifies the exact tokenizer a model was trained with."""
    with open(tokenizer_path(name), "rb") as f:
        return f"{name}:{hashlib.sha256(f.read()).hexdigest()[:16]}"


_NUM_WORDS = {
    w: i for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"])
}
_NUM_WORDS.update({"a few": 3, "few": 3, "several": 4, "a couple of": 2, "couple of": 2, "single": 1})
# Approximate tokens per requested unit (English, SentencePiece): used to turn "in 3 sentences" into a length cue.
_UNIT_TOKENS = {"word": 1.4, "sentence": 25.0, "line": 12.0, "paragraph": 100.0, "bullet": 20.0, "point": 20.0,
                "item": 20.0, "tip": 30.0, "way": 30.0, "example": 30.0, "step": 30.0, "idea": 25.0, "reason": 30.0,
                "question": 20.0, "page": 500.0, "character": 0.3, "verse": 40.0, "stanza": 40.0}  # fmt: skip
_REQ_LEN = re.compile(
    r"\b(\d{1,4}|" + "|".join(sorted(map(re.escape, _NUM_WORDS), key=len, reverse=True)) + r")[\s-]+"
    r"(?:\w+[\s-]+)?(" + "|".join(_UNIT_TOKENS) + r")s?\b"
)
# Cue words, matched on the word set of the lower-cased text (one tokenizing regex per prompt: an alternation of
# eleven word-boundary patterns cost 30 us a prompt, this costs ~5). Phrases are substring checks.
_CUE_WORDS: tuple[tuple[str, frozenset[str], tuple[str, ...]], ...] = tuple(
    (name, frozenset(words.split()), phrases)
    for name, words, phrases in (
        ("q_start", "", ()),
        ("chat", "", ()),
        ("list", "list steps ideas examples tips ways suggestions recommendations options reasons", ()),
        ("longform", "story essay article blog poem letter speech script report guide tutorial lyrics", ()),
        ("write", "write compose draft create generate design develop plan", ()),
        ("code", "code function python javascript java c++ sql regex program class html css bash", ("```",)),
        ("explain", "explain describe discuss compare analyze analyse elaborate detail detailed", ()),
        (
            "brief",
            "brief briefly short concise summarize summarise summary tl;dr tldr",
            ("one word", "one sentence", "yes or no", "in a word"),
        ),
        ("rewrite", "rewrite rephrase paraphrase translate correct edit proofread fix convert improve", ()),
        (
            "classify",
            "classify choose select pick rate categorize categorise category identify",
            ("true or false", "which one"),
        ),
        ("math", "solve calculate compute equation prove math", ()),
    )
)
_Q_START = frozenset(
    [
        "what",
        "why",
        "how",
        "who",
        "when",
        "where",
        "which",
        "is",
        "are",
        "can",
        "could",
        "do",
        "does",
        "did",
        "should",
        "would",
        "will",
    ]
)
_CHAT_START = frozenset(["hi", "hello", "hey", "thanks", "thank"])
_WORD = re.compile(r"[a-z]+(?:\+\+|;[a-z]+)?")
_ARITH = re.compile(r"\d\s*[-+*/^=]\s*\d")
_UNIT_FORMS = frozenset([*_UNIT_TOKENS, *(u + "s" for u in _UNIT_TOKENS)])
DENSE_NAMES = (
    "log_prompt_tokens", "n_lines", "n_question_marks", "has_requested_len", "log_requested_len",
    *(name for name, _, _ in _CUE_WORDS),
)  # fmt: skip


def requested_length(text: str) -> float:
    """Tokens the prompt explicitly asks for ("in 3 sentences", "200 words"), 0 when none: the strongest cue."""
    best = 0.0
    for m in _REQ_LEN.finditer(text):
        num, unit = m.group(1), m.group(2)
        n = float(num) if num.isdigit() else float(_NUM_WORDS.get(num, 0))
        best = max(best, n * _UNIT_TOKENS[unit])
    return best


def text_cues(text: str) -> list[float]:
    """The dense, human-readable features of one prompt (lower-cased head+tail window)."""
    low = text.lower()
    words = _WORD.findall(low)
    wset = set(words)
    req = requested_length(low) if not _UNIT_FORMS.isdisjoint(wset) else 0.0
    first = words[0] if words else ""
    cues = [float(first in _Q_START), float(first in _CHAT_START)]
    cues += [float(not ws.isdisjoint(wset) or any(p in low for p in ph)) for _, ws, ph in _CUE_WORDS[2:]]
    if not cues[-1] and _ARITH.search(low):
        cues[-1] = 1.0
    return [float(low.count("\n")), float(low.count("?")), 1.0 if req > 0 else 0.0, float(np.log1p(req)), *cues]


class Featurizer:
    """Turns prompts (text or token ids) into the float32 matrix the model takes; one instance per process."""

    def __init__(self, spec: FeatureSpec | None = None) -> None:
        self.spec = spec or FeatureSpec()
        self.sp = load_tokenizer(self.spec.tokenizer)
        self.vocab = int(self.sp.vocab_size())
        self.dim = len(DENSE_NAMES) + self.spec.n_hash

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise FeatureError("empty prompt")
        return self.sp.encode(list(texts))

    def cue_texts(self, ids_list: Sequence[Sequence[int]], texts: Sequence[str | None] | None) -> list[str]:
        """Head and tail of each prompt as text: the ask is usually at one end, and the window bounds the cost.
        Prompts given only as ids are decoded in one batched call (decoding only the window)."""
        c, k = self.spec.cue_chars, max(1, self.spec.cue_chars // 8)  # ~4 chars per token
        out: list[str | None] = list(texts) if texts is not None else [None] * len(ids_list)
        todo = [i for i, t in enumerate(out) if t is None]
        if todo:
            parts = [list(ids_list[i]) if len(ids_list[i]) <= 2 * k else [*ids_list[i][:k], *ids_list[i][-k:]]
                     for i in todo]  # fmt: skip
            for i, t in zip(todo, self.sp.decode(parts), strict=True):
                out[i] = t
        return [t if len(t) <= c else t[: c // 2] + "\n" + t[-c // 2 :] for t in out]  # type: ignore[arg-type]

    def transform(self, ids_list: Sequence[Sequence[int]], texts: Sequence[str | None] | None = None,
                  n_tokens: Sequence[int] | None = None) -> np.ndarray:  # fmt: skip
        """Feature matrix for a batch. ``texts[i]`` (optional) avoids decoding ids for the cues; ``n_tokens[i]``
        (optional) is the prompt's full token count when only a head/tail window of ids is passed."""
        n, d, nh, m = len(ids_list), len(DENSE_NAMES), self.spec.n_hash, self.spec.max_tokens
        X = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return X
        lens = np.array([len(ids) for ids in ids_list] if n_tokens is None else n_tokens, dtype=np.int64)
        if lens.min() == 0 or min(len(ids) for ids in ids_list) == 0:
            raise FeatureError("empty prompt (no token ids)")
        try:
            heads = [np.asarray(ids[:m], dtype=np.int64) for ids in ids_list]
            flat = np.concatenate(heads)
        except (TypeError, ValueError, OverflowError) as e:
            raise FeatureError(f"token ids must be flat lists of integers ({type(e).__name__})") from None
        if flat.ndim != 1 or flat.min() < 0 or flat.max() >= self.vocab:
            raise FeatureError(f"token id out of range [0, {self.vocab})")
        X[:, 0] = np.log1p(lens)
        X[:, 1:d] = [text_cues(t) for t in self.cue_texts(ids_list, texts)]
        rows = np.repeat(np.arange(n, dtype=np.int64), [h.size for h in heads])
        X[:, d:] = self._hashed(flat, rows, n, nh)
        return X

    @staticmethod
    def _hashed(flat: np.ndarray, row: np.ndarray, n: int, nh: int) -> np.ndarray:
        """Counts of hashed unigrams and bigrams of token ids, log1p-scaled, for all rows at once."""
        ids = flat.astype(np.uint64)
        uni = (ids * np.uint64(0x9E3779B1)) % np.uint64(nh)
        same = row[1:] == row[:-1]
        bi = ((ids[:-1] * np.uint64(0x85EBCA77)) ^ (ids[1:] * np.uint64(0xC2B2AE3D))) % np.uint64(nh)
        flat = np.concatenate([row * nh + uni.astype(np.int64), (row[1:] * nh + bi.astype(np.int64))[same]])
        return np.log1p(np.bincount(flat, minlength=n * nh).reshape(n, nh)).astype(np.float32)

    def from_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(features, prompt token counts) from raw prompt text: the training/evaluation path."""
        ids = self.tokenize(texts)
        return self.transform(ids, list(texts)), np.array([len(i) for i in ids], dtype=np.int64)
