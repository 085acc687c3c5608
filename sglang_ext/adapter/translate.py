"""Translate SGLang's scheduler state into the policies' views. Reads only; decides nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from host.core import AllocationFields
from policies.capabilities import HostCapabilities
from policies.latency import BatchShape
from policies.views import SLO, LengthEstimate, PoolView, RunningView, SchedulerView, WaitingView

SLO_KEYS = ("ttft_slo_ms", "tbt_slo_ms")


def capabilities(sched: Any) -> HostCapabilities:
    """What this SGLang scheduler offers a policy, read from its own settings. Swap (C5) is available when the
    swap manager was installed for this scheduler (:func:`sglang_ext.adapter.swap.install`)."""
    from sglang_ext.adapter import swap

    model_config = getattr(sched, "model_config", None)
    running = getattr(sched, "max_running_requests", None)
    return HostCapabilities(
        page_size=int(getattr(sched, "page_size", 1) or 1),
        chunked_prefill_size=getattr(sched, "chunked_prefill_size", None) or None,
        max_prefill_tokens=int(getattr(sched, "max_prefill_tokens", None) or 16384),
        max_running_requests=int(running) if running else None,
        mixed_chunk=bool(getattr(sched, "is_mixed_chunk", False)),
        swap=swap.manager() is not None,
        measures_iterations=True,
        context_len=getattr(model_config, "context_len", None),
    )


def request_slo(req: Any, default: SLO) -> SLO:
    """Per-request SLOs travel in ``sampling_params.custom_params`` (validated at the HTTP layer)."""
    params = getattr(req.sampling_params, "custom_params", None) or {}
    ttft = params.get("ttft_slo_ms")
    tbt = params.get("tbt_slo_ms")
    return SLO(
        ttft_ms=float(ttft) if ttft is not None else default.ttft_ms,
        tbt_ms=float(tbt) if tbt is not None else default.tbt_ms,
    )


def waiting_view(
    req: Any,
    arrival_s: float,
    slo: SLO,
    estimate: LengthEstimate | None,
    first_token_s: float | None,
    chunked: bool = False,
    kv_allocated: int = 0,
    cached_len: int | None = None,
    swapped_out: bool = False,
) -> WaitingView:
    """``chunked``: the request whose chunked prefill is in progress; SGLang keeps it out of the waiting queue and
    its ``extend_end`` marks how far the last chunk went (``init_next_round_input`` has not run yet).
    ``kv_allocated``: its cached prefix + ledger allocation when it was already admitted (0 otherwise)."""
    prefilled = int(req.extend_end or 0) if chunked else 0
    return WaitingView(
        rid=req.rid,
        arrival_s=arrival_s,
        prompt_len=len(req.origin_input_ids),
        max_new_tokens=int(req.sampling_params.max_new_tokens or 0),
        slo=slo,
        cached_len=cached_len if cached_len is not None else int(getattr(req, "prefix_len", 0) or 0),
        output_len=len(req.output_ids),
        prefilled_len=prefilled,
        estimate=estimate,
        first_token_s=first_token_s,
        kv_allocated=kv_allocated,
        swapped_out=swapped_out,
        priority=getattr(req, "priority", None),
    )


def running_view(
    req: Any,
    arrival_s: float,
    slo: SLO,
    estimate: LengthEstimate | None,
    alloc: AllocationFields,
    last_token_s: float | None,
    first_token_s: float | None,
) -> RunningView:
    """``alloc``: the host ledger's fields for it (``HostCore.allocation``)."""
    prompt = len(req.origin_input_ids)
    out = len(req.output_ids)
    used = kv_in_use(req)
    return RunningView(
        rid=req.rid,
        arrival_s=arrival_s,
        prompt_len=prompt,
        output_len=out,
        max_new_tokens=int(req.sampling_params.max_new_tokens or 0),
        kv_used=used,
        kv_allocated=alloc.kv_allocated,
        slo=slo,
        estimate=estimate,
        last_token_s=last_token_s,
        first_token_s=first_token_s,
        cached_len=alloc.cached if alloc.cached is not None else int(getattr(req, "prefix_len", 0) or 0),
        kv_lent=alloc.kv_lent,
        lender=alloc.lender,
        reserve_drawn=alloc.reserve_drawn,
        priority=getattr(req, "priority", None),
    )


def kv_in_use(req: Any) -> int:
    """KV tokens a running request holds: its prompt and every output token but the newest, whose KV the next
    decode step writes (SGLang's ``kv_committed_len``)."""
    return len(req.origin_input_ids) + max(len(req.output_ids) - 1, 0)


def pool_view(allocator: Any, tree_cache: Any, reserve_tokens: int = 0) -> PoolView:
    evictable = tree_cache.evictable_size() if tree_cache is not None else 0
    return PoolView(
        capacity_tokens=int(allocator.size),
        free_tokens=int(allocator.available_size()),
        evictable_tokens=int(evictable),
        page_size=int(getattr(allocator, "page_size", 1)),
        reserve_tokens=reserve_tokens,
    )


def scheduler_view(
    now_s: float,
    waiting: list[WaitingView],
    running: list[RunningView],
    pool: PoolView,
    arrival_rate: float,
    chunked_rid: str | None,
) -> SchedulerView:
    return SchedulerView(
        now_s=now_s,
        waiting=tuple(waiting),
        running=tuple(running),
        pool=pool,
        arrival_rate=arrival_rate,
        chunked_rid=chunked_rid,
    )


def index_by_rid(reqs: list[Any]) -> Mapping[str, int]:
    return {r.rid: i for i, r in enumerate(reqs)}


def batch_shape(batch: Any) -> BatchShape:
    """The shape of a ScheduleBatch: prefill chunks (new tokens, cached before) or decodes (context lengths). In a
    mixed batch, decodes run as one-token extends and are counted as decodes."""
    if batch.forward_mode.is_decode():
        return BatchShape(decode_ctx=tuple(len(r.origin_input_ids) + len(r.output_ids) for r in batch.reqs))
    prefill: list[tuple[int, int]] = []
    decode: list[int] = []
    extend = getattr(batch, "extend_lens", None)  # per request, set by prepare_for_extend / mix_with_running
    prefix = getattr(batch, "prefix_lens", None)
    for i, r in enumerate(batch.reqs):
        n = int(extend[i]) if extend is not None and i < len(extend) else int(getattr(r, "extend_len", 0) or 0)
        before = int(prefix[i]) if prefix is not None and i < len(prefix) else int(getattr(r, "prefix_len", 0) or 0)
        if n == 1 and r.output_ids:
            decode.append(before + 1)
        elif n > 0:
            prefill.append((n, before))
    return BatchShape(prefill=tuple(prefill), decode_ctx=tuple(decode))
