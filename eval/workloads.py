"""Workloads shared by the simulator and the load generator: real traces, arrivals, visible caps, SLO classes.

Every workload is a list of :class:`RequestSpec` built from the real data in ``data/`` (copied from
``shared/data``; resolved from this package's location, so any working directory works):

- ``azure-conv`` / ``azure-code``: Azure LLM inference trace 2023 (timestamps, prompt and output lengths).
- ``mooncake``: Mooncake conversation trace; its ``hash_ids`` (one per 512-token prompt block, equal ids = shared
  prefix) become ``prefix_hash_ids``, so prefix caching sees real sharing.
- ``sharegpt`` / ``arxiv``: length statistics only (no timestamps: a ``rate`` is required, Poisson arrivals).
- ``alpaca``: AlpacaEval instructions as prompt TEXT with the true output length = Mistral SentencePiece token count
  of Mistral-7B-Instruct-v0.2's own response (the tokenizer ships inside ``mistral_common``).
- ``mixed-code-conv``: the Azure code (long prompts) and conv (short prompts) traces merged by timestamp, each
  relative to its own first request (both span the same hour, so the merge keeps their natural mix, about 1 code :
  2 conv, from the first request on).
- ``mixed-arxiv-sharegpt``: arXiv (long prompts, short outputs) and ShareGPT, mixed by ``long_share`` (default 0.3).
These mixes are AccelGen's setting (A1-A3): short and long prompts competing for the same iterations.

- ``mixed-chat-long``: genuinely short chat prompts (AlpacaEval instructions, median 23 tokens, with the true
  Mistral response lengths) beside long-prompt summarisation (arXiv), mixed by ``long_share``: the tight-TBT chat
  beside loose-TBT long prompts regime of AccelGen's A1.
These mixes are AccelGen's setting (A1-A3): short and long prompts competing for the same iterations. Each request
carries its ``source`` (the application it comes from), so SLOs can be set per application (``eval.slo``).

Lengths: ``output_len`` is the response's true length in completion tokens, the last one being EOS (what the EOS
forcer in ``sglang_ext.logit_processors`` delivers). Trace selection is the first ``num_requests`` rows from
``start`` (timestamps keep their structure); length-stat and prompt sources are sampled with the seed.
``max_prompt`` drops rows with longer prompts before selection (a dataset filter on what a client sends, never on
the output), ``output_scale`` multiplies every true output length (a documented scaling, e.g. to reasoning lengths).

The visible cap (``max_new_tokens``, all a scheduler sees of the output length, CacheOPT C1) is the client's
(``eval.caps``): a fixed ``int``, ``"context"`` (no client cap: SGLang fills in the context room) or the oracle
``"exact"``; it never depends on the true length. ``max_context`` is the served model's context length: a prompt
longer than :data:`MAX_PROMPT_SHARE` of it is cut there (a client keeping room for the answer; the prompt's own length
decides, never the output), and the true output is cut at the context room (the model cannot write past its context).
A fixed cap that does not fit the context is left as the client sent it: the host refuses the request as SGLang does
(``eval.caps.sglang_arrival``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from eval.caps import ORACLE_CAP, CapError, check_cap_setting, client_cap

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
MOONCAKE_BLOCK_TOKENS = 512
DEFAULT_LONG_SHARE = 0.3
MAX_PROMPT_SHARE = 0.75  # prompts are cut to this share of max_context (room for the answer)


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request of a workload. ``output_len`` is the true length: the load generator ends the response there
    without telling the scheduler (``cap`` mode); the simulator hides it from every policy but the Oracle."""

    rid: str
    arrival_s: float
    prompt_len: int
    output_len: int
    max_new_tokens: int
    ttft_slo_ms: float | None = None
    tbt_slo_ms: float | None = None
    slo_class: str = ""
    prefix_hash_ids: tuple[int, ...] = ()  # Mooncake: one id per block; equal ids = shared prefix
    prompt_text: str | None = None
    prefix_block_tokens: int = 0  # tokens per prefix_hash_ids block after scaling (512 / scale); 0 = no blocks
    source: str = ""  # the application / data source it comes from (per-application SLOs, per-source estimates)


class WorkloadError(ValueError):
    """One line naming the file (or the argument) and the problem."""


class SLOAssigner(Protocol):
    """What ``load_workload(slo=...)`` accepts (``eval.slo.SLOSpec``): sets per-request SLOs and classes."""

    def assign(self, specs: list[RequestSpec], rng: np.random.Generator) -> list[RequestSpec]: ...


@dataclass(slots=True)
class _Rows:
    """Raw rows of one source before selection: lengths, absolute timestamps (s) or None, optional extras."""

    prompt: np.ndarray
    output: np.ndarray
    ts: np.ndarray | None = None
    hash_ids: list[tuple[int, ...]] | None = None
    text: list[str] | None = None
    source: list[str] | None = None

    def take(self, idx: np.ndarray) -> _Rows:
        pick = (lambda xs: [xs[i] for i in idx]) if len(idx) else (lambda xs: [])
        return _Rows(
            self.prompt[idx],
            self.output[idx],
            None if self.ts is None else self.ts[idx],
            None if self.hash_ids is None else pick(self.hash_ids),
            None if self.text is None else pick(self.text),
            None if self.source is None else pick(self.source),
        )

    def __len__(self) -> int:
        return len(self.prompt)


def _fail(path: Path, problem: object) -> WorkloadError:
    return WorkloadError(f"{path}: {' '.join(str(problem).split())}")


def _lengths(path: Path, prompt: list[Any], output: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    try:
        p = np.asarray([int(float(x)) for x in prompt], dtype=np.int64)
        o = np.asarray([int(float(x)) for x in output], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise _fail(path, f"non-numeric length ({e})") from None
    if len(p) == 0:
        raise _fail(path, "no rows")
    if (p < 1).any() or (o < 0).any():
        raise _fail(path, "negative or zero length")
    return p, o


def _read_csv(path: Path, columns: tuple[str, ...]) -> dict[str, list[str]]:
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise _fail(path, f"missing column(s) {', '.join(missing)}")
            out: dict[str, list[str]] = {c: [] for c in columns}
            for row in reader:
                for c in columns:
                    out[c].append(row[c])
    except OSError as e:
        raise _fail(path, e.strerror or e) from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise _fail(path, f"malformed CSV ({e})") from None
    return out


def _azure(path: Path) -> _Rows:
    cols = _read_csv(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
    p, o = _lengths(path, cols["ContextTokens"], cols["GeneratedTokens"])
    try:
        ts = np.asarray(cols["TIMESTAMP"], dtype="datetime64[ns]").astype(np.int64) / 1e9
    except ValueError as e:
        raise _fail(path, f"bad TIMESTAMP ({e})") from None
    return _Rows(p, np.maximum(o, 1), ts)


def _mooncake(path: Path) -> _Rows:
    ts, p, o, hashes = [], [], [], []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                    ts.append(float(d["timestamp"]) / 1e3)
                    p.append(d["input_length"])
                    o.append(d["output_length"])
                    hashes.append(tuple(int(h) for h in d["hash_ids"]))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    raise _fail(path, f"line {n}: malformed record ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise _fail(path, e.strerror or e) from None
    prompt, output = _lengths(path, p, o)
    return _Rows(prompt, np.maximum(output, 1), np.asarray(ts), hashes)


def _stats(path: Path) -> _Rows:
    cols = _read_csv(path, ("num_prefill_tokens", "num_decode_tokens"))
    p, o = _lengths(path, cols["num_prefill_tokens"], cols["num_decode_tokens"])
    return _Rows(p, np.maximum(o, 1))


@lru_cache(maxsize=1)
def mistral_tokenizer() -> Any:
    """Mistral-7B v0.1/v0.2 SentencePiece model shipped inside ``mistral_common`` (no download)."""
    import mistral_common
    import sentencepiece as spm

    path = Path(mistral_common.__file__).resolve().parent / "data" / "tokenizer.model.v1"
    return spm.SentencePieceProcessor(model_file=str(path))


def _truncate_text(text: str, tokens: int) -> str:
    """First ``tokens`` Mistral tokens of ``text`` (a prompt too long for ``max_context``; re-tokenizing the cut
    text may differ by a token or two)."""
    sp = mistral_tokenizer()
    return str(sp.decode(sp.encode(text)[:tokens]))


@lru_cache(maxsize=4)
def _alpaca_cached(path: Path) -> _Rows:
    try:
        with open(path) as f:
            items = json.load(f)
        texts = [str(d["instruction"]) for d in items]
        outputs = [str(d["output"]) for d in items]
    except OSError as e:
        raise _fail(path, e.strerror or e) from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise _fail(path, f"malformed AlpacaEval JSON ({type(e).__name__}: {e})") from None
    sp = mistral_tokenizer()
    p, o = _lengths(path, [max(len(t), 1) for t in sp.encode(texts)], [len(t) for t in sp.encode(outputs)])
    return _Rows(p, np.maximum(o, 1), text=texts)


_SOURCES: dict[str, tuple[str, Callable[[Path], _Rows]]] = {
    "azure-conv": ("traces/azure2023_conv.csv", _azure),
    "azure-code": ("traces/azure2023_code.csv", _azure),
    "mooncake": ("traces/mooncake_conversation.jsonl", _mooncake),
    "sharegpt": ("lengths/sharegpt8k_llama2_stats.csv", _stats),
    "arxiv": ("lengths/arxiv_summarization_llama2_stats.csv", _stats),
    "alpaca": ("prompts/alpacaeval_Mistral-7B-Instruct-v0.2.json", _alpaca_cached),
}
_MIXES = {"mixed-code-conv": ("azure-code", "azure-conv"), "mixed-arxiv-sharegpt": ("arxiv", "sharegpt"),
          "mixed-chat-long": ("arxiv", "alpaca")}  # (long prompts, short prompts)  # fmt: skip


def available_workloads() -> list[str]:
    return sorted([*_SOURCES, *_MIXES])


def _source(name: str, data_dir: Path) -> _Rows:
    rel, loader = _SOURCES[name]
    rows = loader(data_dir / rel)
    rows.source = [name] * len(rows)
    return rows


def _concat(a: _Rows, b: _Rows) -> _Rows:
    def cat(x: Any, y: Any) -> Any:
        if x is None or y is None:
            return None
        return np.concatenate([x, y]) if isinstance(x, np.ndarray) else x + y

    return _Rows(*(cat(getattr(a, f), getattr(b, f)) for f in ("prompt", "output", "ts", "hash_ids", "text", "source")))


def _select(name: str, n: int, start: int, long_share: float | None, data_dir: Path, rng: np.random.Generator,
            keep: Callable[[_Rows], np.ndarray]) -> _Rows:  # fmt: skip
    """Trace rows: a contiguous slice (trace order); length-stat and prompt rows: a seeded sample. ``keep`` masks
    the rows a client would send (the prompt filter)."""
    if name in _MIXES:
        long_name, short_name = _MIXES[name]
        long_rows, short_rows = (
            _filtered(_source(long_name, data_dir), keep),
            _filtered(_source(short_name, data_dir), keep),
        )
        if long_rows.ts is not None and short_rows.ts is not None and long_share is None:
            long_rows.ts, short_rows.ts = long_rows.ts - long_rows.ts[0], short_rows.ts - short_rows.ts[0]
            merged = _concat(long_rows, short_rows)
            return _slice(merged.take(np.argsort(merged.ts, kind="stable")), n, start, name)
        share = DEFAULT_LONG_SHARE if long_share is None else long_share
        if not 0.0 <= share <= 1.0:
            raise WorkloadError(f"long_share must be in [0, 1], got {share}")
        n_long = round(n * share)
        parts = _concat(_sample(long_rows, n_long, rng), _sample(short_rows, n - n_long, rng))
        parts.ts = None
        return parts.take(rng.permutation(n))
    rows = _filtered(_source(name, data_dir), keep)
    return _slice(rows, n, start, name) if rows.ts is not None else _sample(rows, n, rng)


def _filtered(rows: _Rows, keep: Callable[[_Rows], np.ndarray]) -> _Rows:
    mask = keep(rows)
    if not mask.any():
        raise WorkloadError("max_prompt: no row of the source has a prompt that short")
    return rows if mask.all() else rows.take(np.flatnonzero(mask))


def _slice(rows: _Rows, n: int, start: int, name: str) -> _Rows:
    if start < 0 or start + n > len(rows):
        raise WorkloadError(f"{name}: rows [{start}, {start + n}) requested, the trace has {len(rows)}")
    return rows.take(np.arange(start, start + n))


def _sample(rows: _Rows, n: int, rng: np.random.Generator) -> _Rows:
    return rows.take(rng.choice(len(rows), size=n, replace=n > len(rows)))


def poisson_arrivals(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Open-loop Poisson arrivals starting at 0; ``rate = inf`` sends everything at once (a burst)."""
    if math.isinf(rate):
        return np.zeros(n)
    gaps = rng.exponential(1.0 / rate, size=n)
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])])[:n]


def fit_context(prompt_len: int, output_len: int, max_context: int | None) -> tuple[int, int]:
    """The request as a client with this context sends it: a prompt longer than ``MAX_PROMPT_SHARE`` of the context
    is cut there (decided by the prompt alone), and the true output stops at the context room."""
    if max_context is None:
        return prompt_len, output_len
    p = min(prompt_len, max(1, int(max_context * MAX_PROMPT_SHARE)))
    return p, max(1, min(output_len, max_context - p - 2))


def load_workload(
    name: str,
    *,
    num_requests: int,
    rate: float | None = None,
    seed: int = 0,
    scale: float = 1.0,
    max_context: int | None = None,
    max_new_tokens: int | str | None = None,
    slo: SLOAssigner | None = None,
    start: int = 0,
    long_share: float | None = None,
    data_dir: str | Path | None = None,
    max_prompt: int | None = None,
    output_scale: float = 1.0,
) -> list[RequestSpec]:
    """Build ``num_requests`` requests of workload ``name``.

    ``rate``: requests/s of seeded Poisson arrivals; ``None`` replays the trace's own timestamps (trace workloads
    only). ``scale`` divides every length (and Mooncake's block size) to fit a small model; ``max_context`` is the
    served model's context (module docstring); ``max_new_tokens`` the client cap (``eval.caps``; default: the
    context room when ``max_context`` is given, else 4096). Independent seeded streams pick rows, arrivals and SLO
    classes, so changing the rate leaves the requests' lengths and classes unchanged.
    """
    if name not in _SOURCES and name not in _MIXES:
        raise ValueError(f"unknown workload {name!r}; valid: {', '.join(available_workloads())}")
    if num_requests < 1:
        raise WorkloadError(f"num_requests must be >= 1, got {num_requests}")
    if rate is not None and not rate > 0:
        raise WorkloadError(f"rate must be > 0 requests/s, got {rate}")
    if not scale > 0:
        raise WorkloadError(f"scale must be > 0, got {scale}")
    if max_context is not None and max_context < 8:
        raise WorkloadError(f"max_context must be >= 8 tokens, got {max_context}")
    if not (output_scale > 0 and math.isfinite(output_scale)):
        raise WorkloadError(f"output_scale must be > 0, got {output_scale}")
    if max_prompt is not None and max_prompt < 1:
        raise WorkloadError(f"max_prompt must be >= 1 token, got {max_prompt}")
    try:
        cap = check_cap_setting(max_new_tokens, max_context)
    except CapError as e:
        raise WorkloadError(str(e)) from None
    rng_rows, rng_arrivals, rng_slo = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))

    def keep(r: _Rows) -> np.ndarray:  # the prompt as the client sends it (text prompts are not scaled)
        p = r.prompt if r.text is not None else np.maximum(1, np.round(r.prompt / scale))
        return np.ones(len(r), bool) if max_prompt is None else p <= max_prompt

    data = Path(data_dir) if data_dir else DATA_DIR
    rows = _select(name, num_requests, start, long_share, data, rng_rows, keep)
    if rate is not None:
        arrivals = poisson_arrivals(num_requests, rate, rng_arrivals)
    elif rows.ts is None:
        raise WorkloadError(f"{name} has no timestamps (length statistics only): give a rate (Poisson arrivals)")
    else:
        arrivals = rows.ts - rows.ts[0]
    block = max(1, round(MOONCAKE_BLOCK_TOKENS / scale)) if rows.hash_ids is not None else 0
    specs = []
    for i in range(num_requests):
        text = rows.text[i] if rows.text is not None else None
        p0 = int(rows.prompt[i]) if text is not None else max(1, round(rows.prompt[i] / scale))  # text is not scaled
        p, o = fit_context(p0, max(1, round(rows.output[i] * output_scale / scale)), max_context)
        if text is not None and p < p0:
            text = _truncate_text(text, p)
        hashes = tuple(rows.hash_ids[i][: math.ceil(p / block)]) if rows.hash_ids is not None else ()
        src = rows.source[i] if rows.source is not None and name in _MIXES else name
        specs.append(
            RequestSpec(
                rid=f"{src}-{start + i}" if rows.ts is not None else f"{src}-s{seed}-{i}",
                arrival_s=float(arrivals[i]),
                prompt_len=p,
                output_len=o,
                max_new_tokens=o if cap == ORACLE_CAP else client_cap(p, cap, max_context),
                prefix_hash_ids=hashes,
                prompt_text=text,
                prefix_block_tokens=block if hashes else 0,
                source=rows.source[i] if rows.source is not None else name,
            )
        )
    if len({s.rid for s in specs}) < len(specs):  # a sample with replacement repeats rows: keep rids unique
        specs = [replace(s, rid=f"{s.rid}-{i}") for i, s in enumerate(specs)]
    return slo.assign(specs, rng_slo) if slo is not None else specs
