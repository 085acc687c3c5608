"""Workloads shared by the simulator and the load generator: real traces, arrivals, SLO classes.

(Interface defined first so both hosts agree; loaders follow below.)
"""

from __future__ import annotations

from dataclasses import dataclass


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
    prefix_hash_ids: tuple[int, ...] = ()  # Mooncake: one id per 512-token block; equal ids = shared prefix
    prompt_text: str | None = None
