"""The simulator's request, and the only code that turns it into policy views.

Hidden truth is enforced here, in the types: the true output length lives in the slot ``_finish_len`` and only
:func:`oracle_waiting_view` / :func:`oracle_running_view` read it, to build the ``Oracle*View`` records that the
host hands solely to policies registered with ``needs_oracle=True`` (A4). The plain view builders cannot leak
it: ``WaitingView``/``RunningView`` have no field for it.
"""

from __future__ import annotations

from collections.abc import Hashable

from eval.metrics import RequestRecord
from eval.workloads import RequestSpec
from host.core import AllocationFields
from policies.views import SLO, LengthEstimate, OracleRunningView, OracleWaitingView, RunningView, WaitingView

WAITING, PREFILLING, RUNNING, DONE = "waiting", "prefilling", "running", "done"


class SimRequest:
    """Mutable host-side state of one request. ``kv_used`` counts every token of KV it holds (its locked radix
    prefix ``shared_len`` included); the rest, ``kv_used - shared_len``, is private to it."""

    __slots__ = (
        "_finish_len",
        "arrival_s",
        "block_lens",
        "blocks",
        "cached_len",
        "estimate",
        "host_tokens",
        "kv_used",
        "match_epoch",
        "max_new_tokens",
        "nodes",
        "output_len",
        "prefilled_len",
        "priority",
        "prompt_len",
        "record",
        "rid",
        "shared_len",
        "slo",
        "state",
        "version",
        "view",
        "view_version",
    )

    def __init__(
        self,
        spec: RequestSpec,
        max_new_tokens: int,
        blocks: tuple[Hashable, ...],
        block_lens: tuple[int, ...],
        estimate: LengthEstimate | None,
    ) -> None:
        self.rid = spec.rid
        self.arrival_s = spec.arrival_s
        self.prompt_len = spec.prompt_len
        self.max_new_tokens = max_new_tokens
        self._finish_len = max(1, min(spec.output_len, max_new_tokens))
        self.slo = SLO(spec.ttft_slo_ms, spec.tbt_slo_ms)
        self.blocks = blocks
        self.block_lens = block_lens
        self.estimate = estimate
        self.record = RequestRecord(
            rid=spec.rid,
            arrival_s=spec.arrival_s,
            prompt_len=spec.prompt_len,
            max_new_tokens=spec.max_new_tokens,
            target_output_len=spec.output_len,
            ttft_slo_ms=spec.ttft_slo_ms,
            tbt_slo_ms=spec.tbt_slo_ms,
            slo_class=spec.slo_class,
        )
        self.state = WAITING
        self.output_len = 0
        self.kv_used = 0
        self.shared_len = 0
        self.nodes: list = []  # locked radix nodes, root first
        self.prefilled_len = 0
        self.cached_len = 0
        self.host_tokens = 0  # KV held in host memory after a swap-out
        self.match_epoch = -1
        self.version = 0
        self.view: WaitingView | RunningView | None = None
        self.view_version = -1
        self.priority: int | None = None  # SGLang's request priority (from the SLO class; see engine._arrive)

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.output_len

    def done_after_token(self) -> bool:
        """True when the token just produced is the last one (true length or the visible cap)."""
        return self.output_len >= self._finish_len

    def first_token_s(self) -> float | None:
        t = self.record.token_times_s
        return t[0] if t else None


def _waiting_fields(r: SimRequest, a: AllocationFields | None) -> tuple:
    """WaitingView's fields in order (positional: this runs for every waiting request every iteration). ``a``: the
    ledger's fields of a request mid-prefill (None before admission)."""
    t = r.record.token_times_s
    return (r.rid, r.arrival_s, r.prompt_len, r.max_new_tokens, r.slo, r.cached_len, r.output_len,
            r.prefilled_len, r.estimate, r.host_tokens > 0, t[0] if t else None,
            a.kv_allocated if a is not None else 0, r.priority)  # fmt: skip


def _running_fields(r: SimRequest, a: AllocationFields) -> tuple:
    """RunningView's fields in order. ``cached_len`` is the hit it was admitted with: shared with others, so a
    preemption may not free it. ``a``: its ledger fields (allocation, loans, reserve draws) from the host core."""
    t = r.record.token_times_s
    return (r.rid, r.arrival_s, r.prompt_len, r.output_len, r.max_new_tokens, r.kv_used, a.kv_allocated, r.slo,
            r.estimate, t[-1] if t else None, t[0] if t else None, r.cached_len, a.kv_lent, a.lender,
            a.reserve_drawn, r.priority)  # fmt: skip


def waiting_view(r: SimRequest, a: AllocationFields | None = None) -> WaitingView:
    return WaitingView(*_waiting_fields(r, a))


def running_view(r: SimRequest, a: AllocationFields) -> RunningView:
    return RunningView(*_running_fields(r, a))


def oracle_waiting_view(r: SimRequest, a: AllocationFields | None = None) -> OracleWaitingView:
    """The same view plus the true output length: only for policies with ``needs_oracle`` (A4)."""
    return OracleWaitingView(*_waiting_fields(r, a), r._finish_len)


def oracle_running_view(r: SimRequest, a: AllocationFields) -> OracleRunningView:
    return OracleRunningView(*_running_fields(r, a), r._finish_len)
