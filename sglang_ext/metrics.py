"""The extension's Prometheus metrics, exported on SGLang's own ``/metrics`` (names under ``sglang_ext:``).

Why here and how: SGLang runs prometheus_client in multiprocess mode. With ``--enable-metrics`` the launcher sets
``PROMETHEUS_MULTIPROC_DIR`` before it spawns the scheduler; each scheduler process writes its metric values to files
in that directory, and the HTTP process serves the union of all files at ``/metrics``
(``add_prometheus_middleware``). The adapter runs in the scheduler process, so its metrics are created there, the
same way SGLang's ``SchedulerMetricsCollector`` creates its own: prometheus_client is imported only then (never in
the launcher before the directory is set), gauges use ``multiprocess_mode="mostrecent"`` like SGLang's, and only
the schedulers SGLang lets export (attention-TP rank 0, or all with ``--enable-metrics-for-all-schedulers``) do.
Each series carries ``model_name`` (joins with ``sglang:*``), ``policy`` and ``dp_rank`` (one per DP worker; ``0``
without data parallelism).

Without ``--enable-metrics`` nothing is exported and nothing is turned on: the ``/metrics`` endpoint is SGLang's
operator switch (it adds a middleware, a temp directory and per-request work in the HTTP process), and a plugin
that flipped it on by itself would change a stock setting behind the operator's back. The adapter's counter line in
the server log stays, and :func:`get` returns a disabled :class:`ExtMetrics` whose methods do nothing.

The adapter calls :meth:`ExtMetrics.observe_plan` (admissions C2, reservations C1/C2, top-ups and the reserve
C3, chunk budget A1, decision time), :meth:`ExtMetrics.observe_victims` (C4/C5 decisions),
:meth:`ExtMetrics.observe_predictor` (C1 service answers) and :meth:`ExtMetrics.observe_finish` (bound coverage).
Preemptions are counted where SGLang really retracts (:data:`METRICS_HOOKS` sit before and after
``ScheduleBatch.retract_decode``), with the mode C5 decided for that request (recompute when the policy decided
nothing) and the cost the latency model gives for that mode.
"""

from __future__ import annotations

import logging
import numbers
import os
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from policies.cacheopt.swap import recompute_cost_s, swap_cost_s
from policies.views import IterationPlan, PreemptMode, RunningView, SchedulerView

logger = logging.getLogger("sglang_ext")

PREFIX = "sglang_ext:"
LABELS = ("model_name", "policy", "dp_rank")
MODES = tuple(m.value for m in PreemptMode)
COVERAGE = ("covered", "exceeded", "none")
POOL_STATES = ("capacity", "free", "evictable")
BUDGET_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
DECISION_BUCKETS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
PREDICTOR_BUCKETS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
MAX_TRACKED = 200_000  # per-request state kept until the request finishes; a bound against leaks


class ExtMetrics:
    """The metric objects and the small API the adapter calls. ``ExtMetrics()`` (no labels) is disabled: every
    method returns at once."""

    def __init__(
        self,
        labels: dict[str, str] | None = None,
        *,
        latency: Any = None,
        swap_block_tokens: int = 16,
        swap_block_overhead_s: float = 1e-6,
        kv_bytes_per_token: float = 0.0,
        registry: Any = None,
    ) -> None:
        """``labels``: values of :data:`LABELS`; ``None`` disables. ``latency``: the policy's latency model (C5 cost
        estimates). ``registry``: a prometheus ``CollectorRegistry`` (tests); ``None`` in the server, where
        multiprocess mode collects from files."""
        self.enabled = labels is not None
        self.latency = latency
        self.block_tokens, self.block_overhead_s = swap_block_tokens, swap_block_overhead_s
        self.kv_bytes_per_token = float(kv_bytes_per_token)
        self._bound: OrderedDict[str, int] = OrderedDict()  # rid -> output-length bound at admission
        self._admitted: OrderedDict[str, None] = OrderedDict()  # admitted, not yet finished or preempted
        self._predicted: OrderedDict[str, bool] = OrderedDict()  # rid -> an answer has been seen
        self._decided: dict[str, tuple[str, int, float]] = {}  # rid -> (mode, tokens, cost s) from C4/C5
        if not self.enabled:
            return
        from prometheus_client import Counter, Gauge, Histogram  # after PROMETHEUS_MULTIPROC_DIR is set

        assert labels is not None
        self.labels = {k: str(labels[k]) for k in LABELS}

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Any:
            return Counter(PREFIX + name, doc, (*LABELS, *extra), registry=registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
            return Histogram(PREFIX + name, doc, LABELS, buckets=buckets, registry=registry)

        self.admissions = counter("admissions", "Requests admitted by the policy, by kind (own allocation or "
                                  "reuse of another request's allocated-but-unused KV, C2).", ("kind",))  # fmt: skip
        self.reserved_tokens = counter("reserved_tokens", "KV tokens reserved for own admissions (prompt + bounded "
                                       "output, C1/C2).")  # fmt: skip
        self.reused_tokens = counter("reused_tokens", "KV tokens admitted into other requests' allocated-but-unused "
                                     "KV (C2 reuse).")  # fmt: skip
        self.topups = counter("topups", "Proactive top-ups of running requests' allocations (C3).")
        self.topup_tokens = counter("topup_tokens", "KV tokens added by top-ups (C3).")
        self.reserve = Gauge(PREFIX + "reserve_tokens", "Global reserve level after the last plan (C3).", LABELS,
                             multiprocess_mode="mostrecent", registry=registry)  # fmt: skip
        self.pool_tokens = Gauge(PREFIX + "kv_pool_tokens", "This worker's KV pool at the last plan, by state "
                                 "(capacity, physically free, evictable radix cache): with --dp-size each worker has "
                                 "its own pool.", (*LABELS, "state"), multiprocess_mode="mostrecent",
                                 registry=registry)  # fmt: skip
        self.preemptions = counter("preemptions", "Requests SGLang preempted, by the mode C5 chose.", ("mode",))
        self.preempted_tokens = counter("preempted_tokens", "KV tokens of preempted requests (own, not the shared "
                                        "prefix), by mode.", ("mode",))  # fmt: skip
        self.preempted_bytes = counter("preempted_bytes", "KV bytes of preempted requests, by mode.", ("mode",))
        self.preemption_seconds = counter("preemption_seconds", "Latency-model cost of the preemptions, by mode "
                                          "(swap: out and back; recompute: the re-prefill).", ("mode",))  # fmt: skip
        self.swap_fallbacks = counter("swap_fallbacks", "Swaps C5 chose that ran as recompute (less than a page of "
                                      "KV, host swap space full, or the copy not restored at resume).")  # fmt: skip
        self.swap_bytes = counter("swap_bytes", "KV bytes copied by executed swaps (C5), by direction (out: device "
                                  "to host; in: host to device).", ("direction",))  # fmt: skip
        self.swap_seconds = counter("swap_seconds", "Wall time of the swap copies (C5), by direction.",
                                    ("direction",))  # fmt: skip
        self.predictor_requests = counter("predictor_requests", "Requests whose length the scheduler asked the "
                                          "predictor service for (C1).")  # fmt: skip
        self.predictor_fallbacks = counter("predictor_fallbacks", "Requests first planned before the service's "
                                           "answer came (the documented fallback bound was used).")  # fmt: skip
        self.predictor_latency = histogram("predictor_latency_seconds", "Submission (at arrival) to the answer in "
                                           "the scheduler's hands.", PREDICTOR_BUCKETS)  # fmt: skip
        self.finished = counter("finished_requests", "Finished requests by whether the output-length bound used at "
                                "admission covered the true length (C1 coverage).", ("bound",))  # fmt: skip
        self.chunk_budget = histogram("chunk_budget_tokens", "Forward-token budget the policy set per iteration "
                                      "(A1 chunk sizing; decodes + prefill chunk).", BUDGET_BUCKETS)  # fmt: skip
        self.decision_seconds = histogram("policy_decision_seconds", "Time the policy took to plan one iteration.",
                                          DECISION_BUCKETS)  # fmt: skip
        lab = self.labels
        for kind in ("own", "reuse"):  # every series exists from the start (0 until it happens)
            self.admissions.labels(**lab, kind=kind)
        for m in MODES:
            for c in (self.preemptions, self.preempted_tokens, self.preempted_bytes, self.preemption_seconds):
                c.labels(**lab, mode=m)
        for b in COVERAGE:
            self.finished.labels(**lab, bound=b)
        for d in ("out", "in"):
            self.swap_bytes.labels(**lab, direction=d)
            self.swap_seconds.labels(**lab, direction=d)
        for c in (self.reserved_tokens, self.reused_tokens, self.topups, self.topup_tokens, self.swap_fallbacks,
                  self.predictor_requests, self.predictor_fallbacks, self.predictor_latency, self.chunk_budget,
                  self.decision_seconds):  # fmt: skip
            c.labels(**lab)
        self.reserve.labels(**lab).set(0)

    # --- the adapter's API ---------------------------------------------------------------------------------------
    def observe_plan(self, view: SchedulerView, plan: IterationPlan, decision_s: float) -> None:
        """One policy decision: new admissions by kind with their reservations, top-ups, the reserve level, the
        forward budget and the decision time. A request counts as admitted once until it finishes or is preempted
        (a chunked prefill continuing, or a plan SGLang could not apply and the next plan repeats, is no new
        admission; a preempted request admitted again is)."""
        if not self.enabled:
            return
        lab = self.labels
        waiting = {w.rid: w for w in view.waiting}
        for a in plan.admit:
            w = waiting.get(a.rid)
            if w is None or a.rid in self._admitted or w.prefilled_len > 0 or a.rid == view.chunked_rid:
                continue
            _remember(self._admitted, a.rid, None)
            if a.host_rid is None:
                self.admissions.labels(**lab, kind="own").inc()
                self.reserved_tokens.labels(**lab).inc(max(a.reserve_tokens, 0))
            else:
                self.admissions.labels(**lab, kind="reuse").inc()
                self.reused_tokens.labels(**lab).inc(max(a.reserve_tokens, 0))
            if w.estimate is not None and a.rid not in self._bound:
                _remember(self._bound, a.rid, int(w.estimate.bound))
        if plan.topups:
            self.topups.labels(**lab).inc(len(plan.topups))
            self.topup_tokens.labels(**lab).inc(sum(max(t, 0) for _, t in plan.topups))
        reserve = plan.notes.get("reserve_left", view.pool.reserve_tokens)
        self.reserve.labels(**lab).set(float(reserve))
        pool = view.pool
        for state, n in zip(POOL_STATES, (pool.capacity_tokens, pool.free_tokens, pool.evictable_tokens), strict=True):
            self.pool_tokens.labels(**lab, state=state).set(float(n))
        if plan.token_budget is not None:
            self.chunk_budget.labels(**lab).observe(float(plan.token_budget))
        self.decision_seconds.labels(**lab).observe(max(float(decision_s), 0.0))

    def observe_victims(self, view: SchedulerView, victims: Iterable[Any]) -> None:
        """C4/C5 decided these victims (``Preempt``: rid, mode); remembered until SGLang retracts them."""
        if not self.enabled:
            return
        running = {r.rid: r for r in view.running}
        for v in victims:
            r = running.get(v.rid)
            if r is not None:
                mode = PreemptMode(v.mode)
                self._decided[v.rid] = (mode.value, max(r.kv_used - r.cached_len, 0), self._cost_s(r, mode))

    def observe_preemption(self, mode: str, tokens: int, seconds: float, bytes_: float | None = None) -> None:
        """One request preempted by ``mode`` (``swap``/``recompute``), freeing ``tokens`` of its own KV; ``seconds``
        is the cost estimate; ``bytes_`` defaults to ``tokens`` x the pool's KV bytes per token."""
        if not self.enabled:
            return
        lab = {**self.labels, "mode": PreemptMode(mode).value}
        self.preemptions.labels(**lab).inc()
        self.preempted_tokens.labels(**lab).inc(max(tokens, 0))
        self.preempted_bytes.labels(**lab).inc(max(tokens, 0) * self.kv_bytes_per_token if bytes_ is None else bytes_)
        self.preemption_seconds.labels(**lab).inc(max(seconds, 0.0))

    def observe_swap(self, direction: str, nbytes: int, seconds: float) -> None:
        """One executed swap copy (``out`` or ``in``) of ``nbytes`` taking ``seconds`` (C5, adapter/swap.py)."""
        if not self.enabled:
            return
        self.swap_bytes.labels(**self.labels, direction=direction).inc(max(nbytes, 0))
        self.swap_seconds.labels(**self.labels, direction=direction).inc(max(seconds, 0.0))

    def observe_swap_fallback(self) -> None:
        """A swap C5 chose ran as recompute (adapter/swap.py says why in its stats and log)."""
        if self.enabled:
            self.swap_fallbacks.labels(**self.labels).inc()

    def observe_predictor(self, rid: str, answered: bool, since_submit_s: float) -> None:
        """The scheduler looked up ``rid``'s predicted length: counted once per request (a fallback if the first
        look found no answer); the latency is recorded when an answer is first seen."""
        if not self.enabled:
            return
        seen = self._predicted.get(rid)
        if seen is None:
            self.predictor_requests.labels(**self.labels).inc()
            if not answered:
                self.predictor_fallbacks.labels(**self.labels).inc()
        if answered and not seen:
            self.predictor_latency.labels(**self.labels).observe(max(float(since_submit_s), 0.0))
        if seen is None or (answered and not seen):
            _remember(self._predicted, rid, answered)

    def observe_finish(self, rid: str, output_len: int) -> None:
        """A request finished with ``output_len`` tokens: was the bound it was admitted with enough?"""
        self._predicted.pop(rid, None)
        self._decided.pop(rid, None)
        self._admitted.pop(rid, None)
        bound = self._bound.pop(rid, None)
        if not self.enabled:
            return
        outcome = "none" if bound is None else "covered" if output_len <= bound else "exceeded"
        self.finished.labels(**self.labels, bound=outcome).inc()

    # --- SGLang's retraction -------------------------------------------------------------------------------------
    def observe_retracted(self, before: dict[str, tuple[int, int]], retracted: Iterable[Any]) -> None:
        """Requests SGLang retracted; ``before``: rid -> (own KV tokens, sequence length) taken before the call."""
        for req in retracted:
            self._admitted.pop(req.rid, None)
            decided = self._decided.pop(req.rid, None)
            own, seq = before.get(req.rid, (0, 0))
            if decided is not None:
                mode, tokens, cost = decided
            else:
                mode, tokens = PreemptMode.RECOMPUTE.value, own
                cost = self.latency.prefill_s(own, max(seq - own, 0)) if self.latency is not None else 0.0
            self.observe_preemption(mode, tokens, cost)

    def _cost_s(self, r: RunningView, mode: PreemptMode) -> float:
        if self.latency is None:
            return 0.0
        if mode is PreemptMode.SWAP:
            own = max(r.kv_used - r.cached_len, 0)
            return swap_cost_s(own, self.latency, self.block_tokens, self.block_overhead_s)
        return recompute_cost_s(r, self.latency)


def _remember(d: OrderedDict[str, Any], key: str, value: Any) -> None:
    d[key] = value
    while len(d) > MAX_TRACKED:
        d.popitem(last=False)


_DISABLED = ExtMetrics()
_CURRENT: ExtMetrics = _DISABLED


def get() -> ExtMetrics:
    """This process's metrics (a disabled instance until :func:`install` enabled them)."""
    return _CURRENT


def install(sched: Any, cfg: Any, latency: Any = None) -> ExtMetrics:
    """Create the metrics in a scheduler process when SGLang exports metrics from it (see the module docstring)."""
    global _CURRENT
    labels = scheduler_labels(sched, cfg)
    if labels is None:
        logger.info("sglang_ext: metrics off (start with --enable-metrics to export sglang_ext:* on /metrics)")
        _CURRENT = _DISABLED
        return _CURRENT
    if latency is None:
        from profiles import get as get_profile

        latency = get_profile(cfg.latency_profile)
    co = cfg.cacheopt
    _CURRENT = ExtMetrics(labels, latency=latency, swap_block_tokens=co.swap_block_tokens,
                          swap_block_overhead_s=co.swap_block_overhead_us * 1e-6,
                          kv_bytes_per_token=kv_bytes_per_token(sched.token_to_kv_pool_allocator))  # fmt: skip
    logger.info("sglang_ext: metrics on /metrics under %s* (pid=%d, labels %s)", PREFIX, os.getpid(), labels)
    return _CURRENT


def scheduler_labels(sched: Any, cfg: Any) -> dict[str, str] | None:
    """The labels of this scheduler's series, or ``None`` when SGLang exports no metrics from this process."""
    if not cfg.enabled or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    try:
        from sglang.srt.runtime_context import get_observability, get_parallel, get_serving

        obs, par = get_observability(), get_parallel()
        if not obs.enable_metrics or not (par.attn_tp_rank == 0 or obs.enable_metrics_for_all_schedulers):
            return None
        model = str(get_serving().served_model_name)
        dp = par.dp_rank
    except (ImportError, AttributeError, ValueError) as e:
        logger.warning("sglang_ext: metrics off: cannot read SGLang's observability settings (%s)", e)
        return None
    return {"model_name": model, "policy": cfg.policy, "dp_rank": str(dp if dp is not None else 0)}


def kv_bytes_per_token(allocator: Any) -> float:
    """KV bytes one token occupies in the device pool (all layers, K and V), from SGLang's pool; 0 if unknown."""
    try:
        kv = allocator.get_kvcache()
        sizes = kv.get_kv_size_bytes()
        rows = int(allocator.size) + int(getattr(allocator, "page_size", 1) or 1)  # SGLang keeps a padding page
        return float(sum(_flatten(sizes))) / rows
    except Exception:  # an exotic pool layout must not stop the server: bytes then read 0
        return 0.0


def _flatten(x: Any) -> Iterable[float]:
    if isinstance(x, numbers.Real):  # numpy integers too
        yield float(x)
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _flatten(y)


# --- hooks (registered by sglang_ext.plugin.load) --------------------------------------------------------------
def after_scheduler_init(result: Any, sched: Any, *args: Any, **kwargs: Any) -> None:
    from sglang_ext import config

    try:
        install(sched, config.current())
    except Exception as e:  # metrics must never stop the server
        logger.warning("sglang_ext: metrics off: %s: %s", type(e).__name__, e)


_BEFORE_RETRACT: dict[int, dict[str, tuple[int, int]]] = {}  # id(batch) -> its requests' KV before retract_decode


def before_retract_decode(batch: Any, *args: Any, **kwargs: Any) -> None:
    """BEFORE and AFTER hooks, not a second AROUND beside the adapter's (SGLang warns about stacked AROUNDs)."""
    if _CURRENT.enabled:
        _BEFORE_RETRACT[id(batch)] = {r.rid: _own_tokens(r) for r in batch.reqs}


def after_retract_decode(result: Any, batch: Any, *args: Any, **kwargs: Any) -> None:
    before = _BEFORE_RETRACT.pop(id(batch), None)
    if before is None or not _CURRENT.enabled:
        return
    try:
        _CURRENT.observe_retracted(before, result[0])
    except Exception as e:  # metrics must never stop the scheduler
        logger.warning("sglang_ext: preemption metrics failed: %s: %s", type(e).__name__, e)


def _own_tokens(req: Any) -> tuple[int, int]:
    """(KV tokens the request holds outside the prefix cache, its sequence length): SGLang's ``Req.kv`` marks its
    own KV as ``[cache_protected_len, kv_allocated_len)``."""
    seq = len(req.origin_input_ids) + len(req.output_ids)
    try:
        own = int(req.kv.kv_allocated_len) - int(req.kv.cache_protected_len)
    except (AttributeError, TypeError, ValueError):
        own = seq - int(getattr(req, "prefix_len", 0) or 0)
    return max(own, 0), seq


METRICS_HOOKS = (
    ("sglang.srt.managers.scheduler.Scheduler.__init__", after_scheduler_init, "AFTER"),
    ("sglang.srt.managers.schedule_batch.ScheduleBatch.retract_decode", before_retract_decode, "BEFORE"),
    ("sglang.srt.managers.schedule_batch.ScheduleBatch.retract_decode", after_retract_decode, "AFTER"),
)
