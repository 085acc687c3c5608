"""``vllm``: vLLM v1's scheduler (``vllm/v1/core/sched/scheduler.py``, FCFS), the baseline CacheOPT compares to.

Why a separate baseline: vLLM reserves nothing for the future. Each step it schedules the running requests
first (one token per decode, the next chunk of an unfinished prompt), preempting the most recently scheduled
request (``self.running.pop()``, recompute) whenever a step's KV does not fit; then, only if nothing was
preempted in that step, it admits waiting requests in order (preempted ones first: vLLM prepends them) with
chunks of the remaining token budget, until a chunk's KV no longer fits. That "admit until full" rule is what
produces the preemption storms CacheOPT (C1-C4) is built to avoid.

Defaults: ``max_num_batched_tokens`` = the host's chunk (else the sglang section's ``chunked_prefill_size``,
2048, also vLLM v1's online-serving default), ``max_num_seqs`` = 256 (vLLM's default). Divergences: the host keeps
partially prefilled prompts in the waiting view; they are scheduled right after the decodes (vLLM keeps them in its
running list in admission order) and are the first to be preempted. vLLM's KV blocks are the host's pages.
"""

from __future__ import annotations

from policies.base import Policy, register
from policies.capabilities import HostCapabilities
from policies.common import ceil_page, newest_first_victims, partial_prefill_debt
from policies.config import ExtConfig
from policies.latency import LatencyModel
from policies.views import Admit, IterationPlan, Preempt, RunningView, SchedulerView, WaitingView


@register("vllm")
class VLLMPolicy(Policy):
    """Token budget, decodes then chunks, admit until the KV is full, newest-first recompute preemption."""

    #: allocate a new prompt's whole KV on admission (vLLM v0 / Sarathi) instead of chunk by chunk (vLLM v1)
    whole_prompt: bool = False
    #: share of the pool kept free when admitting (vLLM v0's block-manager watermark); v1 has none
    watermark: float = 0.0

    max_num_seqs = 256  # vLLM's default

    def __init__(
        self, latency: LatencyModel, config: ExtConfig | None = None, host: HostCapabilities | None = None
    ) -> None:
        super().__init__(latency, config, host)
        self.token_budget = self.host.chunked_prefill_size or self.config.sglang.chunked_prefill_size

    @classmethod
    def needs_mixed_chunk(cls, config: ExtConfig) -> bool:
        return True  # decodes and prompt chunks share every step

    def plan(self, view: SchedulerView) -> IterationPlan:
        pool = view.pool
        page = pool.page_size
        left = pool.free_tokens + pool.evictable_tokens
        evictable = pool.evictable_tokens
        budget = self.token_budget
        partials = [w for w in view.waiting if w.prefilled_len > 0 and not w.swapped_out]
        if self.whole_prompt:
            left -= partial_prefill_debt(partials, page)  # already promised to those prompts
        # the running set in vLLM's order: decodes, then unfinished prompts (the newest are preempted first)
        sched: list[RunningView | WaitingView] = [*view.running, *partials]
        preempt: list[Preempt] = []
        admits: list[Admit] = []
        decoding = 0
        i = 0
        while i < len(sched):
            r = sched[i]
            if isinstance(r, RunningView):
                tokens = 1 if budget > 0 else 0
                kv = page if (tokens and r.kv_used % page == 0) else 0
            else:
                tokens = min(r.seq_len - r.prefilled_len, budget)
                kv = ceil_page(r.prefilled_len + tokens, page) - ceil_page(r.prefilled_len, page)
                if self.whole_prompt:
                    kv = 0  # allocated when it was admitted
            if tokens == 0:
                i += 1
                continue
            while kv > left and sched:
                victim = sched.pop()
                preempt.append(Preempt(victim.rid))
                if isinstance(victim, RunningView):
                    left += victim.kv_used
                else:
                    owed = ceil_page(victim.seq_len, page) - ceil_page(victim.prefilled_len, page)
                    left += victim.prefilled_len + (owed if self.whole_prompt else 0)
                if victim is r:
                    break
            if preempt and preempt[-1].rid == r.rid:
                break
            left -= kv
            budget -= tokens
            if isinstance(r, RunningView):
                decoding += 1
            else:
                admits.append(Admit(r.rid, tokens, reserve_tokens=r.prefilled_len + tokens))
            i += 1

        if not preempt:
            seqs = len(view.running) + len(partials)
            for w in self._order(view.waiting):
                if budget <= 0 or seqs >= self.max_num_seqs:
                    break
                todo = w.seq_len - w.cached_len
                tokens = min(todo, budget)
                kv = ceil_page(todo if self.whole_prompt else tokens, page)
                pin = min(w.cached_len, evictable)
                wm = int(self.watermark * pool.capacity_tokens)
                if kv + pin > pool.capacity_tokens - wm:
                    wm = 0  # vLLM v0 would drop a prompt that can never pass the watermark; hosts cannot, so admit it
                if kv + pin > left - wm:
                    break
                evictable -= pin
                left -= kv + pin
                budget -= tokens
                seqs += 1
                admits.append(Admit(w.rid, tokens, reserve_tokens=w.cached_len + kv))
        return IterationPlan(admit=tuple(admits), token_budget=self.token_budget, preempt=tuple(preempt))

    @staticmethod
    def _order(waiting: tuple[WaitingView, ...]) -> list[WaitingView]:
        """FCFS with preempted requests in front, most recently preempted first (vLLM prepends them; the host
        appends them, so their host order is preemption order)."""
        fresh: list[WaitingView] = []
        preempted: list[WaitingView] = []
        for w in waiting:
            if w.prefilled_len > 0 or w.swapped_out:
                continue
            (preempted if w.output_len > 0 else fresh).append(w)
        preempted.reverse()
        return preempted + fresh

    def choose_victims(self, view: SchedulerView, tokens_needed: int) -> tuple[Preempt, ...]:
        return newest_first_victims(view.running, tokens_needed)
