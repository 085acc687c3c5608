"""Small helpers the engine-free baselines share: page rounding, decode-step KV demand, partial prefills.

Why here: the three baselines (``sglang``, ``vllm``, ``sarathi``) and the simulator must count the same things
the same way (a decode needs a new page only at a page boundary; a chunked prompt still owes its remaining
tokens), or the policies and the host disagree about what fits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Sized

from policies.views import Preempt, PreemptMode, RunningView, WaitingView


def ceil_page(tokens: int, page_size: int) -> int:
    """``tokens`` rounded up to whole pages (what a paged allocator takes)."""
    return -(-tokens // page_size) * page_size


def decode_need(running: Iterable[RunningView], page_size: int) -> int:
    """KV tokens the next decode step allocates: one page for every request whose KV ends on a page boundary
    (SGLang's ``new_tokens_required_next_decode``; vLLM's block manager does the same)."""
    if page_size == 1:
        return len(running) if isinstance(running, Sized) else sum(1 for _ in running)
    return page_size * sum(1 for r in running if r.kv_used % page_size == 0)


def partial_prefill_debt(waiting: Sequence[WaitingView], page_size: int) -> int:
    """KV tokens still owed to prompts whose chunked prefill has started (they hold part of their KV already);
    a policy that allocates whole prompts up front must keep this much free for them."""
    return sum(
        ceil_page(w.seq_len, page_size) - ceil_page(w.prefilled_len, page_size)
        for w in waiting
        if w.prefilled_len > 0 and not w.swapped_out
    )


def newest_first_victims(
    running: Sequence[RunningView], tokens_needed: int, mode: PreemptMode = PreemptMode.RECOMPUTE
) -> tuple[Preempt, ...]:
    """vLLM's rule: preempt the request scheduled most recently (``self.running.pop()``) until enough KV is
    freed. ``running`` is in the host's admission order. A victim frees everything it holds (its radix-cache
    prefix becomes evictable, which both hosts count as available)."""
    out: list[Preempt] = []
    freed = 0
    for r in reversed(running):
        if freed >= tokens_needed:
            break
        out.append(Preempt(r.rid, mode))
        freed += r.kv_used
    return tuple(out)
