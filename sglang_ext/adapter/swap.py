"""C5 executed in SGLang: a preempted request's KV goes to host memory and comes back, instead of being recomputed.

Why: CacheOPT's C5 picks, per victim, the cheaper of swap and recompute; SGLang 0.5.23 only recomputes (a retracted
request's KV is freed and its whole sequence re-prefilled later), and its own host KV pool (hierarchical cache)
does not run on CPU. This module is the mechanism; the policy decides, the adapter marks victims with their mode.

Swap out (before SGLang frees the rows, from ``ScheduleBatch.release_req``): the request's first ``n`` token slots
(``req_to_token[row, :n]``, ``n`` = its computed KV, ``seqlen - 1``, rounded down to a page) are gathered from every
per-layer buffer of the KV pool into host tensors (pinned when the device is CUDA) together with their token ids.
The whole sequence is copied, shared prefix included: SGLang unlocks the prefix at retraction and may evict it at
once, and a copy without it could not be put back.

Swap in (just before SGLang matches the request's prefix, from ``Req.init_next_round_input``): the part of those
``n`` tokens the radix tree does not hold any more is allocated, copied back and inserted into the tree under the
request's token ids. SGLang's own ``match_prefix`` then finds it as a cached prefix, and its PrefillAdder locks,
charges and extends it as any prefix hit: only the last ``seqlen - n`` tokens (>= 1, SGLang needs one extend token
for the logits) are recomputed. Going through the tree, not by setting ``prefix_indices`` directly, keeps SGLang's
locking (the node is locked at admission, unlocked on release), its evictable/protected accounting and its page
alignment intact; until admission the restored rows are evictable cache, so they never block another admission.
The host copy is kept until the request is admitted (``ScheduleBatch.prepare_for_extend``), so restored rows
evicted before admission are restored again, or, if admitted without them, counted as a fallback.

Falls back to recompute (counted) when the host budget (``--ext-cacheopt-swap-space-tokens``) is full or the KV
is shorter than a page; structures it cannot serve (radix cache disabled, hybrid pools, speculative decoding, PD
disaggregation) leave it uninstalled (:func:`usable` says why). Details and limits: ``docs/swap.md``.
"""

from __future__ import annotations

import itertools
import logging
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from policies.views import PreemptMode
from sglang_ext import metrics as ext_metrics

logger = logging.getLogger("sglang_ext")


@dataclass
class SwapStats:
    """Plain numbers for logs and metrics (all cumulative except the ``host_*`` gauges)."""

    swaps_out: int = 0  # requests copied to host memory
    swaps_in: int = 0  # swapped-out requests admitted with their restored prefix
    tokens_out: int = 0
    tokens_in: int = 0  # rows copied back (the part the tree no longer held)
    tokens_reused: int = 0  # rows found still cached in the tree at swap-in (not copied)
    tokens_recomputed: int = 0  # extend tokens of swapped-in requests at admission (>= 1 each)
    bytes_out: int = 0
    bytes_in: int = 0
    seconds_out: float = 0.0  # wall time of the copies (device synchronized around them)
    seconds_in: float = 0.0
    recompute_marked: int = 0  # victims released in recompute mode
    fallback_no_space: int = 0  # swap chosen, host budget full: recomputed
    fallback_too_short: int = 0  # swap chosen, less than one page of KV: recomputed
    fallback_not_restored: int = 0  # admitted without (all of) its restored prefix: partly recomputed
    restore_deferred: int = 0  # swap-in postponed: no room in the pool even after eviction
    discarded: int = 0  # host copies dropped because the request finished or was aborted while out
    plan_preempts: int = 0  # running requests retracted by a plan (preempt_now)
    plan_preempt_tokens_freed: int = 0
    host_tokens: int = 0  # gauge: tokens held in host memory now
    host_bytes: int = 0
    peak_host_bytes: int = 0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass
class HostCopy:
    """One swapped-out request: rows ``[0, tokens)`` of every slot tensor, and the token ids they belong to."""

    rid: str
    token_ids: array
    rows: list[torch.Tensor]
    nbytes: int
    restored: int = 0  # prefix length made available by the last swap-in (0: not restored yet)

    @property
    def tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class _Timer:
    """Wall time of a copy, with the device synchronized on both sides: the copy must not race an in-flight forward
    (overlap scheduler), the host rows must be complete before SGLang reuses the slots, and the time is its own."""

    device: torch.device
    seconds: float = 0.0

    def sync(self) -> None:
        if self.device.type != "cpu":
            torch.get_device_module(self.device).synchronize(self.device)

    def __enter__(self) -> _Timer:
        self.sync()
        self.seconds = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sync()
        self.seconds = time.perf_counter() - self.seconds


def slot_tensors(pool: Any) -> list[torch.Tensor] | None:
    """The KV pool's buffers indexed by token slot on dim 0 (one K and one V per layer for MHA, one per layer for
    MLA); None for layouts this module does not copy (quantized-with-scales subclasses, HND layout, hybrids)."""
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, MLATokenToKVPool

    if getattr(pool, "use_hnd", False):
        return None
    if type(pool) is MHATokenToKVPool:
        return [*pool.k_buffer, *pool.v_buffer]
    if type(pool) is MLATokenToKVPool:
        return list(pool.kv_buffer)
    return None


def usable(sched: Any) -> tuple[bool, str]:
    """Whether a scheduler's structures let swapped KV become a request's prefix again, and if not, why."""
    tree = getattr(sched, "tree_cache", None)
    alloc = getattr(sched, "token_to_kv_pool_allocator", None)
    if tree is None or alloc is None or not tree.supports_prefix_sharing():
        return False, "radix cache disabled (restored KV could not become the prefix)"
    if type(alloc).__name__ not in ("TokenToKVPoolAllocator", "PagedTokenToKVPoolAllocator"):
        return False, f"allocator {type(alloc).__name__} (hybrid/SWA pools) not supported"
    if slot_tensors(alloc.get_kvcache()) is None:
        return False, f"KV pool {type(alloc.get_kvcache()).__name__} not supported"
    spec = getattr(sched, "spec_algorithm", None)
    if spec is not None and not spec.is_none():
        return False, "speculative decoding (draft KV not swapped)"
    mode = getattr(sched, "disaggregation_mode", None)
    if mode is not None and getattr(mode, "value", "null") != "null":
        return False, "PD disaggregation (SGLang's own retraction backup applies)"
    return True, ""


class SwapManager:
    """Host copies of swapped-out requests, keyed by rid; one per scheduler process."""

    def __init__(self, allocator: Any, req_to_token_pool: Any, tree_cache: Any, budget_tokens: int) -> None:
        pool = allocator.get_kvcache()
        slots = slot_tensors(pool)
        if slots is None:
            raise ValueError(f"KV pool {type(pool).__name__} cannot be swapped")
        self.allocator = allocator
        self.req_to_token_pool = req_to_token_pool
        self.tree_cache = tree_cache
        self.budget_tokens = int(budget_tokens)
        self.page = int(allocator.page_size)
        self.slots = slots
        self.device = slots[0].device
        self.pin = self.device.type == "cuda"
        self.bytes_per_token = sum(t[0].numel() * t.element_size() for t in slots)
        self.marks: dict[str, PreemptMode] = {}
        self.host: dict[str, HostCopy] = {}
        self.stats = SwapStats()
        self.admit_gate: Callable[[str], bool] = lambda rid: True  # the adapter: is this request admitted now?

    # --- modes ---------------------------------------------------------------------------------------------------
    def mark(self, rid: str, mode: PreemptMode) -> None:
        """The policy's mode for a victim SGLang is about to release (``Policy.choose_victims`` / a plan)."""
        self.marks[rid] = mode

    def clear_marks(self) -> None:
        self.marks.clear()

    def is_swapped_out(self, rid: str) -> bool:
        return rid in self.host

    def resume_extend_tokens(self, rid: str, seq_len: int) -> int:
        """Tokens a swapped-out request of ``seq_len`` tokens prefills when resumed (the rest comes back by copy)."""
        entry = self.host.get(rid)
        return seq_len if entry is None else max(seq_len - entry.tokens, 1)

    # --- swap out ------------------------------------------------------------------------------------------------
    def on_release(self, req: Any) -> bool:
        """Called just before SGLang releases a running request's KV: copy it out if it was marked SWAP."""
        mode = self.marks.pop(req.rid, None)
        if mode is None:
            return False
        if mode is not PreemptMode.SWAP:
            self.stats.recompute_marked += 1
            return False
        return self.swap_out(req)

    def swap_out(self, req: Any) -> bool:
        st = self.stats
        row = req.kv.req_pool_idx
        if row is None:
            return False
        computed = req.seqlen - 1
        if req.kv.kv_committed_len > 0:
            computed = min(computed, int(req.kv.kv_committed_len))
        n = computed // self.page * self.page
        if n <= 0:
            st.fallback_too_short += 1
            ext_metrics.get().observe_swap_fallback()
            return False
        self.discard(req.rid)  # a stale copy (never expected: admission frees it) must not count against the budget
        if st.host_tokens + n > self.budget_tokens:
            st.fallback_no_space += 1
            ext_metrics.get().observe_swap_fallback()
            logger.info("sglang_ext swap: host budget full (%d + %d > %d tokens), %s recomputes",
                        st.host_tokens, n, self.budget_tokens, req.rid)  # fmt: skip
            return False
        idx = self.req_to_token_pool.req_to_token[row, :n].to(device=self.device, dtype=torch.int64)
        with _Timer(self.device) as t:
            rows = []
            for buf in self.slots:
                host = torch.empty((n, *buf.shape[1:]), dtype=buf.dtype, pin_memory=self.pin)
                host.copy_(buf[idx], non_blocking=self.pin)
                rows.append(host)
        ids = array("q", itertools.islice(itertools.chain(req.origin_input_ids, req.output_ids), n))
        nbytes = n * self.bytes_per_token
        self.host[req.rid] = HostCopy(req.rid, ids, rows, nbytes)
        st.swaps_out += 1
        st.tokens_out += n
        st.bytes_out += nbytes
        st.seconds_out += t.seconds
        st.host_tokens += n
        st.host_bytes += nbytes
        st.peak_host_bytes = max(st.peak_host_bytes, st.host_bytes)
        ext_metrics.get().observe_swap("out", nbytes, t.seconds)
        logger.info("sglang_ext swap-out rid=%s tokens=%d bytes=%d seconds=%.6f", req.rid, n, nbytes, t.seconds)
        return True

    # --- swap in -------------------------------------------------------------------------------------------------
    def before_match(self, req: Any) -> int:
        """Called before SGLang matches a waiting request's prefix: put its swapped KV back into the tree.
        Returns the rows copied (0 when nothing was needed or possible)."""
        entry = self.host.get(req.rid)
        if entry is None or not self.admit_gate(req.rid):
            return 0
        return self.swap_in(req, entry)

    def swap_in(self, req: Any, entry: HostCopy) -> int:
        from sglang.srt.mem_cache.base_prefix_cache import InsertParams, MatchPrefixParams
        from sglang.srt.mem_cache.common import evict_from_tree_cache
        from sglang.srt.mem_cache.radix_cache import RadixKey

        st = self.stats
        seq = len(req.origin_input_ids) + len(req.output_ids)
        n = min(entry.tokens, req._compute_max_prefix_len(seq)) // self.page * self.page
        ids = entry.token_ids[:n]
        if n <= 0 or array("q", itertools.islice(itertools.chain(req.origin_input_ids, req.output_ids), n)) != ids:
            self.discard(req.rid, fallback=True)  # logprob start moved the match limit, or the ids differ
            return 0
        tree = self.tree_cache
        key = RadixKey(ids, req.extra_key, cache_salt=req.cache_salt)
        match = tree.match_prefix(MatchPrefixParams(key=key))
        m = int(match.device_prefix_len)
        if m >= n:  # the tree holds the whole copy (never evicted since the release, or restored on an earlier try)
            if entry.restored < n:  # once per restore, not on every scheduling round the request waits
                st.tokens_reused += n
                logger.info("sglang_ext swap-in rid=%s restored=%d copied=0 reused=%d bytes=0 seconds=0.000000",
                            req.rid, n, n)  # fmt: skip
            entry.restored = n
            return 0
        need = n - m
        lock = tree.lock(match.last_device_node)  # the matched part must survive the eviction below
        try:
            if self.allocator.available_size() < need:
                evict_from_tree_cache(tree, need)
            new = self.allocator.alloc(need) if self.allocator.available_size() >= need else None
            if new is None:
                st.restore_deferred += 1
                return 0
            new = new.to(torch.int64)
            with _Timer(self.device) as t:
                for buf, host in zip(self.slots, entry.rows, strict=True):
                    buf[new] = host[m:n].to(self.device, non_blocking=self.pin)
            prefix = tree.path_device_indices(match.last_device_node)[:m].to(torch.int64)
            value = torch.cat([prefix.to(new.device), new])
            result = tree.insert(InsertParams(key=key, value=value, prev_prefix_len=m, inserted_len=n,
                                              priority=req.priority or 0))  # fmt: skip
            if int(result.prefix_len) != m:  # cannot happen single-threaded; keep the pool consistent if it does
                logger.warning("sglang_ext swap-in %s: tree changed during restore (%d != %d)", req.rid,
                               result.prefix_len, m)  # fmt: skip
        finally:
            tree.unlock(lock)
        nbytes = need * self.bytes_per_token
        entry.restored = n
        st.tokens_in += need
        st.tokens_reused += m
        st.bytes_in += nbytes
        st.seconds_in += t.seconds
        ext_metrics.get().observe_swap("in", nbytes, t.seconds)
        logger.info("sglang_ext swap-in rid=%s restored=%d copied=%d reused=%d bytes=%d seconds=%.6f",
                    req.rid, n, need, m, nbytes, t.seconds)  # fmt: skip
        return need

    def on_extend(self, reqs: Iterable[Any]) -> None:
        """A prefill batch was formed (``prepare_for_extend``): swapped-out requests in it are resumed; their host
        copies are released, counted as a swap-in when SGLang took the restored prefix."""
        for req in reqs:
            entry = self.host.get(req.rid)
            if entry is None:
                continue
            prefix = int(req.prefix_len or 0)
            if entry.restored > 0 and prefix >= entry.restored:
                self.stats.swaps_in += 1
                self.stats.tokens_recomputed += int(req.extend_len)
                self._free(req.rid)
            else:
                self.discard(req.rid, fallback=True)

    # --- lifetime ------------------------------------------------------------------------------------------------
    def discard(self, rid: str, fallback: bool = False) -> None:
        if rid not in self.host:
            return
        self._free(rid)
        if fallback:
            self.stats.fallback_not_restored += 1
            ext_metrics.get().observe_swap_fallback()
        else:
            self.stats.discarded += 1

    def reap(self, live: set[str]) -> None:
        """Drop host copies of requests that left the scheduler (aborted or finished while swapped out)."""
        for rid in [r for r in self.host if r not in live]:
            self.discard(rid)

    def _free(self, rid: str) -> None:
        entry = self.host.pop(rid)
        self.stats.host_tokens -= entry.tokens
        self.stats.host_bytes -= entry.nbytes


_MANAGER: SwapManager | None = None


def manager() -> SwapManager | None:
    return _MANAGER


def install(sched: Any, budget_tokens: int) -> SwapManager | None:
    """Create this process's manager when the scheduler supports swapping and the budget is positive."""
    global _MANAGER
    _MANAGER = None
    ok, why = usable(sched)
    if ok and budget_tokens <= 0:
        ok, why = False, "--ext-cacheopt-swap-space-tokens is 0"
    if not ok:
        logger.info("sglang_ext: swap (C5) unavailable: %s; swap decisions recompute", why)
        return None
    _MANAGER = SwapManager(sched.token_to_kv_pool_allocator, sched.req_to_token_pool, sched.tree_cache,
                           budget_tokens)  # fmt: skip
    logger.info("sglang_ext: swap (C5) active: host budget %d tokens (%d bytes/token, pinned=%s)",
                budget_tokens, _MANAGER.bytes_per_token, _MANAGER.pin)  # fmt: skip
    return _MANAGER


def uninstall() -> None:
    global _MANAGER
    _MANAGER = None


# --- hooks (in sglang_ext.adapter.hooks.SCHEDULER_HOOKS; no-ops without a manager) ----------------------------------
def around_release_req(original: Any, batch: Any, idx: int, *args: Any, **kwargs: Any) -> Any:
    """``ScheduleBatch.release_req(idx, remaining, offload_kv=True)``: retraction and preemption release a running
    request here; aborts pass ``offload_kv=False`` and are never swapped."""
    m = _MANAGER
    if m is not None and m.marks and kwargs.get("offload_kv", args[1] if len(args) > 1 else True):
        m.on_release(batch.reqs[idx])
    return original(batch, idx, *args, **kwargs)


def around_init_next_round_input(original: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
    """``Req.init_next_round_input(tree_cache)`` matches the prefix: restore a swapped-out request's KV first."""
    m = _MANAGER
    if m is not None and req.rid in m.host and kwargs.get("tree_cache", args[0] if args else None) is not None:
        m.before_match(req)
    return original(req, *args, **kwargs)


def after_prepare_for_extend(result: Any, batch: Any, *args: Any, **kwargs: Any) -> None:
    if _MANAGER is not None and _MANAGER.host:
        _MANAGER.on_extend(batch.reqs)


def after_get_new_batch_prefill(result: Any, sched: Any, *args: Any, **kwargs: Any) -> None:
    """Host copies of requests that are no longer in the scheduler (aborted while swapped out) are released."""
    m = _MANAGER
    if m is None or not m.host:
        return
    live = {r.rid for r in sched.waiting_queue} | {r.rid for r in sched.running_batch.reqs}
    if sched.chunked_req is not None:
        live.add(sched.chunked_req.rid)
    batch = getattr(result, "batch_to_run", None)
    if batch is not None:
        live |= {r.rid for r in batch.reqs}
    m.reap(live)


SWAP_HOOKS = (
    ("sglang.srt.managers.schedule_batch.ScheduleBatch.release_req", around_release_req, "AROUND"),
    ("sglang.srt.managers.schedule_batch.Req.init_next_round_input", around_init_next_round_input, "AROUND"),
    ("sglang.srt.managers.schedule_batch.ScheduleBatch.prepare_for_extend", after_prepare_for_extend, "AFTER"),
    ("sglang.srt.managers.scheduler.Scheduler.get_new_batch_prefill", after_get_new_batch_prefill, "AFTER"),
)
