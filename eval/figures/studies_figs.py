"""Studies on one KV-bound scenario: CacheOPT with one component off (ablation, C1-C5), its sensitivity to the
estimates' quality and its knobs, and the combined ``cacheopt+accelgen`` beside each paper's system.

Where: the first CacheOPT scenario of the run that binds on KV (``kv`` mentions "tight" or "bound"), at
``study_loads`` x the stored capacity, every variant against its matched SGLang in the same compare run. The
sensitivity's estimate regimes are eval.estimates' (in-distribution, off-source) and "none" (C1 falls back to the
visible cap).
"""

from __future__ import annotations

from typing import Any

from eval import scenarios as SC
from eval.figures import Context, figure
from eval.figures import plots as P
from eval.figures import sweeps as W
from eval.variants import VARIANTS, Variant

FIELDS = ("slo_attainment", "ttft_p99_ms", "stall_p99_ms", "tbt_p99_ms", "goodput_rps", "throughput_tok_s")
ABLATION = {
    "-C1 demand": {"ext_cacheopt_demand": False},
    "-C2 reuse": {"ext_cacheopt_reuse": False},
    "-C2 reuse (host scope)": {"ext_cacheopt_reuse_scope": "host"},
    "-C3 top-up": {"ext_cacheopt_topup": False},
    "-C4 victim": {"ext_cacheopt_victim": False},
    "-C5 swap/recompute": {"ext_cacheopt_swap_or_recompute": False},
}
SENSITIVITY = {  # flag: values (quick runs the first and last)
    "ext_predictor_alpha": (0.5, 0.8, 0.9, 0.99),
    "ext_predictor_beta": (0.0, 0.01, 0.05, 0.5),
    "ext_cacheopt_reserve_tokens": (0, 64, 256, 1024),
    "ext_cacheopt_topup_horizon": (0, 1, 4, 16),
}


def study_scenario(ctx: Context) -> str:
    for name in ctx.settings.co_scenarios:
        sc = SC.get(name)
        if not sc.burst and ("tight" in sc.kv or "bound" in sc.kv):
            return name
    return ctx.settings.co_scenarios[0]


def _table(doc: dict[str, Any]) -> dict[str, Any]:
    if "skipped" in doc:
        return {"skipped": doc["skipped"]}
    out = {}
    for setting, sec in doc["slo"].items():
        m = W.means(sec, FIELDS)
        out[setting] = {"rates": doc["rates"],
                        "variants": {v: {f: m[v][f] for f in (*FIELDS, "preempt_per_1k")} for v in m}}  # fmt: skip
    return {"scenario": doc["scenario"], "settings": out}


def _cacheopt(name: str, flags: dict[str, Any], *, estimates: bool = True) -> Variant:
    base = VARIANTS["cacheopt"]
    return Variant(name, "cacheopt", {**base.flags, **flags}, False, estimates=estimates)


@figure(
    "cacheopt_ablation",
    "CacheOPT with one component switched off at a time (C1-C5), beside matched sglang",
    P.variant_bars,
)
def cacheopt_ablation(ctx: Context) -> dict[str, Any]:  # fmt: skip
    vs = ["sglang", "cacheopt", *(_cacheopt(f"cacheopt {k}", f) for k, f in ABLATION.items())]
    doc = W.compare(ctx, study_scenario(ctx), vs, loads=ctx.settings.study_loads, desc="ablation")
    return _table(doc)


@figure(
    "cacheopt_sensitivity",
    "CacheOPT's sensitivity to the estimates' quality (in-distribution, off-source, none) "
    "and to alpha, beta, reserve and top-up horizon",
    P.sensitivity_lines,
)
def cacheopt_sensitivity(ctx: Context) -> dict[str, Any]:  # fmt: skip
    sc = study_scenario(ctx)
    load = (ctx.settings.study_loads[-1],)
    vs: list[Any] = ["sglang", "cacheopt", _cacheopt("cacheopt (no estimates)", {}, estimates=False)]
    for flag, values in SENSITIVITY.items():
        vals = (values[0], values[-1]) if ctx.settings.quick else values
        vs += [_cacheopt(f"cacheopt {flag.removeprefix('ext_')}={v}", {flag: v}) for v in vals]
    main = _table(W.compare(ctx, sc, vs, loads=load, desc="sensitivity"))
    off = _table(W.compare(ctx, sc, ["sglang", "cacheopt"], loads=load, regime="off-source", desc="off-source"))
    return {"main": main, "off_source": off, "params": {k: list(v) for k, v in SENSITIVITY.items()}}


@figure("combined_mode", "cacheopt+accelgen beside each paper's system on each paper's scenario", P.combined_bars)
def combined_mode(ctx: Context) -> dict[str, Any]:  # fmt: skip
    s = ctx.settings
    out: dict[str, Any] = {}
    co = study_scenario(ctx)
    out[f"cacheopt setting: {co}"] = _table(W.compare(
        ctx, co, ["sglang", "sglang-mixed", "cacheopt", "cacheopt-mixed", "accelgen", "cacheopt+accelgen"],
        loads=s.study_loads, desc="combined (cacheopt)"))  # fmt: skip
    ag = s.ag_scenarios[0]
    out[f"accelgen setting: {ag}"] = _table(W.compare(
        ctx, ag, ["sglang", "sglang-mixed", "sglang-tuned", "cacheopt-mixed", "accelgen", "cacheopt+accelgen"],
        loads=s.study_loads, desc="combined (accelgen)", anchor="sglang-mixed"))  # fmt: skip
    return {"runs": out}
