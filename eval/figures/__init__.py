"""The paper figures of ``python -m eval.reproduce``: one function per figure, composed from cells.

Each figure module registers ``build(ctx) -> dict`` (the figure's JSON: every number it plots and every number the
report quotes) and ``plot(data, path)``. Figures share work only through the cell cache (a sweep cell asked for by
two figures is computed once), so ``--only FIGURE`` runs exactly what that figure needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.figures.cells import CellRunner


@dataclass(frozen=True)
class Settings:
    """What a run sweeps. ``quick()``: <= 10 min on 2 cores; ``full()``: <= 2 h. Seeds are fixed (seed 0 for
    arrivals and classes, seed 1 for capacity bursts, as eval.accelgen_eval)."""

    quick: bool
    # CacheOPT sweeps (C1-C5): KV competition, Azure conv lengths and ShareGPT lengths.
    co_profiles: tuple[str, ...]
    co_workloads: tuple[str, ...]
    co_loads: tuple[float, ...]  # multiples of the measured capacity (eval.cacheopt_eval's grid)
    co_n: int
    co_bisect_steps: int
    co_pool_tokens: dict[str, int | None] = field(default_factory=dict)  # per profile; None = the profile's own
    # AccelGen sweeps (A1-A4): mixed prompts, three SLO classes.
    ag_profiles: tuple[str, ...] = ()
    ag_workloads: tuple[str, ...] = ()
    ag_loads: tuple[float, ...] = ()
    ag_n: int = 200
    ag_chunk_sizes: tuple[int, ...] = ()
    ag_tiny_seeds: int = 10
    # Live CPU server slice (stock vs policy, tiny model) and the simulator-fidelity comparison on it.
    live_requests: int = 30
    live_rate: float = 2.0
    live_pool_tokens: int = 1536
    live_policy: str = "cacheopt"
    predictor_q: tuple[float, ...] = (0.9, 0.95)

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, ("h100-llama2-13b",), ("azure-conv",), (0.1, 0.15, 0.3, 0.5, 0.8), 500, 3,
                       ag_profiles=("h100-llama3-8b",), ag_workloads=("mixed-code-conv",), ag_loads=(0.5, 0.8, 1.1),
                       ag_n=200, ag_chunk_sizes=(256, 512, 1024, 2048), ag_tiny_seeds=10,
                       live_requests=30, live_rate=2.0)  # fmt: skip
        return cls(False, ("h100-llama3-8b", "h100-llama2-13b", "a100-llama2-13b"), ("azure-conv", "sharegpt"),
                   (0.02, 0.04, 0.07, 0.1, 0.15, 0.2, 0.3, 0.45, 0.65, 0.9, 1.1), 1000, 5,
                   ag_profiles=("h100-llama3-8b", "h100-llama2-13b"),
                   ag_workloads=("mixed-code-conv", "mixed-arxiv-sharegpt"), ag_loads=(0.4, 0.6, 0.8, 1.0, 1.2, 1.5),
                   ag_n=1000, ag_chunk_sizes=(128, 256, 512, 1024, 2048, 4096), ag_tiny_seeds=30,
                   live_requests=120, live_rate=4.0)  # fmt: skip


@dataclass
class Context:
    settings: Settings
    runner: CellRunner
    out: Path
    log: Callable[[str], None] = print


@dataclass(frozen=True)
class Figure:
    name: str
    what: str  # one line: what the figure shows (the report's caption)
    build: Callable[[Context], dict[str, Any]]
    plot: Callable[[dict[str, Any], Path], None]
    group: str = "sim"  # "sim" | "live" | "predictor"


FIGURES: dict[str, Figure] = {}


def figure(name: str, what: str, plot: Callable[[dict[str, Any], Path], None], group: str = "sim") -> Callable:
    def deco(fn: Callable[[Context], dict[str, Any]]) -> Callable[[Context], dict[str, Any]]:
        FIGURES[name] = Figure(name, what, fn, plot, group)
        return fn

    return deco


def all_figures() -> dict[str, Figure]:
    from eval.figures import accelgen_figs, cacheopt_figs, external_figs  # noqa: F401 - registration

    return FIGURES
