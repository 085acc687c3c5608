"""The adapter: SGLang's side of the host layer. One object per scheduler process; it converts SGLang's requests and
pools into the policies' views, hands the plan to SGLang's own machinery through the hooks, and reports back what
SGLang executed. Everything a host must do the same way as the simulator (arrival rate, the allocation ledger, the
engine budget a plan is executed under, the iteration filter) is :class:`host.core.HostCore`; what stays here is
translation and what SGLang does not keep (arrival and token times, predictor answers).

Clock: the adapter is the host, so it reads ``time.monotonic()`` and passes ``now_s`` in the view (policies never
read clocks).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from host.budget import decode_need, kv_to_free
from host.core import HostCore
from policies import base as policy_registry
from policies.capabilities import HostCapabilities
from policies.config import ExtConfig
from policies.latency import BatchShape
from policies.views import SLO, Admit, IterationPlan, LengthEstimate, PreemptMode, SchedulerView, WaitingView
from predictors.online import OnlineLengthBound
from sglang_ext import metrics as ext_metrics
from sglang_ext.adapter import swap, translate

logger = logging.getLogger("sglang_ext")

LOG_EVERY_S = float(os.environ.get("SGLANG_EXT_LOG_EVERY_S", "10"))  # counters line period in the server log


def _latency_model(cfg: ExtConfig) -> Any:
    from profiles import get

    return get(cfg.latency_profile)


class Adapter:
    def __init__(self, cfg: ExtConfig, caps: HostCapabilities | None = None, latency: Any = None,
                 worker: translate.Worker | None = None) -> None:  # fmt: skip
        """``caps``: what the running scheduler offers (its chunk, page size, batching mode, ...); ``latency``: the
        latency model policies start from (default: the configured profile); ``worker``: which data-parallel worker
        of which server this scheduler is (its name keys its state in a shared predictor service)."""
        self.cfg = cfg
        self.worker = worker if worker is not None else translate.Worker(0, "")
        self.t0 = time.monotonic()
        self.latency = latency if latency is not None else _latency_model(cfg)
        self.caps = caps if caps is not None else HostCapabilities()
        self.policy = policy_registry.create(cfg.policy, self.latency, cfg, self.caps)
        self.core = HostCore(self.policy)
        self.counters = self.core.counters
        self.default_slo = SLO(cfg.default_ttft_slo_ms or None, cfg.default_tbt_slo_ms or None)
        self.arrival: dict[str, float] = {}
        self.first_token: dict[str, float] = {}
        self.last_token: dict[str, tuple[int, float]] = {}  # rid -> (output_len, time it was first seen)
        self.known: dict[str, int] = {}  # live requests (running or mid-prefill) -> last seen output length
        self.plan: IterationPlan | None = None
        self.plan_rank: dict[str, int] = {}
        self.plan_admits: dict[str, tuple[Admit, WaitingView, int, int]] = {}  # rid -> admit, view, total, out
        self.victim_modes: dict[str, PreemptMode] = {}  # the policy's mode for each request SGLang retracts
        self._last_log = 0.0
        self.predictor = self._start_predictor()
        self.online: OnlineLengthBound | None = None
        if cfg.predictor.mode == "online":
            self.online = OnlineLengthBound(cfg.predictor.alpha, cfg.predictor.beta)
        self._rate = 0.0  # the rate the policy reads (this worker's, or the cluster's with rate_scope=cluster)
        self._own_rate = 0.0  # this worker's arrivals only (what it reports to the predictor service)
        self._iter_prev: tuple[BatchShape, float] | None = None
        logger.info("sglang_ext: adapter active in scheduler pid=%d policy=%s dp_rank=%d worker=%s rate_scope=%s",
                    os.getpid(), cfg.policy, self.worker.dp_rank, self.worker.name or "-",
                    cfg.predictor.rate_scope)  # fmt: skip

    # --- clock and arrivals ------------------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def on_arrival(self, req: Any) -> None:
        if req.rid in self.arrival:
            return
        now = self.now()
        self.arrival[req.rid] = now
        self.core.arrived(req.rid, now)
        if self.predictor is not None:
            text = getattr(req, "origin_input_text", None)
            ids = None if text else list(req.origin_input_ids)
            custom = getattr(req.sampling_params, "custom_params", None) or {}
            custom = custom if isinstance(custom, dict) else {}  # predictor source / calibration class, if named
            self.predictor.submit(req.rid, text=text, token_ids=ids,
                                  max_new_tokens=int(req.sampling_params.max_new_tokens or 0),
                                  source=custom.get("predictor_source"), cls=custom.get("predictor_class"))  # fmt: skip

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
        return PredictorClient(endpoint, fallback=pc.fallback, worker=self.worker.name)

    def _scoped_rate(self) -> float:
        """The arrival rate the policy reads (C1's confidence, the pool rule): this worker's own, or with
        ``--ext-predictor-rate-scope cluster`` the service's sum over all live workers (this worker's own while the
        service has not answered, or its answer expired)."""
        if self.cfg.predictor.rate_scope == "cluster" and self.predictor is not None:
            cluster = self.predictor.cluster_rate()
            if cluster is not None:
                return max(cluster, self._own_rate)
        return self._own_rate

    def _estimate(self, req: Any) -> LengthEstimate | None:
        if self.online is not None:
            est = self.online.estimate(int(req.sampling_params.max_new_tokens or 0), len(req.output_ids), self._rate)
            self.counters["online_fallbacks" if est.fallback else "online_estimates"] += 1
            return est
        if self.predictor is None:
            return None
        est = self.predictor.estimate(req.rid)
        ext_metrics.get().observe_predictor(req.rid, est is not None, self.now() - self.arrival.get(req.rid, 0.0))
        if est is None:
            self.counters["predictor_fallbacks"] += 1
            return self.predictor.fallback(req.rid, int(req.sampling_params.max_new_tokens or 0))
        self.counters["predictor_answers"] += 1
        return est

    # --- views -------------------------------------------------------------------------------------------------
    def build_view(self, sched: Any, running_reqs: list[Any], chunked_req: Any) -> SchedulerView:
        now = self.now()
        for req in sched.waiting_queue:  # arrivals first (normally already seen by the add-request hook)
            self.on_arrival(req)
        self._own_rate = self.core.arrival_rate(now)
        if self.predictor is not None:
            self.predictor.poll()
        self._rate = self._scoped_rate()
        self._track_tokens(running_reqs, now)
        core = self.core
        mgr = swap.manager()
        waiting = []
        for req in sched.waiting_queue:
            self.on_arrival(req)
            slo = translate.request_slo(req, self.default_slo)
            swapped = mgr is not None and mgr.is_swapped_out(req.rid)  # its KV comes back by swap-in (C5)
            waiting.append(translate.waiting_view(req, self.arrival[req.rid], slo, self._estimate(req),
                                                  self.first_token.get(req.rid), swapped_out=swapped))  # fmt: skip
        if chunked_req is not None and all(w.rid != chunked_req.rid for w in waiting):
            self.on_arrival(chunked_req)
            slo = translate.request_slo(chunked_req, self.default_slo)
            entry = core.ledger.get(chunked_req.rid)
            waiting.insert(0, translate.waiting_view(
                chunked_req, self.arrival[chunked_req.rid], slo, self._estimate(chunked_req), None, chunked=True,
                kv_allocated=(entry.cached + entry.alloc) if entry else 0,
                cached_len=entry.cached if entry else None))  # fmt: skip
        running = []
        for req in running_reqs:
            self.on_arrival(req)
            slo = translate.request_slo(req, self.default_slo)
            last = self.last_token.get(req.rid)
            used = translate.kv_in_use(req)
            running.append(translate.running_view(
                req, self.arrival[req.rid], slo, self._estimate(req), core.allocation(req.rid, used),
                last[1] if last else None, self.first_token.get(req.rid)))  # fmt: skip
        reserve = 0
        if self.predictor is not None and (decision := self.predictor.reservation()) is not None:
            reserve = int(decision[1])
        pool = translate.pool_view(sched.token_to_kv_pool_allocator, sched.tree_cache, reserve)
        live = {r.rid for r in running_reqs}
        if chunked_req is not None:
            live.add(chunked_req.rid)
        self._reconcile(live)
        if self.predictor is not None:
            self.predictor.push_stats(self._own_rate, pool.capacity_tokens, pool.capacity_tokens - pool.free_tokens,
                                      len(running), self.cfg.predictor.rate_scope)  # fmt: skip
        return translate.scheduler_view(now, waiting, running, pool, self._rate,
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

    def _reconcile(self, live: set[str]) -> None:
        """Requests the adapter knew that left neither by finishing (seen in ``on_finished``) nor by retraction:
        aborted by SGLang or the client. Their allocations return."""
        for rid in [r for r in self.known if r not in live]:
            out = self.known.pop(rid)
            self.core.aborted(rid, out)
            ext_metrics.get().observe_finish(rid, out)
            self._forget(rid)

    def _forget(self, rid: str) -> None:
        for d in (self.arrival, self.first_token, self.last_token, self.victim_modes):
            d.pop(rid, None)

    # --- leaving -----------------------------------------------------------------------------------------------
    def on_finished(self, req: Any) -> None:
        """SGLang finished ``req`` (its KV is being released): the exact final output length reaches the policy,
        the ledger and the predictor."""
        rid = req.rid
        out = len(req.output_ids)
        if rid not in self.arrival and rid not in self.core.ledger:
            return  # not a request this adapter saw (or already reported)
        self.core.finished(rid, out)
        ext_metrics.get().observe_finish(rid, out)
        if self.online is not None:
            self.online.observe(out)
        if self.predictor is not None:
            self.predictor.report_finish(rid, out)
        self.known.pop(rid, None)
        self._forget(rid)

    def on_retracted(self, reqs: list[Any]) -> None:
        """SGLang retracted ``reqs`` back to the waiting queue (decode OOM or a plan's preemption)."""
        for req in reqs:
            mode = self.victim_modes.pop(req.rid, PreemptMode.RECOMPUTE)
            self.core.preempted(req.rid, mode)
            self.known.pop(req.rid, None)
        self.counters["retractions"] += len(reqs)

    # --- measured iterations (A1 online refit) -------------------------------------------------------------
    def on_iteration_start(self, batch: Any) -> None:
        """The period between two forward launches is the iteration time a reader sees (forward + scheduling);
        it is attributed to the previous batch's shape. The host layer's filter drops periods with idle time."""
        now = time.monotonic()
        if self._iter_prev is not None:
            shape, start = self._iter_prev
            self.core.measured(shape, now - start)
        self._iter_prev = (translate.batch_shape(batch), now)

    # --- decisions ---------------------------------------------------------------------------------------------
    def make_plan(self, sched: Any, running_batch: Any) -> IterationPlan:
        view = self.build_view(sched, list(running_batch.reqs), sched.chunked_req)
        t = time.perf_counter()
        plan = self.core.plan(view)
        decision_s = time.perf_counter() - t
        self.counters["decision_us_total"] += int(decision_s * 1e6)
        ext_metrics.get().observe_plan(view, plan, decision_s)
        self.plan = plan
        self.plan_rank = {a.rid: i for i, a in enumerate(plan.admit)}
        waiting = {w.rid: w for w in view.waiting}
        self.plan_admits = {}
        for a in plan.admit:
            w = waiting.get(a.rid)
            if w is not None:
                total, out = self.core.admission_terms(a, w)
                self.plan_admits[a.rid] = (a, w, total, out)
        if plan.preempt:
            self.counters["plan_preempts"] += len(plan.preempt)
        if self.cfg.log_decisions:
            logger.info("sglang_ext plan: admit=%s budget=%s hold=%s topups=%s notes=%s", [a.rid for a in plan.admit],
                        plan.token_budget, plan.kv_hold, plan.topups, plan.notes)  # fmt: skip
        self._maybe_log()
        return plan

    def holds_budget(self) -> bool:
        """Whether SGLang's prefill budget runs on this plan's numbers (policies that own their KV accounting)."""
        return self.policy.owns_kv_accounting and self.plan is not None

    def budget_hold(self) -> int:
        return self.core.budget_hold()

    def admission_terms(self, rid: str) -> tuple[int, int] | None:
        """(total tokens SGLang's check charges, output its commit reserves) of a planned admission."""
        x = self.plan_admits.get(rid)
        return None if x is None else (x[2], x[3])

    def on_admitted(self, req: Any) -> None:
        """SGLang committed ``req`` to the batch: the ledger records the plan's allocation for it."""
        x = self.plan_admits.get(req.rid)
        if x is not None:
            self.core.committed(x[0], x[1])
        self.known.setdefault(req.rid, len(req.output_ids))  # a request that ends in its prefill step is reaped too

    def refused(self, req: Any) -> None:
        x = self.plan_admits.get(req.rid)
        if x is not None:
            self.core.refused(x[0])

    def retraction_order(self, batch: Any, reqs: list[Any], default: list[int]) -> list[int]:
        """SGLang pops victims from the end of the returned index list: put the policy's victims there."""
        pool = translate.pool_view(batch.token_to_kv_pool_allocator, batch.tree_cache)
        running = tuple(
            translate.running_view(
                r, self.arrival.get(r.rid, 0.0), translate.request_slo(r, self.default_slo), self._estimate(r),
                self.core.allocation(r.rid, translate.kv_in_use(r)), None, None,
            )
            for r in reqs
        )  # fmt: skip
        view = SchedulerView(now_s=self.now(), waiting=(), running=running, pool=pool, arrival_rate=self._rate)
        victims = self.core.victims(view, kv_to_free(decode_need(running, pool.page_size), pool.available_tokens))
        ext_metrics.get().observe_victims(view, victims)
        idx = translate.index_by_rid(reqs)
        chosen = [idx[v.rid] for v in victims if v.rid in idx]
        mgr = swap.manager()
        for v in victims:
            self.victim_modes[v.rid] = v.mode if self.caps.swap else PreemptMode.RECOMPUTE
            self.counters[f"victim_{v.mode.value}_decided"] += 1
            if mgr is not None:  # swap.around_release_req copies SWAP victims out before SGLang frees them
                mgr.mark(v.rid, self.victim_modes[v.rid])
        rest = [i for i in default if i not in set(chosen)]
        return rest + list(reversed(chosen))

    def _maybe_log(self) -> None:
        now = self.now()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            logger.info("sglang_ext counters: %s", dict(sorted(self.counters.items())))
            if (mgr := swap.manager()) is not None and (mgr.stats.swaps_out or mgr.stats.recompute_marked):
                logger.info("sglang_ext swap stats: %s", mgr.stats.as_dict())
