"""SGLang 0.5.23's priority scheduling (``--enable-priority-scheduling``), mirrored for the ``sglang`` baseline.

Why: a user who runs SGLang with SLO classes can map each class to a request priority and turn this on; issue 12
asks that AccelGen (A2: least-slack priority) be compared against that, so it must be SGLang's rule and not a
cousin. Sources (installed wheel, ``sglang/srt/``):

* ``managers/scheduler.py`` ``_set_or_validate_priority``: a request without a priority gets the lowest one
  (``sys.maxsize`` when low values go first, else ``-sys.maxsize - 1``).
* ``managers/schedule_policy.py`` ``SchedulePolicy._sort_by_priority_and_fcfs`` (fcfs only; SGLang refuses lpm with
  priority scheduling): the waiting queue sorted by ``(priority * sign, wait_queue_entry_time)``, ``sign = 1``
  when low values go first (``--schedule-low-priority-values-first``), else ``-1``.
* ``managers/scheduler.py`` ``_get_new_batch_prefill_raw``: with preemption on (the default;
  ``--disable-priority-preemption`` turns it off) ``batch_is_full`` is cleared at every pass, and when the request
  slots are full (``len(can_run_list) >= max_running_requests - running``) each further candidate must first win
  ``PrefillAdder.preempt_to_schedule``: running requests sorted by ``(priority * -sign, -wait_queue_entry_time)``
  (lowest priority, then most recently queued, first) are taken while their priority is more than
  ``--priority-scheduling-preemption-threshold`` below the candidate's, until the offsets they give back
  (``min(max_new - out, CLIP) * ratio`` each) cover ``extend + min(max_new, CLIP) - remaining_total``; then they are
  released and re-queued. Preemption is thus a request-slot mechanism: a full KV pool alone never triggers it.
* ``managers/schedule_batch.py`` ``_get_decode_retraction_order`` with ``--retraction-policy priority``: the keep-order
  key becomes ``(priority * -sign, len(output), -len(input))``.

What ``preempt_to_schedule`` charges the candidate is ``len(req.full_untruncated_fill_ids) - req.prefix_len``, read
*before* the loop calls ``req.init_next_round_input`` for it: the token list as of the request's last
``init_next_round_input`` (or ``refresh_fill_ids`` in a mixed step) and the prefix of its last match (0 after a
retraction). A request the loop never reached has an empty list, so its prompt is not counted at all: SGLang then
preempts for a request that ``add_one_req`` may still refuse (the preempted requests stay preempted). The mirror
keeps the same two numbers per request (:meth:`PriorityRules.initialized`, :meth:`refreshed`, :meth:`requeued`).

``wait_queue_entry_time`` is not in the views either: :class:`PriorityRules` keeps an equivalent counter, stamped
when a request is first seen in the waiting queue (in the host's queue order) and again whenever it is retracted or
preempted (SGLang re-stamps a re-queued request). Divergence: SGLang re-queues the requests one preemption releases
in the iteration order of a Python ``set`` (arbitrary); the mirror stamps them in preemption order.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

from policies.config import SGLangBaselineConfig
from policies.views import RunningView, SchedulerView, WaitingView


def running_offset(r: RunningView, ratio: float, clip: int) -> float:
    """``PrefillAdder._get_running_request_total_token_offset``: the KV SGLang still expects a running request
    to take."""
    return min(r.max_new_tokens - r.output_len, clip) * ratio


class PriorityRules:
    """SGLang's priority order, preemption-to-schedule and priority retraction key, with queue-entry stamps."""

    def __init__(self, cfg: SGLangBaselineConfig) -> None:
        low_first = cfg.schedule_low_priority_values_first
        self.sign = 1 if low_first else -1
        self.default = sys.maxsize if low_first else -sys.maxsize - 1
        self.threshold = cfg.priority_scheduling_preemption_threshold
        self.preemption = not cfg.disable_priority_preemption
        self._entry: dict[str, int] = {}
        self._clock = 0
        self._fill: dict[str, int] = {}  # len(full_untruncated_fill_ids) as SGLang last set it
        self._prefix: dict[str, int] = {}  # req.prefix_len as SGLang last set it

    def value(self, req: WaitingView | RunningView) -> int:
        return req.priority if req.priority is not None else self.default

    # --- queue-entry stamps (SGLang's wait_queue_entry_time) --------------------------------------------------
    def see(self, view: SchedulerView) -> None:
        for w in view.waiting:
            if w.rid not in self._entry:
                self._clock += 1
                self._entry[w.rid] = self._clock

    def requeued(self, rids: Iterable[str]) -> None:
        """Retracted or preempted: a new queue-entry stamp; ``reset_for_retract`` zeroes the prefix."""
        for rid in rids:
            self._clock += 1
            self._entry[rid] = self._clock
            self._prefix[rid] = 0

    def initialized(self, req: WaitingView, with_cache: bool = True) -> None:
        """SGLang ran ``init_next_round_input`` on ``req`` (the prefix is re-matched only with the tree cache)."""
        self._fill[req.rid] = req.seq_len
        if with_cache:
            self._prefix[req.rid] = req.cached_len

    def refreshed(self, running: Iterable[RunningView]) -> None:
        """A mixed step's ``refresh_fill_ids`` on the decoding requests."""
        for r in running:
            self._fill[r.rid] = r.seq_len

    def forget(self, rid: str) -> None:
        for d in (self._entry, self._fill, self._prefix):
            d.pop(rid, None)

    # --- rules -----------------------------------------------------------------------------------------------
    def sort_waiting(self, queue: list[WaitingView]) -> None:
        """``_sort_by_priority_and_fcfs``."""
        entry = self._entry
        queue.sort(key=lambda w: (self.value(w) * self.sign, entry.get(w.rid, 0)))

    def retraction_key(self, r: RunningView) -> tuple[int, int, int]:
        return (self.value(r) * -self.sign, r.output_len, -r.prompt_len)

    def preempt_for(
        self, req: WaitingView, running: Sequence[RunningView], rem_total: float, ratio: float, clip: int
    ) -> list[RunningView] | None:
        """``PrefillAdder.preempt_to_schedule``: the running requests to release so ``req`` can be scheduled, or
        None when the threshold or the freed offsets do not allow it."""
        entry = self._entry
        order = sorted(running, key=lambda r: (self.value(r) * -self.sign, -entry.get(r.rid, 0)))
        need = self._fill.get(req.rid, 0) - self._prefix.get(req.rid, 0) + min(req.max_new_tokens, clip) - rem_total
        mine = self.value(req)
        chosen: list[RunningView] = []
        for r in order:
            if (mine - self.value(r)) * -self.sign <= self.threshold:
                break
            chosen.append(r)
            need -= running_offset(r, ratio, clip)
            if need <= 0:
                break
        if not chosen or need > 0:
            return None
        return chosen
