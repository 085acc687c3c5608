"""Plan preemptions executed in SGLang: ``IterationPlan.preempt`` retracts running requests before the PrefillAdder
runs, so their KV is free for this iteration's admissions (CacheOPT C4 victims with C5's mode; vLLM's
newest-first recompute preemption).

Why here and not in ``retract_decode``: SGLang retracts only when the next decode step does not fit; a plan may
preempt earlier, e.g. to make room for an urgent request. The mechanics are SGLang's own, as in its priority
preemption (``PrefillAdder.preempt_to_schedule``): ``ScheduleBatch.release_req`` (which swaps the KV out first when
the victim is marked SWAP, see :mod:`sglang_ext.adapter.swap`), ``filter_batch``, and re-queueing through
``Scheduler._add_request_to_queue(req, is_retracted=True)``. Requests already finished in the batch (overlap
scheduler: their KV is freed, they leave the batch next step) are skipped, as SGLang does.

Debug knob, for tests: ``SGLANG_EXT_DEBUG_PREEMPT="<rid>:<after_tokens>:<swap|recompute>[,...]"`` makes the
adapter preempt the running request ``rid`` once, in that mode, as soon as it has ``after_tokens`` output tokens —
a deterministic swap (or recompute) round trip without arranging KV pressure.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from policies.views import Preempt, PreemptMode
from sglang_ext.adapter import swap

logger = logging.getLogger("sglang_ext")

DEBUG_ENV = "SGLANG_EXT_DEBUG_PREEMPT"


def preempt_now(
    sched: Any,
    running_batch: Any,
    victims: Iterable[Preempt],
    on_retracted: Callable[[list[Any]], None] | None = None,
) -> int:
    """Retract ``victims`` (running requests, each with its mode) now; ``on_retracted`` is told which requests
    went back to the waiting queue (the adapter's ``on_retracted``, as after SGLang's own retractions). Returns
    the tokens this made available to admission (free + evictable, as SGLang's PrefillAdder counts them);
    requests not running are ignored."""
    modes = {v.rid: v.mode for v in victims}
    reqs = running_batch.reqs
    chosen = [i for i, r in enumerate(reqs)
              if r.rid in modes and not r.finished() and r.kv.holds_kv and r.beam_group is None]  # fmt: skip
    if not chosen:
        return 0
    alloc, tree = sched.token_to_kv_pool_allocator, sched.tree_cache
    before = alloc.available_size() + tree.evictable_size()
    mgr = swap.manager()
    if mgr is not None:
        mgr.clear_marks()
        for i in chosen:
            mgr.mark(reqs[i].rid, modes[reqs[i].rid])
    released = []
    try:
        for n, i in enumerate(chosen, start=1):
            running_batch.release_req(i, len(reqs) - n)
            released.append(reqs[i])
    finally:
        if mgr is not None:
            mgr.clear_marks()
    gone = set(chosen)
    running_batch.filter_batch(keep_indices=[i for i in range(len(reqs)) if i not in gone])
    running_batch.batch_is_full = False
    for req in released:
        sched._add_request_to_queue(req, is_retracted=True)
    if on_retracted is not None:
        on_retracted(released)
    freed = alloc.available_size() + tree.evictable_size() - before
    if mgr is not None:
        mgr.stats.plan_preempts += len(released)
        mgr.stats.plan_preempt_tokens_freed += freed
    logger.info("sglang_ext plan preemption: %s, tokens freed %d",
                [(r.rid, modes[r.rid].value) for r in released], freed)  # fmt: skip
    return freed


@dataclass
class DebugPreempt:
    rid: str
    after_tokens: int
    mode: PreemptMode
    fired: bool = False


def parse_debug(text: str) -> list[DebugPreempt]:
    """``rid:after_tokens:mode`` items, comma-separated; a bad item is one line naming the variable."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.rsplit(":", 2)
        try:
            rid, after, mode = parts
            out.append(DebugPreempt(rid, int(after), PreemptMode(mode)))
        except ValueError:
            raise ValueError(f"{DEBUG_ENV}: expected '<rid>:<after_tokens>:<swap|recompute>', got {item!r}") from None
    return out


_DEBUG: list[DebugPreempt] | None = None


def debug_victims(running_batch: Any) -> tuple[Preempt, ...]:
    """The knob's victims due this iteration (each fires once)."""
    global _DEBUG
    if _DEBUG is None:
        _DEBUG = parse_debug(os.environ.get(DEBUG_ENV, ""))
    if not _DEBUG:
        return ()
    out = []
    for d in _DEBUG:
        if d.fired:
            continue
        for r in running_batch.reqs:
            if r.rid == d.rid and len(r.output_ids) >= d.after_tokens and not r.finished():
                d.fired = True
                out.append(Preempt(d.rid, d.mode))
    return tuple(out)
