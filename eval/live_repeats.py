"""Live runs that mean something (issue 10.7): the machine's load around every side of a comparison, and repeats
reported as median and range.

Why: a CPU server shares its cores with everything else on the machine. Stock-vs-extension numbers taken at a load
average of 8 on 2 cores measured the contention, not the schedulers, and one run per side flipped between runs. So
every side records the 1-minute load average just before it starts its server and just after it stops it, a warning
is printed (and kept in the JSON) whenever either exceeds :data:`LOAD_WARN_PER_CORE` per core, and ``--repeats K``
runs the pair K times, alternating which side goes first (drift on the machine then hits both sides alike), and
reports per metric the median and the [min, max] range over the repeats.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable
from typing import Any

LOAD_WARN_PER_CORE = 1.0


def load_avg_1min() -> float:
    return os.getloadavg()[0]


def load_warning(label: str, before: float, after: float, cores: int | None = None) -> str | None:
    """A warning line when the 1-minute load average around side ``label`` exceeded 1.0 per core, else None."""
    cores = cores or os.cpu_count() or 1
    worst = max(before, after)
    if worst <= LOAD_WARN_PER_CORE * cores:
        return None
    return (f"warning: {label}: 1-minute load average {before:.2f} -> {after:.2f} on {cores} cores exceeds "
            f"{LOAD_WARN_PER_CORE:g} per core: its numbers measure contention as much as the scheduler")  # fmt: skip


def with_load(label: str, run: Callable[[], dict[str, Any]], cores: int | None = None,
              load: Callable[[], float] = load_avg_1min) -> dict[str, Any]:  # fmt: skip
    """Run one side and add ``load_avg_1min: [before, after]`` (and ``load_warning``) to its summary."""
    before = load()
    summary = run()
    after = load()
    summary["load_avg_1min"] = [before, after]
    summary["cpu_count"] = cores or os.cpu_count()
    warn = load_warning(label, before, after, cores)
    if warn:
        summary["load_warning"] = warn
        print(f"[live] {warn}", file=sys.stderr, flush=True)
    return summary


def _numeric(summaries: list[dict[str, Any]]) -> list[str]:
    keys = [k for k, v in summaries[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return [k for k in keys if all(isinstance(s.get(k), (int, float)) for s in summaries)]


def median_and_range(summaries: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Per numeric metric the median over repeats and its [min, max]; non-numeric fields from the first repeat."""
    if not summaries:
        raise ValueError("median_and_range: no repeats")
    med = dict(summaries[0])
    ranges: dict[str, list[float]] = {}
    for k in _numeric(summaries):
        vals = [float(s[k]) for s in summaries]
        med[k] = statistics.median(vals)
        ranges[k] = [min(vals), max(vals)]
    med["repeats"] = len(summaries)
    loads = [s["load_avg_1min"] for s in summaries if "load_avg_1min" in s]
    med["load_avg_1min"] = [max(x[0] for x in loads), max(x[1] for x in loads)] if loads else None  # worst repeat
    warnings = [s["load_warning"] for s in summaries if s.get("load_warning")]
    if warnings:
        med["load_warning"] = f"{len(warnings)} of {len(summaries)} repeats: " + warnings[0]
    return med, ranges


def run_repeats(repeats: int, sides: list[tuple[str, Callable[[int], dict[str, Any]]]]) -> dict[str, Any]:
    """Run every side ``repeats`` times (side order alternates per repeat); ``{"repeats": [{side: summary}],
    "median": {side: summary}, "range": {side: {metric: [min, max]}}, "order": [[side, ...] per repeat]}``."""
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    runs: list[dict[str, Any]] = []
    order: list[list[str]] = []
    for i in range(repeats):
        seq = sides if i % 2 == 0 else list(reversed(sides))
        order.append([name for name, _ in seq])
        runs.append({name: fn(i) for name, fn in seq})
    med: dict[str, Any] = {}
    rng: dict[str, Any] = {}
    for name, _ in sides:
        med[name], rng[name] = median_and_range([r[name] for r in runs])
    return {"repeats": runs, "median": med, "range": rng, "order": order}


def cell(median: Any, rng: list[float] | None, fmt: Callable[[Any], str]) -> str:
    """``median [min-max]`` for a table cell (just the median with one repeat)."""
    if rng is None or rng[0] == rng[1]:
        return fmt(median)
    return f"{fmt(median)} [{fmt(rng[0])}-{fmt(rng[1])}]"
