"""KV admission as a pluggable stage, so AccelGen's batching and CacheOPT's KV management compose through
one interface (the combined ``cacheopt+accelgen`` mode) instead of special cases.

A batching policy (AccelGen, the baselines) decides *order* and *token budget*; it asks a :class:`KVGate`
whether each candidate fits and how much KV it is accounted for. The default :class:`PhysicalKVGate` admits
against physically available tokens; CacheOPT provides a gate that admits against estimated demand with reuse,
top-ups and a reserve (C1-C3) and chooses victims (C4-C5).
"""

from __future__ import annotations

from typing import Protocol

from policies.views import Admit, Preempt, SchedulerView, WaitingView


class KVGate(Protocol):
    def begin(self, view: SchedulerView) -> None:
        """Start one planning pass over ``view`` (resets the pass's tentative admissions)."""

    def admit(self, req: WaitingView, prefill_tokens: int) -> Admit | None:
        """Admit ``req`` with ``prefill_tokens`` this iteration if its KV fits; commits it within this pass."""

    def topups(self) -> tuple[tuple[str, int], ...]:
        """Allocation extensions decided in this pass (rid, tokens)."""

    def victims(self, view: SchedulerView, tokens_needed: int) -> tuple[Preempt, ...]:
        """Preemption order when ``tokens_needed`` more tokens are needed than are free."""


class PhysicalKVGate:
    """Admit while the prompt (and one decode token) fits in what is physically available; no reservation."""

    def __init__(self) -> None:
        self._left = 0

    def begin(self, view: SchedulerView) -> None:
        self._left = view.pool.available_tokens - len(view.running)

    def admit(self, req: WaitingView, prefill_tokens: int) -> Admit | None:
        need = prefill_tokens + 1
        if need > self._left:
            return None
        self._left -= need
        return Admit(req.rid, prefill_tokens, reserve_tokens=need)

    def topups(self) -> tuple[tuple[str, int], ...]:
        return ()

    def victims(self, view: SchedulerView, tokens_needed: int) -> tuple[Preempt, ...]:
        """vLLM's rule: preempt the most recently arrived request first (recompute)."""
        out: list[Preempt] = []
        freed = 0
        for r in sorted(view.running, key=lambda r: r.arrival_s, reverse=True):
            if freed >= tokens_needed:
                break
            out.append(Preempt(r.rid))
            freed += r.kv_used - r.cached_len
        return tuple(out)
