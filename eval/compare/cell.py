"""One comparison cell: one variant of one scenario at one rate, seed and SLO setting, simulated.

Why cells: a comparison is hundreds of independent simulations. Each is described by a JSON-able dict that holds
everything it depends on (the scenario's resolved profile, pool, chunk, context and workload settings, the variant's
policy, flags, chunk, batching mode and estimates), so it can be cached under a key of those parameters and of the
code's fingerprint (``eval.figures.cells``) and run in any worker process. The SLOs are the scenario's and never
depend on the variant: relative TTFT objectives use the profile's device-default chunk for every variant.

Seeds draw different workloads: they seed the Poisson arrivals, SLO classes, sampled rows and estimate errors, and on
a trace workload (which replays a contiguous slice of the trace) seed ``k`` replays the slice starting at row
``k x requests``, so a burst (no arrivals to vary) and every trace scenario see other requests per seed. The slice
start is recorded in the parameters when it is not 0.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from eval.scenarios import BURST, Scenario
from eval.variants import Variant

KIND = "compare"


def priority_by_class(slo_spec: str) -> str:
    """``--ext-sglang-priority-by-class`` for SGLang's priority scheduling: tighter TBT objective = higher priority
    (classes without one last). The same classes, the same order, whatever the variant."""
    from eval.slo import parse_slo
    from policies.latency import IterationLatencyModel

    spec = parse_slo(slo_spec, IterationLatencyModel(c0_s=1e-3, c_tok_s=1e-5))  # only the objectives matter
    if spec is None or len(spec.classes) < 2:
        return ""
    key = {c.name: (c.tbt.value if c.tbt is not None else float("inf")) for c in spec.classes}
    levels = sorted(set(key.values()), reverse=True)  # loosest first -> priority 0
    return ",".join(f"{name}={levels.index(v)}" for name, v in sorted(key.items()))


def cell_params(scenario: Scenario, variant: Variant, rate: float | str, seed: int, slo_setting: str, *,
                num_requests: int | None = None, regime: str | None = None,
                latency_error: str = "exact") -> dict[str, Any]:  # fmt: skip
    """The cell's parameters (everything its result depends on besides the code). ``latency_error``
    (eval.latency_error's spec) makes the policy's latency model wrong and/or the simulated truth jitter."""
    import profiles

    prof = profiles.get(scenario.profile)
    chunk = prof.chunked_prefill_size or 2048
    slo = scenario.slo_spec(slo_setting)
    flags = dict(variant.flags)
    if flags.get("ext_sglang_enable_priority_scheduling"):
        flags.setdefault("ext_sglang_priority_by_class", priority_by_class(slo))
    n = num_requests or scenario.num_requests
    wl = scenario.workload_kwargs()
    if seed:
        wl["start"] = seed * n  # ignored by sampled sources; a trace replays another slice
    return {
        "kind": KIND, "scenario": scenario.name, "profile": scenario.profile, "workload": scenario.workload,
        "n": n, "seed": seed,
        "rate": rate if rate == BURST else round(float(rate), 4), "slo_setting": slo_setting, "slo": slo,
        "workload_kwargs": wl, "page_size": scenario.page_size,
        "pool_tokens": scenario.pool_tokens or prof.kv_capacity_tokens, "device_chunk": chunk,
        "context_len": prof.context_len, "variant": variant.name, "policy": variant.policy, "flags": flags,
        "chunk": variant.chunk or chunk, "mixed": variant.mixed, "attrs": dict(variant.attrs),
        "estimates": (regime or scenario.estimates) if variant.estimates else None,
        **({} if latency_error in ("", "exact") else {"latency_error": latency_error}),
    }  # fmt: skip


def _variant_of(params: dict[str, Any]) -> Variant:
    return Variant(params["variant"], params["policy"], params["flags"], params["mixed"], params["chunk"],
                   params["estimates"] is not None, attrs=params.get("attrs", {}))  # fmt: skip


def run_cell(params: dict[str, Any]) -> dict[str, Any]:
    """Simulate one cell (pure: the same parameters and code give the same result)."""
    import numpy as np

    import profiles
    from eval import latency_error
    from eval.estimates import simulated_estimator
    from eval.metrics import summarize_by_class
    from eval.sim import Simulator
    from eval.slo import parse_slo
    from eval.variants import build_policy
    from eval.workloads import load_workload
    from policies.config import from_flat

    t0 = time.perf_counter()
    prof = profiles.get(params["profile"])
    burst = params["rate"] == BURST
    slo = parse_slo(params["slo"], prof, params["device_chunk"])
    specs = load_workload(params["workload"], num_requests=params["n"], rate=1.0 if burst else params["rate"],
                          seed=params["seed"], slo=slo, **params["workload_kwargs"])  # fmt: skip
    if burst:
        specs = [replace(s, arrival_s=0.0) for s in specs]
    variant = _variant_of(params)
    err = latency_error.parse(params.get("latency_error", "exact"))
    pol = build_policy(variant, err.policy_model(prof), page_size=params["page_size"], chunk=params["chunk"],
                       context_len=params["context_len"])  # fmt: skip
    est = None
    if params["estimates"] is not None:
        pcfg = from_flat(params["flags"]).predictor
        rate = float(len(specs)) if burst else float(params["rate"])
        est = simulated_estimator(specs, regime=params["estimates"], rate=rate, alpha=pcfg.alpha, beta=pcfg.beta,
                                  seed=params["seed"] + 17)  # fmt: skip
    pool = int(params["pool_tokens"])
    res = Simulator(
        pol, err.truth(prof, params["seed"]), pool_tokens=pool, page_size=params["page_size"], estimator=est
    ).run(specs)
    st = res.stats
    n = max(len(specs), 1)
    done = [r for r in res.records if r.ok and r.finish_s is not None]
    out: dict[str, Any] = {
        "summary": res.summary,
        "by_class": summarize_by_class(res.records),
        "e2e_mean_ms": float(np.mean([(r.finish_s - r.arrival_s) * 1e3 for r in done])) if done else None,
        "kv_peak_frac": st.kv_peak_tokens / pool,
        "kv_mean_frac": st.kv_token_s / st.span_s / pool if st.span_s > 0 else 0.0,
        "preempt_per_1k": {
            "recompute": 1e3 * st.preempt_recompute / n,
            "swap": 1e3 * st.preempt_swap / n,
            "total": 1e3 * (st.preempt_recompute + st.preempt_swap) / n,
        },
        "rejected": st.rejected,
        "aborted": st.aborted,
        "iterations": st.iterations,
        "stats": {k: v for k, v in vars(st).items() if isinstance(v, (int, float))},
        "pool_tokens": pool,
        "wall_s": time.perf_counter() - t0,
    }
    if hasattr(pol, "totals"):
        out["decisions"] = {k: v for k, v in dict(pol.totals).items() if isinstance(v, (int, float))}
    if hasattr(pol, "exact_decisions"):
        total = pol.exact_decisions + pol.heuristic_decisions
        out["oracle_exact_share"] = pol.exact_decisions / total if total else 1.0
    return out


def register() -> None:
    """Make ``eval.figures.cells.CellRunner`` run compare cells (also in its worker processes)."""
    from eval.figures.cells import register_runner

    register_runner(KIND, run_cell)
