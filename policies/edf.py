"""``edf``: SGLang's own scheduling with the waiting queue in earliest-TTFT-deadline order.

Why: AccelGen's A2 orders the queue by least slack (plus SLO grouping, late-request demotion and slack pruning).
To attribute what A2 adds beyond plain deadline ordering, this baseline changes *only* the order of SGLang's
waiting queue and keeps everything else SGLang's, decision for decision (the ``sglang`` policy it extends):
``PrefillAdder`` accounting (``new_token_ratio``, clipped ``max_new_tokens``, page rounding), chunking (the
request whose chunked prefill is in progress continues first), ``batch_is_full``, retraction, and the batching mode
(``--enable-mixed-chunk`` or not, like ``sglang``).

Order (a stable sort of SGLang's queue order):

1. requests that already produced tokens (retracted or preempted, waiting to resume), oldest arrival first: their
   TTFT is behind them and their stalled stream counts against TBT. SGLang itself re-queues them at the back; the
   front is AccelGen's rule (its tier 1), so the comparison isolates the deadline order;
2. the rest by deadline ``arrival + TTFT SLO`` (a request without a TTFT SLO has deadline ``+inf``), then arrival.

No slack estimate, no grouping, no demotion of requests that can no longer make their deadline: that is the point
of the baseline. In the server the order reaches SGLang through the adapter's ``calc_priority`` hook (the queue is
sorted by the plan's admission order) and, like ``sglang``, the policy leaves SGLang's KV accounting in charge
(``owns_kv_accounting = False``). With ``--enable-priority-scheduling`` on as well, the deadline order replaces
SGLang's priority sort of the queue; preemption to schedule and priority retraction stay SGLang's.
"""

from __future__ import annotations

import math

from policies.base import register
from policies.sglang_baseline import SGLangPolicy
from policies.views import SchedulerView, WaitingView


def ttft_deadline_s(w: WaitingView) -> float:
    """``arrival + TTFT SLO`` in host seconds; ``+inf`` without a TTFT SLO."""
    return w.arrival_s + w.slo.ttft_ms / 1e3 if w.slo.ttft_ms is not None else math.inf


def edf_key(w: WaitingView) -> tuple[int, float, float]:
    if w.output_len > 0 or w.swapped_out:
        return (0, w.arrival_s, 0.0)
    return (1, ttft_deadline_s(w), w.arrival_s)


@register("edf")
class EDFPolicy(SGLangPolicy):
    """SGLang's admission, chunking and retraction; earliest TTFT deadline first (see module docstring)."""

    def order_queue(self, queue: list[WaitingView], view: SchedulerView) -> list[WaitingView]:
        queue.sort(key=edf_key)
        return queue
