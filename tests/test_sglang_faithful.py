"""Faithfulness of the ``sglang`` baseline: SGLang 0.5.23's own scheduler classes, run offline on CPU on a fixed
request script, form the same batches and retract the same requests as the ``sglang`` policy in the simulator.

The SGLang side drives the real ``SchedulePolicy``, ``PrefillAdder``, ``NewTokenRatioTracker``,
``ScheduleBatch`` (``init_new`` / ``prepare_for_extend`` / ``check_decode_mem`` / ``retract_decode`` /
``prepare_for_decode``), ``TokenToKVPoolAllocator`` and ``RadixCache`` with the same per-step sequence as
``Scheduler.get_next_batch_to_run`` / ``update_running_batch`` / the batch-result processor (non-overlap mode);
no model runs: each forward "samples" one token per request. Both sides see one iteration per time unit. Page
sizes 1 (the CPU server) and 16 (``PagedTokenToKVPoolAllocator``, the GPU profiles) are checked with the radix
cache disabled (``--disable-radix-cache``); with it enabled, prompts share nothing, so what is checked is that a
retracted request re-prefills only past its own cached prompt, as SGLang does.
"""

from __future__ import annotations

import os
import random
from array import array

import pytest

from eval.sim import Simulator, make_policy
from eval.workloads import RequestSpec
from policies.config import ExtConfig, SGLangBaselineConfig
from policies.latency import IterationLatencyModel

pytestmark = pytest.mark.slow

POOL = 700
CHUNK = 64
CONSERVATIVENESS = 0.3


def script(seed: int, n: int = 32) -> list[tuple[int, str, int, int, int]]:
    """(arrival step, rid, prompt, true output, max_new_tokens): long prompts (chunked) and outputs that often
    run to their cap, so the optimistic ratio over-admits and decode runs out of KV."""
    rng = random.Random(seed)
    out, t = [], 0
    for i in range(n):
        t += rng.choice([0, 0, 1, 2, 5])
        prompt = rng.choice([rng.randint(8, 60), rng.randint(65, 200)])
        cap = rng.randint(20, 120)
        true = cap if rng.random() < 0.8 else rng.randint(1, cap)
        out.append((t, f"r{i}", prompt, true, cap))
    return out


def simulate(reqs, page: int = 1, radix: bool = False) -> list[tuple]:
    """The ``sglang`` policy in the simulator; the trace of prefill batches and retractions."""
    cfg = ExtConfig(sglang=SGLangBaselineConfig(chunked_prefill_size=CHUNK, schedule_conservativeness=CONSERVATIVENESS))
    pol = make_policy("sglang", IterationLatencyModel(c0_s=1.0, c_tok_s=0.0), cfg, page_size=page)
    trace: list[tuple] = []
    plan, victims = pol.plan, pol.choose_victims

    def rec_plan(view):
        p = plan(view)
        if p.admit:
            trace.append(("P", tuple((a.rid, a.prefill_tokens) for a in p.admit)))
        elif view.running:
            trace.append(("D", ()))
        return p

    def rec_victims(view, need):
        v = victims(view, need)
        trace[-1] = ("D", trace[-1][1] + tuple(x.rid for x in v))
        return v

    pol.plan, pol.choose_victims = rec_plan, rec_victims
    specs = [RequestSpec(rid, float(t), p, o, m) for t, rid, p, o, m in reqs]
    lat = IterationLatencyModel(c0_s=1.0, c_tok_s=0.0)
    sim = Simulator(pol, lat, pool_tokens=POOL, page_size=page, prefix_cache=radix)
    res = sim.run(specs)
    assert all(r.ok for r in res.records)
    return trace


class StockSGLang:
    """The real classes, stepped like ``Scheduler.event_loop_normal`` (no overlap, no mixed chunk)."""

    def __init__(self, page: int = 1, radix: bool = False) -> None:
        import torch
        from sglang.srt.managers.schedule_batch import ScheduleBatch
        from sglang.srt.managers.schedule_policy import SchedulePolicy
        from sglang.srt.managers.scheduler_components.new_token_ratio_tracker import NewTokenRatioTracker
        from sglang.srt.mem_cache.allocator import PagedTokenToKVPoolAllocator, TokenToKVPoolAllocator
        from sglang.srt.mem_cache.cache_init_params import CacheInitParams
        from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
        from sglang.srt.mem_cache.radix_cache import RadixCache

        self.rtp = ReqToTokenPool(size=128, max_context_len=4096, device="cpu", enable_memory_saver=False)
        self.page = page
        kv = MHATokenToKVPool(POOL, page, torch.float16, 1, 4, 1, "cpu", False)
        if page == 1:
            self.alloc = TokenToKVPoolAllocator(POOL, dtype=torch.float16, device="cpu", kvcache=kv, need_sort=False)
        else:
            self.alloc = PagedTokenToKVPoolAllocator(POOL, page, torch.float16, "cpu", kv, False)
        self.tc = RadixCache(CacheInitParams(disable=not radix, req_to_token_pool=self.rtp,
                                             token_to_kv_pool_allocator=self.alloc, page_size=page))  # fmt: skip
        self.policy = SchedulePolicy("fcfs", self.tc, False, False, False)
        self.tracker = NewTokenRatioTracker.from_config()
        self.running = ScheduleBatch(reqs=[], batch_is_full=False)
        self.waiting: list = []
        self.chunked = None
        self.last_batch = None
        self.target: dict[str, int] = {}
        self.trace: list[tuple] = []

    def run(self, reqs) -> list[tuple]:
        from sglang.srt.managers.schedule_batch import Req
        from sglang.srt.sampling.sampling_params import SamplingParams

        pending = sorted(reqs, key=lambda x: x[0])
        step = 0
        tok = 7
        while pending or self.waiting or self.chunked or not self.running.is_empty() or self.last_batch:
            while pending and pending[0][0] <= step:
                _, rid, p, o, m = pending.pop(0)
                sp = SamplingParams(max_new_tokens=m)
                sp.normalize(None)
                self.waiting.append(Req(rid, "", array("q", range(tok, tok + p)), sp, vocab_size=100_000))
                tok += p
                self.target[rid] = o
            if not self.step():
                if not pending:
                    break
                step = max(step + 1, pending[0][0])
                continue
            step += 1
        return self.trace

    def step(self) -> bool:
        from sglang.srt.mem_cache.common import checkpoint_kv_cache

        running = self.running
        if self.chunked is not None and self.chunked.extend_end > self.chunked.prefix_len:
            checkpoint_kv_cache(self.chunked, self.tc)
        lb = self.last_batch
        if lb is not None and lb.forward_mode.is_extend():
            n = lb.batch_size()
            lb.filter_batch(reqs_to_exclude=[self.chunked] if self.chunked else [])
            if lb.batch_size() < n:
                running.batch_is_full = False
            if not lb.is_empty():
                if running.is_empty():
                    running = self.running = lb
                else:
                    running.merge_batch(lb)
        n = running.batch_size()
        running.filter_batch()
        if running.batch_size() < n:
            running.batch_is_full = False
        batch = self.prefill_batch(running)
        if batch is not None:
            self.trace.append(("P", tuple((r.rid, r.extend_len) for r in batch.reqs)))
            self.finish_prefill(batch)
            self.last_batch = batch
            return True
        if running.is_empty():
            self.tracker.reset()  # idle self-check
            self.last_batch = None
            return False
        self.trace.append(("D", self.decode(running)))
        self.last_batch = running
        return True

    def prefill_batch(self, running):
        from sglang.srt.managers.schedule_batch import ScheduleBatch
        from sglang.srt.managers.schedule_policy import AddReqResult, PrefillAdder
        from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

        if running.is_empty():
            running.batch_is_full = False
        if (running.batch_is_full or not self.waiting) and self.chunked is None:
            return None
        self.policy.calc_priority(self.waiting, running)
        adder = PrefillAdder(self.page, self.tc, self.alloc, running, self.tracker.current, 16384, CHUNK, 0, 0)
        if self.chunked is not None:
            self.chunked.init_next_round_input()
            adder.chunked_req_limit = self.policy.shortest_prefill_chunk_limit(
                self.chunked, self.waiting, adder.rem_chunk_tokens or 0, self.page
            )
            self.chunked = adder.add_chunked_req(self.chunked)
        for req in self.waiting:
            if adder.budget_state() == AddReqResult.OTHER:
                break
            req.init_next_round_input(self.tc)
            res = adder.add_one_req(req, has_chunked_req=self.chunked is not None, truncation_align_size=None)
            if res != AddReqResult.CONTINUE:
                if res == AddReqResult.NO_TOKEN:
                    running.batch_is_full = len(adder.can_run_list) > 0 or not running.is_empty()
                break
        if not adder.can_run_list:
            return None
        admitted = set(adder.can_run_list)
        self.waiting = [r for r in self.waiting if r not in admitted]
        if adder.new_chunked_req is not None:
            self.chunked = adder.new_chunked_req
        if self.chunked is not None:
            self.chunked.inflight_middle_chunks += 1
        mc = type("ModelConfig", (), {"vocab_size": 100_000, "is_encoder_decoder": False})()
        batch = ScheduleBatch.init_new(
            adder.can_run_list, self.rtp, self.alloc, self.tc, mc, False, SpeculativeAlgorithm.NONE,
            chunked_req=self.chunked,
        )  # fmt: skip
        batch.prepare_for_extend()
        return batch

    def finish_prefill(self, batch) -> None:
        from sglang.srt.mem_cache.common import checkpoint_kv_cache

        for req in batch.reqs:
            if req.inflight_middle_chunks > 0:
                req.inflight_middle_chunks -= 1
                continue
            if self.emit(req):
                continue
            checkpoint_kv_cache(req, self.tc)

    def decode(self, batch) -> tuple[str, ...]:
        retracted: list = []
        n = batch.batch_size()
        if not batch.check_decode_mem():
            retracted, ratio, aborted = batch.retract_decode()
            assert not aborted
            self.tracker.current = ratio
            self.waiting.extend(retracted)
        else:
            self.tracker.decay_step()
        if batch.batch_size() < n:
            batch.batch_is_full = False
        if not batch.is_empty():
            batch.prepare_for_decode()
            for req in batch.reqs:
                self.emit(req)
        return tuple(r.rid for r in retracted)

    def emit(self, req) -> bool:
        """One sampled token; finish (and free) at the hidden target length. True when finished."""
        from sglang.srt.managers.schedule_batch import FINISH_LENGTH
        from sglang.srt.mem_cache.common import release_kv_cache

        req.output_ids.append(11)
        if len(req.output_ids) >= self.target[req.rid]:
            req.to_finish = FINISH_LENGTH(length=len(req.output_ids))
        req.update_finish_state()
        if req.finished():
            release_kv_cache(req, self.tc, checkpoint=True)
            return True
        return False


@pytest.fixture(scope="module")
def sglang_ready():
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
    pytest.importorskip("sgl_kernel", reason="needs the CPU sgl_kernel stand-in (scripts/setup.sh)")
    from sglang.srt.runtime_context import publish
    from sglang.srt.server_args import ServerArgs

    sa = ServerArgs(model_path="dummy", device="cpu", chunked_prefill_size=CHUNK, page_size=1,
                    schedule_policy="fcfs", schedule_conservativeness=CONSERVATIVENESS, max_total_tokens=POOL,
                    disable_radix_cache=True)  # fmt: skip
    publish(sa, role="scheduler")
    return True


CASES = [(0, 1, False), (1, 1, False), (0, 16, False), (4, 16, False), (4, 1, True), (5, 1, True)]  # fmt: skip


@pytest.mark.parametrize(("seed", "page", "radix"), CASES)
def test_same_batches_and_retractions_as_stock_sglang(sglang_ready, seed, page, radix):
    reqs = script(seed)
    stock = StockSGLang(page, radix).run(reqs)
    ours = simulate(reqs, page, radix)
    assert any(kind == "D" and rids for kind, rids in stock), "script should make stock SGLang retract"
    assert any(kind == "P" and any(n == CHUNK for _, n in b) for kind, b in stock), "script should chunk"
    for i, (a, b) in enumerate(zip(stock, ours, strict=False)):
        assert a == b, f"step {i}: stock {a} vs policy {b}"
    assert len(stock) == len(ours)
