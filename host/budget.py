"""The KV budget a plan's admissions are executed under, and how much KV a decode step must free.

Why here: the SGLang server checks every admission against its ``PrefillBudget``
(``sglang/srt/mem_cache/prefill_budget.py``): a request is admitted iff ``total_tokens < remaining_total`` with
``remaining_total = available + evictable - total_offset``, and the commit raises ``total_offset`` by
``ceil_page(extend) + page + max_new`` and ``current_offset`` by ``ceil_page(extend) + page``; the pass stops when
``remaining_total <= 0`` or ``remaining_current <= 0`` (``has_capacity``). A policy that owns its KV accounting
tells the host, per plan, how much free KV it keeps back for the running requests' growth and the global reserve
(``IterationPlan.kv_hold``, SGLang's ``total_offset`` before the pass) and what each admission takes
(``Admit.budget_tokens``, SGLang's ``total_tokens``). The adapter feeds exactly these numbers into SGLang's own
budget; the simulator runs the same rule through :class:`PrefillBudgetRule`. So a plan is executed by the same rule
in both hosts, the reserve is held in the engine's budget, and a disagreement shows up as a counted refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from policies.common import ceil_page
from policies.common import decode_need as _decode_need
from policies.views import RunningView


def decode_need(running: Iterable[RunningView], page_size: int) -> int:
    """KV tokens the next decode step allocates: one page per request whose KV ends on a page boundary."""
    return _decode_need(running, page_size)


def kv_to_free(decode_need_tokens: int, available_tokens: int) -> int:
    """Tokens a decode step that does not fit must free (at least one: the engine retracts when it was asked to)."""
    return max(decode_need_tokens - available_tokens, 1)


def default_budget_tokens(extend: int, reserve_out: int, page_size: int) -> int:
    """SGLang's ``total_tokens`` of one admission: its extend, its reserved output, and one page of overhead."""
    return extend + max(reserve_out, 0) + page_size


class PrefillBudgetRule:
    """SGLang's ``PrefillBudget`` for one prefill pass (single full-attention pool), with ``available`` read live
    (locking a prefix for an admission makes it leave the evictable pool, as in the engine)."""

    __slots__ = ("_available", "current_offset", "page_size", "total_offset")

    def __init__(self, available: Callable[[], int], hold: int, page_size: int, mixed_decode_tokens: int = 0) -> None:
        self._available = available
        self.page_size = page_size
        self.total_offset = hold + mixed_decode_tokens
        self.current_offset = mixed_decode_tokens

    @property
    def remaining_total(self) -> int:
        return self._available() - self.total_offset

    @property
    def remaining_current(self) -> int:
        return self._available() - self.current_offset

    def has_capacity(self) -> bool:
        return self.remaining_total > 0 and self.remaining_current > 0

    def check(self, total_tokens: int) -> bool:
        return total_tokens < self.remaining_total

    def reserve(self, extend: int, max_new: int) -> None:
        immediate = ceil_page(extend, self.page_size) + self.page_size
        self.total_offset += immediate + max(max_new, 0)
        self.current_offset += immediate
