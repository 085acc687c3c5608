"""CacheOPT figures (C1-C5): tail latency and SLO attainment vs rate, maximum sustainable rate, ablation and
sensitivity, all from simulator cells on GPU latency profiles with real length data.

Setup (why): the paper's claim is about KV-cache competition, so the sweep runs from light load to past the
saturation of each profile/workload pair. Rates are multiples of a measured *capacity* (the completion rate of
``sarathi`` at token budget 2048 when every request arrives at once, as eval.accelgen_eval measures it), so one
load grid means the same pressure on every profile. SLOs: the default three classes of eval.slo (multiples of
each request's isolated latency). ``cacheopt`` sees output-length bounds from the synthetic estimator (the trained
predictor's held-out error, predictors.synthetic); the baselines see only ``max_new_tokens``, as in SGLang.

The *target rate* is the highest rate at which stock ``sglang`` holds >= 90% SLO attainment (bisection between
the sweep's last passing and first failing rate); the issue's ratios are measured there.
"""

from __future__ import annotations

from typing import Any

from eval.figures import Context, figure
from eval.figures import plots as P
from eval.figures.cells import BURST, predictor_for, sim_cell

SLO = "default"
POLICIES = ("sglang", "vllm", "sarathi", "cacheopt")
ATTAINMENT = 0.9
ABLATION = {
    "all on": {},
    "-C1 demand": {"ext_cacheopt_demand": False},
    "-C2 reuse": {"ext_cacheopt_reuse": False},
    "-C3 top-up/reserve": {"ext_cacheopt_topup": False, "ext_cacheopt_reserve_tokens": 0},
    "-C4 victim": {"ext_cacheopt_victim": False},
    "-C5 swap/recompute": {"ext_cacheopt_swap_or_recompute": False},
}
SENSITIVITY = {
    "ext_predictor_alpha": ((0.8, 0.95, 0.99), (0.5, 0.8, 0.9, 0.95, 0.99)),
    "ext_predictor_beta": ((0.0, 0.001, 0.1), (0.0, 0.0001, 0.001, 0.01, 0.1)),
    "ext_cacheopt_reserve_tokens": ((0, 64, 512), (0, 32, 64, 256, 1024)),
    "ext_cacheopt_topup_horizon": ((1, 2, 8), (1, 2, 4, 8, 16)),
}  # (quick values, full values)


def cell(
    ctx: Context,
    policy: str,
    prof: str,
    wl: str,
    rate: float | str,
    flags: dict | None = None,
    options: dict | None = None,
) -> dict[str, Any]:
    s = ctx.settings
    pred = predictor_for(flags) if "cacheopt" in policy else None
    seed = 1 if rate == BURST else 0
    return sim_cell(
        policy,
        prof,
        wl,
        rate,
        n=s.co_n,
        seed=seed,
        slo=SLO,
        pool_tokens=s.co_pool_tokens.get(prof),
        flags=flags,
        options=options,
        predictor=pred,
    )


def capacity(ctx: Context, prof: str, wl: str) -> float:
    r = ctx.runner.one(cell(ctx, "sarathi", prof, wl, BURST, options={"token_budget": 2048}), f"capacity {prof}")
    return r["summary"]["completed"] / r["summary"]["duration_s"]


def keys(ctx: Context) -> list[tuple[str, str]]:
    return [(p, w) for p in ctx.settings.co_profiles for w in ctx.settings.co_workloads]


def sweep(ctx: Context) -> dict[str, Any]:
    """``{"prof/wl": {"capacity", "rates", "policies": {policy: [cell result per rate]}}}``."""
    caps = {k: capacity(ctx, *k) for k in keys(ctx)}
    plan = [(k, round(caps[k] * x, 3), pol) for k in keys(ctx) for x in ctx.settings.co_loads for pol in POLICIES]
    res = ctx.runner.run([cell(ctx, pol, *k, rate) for k, rate, pol in plan], "cacheopt sweep")
    out: dict[str, Any] = {}
    for (k, rate, pol), r in zip(plan, res, strict=True):
        e = out.setdefault("/".join(k), {"capacity_rps": caps[k], "rates": [], "policies": {}})
        if rate not in e["rates"]:
            e["rates"].append(rate)
        e["policies"].setdefault(pol, []).append(r)
    return out


def _att(r: dict[str, Any]) -> float:
    return r["summary"]["slo_attainment"]


def max_rates(ctx: Context, runs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Highest rate with >= 90% SLO attainment per key and policy: the sweep brackets it, bisection refines it
    (``co_bisect_steps`` cells per policy). ``bounded`` is False when even the sweep's highest rate passes."""
    state: dict[tuple[str, str], dict[str, Any]] = {}
    for key, e in runs.items():
        for pol, rs in e["policies"].items():
            ok = [i for i, r in enumerate(rs) if _att(r) >= ATTAINMENT]
            fail = [i for i, r in enumerate(rs) if _att(r) < ATTAINMENT]
            first_fail = fail[0] if fail else None
            lo = max([i for i in ok if first_fail is None or i < first_fail], default=None)
            state[(key, pol)] = {
                "lo": e["rates"][lo] if lo is not None else 0.0,
                "hi": e["rates"][first_fail] if first_fail is not None else None,
                "bracketed_by_sweep": True,
            }
    for _ in range(ctx.settings.co_bisect_steps):
        todo = [(k, st) for k, st in state.items() if st["hi"] is not None]
        cells = [cell(ctx, pol, *key.split("/"), round((st["lo"] + st["hi"]) / 2, 4)) for (key, pol), st in todo]
        for ((_k, _p), st), r, c in zip(todo, ctx.runner.run(cells, "max-rate bisection"), cells, strict=True):
            st["lo" if _att(r) >= ATTAINMENT else "hi"] = c["rate"]
    out: dict[str, dict[str, Any]] = {}
    for (key, pol), st in state.items():
        out.setdefault(key, {})[pol] = {
            "max_rate": st["lo"],
            "first_failing_rate": st["hi"],
            "bounded": st["hi"] is not None,
        }
    return out


def target_rate(ctx: Context) -> dict[str, Any]:
    """Per key: the sglang target rate and every policy's cell there (the issue's comparison point)."""
    runs = sweep(ctx)
    mr = max_rates(ctx, runs)
    out: dict[str, Any] = {}
    for key in runs:
        rate = mr[key]["sglang"]["max_rate"] or runs[key]["rates"][0]
        res = ctx.runner.run([cell(ctx, pol, *key.split("/"), rate) for pol in POLICIES], "target rate")
        out[key] = {"rate": rate, "policies": dict(zip(POLICIES, res, strict=True))}
    return {"runs": runs, "max_rates": mr, "target": out}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _metric_rows(runs: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {
        key: {
            "capacity_rps": e["capacity_rps"],
            "rates": e["rates"],
            "policies": {pol: {f: [r["summary"][f] for r in rs] for f in fields} for pol, rs in e["policies"].items()},
        }
        for key, e in runs.items()
    }


@figure(
    "tail_latency_vs_rate",
    "p99 TTFT, pooled p99 TBT and p99 stall (worst gap per request) vs arrival rate",
    P.lines_vs_rate(("ttft_p99_ms", "tbt_p99_ms", "stall_p99_ms"), log=True),
)
def tail_latency_vs_rate(ctx: Context) -> dict[str, Any]:
    t = target_rate(ctx)
    fields = (
        "ttft_p95_ms",
        "ttft_p99_ms",
        "tbt_p95_ms",
        "tbt_p99_ms",
        "stall_p95_ms",
        "stall_p99_ms",
        "preemptions",
        "throughput_tok_s",
    )
    data = {"runs": _metric_rows(t["runs"], fields), "target": {}}
    for key, tr in t["target"].items():
        sg, co = tr["policies"]["sglang"]["summary"], tr["policies"]["cacheopt"]["summary"]
        data["target"][key] = {
            "rate": tr["rate"],
            "sglang": {f: sg[f] for f in fields},
            "cacheopt": {f: co[f] for f in fields},
            "stall_p99_x": _ratio(sg["stall_p99_ms"], co["stall_p99_ms"]),
            "ttft_p99_x": _ratio(sg["ttft_p99_ms"], co["ttft_p99_ms"]),
            "tbt_p99_x": _ratio(sg["tbt_p99_ms"], co["tbt_p99_ms"]),
        }
    data["best"] = _best_ratios(data["runs"])
    return data


def _best_ratios(rows: dict[str, Any]) -> dict[str, Any]:
    """The largest sglang/cacheopt ratio of each tail metric over every swept rate ("up to", as the paper)."""
    best: dict[str, Any] = {}
    for f in ("ttft_p99_ms", "tbt_p99_ms", "stall_p99_ms", "ttft_p95_ms", "tbt_p95_ms"):
        cands = []
        for key, e in rows.items():
            for i, rate in enumerate(e["rates"]):
                x = _ratio(e["policies"]["sglang"][f][i], e["policies"]["cacheopt"][f][i])
                if x is not None:
                    cands.append({"ratio": x, "key": key, "rate": rate})
        best[f] = max(cands, key=lambda c: c["ratio"], default=None)
    return best


@figure(
    "slo_attainment_vs_rate",
    "TTFT, TBT and joint SLO attainment vs arrival rate",
    P.lines_vs_rate(("ttft_slo_attainment", "tbt_slo_attainment", "slo_attainment"), ylim=(0, 1.02)),
)
def slo_attainment_vs_rate(ctx: Context) -> dict[str, Any]:
    runs = sweep(ctx)
    fields = ("ttft_slo_attainment", "tbt_slo_attainment", "slo_attainment", "goodput_rps")
    data = {"runs": _metric_rows(runs, fields), "best_gain_points": {}}
    for f in fields[:3]:
        cands = []
        for key, e in data["runs"].items():
            for i, rate in enumerate(e["rates"]):
                d = e["policies"]["cacheopt"][f][i] - e["policies"]["sglang"][f][i]
                cands.append({"points": 100 * d, "key": key, "rate": rate})
        data["best_gain_points"][f] = max(cands, key=lambda c: c["points"], default=None)
    return data


@figure("max_sustainable_rate", "highest arrival rate with >= 90% SLO attainment, per policy", P.max_rate_bars)
def max_sustainable_rate(ctx: Context) -> dict[str, Any]:
    t = target_rate(ctx)
    data: dict[str, Any] = {"attainment": ATTAINMENT, "runs": t["max_rates"], "ratio_vs_sglang": {}}
    for key, m in t["max_rates"].items():
        data["ratio_vs_sglang"][key] = {pol: _ratio(v["max_rate"], m["sglang"]["max_rate"]) for pol, v in m.items()}
    return data


def _variant_table(ctx: Context, variants: dict[str, dict], loads: tuple[float, ...], desc: str) -> dict[str, Any]:
    t = target_rate(ctx)
    out: dict[str, Any] = {}
    fields = ("slo_attainment", "ttft_p99_ms", "stall_p99_ms", "tbt_p99_ms", "preemptions", "goodput_rps")
    for key, tr in t["target"].items():
        rates = [round(tr["rate"] * x, 4) for x in loads]
        plan = [(name, rate) for name, _ in variants.items() for rate in rates]
        cells = [cell(ctx, "cacheopt", *key.split("/"), rate, flags=variants[name]) for name, rate in plan]
        cells += [cell(ctx, "sglang", *key.split("/"), rate) for rate in rates]
        res = ctx.runner.run(cells, desc)
        rows: dict[str, Any] = {}
        for (name, _rate), r in zip([*plan, *[("sglang (stock)", x) for x in rates]], res, strict=True):
            row = rows.setdefault(name, {f: [] for f in fields})
            for f in fields:
                row[f].append(r["summary"][f])
        out[key] = {"rates": rates, "variants": rows}
    return out


@figure(
    "cacheopt_ablation",
    "CacheOPT with one component switched off at a time, at and above the target rate",
    P.variant_bars,
)
def cacheopt_ablation(ctx: Context) -> dict[str, Any]:
    return {"runs": _variant_table(ctx, ABLATION, (1.0, 1.25), "ablation")}


@figure(
    "cacheopt_sensitivity",
    "CacheOPT's sensitivity to alpha, beta, reserve size and top-up horizon",
    P.sensitivity_lines,
)
def cacheopt_sensitivity(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for flag, (quick_vals, full_vals) in SENSITIVITY.items():
        vals = quick_vals if ctx.settings.quick else full_vals
        table = _variant_table(ctx, {f"{v}": {flag: v} for v in vals}, (1.0,), f"sensitivity {flag}")
        out[flag] = {"values": list(vals), "runs": table}
    return {"params": out}
