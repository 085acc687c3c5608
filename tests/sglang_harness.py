"""The offline SGLang harness behind the faithfulness tests of the ``sglang`` baseline (and ``edf``): SGLang 0.5.23's
own scheduler classes stepped on CPU like its scheduler, the same request scripts through the simulator, and the
scripts themselves.

The SGLang side (:class:`StockSGLang`) drives the real ``SchedulePolicy``, ``PrefillAdder``,
``NewTokenRatioTracker``, ``ScheduleBatch`` (``init_new`` / ``prepare_for_extend`` / ``mix_with_running`` /
``check_decode_mem`` / ``retract_decode`` / ``prepare_for_decode``), ``TokenToKVPoolAllocator`` /
``PagedTokenToKVPoolAllocator`` and ``RadixCache`` with the same per-step sequence as
``Scheduler.get_next_batch_to_run`` / ``_get_new_batch_prefill_raw`` / ``update_running_batch`` / the batch-result
processor (non-overlap mode), for the flags in :class:`Mode`: mixed chunk, request slots and priority scheduling
with its preemption. No model runs: each forward "samples" one token per request. Both sides see one iteration per
time unit. Traces: ``("P", prefill batch)``, ``("M", prefill batch with the decodes mixed in)``, ``("D", retracted)``
for a decode step, ``("X", preempted)`` for a preemption to schedule.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from array import array
from dataclasses import dataclass

from eval.sim import Simulator
from eval.sim.build import sim_capabilities
from eval.workloads import RequestSpec
from policies.base import policy_class
from policies.config import ExtConfig, SGLangBaselineConfig
from policies.latency import IterationLatencyModel

POOL = 700
CHUNK = 64
CONSERVATIVENESS = 0.3
Script = list[tuple[int, str, int, int, int]]


def script(seed: int, n: int = 32, long: bool = False) -> Script:
    """(arrival step, rid, prompt, true output, max_new_tokens): long prompts (chunked) and outputs that often
    run to their cap, so the optimistic ratio over-admits and decode runs out of KV. ``long`` adds prompts of up to
    330 tokens (several chunks) and longer outputs."""
    rng = random.Random(seed)
    out, t = [], 0
    for i in range(n):
        t += rng.choice([0, 0, 1, 2, 5])
        if long:
            prompt = rng.choice([rng.randint(8, 60), rng.randint(65, 200), rng.randint(150, 330)])
            cap = rng.randint(20, 160)
            true = cap if rng.random() < 0.85 else rng.randint(1, cap)
        else:
            prompt = rng.choice([rng.randint(8, 60), rng.randint(65, 200)])
            cap = rng.randint(20, 120)
            true = cap if rng.random() < 0.8 else rng.randint(1, cap)
        out.append((t, f"r{i}", prompt, true, cap))
    return out


def crowd(n: int, cap: int, t_long: int, long_prompt: int) -> Script:
    """``n`` short requests that run to their cap at step 0, then one long prompt at ``t_long``: the crowd's
    decodes, mixed into the long prompt's chunks, use up the KV the chunks were charged against."""
    return [(0, f"b{i}", 5, cap, cap) for i in range(n)] + [(t_long, "L", long_prompt, 1, 1)]


def priorities(seed: int, rids: list[str], values: tuple[int | None, ...] = (0, 5, 20, 30, None)) -> dict:
    """A priority per request (None: the client sent none), drawn like SLO classes."""
    rng = random.Random(seed + 10_000)
    return {rid: rng.choice(values) for rid in rids}


@dataclass(frozen=True)
class Mode:
    """The SGLang flags a case runs under (both sides): ``--enable-mixed-chunk``, ``--max-running-requests`` and
    priority scheduling (``prio``: per-request priorities by rid; None = no priority scheduling)."""

    page: int = 1
    radix: bool = False
    mixed: bool = False
    max_running: int | None = None
    prio: dict[str, int | None] | None = None
    ttft_ms: dict[str, float] | None = None  # TTFT SLOs by rid (custom_params in SGLang), for ``edf``
    low_first: bool = False
    threshold: int = 10
    preemption: bool = True
    retraction: str = "length"

    def baseline_config(self) -> SGLangBaselineConfig:
        classes = ",".join(f"{rid}={p}" for rid, p in (self.prio or {}).items() if p is not None)
        return SGLangBaselineConfig(
            chunked_prefill_size=CHUNK, schedule_conservativeness=CONSERVATIVENESS, mixed_chunk=self.mixed,
            enable_priority_scheduling=self.prio is not None, schedule_low_priority_values_first=self.low_first,
            priority_scheduling_preemption_threshold=self.threshold, disable_priority_preemption=not self.preemption,
            retraction_policy=self.retraction, priority_by_class=classes,
        )  # fmt: skip


def simulate(reqs, page: int = 1, radix: bool = False, mode: Mode | None = None, policy: str = "sglang") -> list:
    """The ``sglang`` policy in the simulator; the trace of prefill ("P"), mixed ("M") and decode ("D", with its
    retractions) steps, and preemptions to schedule ("X")."""
    mode = mode if mode is not None else Mode(page, radix)
    cfg = ExtConfig(sglang=mode.baseline_config())
    lat = IterationLatencyModel(c0_s=1.0, c_tok_s=0.0)
    caps = sim_capabilities(policy, cfg, page_size=mode.page)
    pol = policy_class(policy)(lat, cfg, dataclasses.replace(caps, max_running_requests=mode.max_running))
    trace: list[tuple] = []
    plan, victims = pol.plan, pol.choose_victims

    def rec_plan(view):
        p = plan(view)
        if p.preempt:
            trace.append(("X", tuple(sorted(x.rid for x in p.preempt))))
        if p.admit:
            trace.append(("M" if p.run_decodes else "P", tuple((a.rid, a.prefill_tokens) for a in p.admit)))
        elif len(view.running) > len(p.preempt):
            trace.append(("D", ()))
        return p

    def rec_victims(view, need):
        v = victims(view, need)
        trace[-1] = ("D", trace[-1][1] + tuple(x.rid for x in v))
        return v

    pol.plan, pol.choose_victims = rec_plan, rec_victims
    # a request's class is its rid, so --ext-sglang-priority-by-class maps rid -> priority
    ttft = mode.ttft_ms or {}
    specs = [RequestSpec(rid, float(t), p, o, m, ttft_slo_ms=ttft.get(rid), slo_class=rid) for t, rid, p, o, m in reqs]
    sim = Simulator(pol, lat, pool_tokens=POOL, page_size=mode.page, prefix_cache=mode.radix)
    res = sim.run(specs)
    assert all(r.ok for r in res.records)
    return trace


class StockSGLang:
    """The real classes, stepped like ``Scheduler.event_loop_normal`` (no overlap): ``get_next_batch_to_run`` with
    ``_get_new_batch_prefill_raw`` (mixed chunk, request slots and priority preemption as in the scheduler) and
    ``update_running_batch``."""

    def __init__(self, page: int = 1, radix: bool = False, mode: Mode | None = None) -> None:
        import torch
        from sglang.srt.managers.schedule_batch import ScheduleBatch
        from sglang.srt.managers.schedule_policy import SchedulePolicy
        from sglang.srt.managers.scheduler_components.new_token_ratio_tracker import NewTokenRatioTracker
        from sglang.srt.mem_cache.allocator import PagedTokenToKVPoolAllocator, TokenToKVPoolAllocator
        from sglang.srt.mem_cache.cache_init_params import CacheInitParams
        from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
        from sglang.srt.mem_cache.radix_cache import RadixCache

        self.mode = mode = mode if mode is not None else Mode(page, radix)
        page, radix = mode.page, mode.radix
        self.rtp = ReqToTokenPool(size=128, max_context_len=4096, device="cpu", enable_memory_saver=False)
        self.page = page
        kv = MHATokenToKVPool(POOL, page, torch.float16, 1, 4, 1, "cpu", False)
        if page == 1:
            self.alloc = TokenToKVPoolAllocator(POOL, dtype=torch.float16, device="cpu", kvcache=kv, need_sort=False)
        else:
            self.alloc = PagedTokenToKVPoolAllocator(POOL, page, torch.float16, "cpu", kv, False)
        self.tc = RadixCache(CacheInitParams(disable=not radix, req_to_token_pool=self.rtp,
                                             token_to_kv_pool_allocator=self.alloc, page_size=page))  # fmt: skip
        self.prio = mode.prio is not None
        self.preemption = self.prio and mode.preemption  # enable_priority_preemption
        self.policy = SchedulePolicy("fcfs", self.tc, False, self.prio, mode.low_first)
        self.tracker = NewTokenRatioTracker.from_config()
        self.running = ScheduleBatch(reqs=[], batch_is_full=False)
        self.waiting: list = []
        self.chunked = None
        self.last_batch = None
        self.target: dict[str, int] = {}
        self.trace: list[tuple] = []
        self._clock = 0
        self.now = 0  # the current step (a host clock for the adapter)
        self.sat_out = 0  # mixed mode: prefill steps the running decodes sat out (no room for their next token)

    def run(self, reqs) -> list[tuple]:
        from sglang.srt.managers.schedule_batch import Req
        from sglang.srt.sampling.sampling_params import SamplingParams

        pending = sorted(reqs, key=lambda x: x[0])
        step = 0
        tok = 7
        prio = self.mode.prio or {}
        ttft = self.mode.ttft_ms or {}
        while pending or self.waiting or self.chunked or not self.running.is_empty() or self.last_batch:
            self.now = step
            while pending and pending[0][0] <= step:
                _, rid, p, o, m = pending.pop(0)
                slo = {"ttft_slo_ms": ttft[rid]} if rid in ttft else None
                sp = SamplingParams(max_new_tokens=m, custom_params=slo)
                sp.normalize(None)
                req = Req(rid, "", array("q", range(tok, tok + p)), sp, vocab_size=100_000, priority=prio.get(rid))
                self.queue(req)
                tok += p
                self.target[rid] = o
            if not self.step():
                if not pending:
                    break
                step = max(step + 1, pending[0][0])
                continue
            step += 1
        return self.trace

    def queue(self, req) -> None:
        """``_add_request_to_queue``: the default priority, then append with a new queue-entry time."""
        if self.prio and req.priority is None:
            req.priority = sys.maxsize if self.mode.low_first else -sys.maxsize - 1
        self._clock += 1
        req.time_stats.wait_queue_entry_time = float(self._clock)
        self.waiting.append(req)

    def allocatable(self, running) -> int:
        """``get_num_allocatable_reqs``: request slots (the req-to-token pool here is larger than the cap)."""
        cap = self.mode.max_running
        return (cap if cap is not None else 10**9) - running.batch_size()

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
            kind, admitted = "P", tuple((r.rid, r.extend_len) for r in batch.reqs)
            if self.mode.mixed and not self.running.is_empty() and self.running.check_decode_mem():
                running = self.running  # mix_with_running (the scheduler's mixed-chunk branch)
                running.prepare_for_decode()
                batch.mix_with_running(running)
                batch.decoding_reqs = running.reqs
                self.running = type(running)(reqs=[], batch_is_full=running.batch_is_full)
                kind = "M"
            elif self.mode.mixed and not self.running.is_empty():
                self.sat_out += 1
            self.trace.append((kind, admitted))
            self.finish_batch(batch)
            self.last_batch = batch
            return True
        running = self.running
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

        if self.preemption:
            running.batch_is_full = False
        if running.is_empty():
            running.batch_is_full = False
        if (running.batch_is_full or not self.waiting) and self.chunked is None:
            return None
        if self.allocatable(running) <= 0 and self.chunked is None and not self.preemption:
            running.batch_is_full = True
            return None
        self.policy.calc_priority(self.waiting, running)
        mixed = running.batch_size() if self.mode.mixed else 0
        adder = PrefillAdder(self.page, self.tc, self.alloc, running, self.tracker.current, 16384, CHUNK, mixed,
                             self.mode.threshold)  # fmt: skip
        if self.chunked is not None:
            self.chunked.init_next_round_input()
            adder.chunked_req_limit = self.policy.shortest_prefill_chunk_limit(
                self.chunked, self.waiting, adder.rem_chunk_tokens or 0, self.page
            )
            self.chunked = adder.add_chunked_req(self.chunked)
        for req in self.waiting:
            if adder.budget_state() == AddReqResult.OTHER:
                break
            if len(adder.can_run_list) >= self.allocatable(running):
                running.batch_is_full = True
            if running.batch_is_full and (not self.preemption or not adder.preempt_to_schedule(req)):
                break
            req.init_next_round_input(self.tc)
            res = adder.add_one_req(req, has_chunked_req=self.chunked is not None, truncation_align_size=None)
            if res != AddReqResult.CONTINUE:
                if res == AddReqResult.NO_TOKEN:
                    running.batch_is_full = len(adder.can_run_list) > 0 or not running.is_empty()
                break
        if adder.preempt_list:
            # SGLang re-queues them in the iteration order of a set (by object id: arbitrary); fix it to the
            # preemption order (lowest priority, most recently queued first), one of the orders SGLang can take
            sign = 1 if self.mode.low_first else -1
            adder.preempt_list.sort(key=lambda r: (r.priority * -sign, -r.time_stats.wait_queue_entry_time))
            self.trace.append(("X", tuple(sorted(r.rid for r in adder.preempt_list))))
        if not adder.can_run_list:
            for req in adder.preempt_list:
                self.queue(req)
            return None
        admitted = set(adder.can_run_list)
        self.waiting = [r for r in self.waiting if r not in admitted]
        for req in adder.preempt_list:
            self.queue(req)
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

    def finish_batch(self, batch) -> None:
        """The prefill (or mixed) batch's result: the decode rows and finished prefills emit a token."""
        from sglang.srt.mem_cache.common import checkpoint_kv_cache

        decoding = batch.decoding_reqs or ()
        for req in batch.reqs:
            if req in decoding:
                self.emit(req)
                continue
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
            for req in retracted:
                self.queue(req)
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


def publish_server_args(mode: Mode | None = None) -> None:
    """SGLang reads some flags from the published server args (retraction policy, low-values-first)."""
    from sglang.srt.runtime_context import publish
    from sglang.srt.server_args import ServerArgs

    mode = mode if mode is not None else Mode()
    sa = ServerArgs(model_path="dummy", device="cpu", chunked_prefill_size=CHUNK, page_size=mode.page,
                    schedule_policy="fcfs", schedule_conservativeness=CONSERVATIVENESS, max_total_tokens=POOL,
                    disable_radix_cache=not mode.radix, enable_mixed_chunk=mode.mixed,
                    enable_priority_scheduling=mode.prio is not None,
                    schedule_low_priority_values_first=mode.low_first,
                    priority_scheduling_preemption_threshold=mode.threshold,
                    disable_priority_preemption=not mode.preemption, retraction_policy=mode.retraction)  # fmt: skip
    publish(sa, role="scheduler")
