"""The adapter: one object per scheduler process that holds what SGLang does not (arrival times, per-request KV
allocations, predictor answers) and calls the configured policy. It translates state to views and decisions to
SGLang's knobs; every scheduling decision comes from the policy object.

Clock: the adapter is the host, so it reads ``time.monotonic()`` and passes ``now_s`` in the view (policies never
read clocks).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from typing import Any

from policies import base as policy_registry
from policies.capabilities import HostCapabilities
from policies.config import ExtConfig
from policies.latency import BatchShape
from policies.views import SLO, IterationPlan, LengthEstimate, PreemptMode, SchedulerView
from predictors.online import OnlineLengthBound
from sglang_ext.adapter import swap, translate

logger = logging.getLogger("sglang_ext")

RATE_WINDOW_S = 30.0
LOG_EVERY_S = float(os.environ.get("SGLANG_EXT_LOG_EVERY_S", "10"))  # counters line period in the server log
IDLE_FACTOR = 5.0  # a period this many times the predicted iteration time contains idle time


def _latency_model(cfg: ExtConfig) -> Any:
    from profiles import get

    return get(cfg.latency_profile)


class Adapter:
    def __init__(self, cfg: ExtConfig, caps: HostCapabilities | None = None) -> None:
        """``caps``: what the running scheduler offers (its chunk, page size, batching mode, ...)."""
        self.cfg = cfg
        self.t0 = time.monotonic()
        self.latency = _latency_model(cfg)
        self.caps = caps if caps is not None else HostCapabilities()
        self.policy = policy_registry.create(cfg.policy, self.latency, cfg, self.caps)
        self.default_slo = SLO(cfg.default_ttft_slo_ms or None, cfg.default_tbt_slo_ms or None)
        self.arrival: dict[str, float] = {}
        self.first_token: dict[str, float] = {}
        self.last_token: dict[str, tuple[int, float]] = {}  # rid -> (output_len, time it was first seen)
        self.out_alloc: dict[str, int] = {}  # output tokens the policy reserved (admission + top-ups)
        self.guest_of: dict[str, str] = {}  # guest rid -> host rid (C2 reuse)
        self.known: dict[str, int] = {}  # rid -> last seen output length, to detect finishes
        self.arrivals: deque[float] = deque()
        self.counters: Counter[str] = Counter()
        self.plan: IterationPlan | None = None
        self.plan_rank: dict[str, int] = {}
        self.plan_out: dict[str, int] = {}
        self._last_log = 0.0
        self.predictor = self._start_predictor()
        self.online: OnlineLengthBound | None = None
        if cfg.predictor.mode == "online":
            self.online = OnlineLengthBound(cfg.predictor.alpha, cfg.predictor.beta)
        self._rate = 0.0
        self._iter_prev: tuple[BatchShape, float] | None = None
        logger.info("sglang_ext: adapter active in scheduler pid=%d policy=%s", os.getpid(), cfg.policy)

    # --- clock and arrivals ------------------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def on_arrival(self, req: Any) -> None:
        if req.rid in self.arrival:
            return
        now = self.now()
        self.arrival[req.rid] = now
        self.arrivals.append(now)
        self.counters["arrivals"] += 1
        if self.predictor is not None:
            text = getattr(req, "origin_input_text", None)
            ids = None if text else list(req.origin_input_ids)
            self.predictor.submit(req.rid, text=text, token_ids=ids,
                                  max_new_tokens=int(req.sampling_params.max_new_tokens or 0))  # fmt: skip

    def arrival_rate(self, now: float) -> float:
        while self.arrivals and self.arrivals[0] < now - RATE_WINDOW_S:
            self.arrivals.popleft()
        span = min(RATE_WINDOW_S, max(now, 1e-3))
        return len(self.arrivals) / span

    # --- predictor ---------------------------------------------------------------------------------------------
    def _start_predictor(self) -> Any:
        pc = self.cfg.predictor
        if pc.mode != "service":
            return None
        from predictors.client import PredictorClient

        endpoint = pc.endpoint or os.environ.get("SGLANG_EXT_PREDICTOR_ENDPOINT", "")
        if not endpoint:
            logger.error("sglang_ext: predictor mode=service but no endpoint was published; using fallbacks")
            return None
        return PredictorClient(endpoint, fallback=pc.fallback)

    def _estimate(self, req: Any) -> LengthEstimate | None:
        if self.online is not None:
            est = self.online.estimate(int(req.sampling_params.max_new_tokens or 0), len(req.output_ids), self._rate)
            self.counters["online_fallbacks" if est.fallback else "online_estimates"] += 1
            return est
        if self.predictor is None:
            return None
        est = self.predictor.estimate(req.rid)
        if est is None:
            self.counters["predictor_fallbacks"] += 1
            return self.predictor.fallback(req.rid, int(req.sampling_params.max_new_tokens or 0))
        self.counters["predictor_answers"] += 1
        return est

    # --- views -------------------------------------------------------------------------------------------------
    def build_view(self, sched: Any, running_reqs: list[Any], chunked_req: Any) -> SchedulerView:
        now = self.now()
        self._rate = self.arrival_rate(now)
        if self.predictor is not None:
            self.predictor.poll()
        self._track_tokens(running_reqs, now)
        waiting = []
        for req in sched.waiting_queue:
            self.on_arrival(req)
            slo = translate.request_slo(req, self.default_slo)
            waiting.append(translate.waiting_view(req, self.arrival[req.rid], slo, self._estimate(req),
                                                  self.first_token.get(req.rid)))  # fmt: skip
        if chunked_req is not None and all(w.rid != chunked_req.rid for w in waiting):
            self.on_arrival(chunked_req)
            slo = translate.request_slo(chunked_req, self.default_slo)
            waiting.insert(0, translate.waiting_view(chunked_req, self.arrival[chunked_req.rid], slo,
                                                     self._estimate(chunked_req), None, chunked=True))  # fmt: skip
        running = []
        for req in running_reqs:
            self.on_arrival(req)
            slo = translate.request_slo(req, self.default_slo)
            last = self.last_token.get(req.rid)
            running.append(translate.running_view(
                req, self.arrival[req.rid], slo, self._estimate(req), self.out_alloc.get(req.rid),
                last[1] if last else None, self.first_token.get(req.rid)))  # fmt: skip
        reserve = 0
        if self.predictor is not None and (decision := self.predictor.reservation()) is not None:
            reserve = int(decision[1])
        pool = translate.pool_view(sched.token_to_kv_pool_allocator, sched.tree_cache, reserve)
        live = {r.rid for r in sched.waiting_queue} | {r.rid for r in running_reqs}
        if chunked_req is not None:
            live.add(chunked_req.rid)
        self._reap_finished(live)
        rate = self._rate
        if self.predictor is not None:
            self.predictor.push_stats(rate, pool.capacity_tokens, pool.capacity_tokens - pool.free_tokens,
                                      len(running))  # fmt: skip
        return translate.scheduler_view(now, waiting, running, pool, rate,
                                        chunked_req.rid if chunked_req is not None else None)  # fmt: skip

    def _track_tokens(self, running_reqs: list[Any], now: float) -> None:
        for req in running_reqs:
            n = len(req.output_ids)
            prev = self.last_token.get(req.rid)
            if prev is None or prev[0] != n:
                self.last_token[req.rid] = (n, now)
                if n > 0:
                    self.first_token.setdefault(req.rid, now)
            self.known[req.rid] = n

    def _reap_finished(self, live: set[str]) -> None:
        for rid in [r for r in self.known if r not in live]:
            out = self.known.pop(rid)
            self.policy.on_finish(rid, out)
            if self.online is not None:
                self.online.observe(out)
            if self.predictor is not None:
                self.predictor.report_finish(rid, out)
            for d in (self.arrival, self.first_token, self.last_token, self.out_alloc, self.guest_of):
                d.pop(rid, None)
            self.counters["finished"] += 1

    # --- measured iterations (A1 online refit) -------------------------------------------------------------
    def on_iteration_start(self, batch: Any) -> None:
        """The period between two forward launches is the iteration time a reader sees (forward + scheduling);
        it is attributed to the previous batch's shape. Periods that include idle sleep are not measurements."""
        now = time.monotonic()
        if self._iter_prev is not None:
            shape, start = self._iter_prev
            seconds = now - start
            predicted = self.latency.iteration_s(shape)
            if seconds <= max(IDLE_FACTOR * predicted, 0.05):
                self.policy.observe_iteration(shape, seconds)
                self.counters["iterations_measured"] += 1
        self._iter_prev = (translate.batch_shape(batch), now)

    # --- decisions ---------------------------------------------------------------------------------------------
    def make_plan(self, sched: Any, running_batch: Any) -> IterationPlan:
        view = self.build_view(sched, list(running_batch.reqs), sched.chunked_req)
        plan = self.policy.plan(view)
        self.plan = plan
        self.plan_rank = {a.rid: i for i, a in enumerate(plan.admit)}
        waiting = {w.rid: w for w in view.waiting}
        self.plan_out = {}
        for a in plan.admit:
            w = waiting.get(a.rid)
            prompt_part = (w.prompt_len + w.output_len - w.cached_len) if w else a.prefill_tokens
            self.plan_out[a.rid] = max(a.reserve_tokens - prompt_part, 0)
            if a.host_rid is not None:
                self.guest_of[a.rid] = a.host_rid
                self.counters["reuse_admits"] += 1
        for rid, extra in plan.topups:
            self.out_alloc[rid] = self.out_alloc.get(rid, 0) + extra
            self.counters["topups"] += 1
        if plan.preempt:
            self.counters["plan_preempts"] += len(plan.preempt)
        self.counters["plans"] += 1
        self.counters["admitted"] += len(plan.admit)
        if self.cfg.log_decisions:
            logger.info("sglang_ext plan: admit=%s budget=%s topups=%s", [a.rid for a in plan.admit],
                        plan.token_budget, plan.topups)  # fmt: skip
        self._maybe_log()
        return plan

    def on_admitted(self, req: Any) -> None:
        """SGLang committed the request to the batch: its planned output reservation becomes its allocation."""
        if req.rid in self.plan_out:
            self.out_alloc[req.rid] = self.plan_out[req.rid] if req.rid not in self.guest_of else 0

    def running_offset(self, req: Any) -> int | None:
        """Tokens SGLang's budget should still hold for a running request: its allocation minus what it used."""
        if req.rid not in self.out_alloc:
            return None
        return max(self.out_alloc[req.rid] - len(req.output_ids), 0)

    def retraction_order(self, batch: Any, reqs: list[Any], default: list[int]) -> list[int]:
        """SGLang pops victims from the end of the returned index list: put the policy's victims there."""
        pool = translate.pool_view(batch.token_to_kv_pool_allocator, batch.tree_cache)
        tokens_needed = max(len(reqs) * pool.page_size - pool.available_tokens, 1)
        view = SchedulerView(
            now_s=self.now(),
            waiting=(),
            running=tuple(
                translate.running_view(
                    r,
                    self.arrival.get(r.rid, 0.0),
                    translate.request_slo(r, self.default_slo),
                    self._estimate(r),
                    self.out_alloc.get(r.rid),
                    None,
                    None,
                )
                for r in reqs
            ),
            pool=pool,
        )
        victims = self.policy.choose_victims(view, tokens_needed)
        idx = translate.index_by_rid(reqs)
        chosen = [idx[v.rid] for v in victims if v.rid in idx]
        mgr = swap.manager()
        for v in victims:
            self.counters[f"victim_{v.mode.value}_decided"] += 1
            if mgr is not None:
                mgr.mark(v.rid, v.mode)  # swap.around_release_req copies SWAP victims out before SGLang frees them
            elif v.mode is PreemptMode.SWAP:
                self.counters["swap_unavailable_recomputed"] += 1  # no swap manager here (see swap.usable)
        rest = [i for i in default if i not in set(chosen)]
        return rest + list(reversed(chosen))

    def _maybe_log(self) -> None:
        now = self.now()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            logger.info("sglang_ext counters: %s", dict(sorted(self.counters.items())))
            if (mgr := swap.manager()) is not None and (mgr.stats.swaps_out or mgr.stats.recompute_marked):
                logger.info("sglang_ext swap stats: %s", mgr.stats.as_dict())
