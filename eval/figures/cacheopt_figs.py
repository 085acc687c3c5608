"""CacheOPT figures (C1-C5): tail latency and SLO attainment vs rate, maximum sustainable rate, ablation and
sensitivity, all from simulator cells on GPU latency profiles with real length data.

Setup: eval.cacheopt_eval's (its estimator, capacity measure and SLO classes are used, not copied). The paper's
claim is about KV-cache competition, so the sweep runs from light load to past saturation. Rates are multiples of
a measured *capacity* (``sglang``'s completion rate when every request arrives at once), so one load grid means
the same pressure on every profile; with relative TBT SLOs the SLO capacity is far lower, hence the low multiples.
``cacheopt`` (KV management only) and ``cacheopt-mixed`` (plus decodes riding with prefill chunks) see length
estimates with the trained predictor's held-out error; the baselines see only ``max_new_tokens``, as in SGLang.

The *target rate* is the highest rate at which stock ``sglang`` holds >= 90% SLO attainment (bisection between
the sweep's last passing and first failing rate); the issue's ratios are measured there.
"""

from __future__ import annotations

from typing import Any

from eval.figures import Context, figure
from eval.figures import plots as P
from eval.figures.cells import BURST, predictor_for, sim_cell

SLO = "default"  # eval.cacheopt_eval's three classes (tight/medium/loose)
POLICIES: dict[str, tuple[str, dict[str, Any]]] = {
    "sglang": ("sglang", {}),
    "vllm": ("vllm", {}),
    "sarathi": ("sarathi", {}),
    "cacheopt": ("cacheopt", {}),
    "cacheopt-mixed": ("cacheopt", {"ext_cacheopt_mixed_chunk": True}),
}
OURS = ("cacheopt", "cacheopt-mixed")
ATTAINMENT = 0.9
EXTEND_STEPS, EXTEND_FACTOR = 4, 1.5  # probes above the sweep for a policy that never fails in it
ABLATION = {
    "all on": {},
    "-C1 demand": {"ext_cacheopt_demand": False},
    "-C2 reuse": {"ext_cacheopt_reuse": False},
    "-C2 reuse (host scope)": {"ext_cacheopt_reuse_scope": "host"},
    "-C3 top-up": {"ext_cacheopt_topup": False},
    "-C4 victim": {"ext_cacheopt_victim": False},
    "-C5 swap/recompute": {"ext_cacheopt_swap_or_recompute": False},
}
SENSITIVITY = {  # parameter: (quick values, full values); "sigma" is the estimate's log-error (None: no predictor)
    "sigma": ((None, 0.2, 1.0), (None, 0.0, 0.2, 0.4, 1.0)),
    "ext_predictor_alpha": ((0.8, 0.99), (0.5, 0.8, 0.9, 0.99)),
    "ext_predictor_beta": ((0.0, 0.5), (0.0, 0.01, 0.05, 0.5)),
    "ext_cacheopt_reserve_tokens": ((0, 256, 2048), (0, 64, 256, 1024, 2048)),
    "ext_cacheopt_topup_horizon": ((0, 8, 32), (0, 1, 4, 8, 32)),
}


def cell(
    ctx: Context,
    label: str,
    prof: str,
    wl: str,
    rate: float | str,
    flags: dict | None = None,
    options: dict | None = None,
    sigma: float | str | None = "fitted",
) -> dict[str, Any]:
    """A CacheOPT-setting cell for a policy label of :data:`POLICIES` (or any registered name); policies with
    CacheOPT get length estimates, the baselines only ``max_new_tokens``."""
    name, base_flags = POLICIES.get(label, (label, {}))
    flags = {**base_flags, **(flags or {})}
    pred = predictor_for(flags, sigma) if "cacheopt" in name else None
    seed = 1 if rate == BURST else 0
    return sim_cell(
        name,
        prof,
        wl,
        rate,
        n=ctx.settings.co_n,
        seed=seed,
        slo=SLO,
        pool_tokens=ctx.settings.co_pool_tokens.get(prof),
        flags=flags,
        options=options,
        predictor=pred,
    )


def capacity(ctx: Context, prof: str, wl: str) -> float:
    """eval.cacheopt_eval's capacity: ``sglang``'s completion rate with every request arriving at t = 0."""
    r = ctx.runner.one(cell(ctx, "sglang", prof, wl, BURST), f"capacity {prof}")
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
    """Highest rate with >= 90% SLO attainment per key and policy: the sweep brackets it (or probes at 1.5x steps
    above it), bisection refines it (``co_bisect_steps`` cells per policy). ``bounded`` is False when even the
    highest probe passes (the rate is then a lower bound)."""
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
    for _ in range(EXTEND_STEPS):  # passes at the sweep's top rate: probe higher until it fails
        todo = [(k, st) for k, st in state.items() if st["hi"] is None and st["lo"] > 0]
        cells = [cell(ctx, pol, *key.split("/"), round(st["lo"] * EXTEND_FACTOR, 4)) for (key, pol), st in todo]
        for (_k, st), r, c in zip(todo, ctx.runner.run(cells, "max-rate extension"), cells, strict=True):
            st["lo" if _att(r) >= ATTAINMENT else "hi"] = c["rate"]
            st["bracketed_by_sweep"] = False
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
        sg = tr["policies"]["sglang"]["summary"]
        row: dict[str, Any] = {"rate": tr["rate"], "sglang": {f: sg[f] for f in fields}}
        for lab in OURS:
            co = tr["policies"][lab]["summary"]
            row[lab] = {f: co[f] for f in fields}
            row[lab] |= {f"{m}_x": _ratio(sg[f"{m}_ms"], co[f"{m}_ms"]) for m in ("stall_p99", "ttft_p99", "tbt_p99")}
        data["target"][key] = row
    data["best"] = {lab: _best_ratios(data["runs"], lab) for lab in OURS}
    return data


def _best_ratios(rows: dict[str, Any], lab: str) -> dict[str, Any]:
    """The largest sglang/``lab`` ratio of each tail metric over every swept rate ("up to", as the paper)."""
    best: dict[str, Any] = {}
    for f in ("ttft_p99_ms", "tbt_p99_ms", "stall_p99_ms", "ttft_p95_ms", "tbt_p95_ms"):
        cands = []
        for key, e in rows.items():
            for i, rate in enumerate(e["rates"]):
                x = _ratio(e["policies"]["sglang"][f][i], e["policies"][lab][f][i])
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
    data: dict[str, Any] = {"runs": _metric_rows(runs, fields), "best_gain_points": {}}
    for lab in OURS:
        best = data["best_gain_points"].setdefault(lab, {})
        for f in fields[:3]:
            cands = []
            for key, e in data["runs"].items():
                for i, rate in enumerate(e["rates"]):
                    d = e["policies"][lab][f][i] - e["policies"]["sglang"][f][i]
                    cands.append({"points": 100 * d, "key": key, "rate": rate})
            best[f] = max(cands, key=lambda c: c["points"], default=None)
    return data


@figure("max_sustainable_rate", "highest arrival rate with >= 90% SLO attainment, per policy", P.max_rate_bars)
def max_sustainable_rate(ctx: Context) -> dict[str, Any]:
    t = target_rate(ctx)
    data: dict[str, Any] = {"attainment": ATTAINMENT, "runs": t["max_rates"], "ratio_vs_sglang": {}}
    for key, m in t["max_rates"].items():
        data["ratio_vs_sglang"][key] = {pol: _ratio(v["max_rate"], m["sglang"]["max_rate"]) for pol, v in m.items()}
    return data


def _variant_table(
    ctx: Context, variants: dict[str, dict[str, Any]], loads: tuple[float, ...], desc: str
) -> dict[str, Any]:
    """``cacheopt`` with each variant's flags (key ``sigma``: the estimate's error instead of a flag) beside stock
    ``sglang``, at ``loads`` x the target rate of every key."""
    t = target_rate(ctx)
    out: dict[str, Any] = {}
    fields = ("slo_attainment", "ttft_p99_ms", "stall_p99_ms", "tbt_p99_ms", "preemptions", "goodput_rps")
    for key, tr in t["target"].items():
        rates = [round(tr["rate"] * x, 4) for x in loads]
        plan = [(name, rate) for name in variants for rate in rates]
        cells = []
        for name, rate in plan:
            flags = dict(variants[name])
            sigma = flags.pop("sigma", "fitted")
            cells.append(cell(ctx, "cacheopt", *key.split("/"), rate, flags=flags, sigma=sigma))
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
    return {"runs": _variant_table(ctx, ABLATION, (1.0, 1.5), "ablation")}


@figure(
    "cacheopt_sensitivity",
    "CacheOPT's sensitivity to the estimate's error (sigma), alpha, beta, reserve size and top-up horizon",
    P.sensitivity_lines,
)
def cacheopt_sensitivity(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for param, (quick_vals, full_vals) in SENSITIVITY.items():
        vals = quick_vals if ctx.settings.quick else full_vals
        table = _variant_table(ctx, {str(v): {param: v} for v in vals}, (1.25,), f"sensitivity {param}")
        out[param] = {"values": [str(v) for v in vals], "runs": table}
    return {"params": out}
