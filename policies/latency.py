"""Injected time: the latency model interface every policy and the simulator use (Vidur-style).

An iteration's time is predicted from its shape, not measured by the policy. The same class serves three
sources: GPU profiles derived from FLOPs/bytes (eval/profiles), a fit to the tiny CPU server's measured
iterations, and AccelGen's online refit from the server's own measurements (A1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BatchShape:
    """What an iteration computes: prefill chunks (new tokens, tokens of context already cached before them)
    and decodes (one token each, with their context lengths)."""

    prefill: tuple[tuple[int, int], ...] = ()  # (new_tokens, context_before)
    decode_ctx: tuple[int, ...] = ()

    @property
    def new_tokens(self) -> int:
        return sum(n for n, _ in self.prefill) + len(self.decode_ctx)


class LatencyModel(Protocol):
    """Predicts seconds for one forward iteration and for host<->device KV transfer."""

    def iteration_s(self, shape: BatchShape) -> float: ...

    def swap_s(self, tokens: int) -> float:
        """One-way KV transfer time for ``tokens`` tokens (device<->host)."""
        ...

    def prefill_s(self, tokens: int, context_before: int = 0) -> float:
        """Time to prefill ``tokens`` new tokens after ``context_before`` cached ones, alone in a batch."""
        ...
