"""C5 swap and plan preemptions on SGLang 0.5.23's real classes, offline on CPU (no model, no server).

A small engine drives the real ``ReqToTokenPool``, ``MHATokenToKVPool``, the page-1 and paged allocators, the radix
tree the server uses (``UnifiedRadixCache``) and the legacy ``RadixCache``, ``PrefillAdder`` and ``ScheduleBatch``
(``init_new`` / ``prepare_for_extend`` / ``prepare_for_decode`` / ``retract_decode`` / ``release_req``) with the
plugin's swap hooks patched in exactly where the server has them. Every "forward" writes fresh random K/V rows into
the slots SGLang allocated, so a recomputed row can never equal the one it replaces: restored rows that compare
bit-identical to the rows taken before the swap-out were copied, not recomputed.
"""

from __future__ import annotations

import os
from array import array

import pytest
import torch

from policies.views import Preempt, PreemptMode

POOL = 512
LAYERS, HEADS, DIM = 3, 2, 4


@pytest.fixture(scope="module")
def sglang_ready():
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
    pytest.importorskip("sgl_kernel", reason="needs the CPU sgl_kernel stand-in (scripts/setup.sh)")
    from sglang.srt.runtime_context import publish
    from sglang.srt.server_args import ServerArgs

    publish(ServerArgs(model_path="dummy", device="cpu", page_size=1, max_total_tokens=POOL), role="scheduler")
    return True


@pytest.fixture
def hooked(sglang_ready, monkeypatch):
    """The plugin's swap hooks on the real classes, wrapped the way SGLang's HookRegistry wraps them."""
    import pkgutil

    from sglang_ext.adapter import swap

    for target, fn, kind in swap.SWAP_HOOKS:
        owner_path, name = target.rsplit(".", 1)
        owner = pkgutil.resolve_name(owner_path)
        orig = getattr(owner, name)
        if kind == "AROUND":

            def wrapper(*a, _fn=fn, _orig=orig, **k):
                return _fn(_orig, *a, **k)
        else:

            def wrapper(*a, _fn=fn, _orig=orig, **k):
                result = _orig(*a, **k)
                _fn(result, *a, **k)
                return result

        monkeypatch.setattr(owner, name, wrapper)
    yield swap
    swap.uninstall()


class Engine:
    """Real SGLang pools/tree/batches stepped like the scheduler (no overlap); ``sched``-like for the plugin."""

    def __init__(self, page: int = 1, tree: str = "unified", budget: int = 4096, radix: bool = True) -> None:
        from sglang.srt.managers.schedule_batch import ScheduleBatch
        from sglang.srt.mem_cache.allocator import PagedTokenToKVPoolAllocator, TokenToKVPoolAllocator
        from sglang.srt.mem_cache.cache_init_params import CacheInitParams
        from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
        from sglang.srt.mem_cache.radix_cache import RadixCache
        from sglang.srt.mem_cache.unified_cache.components import ComponentType
        from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache
        from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

        from sglang_ext.adapter import swap

        self.page_size = page
        self.req_to_token_pool = ReqToTokenPool(size=32, max_context_len=1024, device="cpu", enable_memory_saver=False)
        kv = MHATokenToKVPool(POOL, page, torch.float32, HEADS, DIM, LAYERS, "cpu", False)
        if page == 1:
            alloc = TokenToKVPoolAllocator(POOL, dtype=torch.float32, device="cpu", kvcache=kv, need_sort=False)
        else:
            alloc = PagedTokenToKVPoolAllocator(POOL, page, torch.float32, "cpu", kv, False)
        self.token_to_kv_pool_allocator = alloc
        params = CacheInitParams(disable=not radix, req_to_token_pool=self.req_to_token_pool,
                                 token_to_kv_pool_allocator=alloc, page_size=page)  # fmt: skip
        if tree == "unified":
            params.tree_components = (ComponentType.FULL,)
            self.tree_cache = UnifiedRadixCache(params)
        else:
            self.tree_cache = RadixCache(params)
        self.spec_algorithm = SpeculativeAlgorithm.NONE
        self.running_batch = ScheduleBatch(reqs=[], batch_is_full=False)
        self.waiting_queue: list = []
        self.chunked_req = None
        self.extends: dict[str, tuple[int, int]] = {}
        self.rng = torch.Generator().manual_seed(0)
        self.next_token = 100
        self.mgr = swap.install(self, budget)

    # --- the scheduler surface the plugin touches ---
    def _add_request_to_queue(self, req, is_retracted: bool = False) -> None:
        self.waiting_queue.append(req)

    # --- driving ---
    def add(self, rid: str, prompt: list[int], max_new: int = 64) -> None:
        from sglang.srt.managers.schedule_batch import Req
        from sglang.srt.sampling.sampling_params import SamplingParams

        sp = SamplingParams(max_new_tokens=max_new)
        sp.normalize(None)
        self.waiting_queue.append(Req(rid, "", array("q", prompt), sp, vocab_size=100_000))

    def forward(self, batch) -> None:
        """The model's KV writes: fresh random rows into every slot SGLang allocated for this batch."""
        loc = batch.out_cache_loc.to(torch.int64)
        for buf in self.mgr.slots if self.mgr else self.token_to_kv_pool_allocator.get_kvcache().k_buffer:
            buf[loc] = torch.randn((len(loc), *buf.shape[1:]), generator=self.rng)

    def prefill(self) -> list:
        from sglang.srt.managers.schedule_batch import ScheduleBatch
        from sglang.srt.managers.schedule_policy import AddReqResult, PrefillAdder
        from sglang.srt.mem_cache.common import checkpoint_kv_cache
        from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

        running = self.running_batch
        adder = PrefillAdder(self.page_size, self.tree_cache, self.token_to_kv_pool_allocator, running, 0.5,
                             16384, 4096, 0, 0)  # fmt: skip
        for req in self.waiting_queue:
            req.init_next_round_input(self.tree_cache)
            if adder.add_one_req(req, has_chunked_req=False, truncation_align_size=None) != AddReqResult.CONTINUE:
                break
        if not adder.can_run_list:
            return []
        admitted = list(adder.can_run_list)
        self.waiting_queue = [r for r in self.waiting_queue if r not in set(admitted)]
        mc = type("ModelConfig", (), {"vocab_size": 100_000, "is_encoder_decoder": False})()
        batch = ScheduleBatch.init_new(admitted, self.req_to_token_pool, self.token_to_kv_pool_allocator,
                                       self.tree_cache, mc, False, SpeculativeAlgorithm.NONE)  # fmt: skip
        batch.prepare_for_extend()
        self.extends = {r.rid: (r.prefix_len, r.extend_len) for r in admitted}  # before the checkpoint moves them
        self.forward(batch)
        for req in admitted:
            checkpoint_kv_cache(req, self.tree_cache)
            req.output_ids.append(self.sample())
        batch.filter_batch()
        if running.is_empty():
            self.running_batch = batch
        else:
            running.merge_batch(batch)
        return admitted

    def decode(self) -> None:
        batch = self.running_batch
        if not batch.check_decode_mem():
            retracted, _, aborted = batch.retract_decode()
            assert not aborted
            self.waiting_queue.extend(retracted)
        if batch.is_empty():
            return
        batch.prepare_for_decode()
        self.forward(batch)
        for req in batch.reqs:
            req.output_ids.append(self.sample())

    def sample(self) -> int:
        self.next_token += 1
        return self.next_token

    def finish_all(self) -> None:
        from sglang.srt.managers.schedule_batch import FINISH_LENGTH
        from sglang.srt.mem_cache.common import release_kv_cache

        for req in self.running_batch.reqs:
            req.to_finish = FINISH_LENGTH(length=len(req.output_ids))
            req.update_finish_state()
            release_kv_cache(req, self.tree_cache, checkpoint=True)
        self.running_batch.filter_batch()

    def rows(self, req, n: int) -> list[torch.Tensor]:
        idx = self.req_to_token_pool.req_to_token[req.kv.req_pool_idx, :n].to(torch.int64)
        return [buf[idx].clone() for buf in self.mgr.slots]

    def accounted(self) -> int:
        return self.token_to_kv_pool_allocator.available_size() + self.tree_cache.evictable_size()

    def evict_all(self) -> None:
        from sglang.srt.mem_cache.base_prefix_cache import EvictParams

        self.tree_cache.evict(EvictParams(num_tokens=POOL))


def run_to(eng: Engine, req, out_len: int) -> None:
    while len(req.output_ids) < out_len:
        eng.decode()


def prompt(n: int, start: int = 1000) -> list[int]:
    return list(range(start, start + n))


def running(eng: Engine, rid: str):
    return next(r for r in eng.running_batch.reqs if r.rid == rid)


ROW_BYTES = 2 * LAYERS * HEADS * DIM * 4  # K and V, every layer, float32


@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("tree", ["unified", "legacy"])
@pytest.mark.parametrize("evicted", [False, True])
def test_swap_round_trip_restores_rows_bit_identical(hooked, page, tree, evicted):
    from sglang_ext.adapter.preempt import preempt_now

    eng = Engine(page, tree)
    eng.add("a", prompt(37))
    eng.add("b", prompt(20, 5000))
    eng.prefill()
    a = running(eng, "a")
    run_to(eng, a, 23)
    seq = a.seqlen
    n = (seq - 1) // page * page
    before = eng.rows(a, n)
    told: list = []
    victims = [Preempt("a", PreemptMode.SWAP), Preempt("ghost", PreemptMode.SWAP)]
    freed = preempt_now(eng, eng.running_batch, victims, told.extend)
    st = eng.mgr.stats
    assert told == [a]  # the adapter hears which requests went back to the queue
    assert freed >= n and st.plan_preempts == 1 and st.plan_preempt_tokens_freed == freed
    assert [r.rid for r in eng.running_batch.reqs] == ["b"] and eng.waiting_queue == [a]
    assert eng.mgr.is_swapped_out("a") and not a.kv.holds_kv
    assert (st.swaps_out, st.tokens_out, st.bytes_out, st.host_tokens) == (1, n, n * ROW_BYTES, n)
    assert eng.mgr.resume_extend_tokens("a", seq) == seq - n
    cached = (len(a.origin_input_ids) // page) * page  # the prompt SGLang inserted at prefill
    if evicted:
        eng.evict_all()
        cached = 0
    for _ in range(5):  # b's decodes take freed slots: the device rows of a are gone
        eng.decode()
    eng.prefill()
    assert running(eng, "a") is a
    assert eng.extends["a"] == (n, seq - n) and seq - n >= 1
    copied = n - cached
    assert (st.swaps_in, st.tokens_in, st.tokens_reused, st.bytes_in) == (1, copied, cached, copied * ROW_BYTES)
    assert st.tokens_recomputed == seq - n and st.host_tokens == 0 and not eng.mgr.host
    after = eng.rows(a, n)
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))
    run_to(eng, a, 30)
    eng.finish_all()
    eng.evict_all()
    assert eng.accounted() == POOL and eng.tree_cache.protected_size() == 0  # no slot leaked or double-freed


@pytest.mark.parametrize("page", [1, 16])
def test_decode_retraction_swaps_marked_victim(hooked, page):
    """SGLang's own retract_decode (decode OOM) releases the marked victim through the hooked release_req."""
    eng = Engine(page, budget=4096)
    for i in range(3):
        eng.add(f"r{i}", prompt(48, 1000 * (i + 1)))
    eng.prefill()
    for r in eng.running_batch.reqs:
        eng.mgr.mark(r.rid, PreemptMode.SWAP)
    snap = {}
    while not eng.waiting_queue:
        snap = {r.rid: (r.seqlen, eng.rows(r, (r.seqlen - 1) // page * page)) for r in eng.running_batch.reqs}
        eng.decode()  # the pool (512) runs out after ~120 decodes of 3 requests
    eng.mgr.clear_marks()  # the plugin's retract_decode hook does this
    (victim,) = eng.waiting_queue
    seq, before = snap[victim.rid]
    n = (seq - 1) // page * page
    assert eng.mgr.stats.swaps_out == 1 and eng.mgr.host[victim.rid].tokens == n
    eng.finish_all()  # room again
    eng.prefill()
    assert running(eng, victim.rid) is victim and eng.extends[victim.rid] == (n, seq - n)
    assert all(torch.equal(x, y) for x, y in zip(before, eng.rows(victim, n), strict=True))
    eng.finish_all()
    eng.evict_all()
    assert eng.accounted() == POOL


def test_recompute_mode_and_full_budget_fall_back_to_recompute(hooked):
    from sglang_ext.adapter.preempt import preempt_now

    eng = Engine(budget=40)
    eng.add("a", prompt(30))
    eng.add("b", prompt(30, 5000))
    eng.prefill()
    run_to(eng, running(eng, "a"), 20)
    preempt_now(eng, eng.running_batch, [Preempt("a", PreemptMode.RECOMPUTE), Preempt("b", PreemptMode.SWAP)])
    st = eng.mgr.stats
    assert (st.recompute_marked, st.fallback_no_space, st.swaps_out) == (1, 1, 0)  # b needs 49 > 40 tokens
    assert not eng.mgr.host and len(eng.waiting_queue) == 2
    eng.prefill()
    assert running(eng, "a").rid == "a" and eng.extends["a"] == (30, 20)  # prompt cached, outputs recomputed
    assert st.swaps_in == 0 and st.fallback_not_restored == 0


def test_restored_rows_evicted_before_admission_are_restored_again(hooked):
    from sglang_ext.adapter.preempt import preempt_now

    eng = Engine()
    eng.add("a", prompt(25))
    eng.prefill()
    a = running(eng, "a")
    run_to(eng, a, 10)
    n = a.seqlen - 1
    before = eng.rows(a, n)
    preempt_now(eng, eng.running_batch, [Preempt("a", PreemptMode.SWAP)])
    eng.evict_all()
    a.init_next_round_input(eng.tree_cache)  # restored into the tree, but not admitted this time
    assert a.prefix_len == n and eng.tree_cache.evictable_size() == n
    eng.evict_all()  # the restored rows are plain evictable cache until admission
    eng.prefill()
    st = eng.mgr.stats
    assert (st.swaps_in, st.tokens_in, st.fallback_not_restored) == (1, 2 * n, 0)
    assert all(torch.equal(x, y) for x, y in zip(before, eng.rows(a, n), strict=True))


def test_gate_and_abort_release_host_copies(hooked):
    from sglang_ext.adapter.preempt import preempt_now

    eng = Engine()
    for rid, start in (("a", 1000), ("b", 5000)):
        eng.add(rid, prompt(25, start))
    eng.prefill()
    run_to(eng, running(eng, "a"), 8)
    preempt_now(eng, eng.running_batch, [Preempt("a", PreemptMode.SWAP), Preempt("b", PreemptMode.SWAP)])
    st = eng.mgr.stats
    assert st.swaps_out == 2 and st.host_bytes == st.bytes_out
    eng.mgr.admit_gate = lambda rid: rid != "a"  # the plan does not admit a this iteration ...
    eng.waiting_queue = [r for r in eng.waiting_queue if r.rid == "a"]  # ... and b was aborted while out
    hooked.after_get_new_batch_prefill(None, eng)
    assert st.discarded == 1 and list(eng.mgr.host) == ["a"]
    eng.prefill()  # SGLang admits a anyway (here no plan gates its adder): recomputed, counted
    assert st.fallback_not_restored == 1 and st.tokens_in == 0 and st.swaps_in == 0
    assert st.host_tokens == 0 and st.host_bytes == 0 and st.peak_host_bytes > 0


def test_usable_only_with_a_radix_cache(sglang_ready):
    from sglang_ext.adapter import swap, translate

    try:
        eng = Engine(radix=False)
        assert swap.usable(eng) == (False, "radix cache disabled (restored KV could not become the prefix)")
        assert eng.mgr is None and translate.capabilities(eng).swap is False
        eng = Engine(budget=0)
        assert eng.mgr is None and swap.usable(eng)[0]
        eng = Engine()
        assert eng.mgr is swap.manager() and translate.capabilities(eng).swap is True
    finally:
        swap.uninstall()


def test_debug_knob_parses_and_fires_once(monkeypatch):
    from sglang_ext.adapter import preempt

    assert preempt.parse_debug("x:3:swap, y:z:0:recompute") == [
        preempt.DebugPreempt("x", 3, PreemptMode.SWAP),
        preempt.DebugPreempt("y:z", 0, PreemptMode.RECOMPUTE),
    ]
    with pytest.raises(ValueError, match=preempt.DEBUG_ENV):
        preempt.parse_debug("x:soon:swap")
    with pytest.raises(ValueError, match=preempt.DEBUG_ENV):
        preempt.parse_debug("x:3:later")
    req = type("R", (), {"rid": "x", "output_ids": [1, 2], "finished": lambda self: False})()
    batch = type("B", (), {"reqs": [req]})()
    monkeypatch.setenv(preempt.DEBUG_ENV, "x:3:swap")
    monkeypatch.setattr(preempt, "_DEBUG", None)
    assert preempt.debug_victims(batch) == ()
    req.output_ids.append(3)
    assert preempt.debug_victims(batch) == (Preempt("x", PreemptMode.SWAP),)
    assert preempt.debug_victims(batch) == ()
