"""The paper figures of ``python -m eval.reproduce``: one function per figure, composed from cells.

Each figure module registers ``build(ctx) -> dict`` (the figure's JSON: every number it plots and every number the
report quotes) and ``plot(data, path)``. Simulator figures are built from ``eval.compare`` runs (scenarios x
variants x rates x seeds; ``eval.figures.sweeps``). Figures share work only through the cell cache (a cell asked for
by two figures is computed once), so ``--only FIGURE`` runs exactly what that figure needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.figures.cells import CellRunner


@dataclass(frozen=True)
class Settings:
    """What a run sweeps: named scenarios (eval.scenarios) and policy variants (eval.variants), through the compare
    engine (eval.compare), so every figure is at matched batching with realistic caps, pools and estimates.
    ``quick()``: <= 10 min on 2 cores (one KV-bound and one AccelGen scenario, three loads, one seed, fewer requests,
    the primary SLO setting); ``full()``: every scenario, its own grid, requests and seeds, both SLO settings."""

    quick: bool
    co_scenarios: tuple[str, ...]  # CacheOPT (C1-C5): KV loose, KV tight, long outputs, burst
    ag_scenarios: tuple[str, ...]  # AccelGen (A1-A4): mixed prompts
    loads: tuple[float, ...] | None = None  # multiples of the stored capacity; None = each scenario's grid
    num_requests: int | None = None  # None = each scenario's
    seeds: int | None = None  # None = each scenario's
    slo: str = "both"  # "both" or "primary"
    co_variants: tuple[str, ...] = ("sglang", "sglang-mixed", "cacheopt", "cacheopt-mixed", "vllm", "sarathi")
    ag_variants: tuple[str, ...] = ("sglang", "sglang-mixed", "sglang-tuned", "sarathi", "edf", "accelgen",
                                    "cacheopt+accelgen", "oracle")  # fmt: skip
    study_loads: tuple[float, ...] = (1.0, 1.3)  # ablation / sensitivity / combined, x capacity
    ag_chunk_sizes: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096, 8192)
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
            return cls(True, ("sharegpt-a100-40gb-13b",), ("tight-chat-long-h100-8b",), loads=(0.5, 1.0, 1.3),
                       num_requests=150, seeds=1, slo="primary", study_loads=(1.3,),
                       ag_chunk_sizes=(256, 1024, 4096), ag_tiny_seeds=6, live_requests=30, live_rate=2.0)  # fmt: skip
        return cls(False, ("chat-h100-8b", "sharegpt-a100-40gb-13b", "reasoning-h100-8b-32k", "burst"),
                   ("mixed-code-conv", "tight-chat-long-h100-8b"), ag_tiny_seeds=30, live_requests=120,
                   live_rate=4.0)  # fmt: skip


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
    from eval.figures import accelgen_figs, cacheopt_figs, external_figs, studies_figs  # noqa: F401 - registration

    return FIGURES
