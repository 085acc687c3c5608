"""Prompt features for the output-length predictor (CacheOPT C1).

Why these features: a response's length is set mostly by *what is asked* (a list, a story, code, a yes/no answer,
"in 3 sentences") and a little by how long the prompt is. So there are two blocks:

* dense features the booster reads: the prompt's token count under the serving model's tokenizer, its shape (lines,
  question marks, the length of the text after the last newline: the *input* a rewrite or summary works on), the
  language (share of non-ASCII pieces: answers in other languages run long in English-trained tokenizers), explicit
  task cues (question words; list / long-form / code / explain / brief / rewrite / classify / math / requested-format /
  short-form / detail / "the given input" words, anywhere and in the first 8 pieces, where the ask usually sits)
  and an explicitly requested length ("in 3 sentences", "200 words", "five tips");
* hashed token uni/bi/trigrams (a bag of n-grams without a vocabulary file), L2-normalised log counts, for the
  linear text score (:mod:`predictors.ridge`) the booster gets as one more feature (stacking: trees on 16k sparse
  columns overfit 500 instructions; a ridge on them does not).

Everything is computed from token ids (the scheduler has them: SGLang already tokenized the prompt; text is only
ever tokenized), over a bounded window, so the service never decodes and a 100k-token prompt costs no more than a
short one.

Choices made: n-grams are hashed over *token ids* of the Mistral SentencePiece model (``mistral_common``'s
``tokenizer.model.v1``, the serving model's tokenizer), not over words; task cues are looked up per vocabulary piece
(a table built once), so a batch is featurized with a few numpy reductions (~10 us a prompt instead of 20-60 us
for text regexes). A cue word counts when it is one word-initial piece, case-folded (multi-piece words such as
"haiku" reach the model through the n-grams); a requested length is parsed from decoded text only for the rare
prompts holding a unit word.

``FEATURE_VERSION`` and :class:`FeatureSpec` are stored in the model directory; loading a model whose feature
version differs fails with :class:`FeatureVersionError`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from itertools import chain
from typing import Any

import numpy as np

FEATURE_VERSION = 3  # 3: format/short-form/detail/input cues, language, first-8 cues, n-grams for the ridge
TOKENIZER_FILE = "tokenizer.model.v1"


class FeatureError(ValueError):
    """A prompt the featurizer refuses (empty, bad token ids). The message is sent back to the client as is."""


class FeatureVersionError(RuntimeError):
    """A model directory built with other feature settings than this code computes."""


@dataclass(frozen=True)
class FeatureSpec:
    """Feature settings stored beside a model. ``max_tokens`` caps the window of ids read (half head, half tail:
    the ask is usually at one end of a prompt, and the window bounds the cost of a 100k-token prompt). ``n_hash``
    buckets and ``ngram`` order are those of the hashed n-grams the text score reads."""

    n_hash: int = 16384
    ngram: int = 3
    max_tokens: int = 1024
    version: int = FEATURE_VERSION
    tokenizer: str = TOKENIZER_FILE

    def __post_init__(self) -> None:
        if self.n_hash < 1 or not 1 <= self.ngram <= 3 or self.max_tokens < 2:
            raise ValueError(f"FeatureSpec: n_hash >= 1, ngram in 1..3, max_tokens >= 2; got {self}")

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


_NUM_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}  # noqa: SIM905
_NUM_WORDS.update({"a few": 3, "few": 3, "several": 4, "a couple of": 2, "couple of": 2, "single": 1,
                   "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20, "fifty": 50, "hundred": 100})  # fmt: skip
# Approximate tokens per requested unit (English, SentencePiece): used to turn "in 3 sentences" into a length cue.
_UNIT_TOKENS = {"word": 1.4, "sentence": 25.0, "line": 12.0, "paragraph": 100.0, "bullet": 20.0, "point": 20.0,
                "item": 20.0, "tip": 30.0, "way": 30.0, "example": 30.0, "step": 30.0, "idea": 25.0, "reason": 30.0,
                "question": 20.0, "page": 500.0, "character": 0.3, "verse": 40.0, "stanza": 40.0, "name": 4.0,
                "title": 10.0, "option": 25.0, "fact": 25.0, "suggestion": 30.0, "recipe": 150.0, "day": 60.0,
                "song": 30.0, "book": 25.0, "movie": 25.0, "place": 30.0, "thing": 25.0, "word-long": 1.4}  # fmt: skip
_REQ_LEN = re.compile(
    r"\b(\d{1,4}|" + "|".join(sorted(map(re.escape, _NUM_WORDS), key=len, reverse=True)) + r")[\s-]+"
    r"(?:\w+[\s-]+)?(" + "|".join(sorted(map(re.escape, _UNIT_TOKENS), key=len, reverse=True)) + r")s?\b"
)
_UNIT_FORMS = frozenset([*_UNIT_TOKENS, *(u + "s" for u in _UNIT_TOKENS)])
_CUE_WORDS: tuple[tuple[str, str], ...] = (
    ("list", "list lists steps step ideas idea examples example tips tip ways suggestions suggest recommendations "
     "recommend options reasons"),
    ("longform", "story stories essay article blog poem letter speech script report guide tutorial lyrics song"),
    ("write", "write compose draft create generate design develop plan"),
    ("code", "code function python javascript java sql regex program class html css bash implement ```"),
    ("explain", "explain describe discuss compare analyze analyse elaborate"),
    ("brief", "brief briefly short concise summarize summarise summary tldr yes"),
    ("rewrite", "rewrite rephrase paraphrase translate correct edit proofread fix convert improve"),
    ("classify", "classify choose select pick rate categorize categorise category identify true false"),
    ("math", "solve calculate compute equation prove math ="),
    ("format", "json yaml csv table markdown xml latex outline bullet bullets format template schedule"),
    ("short_form", "name title slogan tagline caption synonym synonyms antonym acronym phrase"),
    ("detail", "detailed detail comprehensive thorough complete full depth"),
    ("given", "given following below provided above this"),
)  # fmt: skip
_Q_START = frozenset("what why how who when where which is are can could do does did should would will".split())  # noqa: SIM905
_CHAT_START = frozenset("hi hello hey thanks thank".split())  # noqa: SIM905
CUE_NAMES = ("q_start", "chat", *(name for name, _ in _CUE_WORDS))
HEAD_CUE_NAMES = tuple(f"head_{name}" for name, _ in _CUE_WORDS)
DENSE_NAMES = ("log_prompt_tokens", "n_lines", "n_question_marks", "has_requested_len", "log_requested_len",
               "log_tail_tokens", "non_ascii_share", "log_words", *CUE_NAMES, *HEAD_CUE_NAMES)  # fmt: skip
HEAD = 8  # pieces at the start whose cues are also counted apart (the ask's verb and object)
BOS_ID = 1
_WORD_START = "\u2581"  # SentencePiece's word-boundary marker
_HASH = (np.uint64(0x9E3779B1), np.uint64(0x85EBCA77), np.uint64(0xC2B2AE3D), np.uint64(0x27D4EB2F))


def requested_length(text: str) -> float:
    """Tokens the prompt explicitly asks for ("in 3 sentences", "200 words"), 0 when none: the strongest cue."""
    best = 0.0
    for m in _REQ_LEN.finditer(text.lower()):
        num, unit = m.group(1), m.group(2)
        n = float(num) if num.isdigit() else float(_NUM_WORDS.get(num, 0))
        best = max(best, n * _UNIT_TOKENS[unit])
    return best


@dataclass(frozen=True)
class _VocabTables:
    """Per-piece lookups: cue bit mask; question/chat-start, newline, question-mark, unit-word, non-ASCII,
    word-start and number (digit or number word) flags."""

    cue_bits: np.ndarray
    q_start: np.ndarray
    chat: np.ndarray
    newline: np.ndarray
    qmark: np.ndarray
    unit: np.ndarray
    non_ascii: np.ndarray
    word: np.ndarray
    number: np.ndarray

    @classmethod
    def build(cls, sp: Any) -> _VocabTables:
        n = int(sp.vocab_size())
        t = cls(np.zeros(n, dtype=np.int64), *(np.zeros(n, dtype=bool) for _ in range(8)))
        words = [frozenset(ws.split()) for _, ws in _CUE_WORDS]
        for i in range(n):
            piece = sp.id_to_piece(i)
            w = piece.removeprefix(_WORD_START).lower()
            start = piece.startswith(_WORD_START) or not w.isalpha()
            for j, ws in enumerate(words):
                if start and w in ws:
                    t.cue_bits[i] |= 1 << j
            t.q_start[i], t.chat[i], t.unit[i] = w in _Q_START, w in _CHAT_START, start and w in _UNIT_FORMS
            t.newline[i], t.qmark[i] = piece == "<0x0A>", "?" in piece
            byte = piece.startswith("<0x") and piece.endswith(">")
            t.non_ascii[i] = (byte and int(piece[3:-1], 16) >= 0x80) or any(ord(c) > 0x7F for c in w)
            t.word[i] = piece.startswith(_WORD_START)
            t.number[i] = w.isdigit() or w in _NUM_WORDS
        return t


@lru_cache(maxsize=4)
def _tables(name: str) -> _VocabTables:
    return _VocabTables.build(load_tokenizer(name))


@dataclass(frozen=True)
class NGrams:
    """Hashed n-gram counts of a batch as sparse rows: ``row[k]``, ``col[k]``, ``val[k]`` (log1p count divided by
    the row's L2 norm). Rows without an entry do not occur (every prompt has at least one token)."""

    n: int
    row: np.ndarray
    col: np.ndarray
    val: np.ndarray

    def dot(self, w: np.ndarray) -> np.ndarray:
        """``X @ w`` for the dense ``(n, n_hash)`` matrix these rows stand for."""
        return np.bincount(self.row, weights=self.val * w[self.col], minlength=self.n)

    def dense(self, n_hash: int) -> np.ndarray:
        X = np.zeros((self.n, n_hash), dtype=np.float32)
        X[self.row, self.col] = self.val
        return X


@dataclass(frozen=True)
class Features:
    """What the featurizer hands the model: the dense block and the hashed n-grams."""

    dense: np.ndarray
    ngrams: NGrams

    def take(self, idx: np.ndarray) -> Features:
        """Rows ``idx`` (in that order, repeats allowed)."""
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(self.ngrams.row, kind="stable")
        row_sorted = self.ngrams.row[order]
        lo = np.searchsorted(row_sorted, idx, side="left")
        hi = np.searchsorted(row_sorted, idx, side="right")
        sel = np.concatenate([order[a:b] for a, b in zip(lo, hi, strict=True)]) if idx.size else np.zeros(0, int)
        new_row = np.repeat(np.arange(idx.size, dtype=np.int64), hi - lo)
        ng = NGrams(int(idx.size), new_row, self.ngrams.col[sel], self.ngrams.val[sel])
        return Features(self.dense[idx], ng)


class Featurizer:
    """Turns prompts (token ids, or text tokenized here) into :class:`Features`. One path for both: text is only
    ever tokenized, so training (text) and serving (ids) compute the same vector."""

    def __init__(self, spec: FeatureSpec | None = None) -> None:
        self.spec = spec or FeatureSpec()
        self.sp = load_tokenizer(self.spec.tokenizer)
        self.vocab = int(self.sp.vocab_size())
        self.dim = len(DENSE_NAMES)
        self.tables = _tables(self.spec.tokenizer)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise FeatureError("empty prompt")
        return self.sp.encode(list(texts))

    def window(self, ids: Sequence[int]) -> Sequence[int]:
        """Head and tail of a long prompt."""
        m = self.spec.max_tokens
        return ids if len(ids) <= m else [*ids[: m // 2], *ids[-(m // 2) :]]

    def transform(self, ids_list: Sequence[Sequence[int]], n_tokens: Sequence[int] | None = None) -> Features:
        """Features for a batch of token-id lists (a leading BOS is ignored). ``n_tokens[i]`` (optional) is the
        full token count when only a window of a prompt's ids is passed."""
        n, tb = len(ids_list), self.tables
        X = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            z = np.zeros(0, dtype=np.int64)
            return Features(X, NGrams(0, z, z, np.zeros(0)))
        stripped = [ids[1:] if len(ids) and ids[0] == BOS_ID else ids for ids in ids_list]
        wins = [self.window(ids) for ids in stripped]
        sizes = np.array([len(w) for w in wins], dtype=np.int64)
        if sizes.min() == 0:
            raise FeatureError("empty prompt (no token ids)")
        try:  # one conversion for the whole batch; a bad row fails it (the service then isolates that row)
            flat = np.array(list(chain.from_iterable(wins)))
        except (TypeError, ValueError, OverflowError) as e:
            raise FeatureError(f"token ids must be flat lists of integers ({type(e).__name__})") from None
        if flat.ndim != 1 or flat.dtype.kind not in "iu":  # floats, strings, nesting, ints beyond 64 bits
            raise FeatureError("token ids must be flat lists of integers")
        flat = flat.astype(np.int64)
        if flat.min() < 0 or flat.max() >= self.vocab:
            raise FeatureError(f"token id out of range [0, {self.vocab})")
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        row = np.repeat(np.arange(n, dtype=np.int64), sizes)
        pos = np.arange(flat.size, dtype=np.int64) - starts[row]
        lens = np.array([len(ids) for ids in stripped] if n_tokens is None else n_tokens, dtype=np.int64)
        lens = np.maximum(lens, sizes)
        X[:, 0] = np.log1p(lens)
        nl = tb.newline[flat]
        X[:, 1] = np.add.reduceat(nl, starts)
        X[:, 2] = np.add.reduceat(tb.qmark[flat], starts)
        req = np.zeros(n)
        num, near = tb.number[flat], np.zeros(flat.size, dtype=bool)
        for k in (1, 2, 3):  # a unit word with a number at most 3 pieces before it, in the same prompt
            near[k:] |= num[:-k] & (pos[k:] >= k)
        for i in np.flatnonzero(np.logical_or.reduceat(tb.unit[flat] & near, starts)):  # rare: decode these rows
            req[i] = requested_length(self.sp.decode([int(t) for t in wins[i]]))
        X[:, 3], X[:, 4] = req > 0, np.log1p(req)
        last_nl = np.maximum.reduceat(np.where(nl, pos + 1, 0), starts)  # 0: no newline
        X[:, 5] = np.log1p(sizes - last_nl)
        X[:, 6] = np.add.reduceat(tb.non_ascii[flat], starts) / sizes
        X[:, 7] = np.log1p(np.add.reduceat(tb.word[flat], starts))
        first = flat[starts]
        X[:, 8], X[:, 9] = tb.q_start[first], tb.chat[first]
        k = len(_CUE_WORDS)
        shifts = np.arange(k)
        bits = np.bitwise_or.reduceat(tb.cue_bits[flat], starts)
        X[:, 10 : 10 + k] = (bits[:, None] >> shifts) & 1
        head_bits = np.bitwise_or.reduceat(np.where(pos < HEAD, tb.cue_bits[flat], 0), starts)
        X[:, 10 + k : 10 + 2 * k] = (head_bits[:, None] >> shifts) & 1
        return Features(X, self._ngrams(flat, row, n))

    def _ngrams(self, flat: np.ndarray, row: np.ndarray, n: int) -> NGrams:
        """Hashed uni/bi/trigram log counts of all rows at once, each row L2-normalised."""
        nh, ids, h = np.uint64(self.spec.n_hash), flat.astype(np.uint64), _HASH
        keys = [row * self.spec.n_hash + (ids * h[0] % nh).astype(np.int64)]
        for order in range(2, self.spec.ngram + 1):
            same = row[order - 1 :] == row[: row.size - order + 1]
            mix = ids[: ids.size - order + 1] * h[1]
            for j in range(1, order):
                mix = mix ^ (ids[j : ids.size - order + 1 + j] * h[1 + j])
            keys.append((row[order - 1 :] * self.spec.n_hash + (mix % nh).astype(np.int64))[same])
        uk, cnt = np.unique(np.concatenate(keys), return_counts=True)
        r, c = uk // self.spec.n_hash, uk % self.spec.n_hash
        v = np.log1p(cnt.astype(np.float64))
        norm = np.sqrt(np.bincount(r, weights=v * v, minlength=n))
        return NGrams(n, r, c, v / norm[r])

    def from_texts(self, texts: Sequence[str]) -> tuple[Features, np.ndarray]:
        """(features, prompt token counts) from raw prompt text: the training/evaluation path."""
        ids = self.tokenize(texts)
        return self.transform(ids), np.array([len(i) for i in ids], dtype=np.int64)
