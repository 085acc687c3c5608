"""The hook functions the plugin registers on SGLang 0.5.23 (targets listed in :data:`SCHEDULER_HOOKS`).

Each hook is a thin seam: with no adapter (``--ext-policy none``) it calls the original and changes nothing, so
the server is stock SGLang.
"""

from __future__ import annotations

import logging
from typing import Any

from policies.views import SLO, PreemptMode
from sglang_ext.adapter import preempt, swap, translate
from sglang_ext.adapter.state import Adapter

logger = logging.getLogger("sglang_ext")

_ADAPTER: Adapter | None = None

SCHED = "sglang.srt.managers.scheduler.Scheduler"
POLICY = "sglang.srt.managers.schedule_policy.SchedulePolicy"
BATCH = "sglang.srt.managers.schedule_batch.ScheduleBatch"


def adapter() -> Adapter | None:
    return _ADAPTER


def after_scheduler_init(result: Any, sched: Any, *args: Any, **kwargs: Any) -> None:
    global _ADAPTER
    from sglang_ext import config

    cfg = config.current()
    if not cfg.enabled:
        return
    swap.install(sched, cfg.cacheopt.swap_space_tokens)  # before capabilities: they declare whether swap is usable
    _ADAPTER = Adapter(cfg, translate.capabilities(sched), worker=translate.worker(sched))
    if (mgr := swap.manager()) is not None:  # restore a swapped-out request only when the plan admits it
        mgr.admit_gate = lambda rid, a=_ADAPTER: a.plan is None or rid in a.plan_rank
    from sglang_ext.adapter.prefill import PolicyPrefillAdder

    PolicyPrefillAdder.adapter = _ADAPTER


def around_prefill_raw(original: Any, sched: Any, *args: Any, **kwargs: Any) -> Any:
    a = _ADAPTER
    running_batch = kwargs.get("running_batch", args[1] if len(args) > 1 else None)
    if a is None or running_batch is None:
        return original(sched, *args, **kwargs)
    # Planned every iteration SGLang considers a prefill (also with an empty queue): stateful policies (the
    # sglang baseline's ratio decay, AccelGen's refit) see every iteration, as in the simulator.
    plan = a.make_plan(sched, running_batch)
    # A policy that owns its KV accounting preempts through its plan; a mirror of SGLang (``sglang``) leaves
    # preemption to SGLang's own machinery (its priority preemption runs inside the PrefillAdder).
    planned = plan.preempt if a.policy.owns_kv_accounting else ()
    if victims := (*planned, *preempt.debug_victims(running_batch)):
        for v in victims:  # the modes reach the ledger through on_retracted, as SGLang's own retractions do
            a.victim_modes[v.rid] = v.mode if a.caps.swap else PreemptMode.RECOMPUTE
        preempt.preempt_now(sched, running_batch, victims, a.on_retracted)  # before the PrefillAdder: KV freed
    if plan.admit and a.holds_budget():
        # SGLang's "batch is full" verdict comes from its own accounting of an earlier pass; a policy that owns
        # the KV accounting has just decided this pass's admissions, so they are tried (SGLang's budget, fed the
        # plan's numbers, still checks every one).
        running_batch.batch_is_full = False
    saved = sched.chunked_prefill_size
    if plan.token_budget is not None and saved is not None:
        # SGLang charges a chunk in whole pages: a budget below one page would admit nothing, every iteration
        page = int(getattr(sched, "page_size", 1) or 1)
        sched.chunked_prefill_size = -(-max(int(plan.token_budget), 1) // page) * page
    try:
        return original(sched, *args, **kwargs)
    finally:
        sched.chunked_prefill_size = saved
        a.plan = None
        a.plan_rank = {}


def around_calc_priority(original: Any, policy: Any, waiting_queue: list[Any], *args: Any, **kwargs: Any) -> Any:
    result = original(policy, waiting_queue, *args, **kwargs)
    a = _ADAPTER
    if a is not None and a.plan is not None:
        rank = a.plan_rank
        last = len(rank)
        waiting_queue.sort(key=lambda r: rank.get(r.rid, last))  # stable: the rest keep SGLang's order
    return result


def around_adder_class(original: Any, sched: Any, *args: Any, **kwargs: Any) -> Any:
    if _ADAPTER is None:
        return original(sched, *args, **kwargs)
    from sglang_ext.adapter.prefill import PolicyPrefillAdder

    return PolicyPrefillAdder


_RETRACTING: list[Any] = []


def around_chunk_limit(original: Any, policy: Any, chunked_req: Any, waiting_queue: Any, budget: int,
                       page_size: int, *args: Any, **kwargs: Any) -> Any:  # fmt: skip
    """The in-progress chunked prefill takes the tokens the plan gave it, through SGLang's own cap on the active
    chunk (``PrefillAdder.chunked_req_limit``, which SGLang's shortest-prefill-first policy uses to keep budget for
    short waiting requests): AccelGen's A2 may let urgent short prompts join the iteration ahead of the chunk."""
    default = original(policy, chunked_req, waiting_queue, budget, page_size, *args, **kwargs)
    a = _ADAPTER
    if a is None or a.plan is None:
        return default
    tokens = next((x.prefill_tokens for x in a.plan.admit if x.rid == chunked_req.rid), None)
    if tokens is None or tokens >= budget:
        return default
    limit = max(tokens // page_size * page_size, page_size)
    a.counters["chunk_yields"] += 1
    return limit if default is None else min(default, limit)


def around_retract_decode(original: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
    _RETRACTING.append(batch)
    try:
        result = original(batch, *args, **kwargs)
    finally:
        _RETRACTING.pop()
        if (mgr := swap.manager()) is not None:
            mgr.clear_marks()  # victims marked but not needed by SGLang keep running
    if _ADAPTER is not None:
        _ADAPTER.on_retracted(list(result[0]))
    return result


def around_retraction_order(original: Any, reqs: list[Any]) -> list[int]:
    default = original(reqs)
    if _ADAPTER is None or not _RETRACTING:
        return default
    return _ADAPTER.retraction_order(_RETRACTING[-1], reqs, default)


def around_run_batch(original: Any, sched: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
    if _ADAPTER is not None:
        _ADAPTER.on_iteration_start(batch)
    return original(sched, batch, *args, **kwargs)


def after_add_request(result: Any, sched: Any, req: Any, *args: Any, **kwargs: Any) -> None:
    if _ADAPTER is not None:
        _ADAPTER.on_arrival(req)


def after_release_kv_cache(result: Any, req: Any, *args: Any, **kwargs: Any) -> None:
    """A request's KV is released; when it finished (not a retraction), its exact output length is final."""
    if _ADAPTER is not None and req.finished():
        _ADAPTER.on_finished(req)


def after_sampling_verify(result: Any, params: Any, *args: Any, **kwargs: Any) -> None:
    """Per-request SLOs are validated where SGLang validates sampling params: a ValueError here is an HTTP 400
    naming the field."""
    custom = getattr(params, "custom_params", None) or {}
    if not isinstance(custom, dict):
        return
    for key in ("ttft_slo_ms", "tbt_slo_ms"):
        if key not in custom or custom[key] is None:
            continue
        value = custom[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"custom_params.{key} must be a number of milliseconds, got {value!r}")
        if not value > 0:
            raise ValueError(f"custom_params.{key} must be > 0 ms, got {value!r}")
    SLO(custom.get("ttft_slo_ms"), custom.get("tbt_slo_ms"))


SCHEDULER_HOOKS = (
    (f"{SCHED}.__init__", after_scheduler_init, "AFTER"),
    (f"{SCHED}._get_new_batch_prefill_raw", around_prefill_raw, "AROUND"),
    (f"{SCHED}.get_prefill_adder_class", around_adder_class, "AROUND"),
    (f"{SCHED}._add_request_to_queue", after_add_request, "AFTER"),
    (f"{SCHED}.run_batch", around_run_batch, "AROUND"),
    (f"{POLICY}.calc_priority", around_calc_priority, "AROUND"),
    (f"{POLICY}.shortest_prefill_chunk_limit", around_chunk_limit, "AROUND"),
    (f"{BATCH}.retract_decode", around_retract_decode, "AROUND"),
    (f"{BATCH}._get_decode_retraction_order", around_retraction_order, "AROUND"),
    ("sglang.srt.sampling.sampling_params.SamplingParams.verify", after_sampling_verify, "AFTER"),
    ("sglang.srt.mem_cache.common.release_kv_cache", after_release_kv_cache, "AFTER"),
    *swap.SWAP_HOOKS,
)
