"""The one metrics schema: per-request records and the summary, shared by the load generator, the simulator
and the reports. Field names here are the project's vocabulary; nothing else defines them.

TBT SLO attainment (defined here and only here): a request meets its TBT SLO when
  (1) at most ``TBT_VIOLATION_SHARE`` (10%) of its inter-token gaps exceed the SLO, and
  (2) its longest gap (its *stall*) is at most ``STALL_FACTOR`` (5x) the SLO.
Rule (2) is what makes a preemption count: pooled TBT percentiles hide a single multi-second stall, this does not.
A request with fewer than two tokens has no gaps and meets its TBT SLO iff it completed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TBT_VIOLATION_SHARE = 0.10
STALL_FACTOR = 5.0
PERCENTILES = (50, 95, 99)

SUMMARY_FIELDS = (
    "submitted", "completed", "failed", "duration_s", "throughput_tok_s", "goodput_rps",
    *(f"{m}_p{p}_ms" for m in ("ttft", "tbt", "stall", "e2e") for p in PERCENTILES),
    "ttft_slo_attainment", "tbt_slo_attainment", "slo_attainment", "preemptions",
)  # fmt: skip


@dataclass(slots=True)
class RequestRecord:
    """One request as the user saw it. Times are seconds relative to the run's start."""

    rid: str
    arrival_s: float
    prompt_len: int
    max_new_tokens: int
    target_output_len: int  # the workload's true length (hidden from the scheduler in `cap` mode)
    ttft_slo_ms: float | None = None
    tbt_slo_ms: float | None = None
    token_times_s: list[float] = field(default_factory=list)  # arrival time of every output token
    finish_s: float | None = None
    error: str | None = None
    slo_class: str = ""
    preemptions: int = 0  # known to the simulator; the load generator reads server-wide counts instead

    @property
    def ok(self) -> bool:
        return self.error is None and self.finish_s is not None

    @property
    def output_len(self) -> int:
        return len(self.token_times_s)

    @property
    def ttft_s(self) -> float | None:
        return self.token_times_s[0] - self.arrival_s if self.token_times_s else None

    @property
    def gaps_s(self) -> np.ndarray:
        return np.diff(np.asarray(self.token_times_s, dtype=float))

    @property
    def stall_s(self) -> float:
        g = self.gaps_s
        return float(g.max()) if g.size else 0.0

    def meets_ttft(self) -> bool:
        if not self.ok:
            return False
        ttft = self.ttft_s
        return self.ttft_slo_ms is None or (ttft is not None and ttft * 1e3 <= self.ttft_slo_ms)

    def meets_tbt(self) -> bool:
        if not self.ok:
            return False
        if self.tbt_slo_ms is None:
            return True
        gaps_ms = self.gaps_s * 1e3
        if gaps_ms.size == 0:
            return True
        over = float(np.mean(gaps_ms > self.tbt_slo_ms))
        return over <= TBT_VIOLATION_SHARE and float(gaps_ms.max()) <= STALL_FACTOR * self.tbt_slo_ms

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RequestRecord:
        return cls(**d)


def _pcts(values: Sequence[float] | np.ndarray, prefix: str) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {f"{prefix}_p{p}_ms": None for p in PERCENTILES}
    qs = np.percentile(arr * 1e3, PERCENTILES)
    return {f"{prefix}_p{p}_ms": float(q) for p, q in zip(PERCENTILES, qs, strict=True)}


def summarize(
    records: Iterable[RequestRecord], *, preemptions: int | None = None, duration_s: float | None = None
) -> dict[str, Any]:
    """Summary over a run. ``preemptions``: the server's count (load generator) or ``None`` to sum records."""
    recs = list(records)
    done = [r for r in recs if r.ok]
    if duration_s is None:
        start = min((r.arrival_s for r in recs), default=0.0)
        end = max((r.finish_s or r.arrival_s for r in recs), default=0.0)
        duration_s = max(end - start, 1e-9)
    tokens = sum(r.output_len for r in done)
    good = [r for r in done if r.meets_ttft() and r.meets_tbt()]
    n = max(len(recs), 1)
    out: dict[str, Any] = {
        "submitted": len(recs),
        "completed": len(done),
        "failed": len(recs) - len(done),
        "duration_s": float(duration_s),
        "throughput_tok_s": tokens / duration_s,
        "goodput_rps": len(good) / duration_s,
    }
    out |= _pcts([r.ttft_s for r in done if r.ttft_s is not None], "ttft")
    all_gaps = np.concatenate([r.gaps_s for r in done]) if done else np.array([])
    out |= _pcts(all_gaps, "tbt")
    out |= _pcts([r.stall_s for r in done], "stall")
    out |= _pcts([r.finish_s - r.arrival_s for r in done if r.finish_s is not None], "e2e")
    out["ttft_slo_attainment"] = sum(r.meets_ttft() for r in recs) / n
    out["tbt_slo_attainment"] = sum(r.meets_tbt() for r in recs) / n
    out["slo_attainment"] = len(good) / n
    out["preemptions"] = int(preemptions if preemptions is not None else sum(r.preemptions for r in recs))
    assert tuple(out) == SUMMARY_FIELDS
    return out


def summarize_by_class(records: Iterable[RequestRecord], **kw: Any) -> dict[str, dict[str, Any]]:
    """Summaries per SLO class (AccelGen reports attainment per class)."""
    by: dict[str, list[RequestRecord]] = {}
    for r in records:
        by.setdefault(r.slo_class, []).append(r)
    return {k: summarize(v, **kw) for k, v in sorted(by.items())}


def write_records(path: str | Path, records: Iterable[RequestRecord]) -> None:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r.to_json()) + "\n")


def read_records(path: str | Path) -> list[RequestRecord]:
    with open(path) as f:
        return [RequestRecord.from_json(json.loads(line)) for line in f if line.strip()]
