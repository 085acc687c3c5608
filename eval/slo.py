"""Per-request SLO classes: TTFT and TBT objectives, relative to each request's isolated latency or absolute.

Why relative: serving papers (AccelGen's heterogeneous-SLO evaluation among them) set a request's SLO as a multiple
of the latency it would see alone on the hardware, so one SLO scale means the same tightness for a 30-token and a
3,000-token prompt and across GPU profiles. AccelGen's dynamic chunking (A1) and slack priority (A2) and CacheOPT's
SLO-aware admission and victim choice (C2, C4) all read these per-request objectives.

Isolated latency on a latency model (any object with ``prefill_s(tokens, context_before)`` and
``iteration_s(BatchShape)``, e.g. ``policies.latency.IterationLatencyModel``):
- TTFT: the prompt's prefill alone, in chunks of ``chunk_tokens`` when the server chunks prefills (each chunk after
  the previous ones), else in one pass.
- TBT: one decode step alone at the request's final context (prompt + output): the slowest step the request takes
  alone, so a 1x TBT SLO is attainable in isolation.

Classes are drawn per request by a seeded random mix with the classes' shares, or set per application: every
request of one source (``RequestSpec.source``, e.g. ``alpaca`` chat beside ``arxiv`` summarisation) gets that
source's class, as AccelGen's setting has it (SLOs belong to applications, not to random requests). Spec strings::

    none                                   no SLOs
    default                                tight=1:5x:3x,medium=1:10x:6x,loose=1:20x:12x (equal shares)
    abs:TTFT_MS:TBT_MS                     one absolute class named "abs"
    NAME=SHARE:TTFT:TBT[,NAME=...]         TTFT/TBT each "<k>x" (multiple), "<ms>" (absolute ms) or "-" (none)
    app:SOURCE=TTFT:TBT[,SOURCE=...]       one class per application (class name = source; "*" = any other)

The default multiples are tunable starting points, not figures from the papers. Production-style absolute settings
with their sources are in :data:`PRODUCTION` (the scenarios in ``eval.scenarios`` pick from it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from eval.workloads import RequestSpec
from policies.latency import BatchShape

DEFAULT_SPEC = "tight=1:5x:3x,medium=1:10x:6x,loose=1:20x:12x"
_MLPERF = "MLPerf Inference rules, mlcommons/inference_policies inference_rules.adoc @ ac93e89"


@dataclass(frozen=True, slots=True)
class Production:
    """An absolute, production-style objective pair (ms) and where it comes from. MLPerf bounds the p99 over
    requests of TTFT and of TPOT (a request's *mean* gap); our TBT rule (eval.metrics: <= 10% of gaps over, longest
    <= 5x) judges every gap, so the same number is stricter here."""

    ttft_ms: float
    tbt_ms: float
    source: str


PRODUCTION: dict[str, Production] = {
    "chat": Production(2000, 100, f"{_MLPERF}: Llama3.1-8B, conversational category, TTFT/TPOT 2000 ms/100 ms"),
    "chat-interactive": Production(500, 30, f"{_MLPERF}: Llama3.1-8B, interactive category, TTFT/TPOT 500/30 ms"),
    "chat-70b": Production(2000, 200, f"{_MLPERF}: Llama2-70b (OpenOrca), conversational, TTFT/TPOT 2000/200 ms"),
    "reasoning": Production(2000, 80, f"{_MLPERF}: DeepSeek-r1 (reasoning), server, TTFT/TPOT 2000 ms/80 ms"),
    "code": Production(2000, 200, f"{_MLPERF}: Mixtral-8x7B (QA, math and code generation), TTFT/TPOT 2000/200 ms"),
    "long-context": Production(6000, 175, f"{_MLPERF}: Llama3.1-405B (long-context text generation: LongBench, "
                               "GovReport summarisation), server, TTFT/TPOT 6000 ms/175 ms"),
}  # fmt: skip


class IsolatedLatency(Protocol):
    def prefill_s(self, tokens: int, context_before: int = 0) -> float: ...

    def iteration_s(self, shape: BatchShape) -> float: ...


class SLOSpecError(ValueError):
    """One line naming the SLO spec part and the problem."""


@dataclass(frozen=True, slots=True)
class Objective:
    """One objective: ``value`` ms if absolute, else a multiple of the isolated latency."""

    value: float
    relative: bool

    def __post_init__(self) -> None:
        if not (math.isfinite(self.value) and self.value > 0):
            raise SLOSpecError(f"SLO value must be a positive number, got {self.value}")

    def ms(self, isolated_s: float) -> float:
        return self.value * isolated_s * 1e3 if self.relative else self.value


@dataclass(frozen=True, slots=True)
class SLOClass:
    name: str
    share: float
    ttft: Objective | None = None
    tbt: Objective | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise SLOSpecError("SLO class needs a name")
        if not (math.isfinite(self.share) and self.share > 0):
            raise SLOSpecError(f"SLO class {self.name}: share must be > 0, got {self.share}")

    @property
    def relative(self) -> bool:
        return any(o is not None and o.relative for o in (self.ttft, self.tbt))


def isolated_ttft_s(latency: IsolatedLatency, prompt_len: int, chunk_tokens: int | None = None) -> float:
    if not chunk_tokens or chunk_tokens >= prompt_len:
        return latency.prefill_s(prompt_len, 0)
    return sum(latency.prefill_s(min(chunk_tokens, prompt_len - b), b) for b in range(0, prompt_len, chunk_tokens))


def isolated_tbt_s(latency: IsolatedLatency, prompt_len: int, output_len: int) -> float:
    return latency.iteration_s(BatchShape(decode_ctx=(prompt_len + output_len,)))


@dataclass(frozen=True)
class SLOSpec:
    """A mix of SLO classes; ``assign`` is what ``eval.workloads.load_workload(slo=...)`` calls."""

    classes: tuple[SLOClass, ...]
    latency: IsolatedLatency | None = None
    chunk_tokens: int | None = None
    by_source: bool = False  # True: class = the request's source (class names are sources, "*" = any other)

    def __post_init__(self) -> None:
        if not self.classes:
            raise SLOSpecError("an SLO spec needs at least one class")
        if len({c.name for c in self.classes}) < len(self.classes):
            raise SLOSpecError("SLO class names must be distinct")
        if self.latency is None and any(c.relative for c in self.classes):
            raise SLOSpecError("relative SLOs ('<k>x') need a latency model for the isolated latency")

    def assign(self, specs: list[RequestSpec], rng: np.random.Generator) -> list[RequestSpec]:
        if self.by_source:
            by = {c.name: c for c in self.classes}
            out = []
            for s in specs:
                cls = by.get(s.source) or by.get("*")
                if cls is None:
                    raise SLOSpecError(f"SLO spec: no class for source {s.source!r} (valid: {', '.join(by)})")
                out.append(self._apply(s, cls))
            return out
        shares = np.asarray([c.share for c in self.classes], dtype=float)
        picks = rng.choice(len(self.classes), size=len(specs), p=shares / shares.sum())
        return [self._apply(s, self.classes[k]) for s, k in zip(specs, picks, strict=True)]

    def _apply(self, spec: RequestSpec, cls: SLOClass) -> RequestSpec:
        ttft = tbt = None
        if cls.ttft is not None:
            iso = isolated_ttft_s(self.latency, spec.prompt_len, self.chunk_tokens) if cls.ttft.relative else 0.0
            ttft = cls.ttft.ms(iso)
        if cls.tbt is not None:
            iso = isolated_tbt_s(self.latency, spec.prompt_len, spec.output_len) if cls.tbt.relative else 0.0
            tbt = cls.tbt.ms(iso)
        return replace(spec, ttft_slo_ms=ttft, tbt_slo_ms=tbt, slo_class=cls.name)


def absolute(ttft_ms: float | None, tbt_ms: float | None, name: str = "abs") -> SLOSpec:
    """Every request gets the same absolute SLOs (ms)."""
    mk = lambda v: None if v is None else Objective(float(v), relative=False)  # noqa: E731
    return SLOSpec((SLOClass(name, 1.0, mk(ttft_ms), mk(tbt_ms)),))


def _objective(text: str, where: str) -> Objective | None:
    t = text.strip()
    if t in ("-", ""):
        return None
    relative = t.endswith("x")
    try:
        value = float(t[:-1] if relative else t)
    except ValueError:
        raise SLOSpecError(f"SLO {where}: {t!r} is not a number, '<k>x' or '-'") from None
    try:
        return Objective(value, relative)
    except SLOSpecError as e:
        raise SLOSpecError(f"SLO {where}: {e}") from None


def parse_slo(text: str, latency: IsolatedLatency | None = None, chunk_tokens: int | None = None) -> SLOSpec | None:
    """Parse a spec string (see the module docstring); ``None`` for ``"none"``."""
    t = text.strip()
    if t in ("", "none"):
        return None
    if t == "default":
        t = DEFAULT_SPEC
    if t.startswith("abs:"):
        parts = t.split(":")
        if len(parts) != 3:
            raise SLOSpecError(f"SLO spec {text!r}: expected abs:TTFT_MS:TBT_MS")
        ttft, tbt = _objective(parts[1], "abs TTFT"), _objective(parts[2], "abs TBT")
        if (ttft and ttft.relative) or (tbt and tbt.relative):
            raise SLOSpecError(f"SLO spec {text!r}: abs: takes milliseconds, not multiples")
        return SLOSpec((SLOClass("abs", 1.0, ttft, tbt),))
    if t.startswith("app:"):
        apps = []
        for part in t[4:].split(","):
            name, sep, rest = part.partition("=")
            fields = rest.split(":")
            if not sep or len(fields) != 2 or not name.strip():
                raise SLOSpecError(f"SLO application {part!r}: expected SOURCE=TTFT:TBT")
            ttft, tbt = _objective(fields[0], f"{name} TTFT"), _objective(fields[1], f"{name} TBT")
            apps.append(SLOClass(name.strip(), 1.0, ttft, tbt))
        return SLOSpec(tuple(apps), latency, chunk_tokens, by_source=True)
    classes = []
    for part in t.split(","):
        name, sep, rest = part.partition("=")
        fields = rest.split(":")
        if not sep or len(fields) != 3:
            raise SLOSpecError(f"SLO class {part!r}: expected NAME=SHARE:TTFT:TBT")
        try:
            share = float(fields[0])
        except ValueError:
            raise SLOSpecError(f"SLO class {name}: share {fields[0]!r} is not a number") from None
        ttft, tbt = _objective(fields[1], f"{name} TTFT"), _objective(fields[2], f"{name} TBT")
        classes.append(SLOClass(name.strip(), share, ttft, tbt))
    return SLOSpec(tuple(classes), latency, chunk_tokens)
