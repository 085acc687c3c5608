"""``sglang``: SGLang 0.5.23's own scheduling, reproduced decision for decision from its source.

Why: every ratio the project reports for CacheOPT (C1-C5) and AccelGen (A1-A3) is against this baseline, so it
must be SGLang's behaviour and not a plausible cousin — in both of SGLang's batching modes, since users run stock
SGLang with ``--enable-mixed-chunk`` too (issue 10). Sources (installed wheel, ``sglang/srt/``):

* ``managers/scheduler_components/new_token_ratio_tracker.py``: ``init = min(0.7 * conservativeness, 1)``,
  ``min = init * 0.14``, ``decay = (init - min) / 600`` per decode step without retraction; after a retraction
  ``(sum(out) + 20 * n) / (sum(max_new) + 1)`` over the requests kept; ``reset`` when the scheduler is idle.
* ``managers/schedule_policy.py`` ``PrefillAdder`` / ``mem_cache/prefill_budget.py`` ``PrefillBudget``:
  ``remaining_total = available + evictable - sum_running(min(max_new - out, CLIP) * ratio) - admitted``;
  a request is admitted iff ``extend + min(max_new - out, CLIP) + page < remaining_total``; it is then charged
  ``ceil_page(extend) + page + min(max_new, CLIP)`` (0 instead of ``max_new`` for a truncated chunk); the pass
  stops on ``NO_TOKEN`` or when the chunk/input budgets are spent. The chunked request continues first with
  ``min(rem_chunk, remaining_total)`` tokens (the whole ``rem_chunk`` when that is not positive). The prefix a
  candidate matched is pinned (not evictable).
* ``managers/scheduler.py`` ``get_next_batch_to_run`` / ``_get_new_batch_prefill_raw``: a formed prefill batch runs
  first; with nothing admitted, ``update_running_batch`` runs the decode step (``check_decode_mem``, retraction or
  the ratio's decay). ``batch_is_full`` is set by ``NO_TOKEN`` (and full request slots) and blocks admission until a
  request leaves; it lives on the running batch object, so it is lost whenever the formed batch *becomes* the
  running batch (the running batch was empty, or the step was mixed).
* Mixed chunk (``--enable-mixed-chunk``, ``is_mixed_chunk``): the adder gets ``num_mixed_decode_tokens`` = the
  running batch size, taken off ``rem_chunk`` and ``rem_input`` and added to both offsets (one token per decode).
  After ``prepare_for_extend`` allocated the prefill, the decodes join (``mix_with_running``, a *mixed* step:
  ``run_decodes=True``) if ``check_decode_mem`` passes; otherwise they sit this step out — a mixed step never
  retracts and never decays the ratio (``update_running_batch`` does not run). Without an admission the step is an
  ordinary decode step, retraction included. ``needs_mixed_chunk(config)`` is ``config.sglang.mixed_chunk``; a host
  that runs mixed chunk anyway (``HostCapabilities.mixed_chunk``) gets the mixed rules too.
* ``managers/schedule_batch.py`` ``retract_decode``: victims in reverse of the keep-order
  ``sorted(key=(len(output), -len(input)), reverse=True)``, at least one, never the last, until the next decode
  step fits in ``available + evictable`` (a victim frees its pages).
* Priority scheduling (``--enable-priority-scheduling``): see :mod:`policies.sglang_priority`.

The chunk is the host's (``HostCapabilities.chunked_prefill_size``: the device default SGLang picks, passed by the
scenario or read from the server), else ``config.sglang.chunked_prefill_size``.

Divergences (documented, all small): ``ignore_eos`` requests (ratio 1.0) do not exist in the views; the pin of a
candidate's matched prefix assumes that prefix is evictable (unreferenced), which over-pins when a running request
shares it; LPM sorts the host's queue order each pass (SGLang sorts its queue in place, so ties can keep an older
order) and does not model the in-batch-prefix deprioritisation; ``max_running_requests`` (request slots) is an
option, unbounded by default; the overlap scheduler's one-step lag is not modelled; ties in the retraction key
follow the host's running order (SGLang puts a mixed step's new requests before the old ones). Two cases where
SGLang 0.5.23 itself breaks in mixed mode are made to degrade instead: when the decodes fill the whole chunk
(running >= chunk) SGLang computes a non-positive chunk for the in-progress prefill, and when the decodes of a
chunked prefill's earlier steps used the KV its next chunk is charged against, ``prepare_for_extend`` raises
"Out of memory" (the scheduler dies). The mirror then shrinks the chunk to the free KV, or runs a decode step.

State across iterations lives here: the ratio (its per-decode decay is applied at the next ``plan``, since the
host runs the decode between two plans; ``choose_victims`` replaces it) and ``batch_is_full`` (cleared by
``on_finish`` / a retraction / an empty or mixed batch). ``tests/test_sglang_faithful.py`` (and
``tests/test_baselines_sglang_priority.py`` for priority scheduling) replays request scripts through SGLang's real
classes on CPU (page 1 and 16, radix cache off and on, mixed chunk off and on) and checks identical prefill/mixed
batches, chunk sizes, retractions and preemptions; ``tests/test_adapter_faithful.py`` does the same through the
plugin's hooks.
"""

from __future__ import annotations

from policies.base import Policy, register
from policies.capabilities import HostCapabilities
from policies.common import ceil_page, decode_need
from policies.config import ExtConfig
from policies.latency import LatencyModel
from policies.sglang_priority import PriorityRules, running_offset
from policies.views import Admit, IterationPlan, Preempt, RunningView, SchedulerView, WaitingView

# SGLang 0.5.23 environment defaults (sglang/srt/environ.py) and server_args defaults.
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO_FACTOR = 0.14
NEW_TOKEN_RATIO_DECAY_STEPS = 600
RETRACT_DECODE_STEPS = 20
CLIP_MAX_NEW_TOKENS = 4096
MAX_PREFILL_TOKENS = 16384
LPM_QUEUE_LIMIT = 128  # WAITING_QUEUE_PREFIX_MATCH_MAX: above it LPM falls back to FCFS

_CONTINUE, _NO_TOKEN, _OTHER = 0, 1, 2
_EMPTY = IterationPlan()


class NewTokenRatio:
    """The admission-estimate ratio SGLang keeps across iterations (its ``NewTokenRatioTracker``)."""

    __slots__ = ("current", "decay", "init", "min")

    def __init__(self, conservativeness: float, init_ratio: float, min_factor: float, decay_steps: int) -> None:
        self.init = min(init_ratio * conservativeness, 1.0)
        self.min = min(self.init * min_factor, 1.0)
        self.decay = (self.init - self.min) / decay_steps
        self.current = self.init

    def decay_step(self) -> None:
        self.current = max(self.current - self.decay, self.min)

    def reset(self) -> None:
        self.current = self.init


@register("sglang")
class SGLangPolicy(Policy):
    """SGLang 0.5.23's ``SchedulePolicy`` + ``PrefillAdder`` + ``retract_decode`` (see module docstring)."""

    owns_kv_accounting = False  # it mirrors SGLang's PrefillAdder accounting, which the adapter leaves in charge
    clip = CLIP_MAX_NEW_TOKENS
    retract_decode_steps = RETRACT_DECODE_STEPS

    def __init__(
        self, latency: LatencyModel, config: ExtConfig | None = None, host: HostCapabilities | None = None
    ) -> None:
        super().__init__(latency, config, host)
        cfg = self.config.sglang
        self.schedule_policy = cfg.schedule_policy
        self.chunked_prefill_size = self.host.chunked_prefill_size or cfg.chunked_prefill_size
        self.max_prefill_tokens = self.host.max_prefill_tokens
        self.max_running_requests = self.host.max_running_requests
        self.ratio = NewTokenRatio(
            cfg.schedule_conservativeness, INIT_NEW_TOKEN_RATIO, MIN_NEW_TOKEN_RATIO_FACTOR, NEW_TOKEN_RATIO_DECAY_STEPS
        )
        self.priority = PriorityRules(cfg) if cfg.enable_priority_scheduling else None
        self.priority_retraction = cfg.retraction_policy == "priority"
        self.batch_is_full = False
        self._decode_pending = False  # the last plan let a decode step run: decay unless it retracted

    @classmethod
    def needs_mixed_chunk(cls, config: ExtConfig) -> bool:
        return config.sglang.mixed_chunk  # SGLang's --enable-mixed-chunk

    # --- queue order (SchedulePolicy.calc_priority) -------------------------------------------------------------
    def order_queue(self, queue: list[WaitingView], view: SchedulerView) -> list[WaitingView]:
        """The waiting queue in the order SGLang's ``calc_priority`` leaves it (the chunked request is not in it)."""
        if self.priority is not None:
            self.priority.sort_waiting(queue)
        elif self.schedule_policy == "lpm" and len(queue) <= LPM_QUEUE_LIMIT:
            queue.sort(key=lambda w: -w.cached_len)
        return queue

    # --- admission ------------------------------------------------------------------------------------------
    def plan(self, view: SchedulerView) -> IterationPlan:
        if self._decode_pending:  # update_running_batch's decay_step for the decode that followed the last plan
            self.ratio.decay_step()
            self._decode_pending = False
        prio = self.priority
        preempting = prio is not None and prio.preemption
        if prio is not None:
            prio.see(view)
        running = list(view.running)
        if preempting or not running:
            self.batch_is_full = False
        chunked, queue = _split(view)
        if chunked is None and (self.batch_is_full or not queue):
            return self._no_batch(view)
        cap = self.max_running_requests
        if cap is not None and chunked is None and not preempting and cap - len(running) <= 0:
            self.batch_is_full = True  # get_num_allocatable_reqs <= 0
            return self._no_batch(view)
        queue = self.order_queue(queue, view)

        pool = view.pool
        page = pool.page_size
        ratio = self.ratio.current
        clip = self.clip
        avail = pool.free_tokens + pool.evictable_tokens
        evictable = pool.evictable_tokens
        mixed_tokens = len(running) if self.mixed else 0  # num_mixed_decode_tokens: one per running request
        offset_total = mixed_tokens + sum([running_offset(r, ratio, clip) for r in running])
        offset_current = mixed_tokens
        rem_chunk = self.chunked_prefill_size - mixed_tokens
        rem_input = self.max_prefill_tokens - mixed_tokens
        admits: list[Admit] = []
        preempted: list[RunningView] = []
        alloc = 0  # KV the admitted extends allocate (prepare_for_extend), for the mixed step's decode check

        if chunked is not None:  # PrefillAdder.add_chunked_req
            rem = min(rem_chunk, int(avail - offset_total))
            if rem <= 0:
                rem = rem_chunk
            if prio is not None:
                prio.initialized(chunked, with_cache=False)
            done = chunked.prefilled_len
            cand = chunked.seq_len - done
            new_len = min(cand, rem)
            if ceil_page(done + new_len, page) - ceil_page(done, page) > avail:  # SGLang: "Out of memory" (see doc)
                new_len = min(new_len, ceil_page(done, page) - done + avail // page * page)
            if new_len > 0:  # (rem_chunk <= 0: the decodes fill the chunk; see the module docstring)
                truncated = cand > new_len
                ext = ceil_page(new_len, page)
                max_new = 0 if truncated else min(chunked.max_new_tokens, clip)
                offset_total += ext + page + max_new
                offset_current += ext + page
                rem_chunk -= ext
                rem_input -= ext
                alloc += ceil_page(done + new_len, page) - ceil_page(done, page)
                admits.append(Admit(chunked.rid, new_len, reserve_tokens=done + ext + page))

        for w in queue if not self.batch_is_full else ():
            if avail - offset_total > 0 and (rem_input <= 0 or rem_chunk <= 0):
                break  # budget_state() == OTHER at the top of the loop (capacity left, compute spent)
            if cap is not None and len(admits) >= cap - len(running):
                self.batch_is_full = True  # request slots full
            if self.batch_is_full:
                if not preempting:
                    break
                victims = prio.preempt_for(w, running, avail - offset_total, ratio, clip)  # type: ignore[union-attr]
                if victims is None:
                    break
                for r in victims:  # released now: their offsets and KV come back to this pass
                    offset_total -= running_offset(r, ratio, clip)
                    avail += ceil_page(r.kv_used, page)  # its pages are freed
                    running.remove(r)
                preempted += victims
                prio.requeued(r.rid for r in victims)  # type: ignore[union-attr]
            if prio is not None:
                prio.initialized(w)
            rt = avail - offset_total
            # add_one_req: check against the whole request, with its matched prefix pinned
            max_new = min(max(w.max_new_tokens - w.output_len, 0), clip)
            prefix = w.cached_len
            extend = w.seq_len - prefix
            pin = min(prefix, evictable)
            if not (extend + max_new + page < rt - pin):
                self.batch_is_full = bool(admits) or bool(running)  # NO_TOKEN
                break
            reserve_new = min(w.max_new_tokens, clip)
            if ceil_page(extend, page) > rem_chunk:  # _select_prefill_admission: truncate to a chunk
                ext_len = rem_chunk // page * page
                ext_len = (prefix + ext_len) // page * page - prefix
                if ext_len <= 0:
                    break
                reserve_new = 0
            else:
                ext_len = extend
            evictable -= pin
            avail -= pin
            ext = ceil_page(ext_len, page)
            offset_total += ext + page + reserve_new
            offset_current += ext + page
            rem_chunk -= ext
            rem_input -= ext
            alloc += ceil_page(prefix + ext_len, page) - ceil_page(prefix, page)
            admits.append(Admit(w.rid, ext_len, reserve_tokens=w.seq_len + page + reserve_new))
            if avail - offset_total <= 0 or avail - offset_current <= 0:
                self.batch_is_full = True  # add_one_req returned NO_TOKEN with this batch non-empty
                break

        preempt = tuple(Preempt(r.rid) for r in preempted)
        if not admits:  # no prefill batch: a decode step (update_running_batch) over what is left
            if preempt:
                self._decode_pending = bool(running)
                if not running:
                    self.ratio.reset()
                return IterationPlan(preempt=preempt)
            return self._no_batch(view)
        # mixed step: the decodes join when their next token still fits after the prefill's allocation
        # (check_decode_mem); otherwise they sit out this step, never retracted in it
        run_decodes = self.mixed and bool(running) and decode_need(running, page) <= avail - alloc
        if run_decodes or not running:
            self.batch_is_full = False  # the formed batch becomes the running batch, whose flag starts clear
        if run_decodes and prio is not None:
            prio.refreshed(running)  # mix_with_running refreshes the decoding requests' token lists
        return IterationPlan(
            admit=tuple(admits), token_budget=self.chunked_prefill_size, preempt=preempt, run_decodes=run_decodes
        )

    def _no_batch(self, view: SchedulerView) -> IterationPlan:
        if view.running:
            self._decode_pending = True
            return _EMPTY
        self.ratio.reset()  # nothing to run: the scheduler's idle self-check resets the ratio
        return _EMPTY

    # --- retraction -----------------------------------------------------------------------------------------
    def choose_victims(self, view: SchedulerView, tokens_needed: int) -> tuple[Preempt, ...]:
        """``retract_decode``: drop the least-preferred request (fewest outputs, then longest prompt; lowest
        priority first under ``--retraction-policy priority``) until the next decode step fits; keep at least
        one. Sets the ratio to the after-retraction estimate."""
        running = view.running
        page = view.pool.page_size
        prio = self.priority
        if prio is not None and self.priority_retraction:
            key = lambda i: prio.retraction_key(running[i])  # noqa: E731
        else:
            key = lambda i: (running[i].output_len, -running[i].prompt_len)  # noqa: E731
        keep = sorted(range(len(running)), key=key, reverse=True)
        avail = view.pool.available_tokens
        need = decode_need(running, page)
        victims: list[Preempt] = []
        first = True
        while first or avail < need:
            if len(keep) <= 1:
                break
            first = False
            r = running[keep.pop()]
            victims.append(Preempt(r.rid))
            avail += ceil_page(r.kv_used, page)  # its pages are freed
            if r.kv_used % page == 0:
                need -= page
        kept = [running[i] for i in keep]
        decoded = sum(r.output_len for r in kept)
        max_new = sum(r.max_new_tokens for r in kept)
        self.ratio.current = min(1.0, (decoded + self.retract_decode_steps * len(kept)) / (max_new + 1))
        self._decode_pending = False
        self.batch_is_full = False
        if prio is not None:
            prio.requeued(v.rid for v in victims)
        return tuple(victims)

    def on_finish(self, rid: str, output_len: int) -> None:
        self.batch_is_full = False  # a request left the running batch
        if self.priority is not None:
            self.priority.forget(rid)


def _split(view: SchedulerView) -> tuple[WaitingView | None, list[WaitingView]]:
    """(the request whose chunked prefill is in progress, the rest of the waiting queue)."""
    waiting = view.waiting
    if view.chunked_rid is None:
        return None, list(waiting)
    if waiting and waiting[0].rid == view.chunked_rid:  # hosts list the prefill in progress first
        return waiting[0], list(waiting[1:])
    chunked, queue = None, []
    for w in waiting:
        if w.rid == view.chunked_rid:
            chunked = w
        else:
            queue.append(w)
    return chunked, queue
