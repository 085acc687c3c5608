"""AccelGen figures (A1-A4) and the combined mode: throughput, goodput, per-class attainment and latency vs rate
and vs fixed chunk size, the Oracle gap, and ``cacheopt+accelgen`` beside each paper's system.

The setup is eval.accelgen_eval's (its SLO classes, policy set, capacity measure and exact small-instance Oracle
check are imported, not copied): mixed long/short prompts from real data, three TBT classes, policies ``sglang``,
``vllm``, ``sarathi`` at fixed token budgets, ``accelgen``, ``cacheopt+accelgen`` and ``oracle``. Here every run is
a cached cell, so the sweep resumes and is shared between the figures.
"""

from __future__ import annotations

from typing import Any

from eval import accelgen_eval as AE
from eval.figures import Context, cacheopt_figs, figure
from eval.figures import plots as P
from eval.figures.cells import BURST, predictor_for, register_runner, sim_cell

PAGE = AE.PAGE


def ag_cell(ctx: Context, name: str, prof: str, wl: str, rate: float | str, options: dict | None = None,
            predictor: bool = False) -> dict[str, Any]:  # fmt: skip
    return sim_cell(name, prof, wl, rate, n=ctx.settings.ag_n, seed=1 if rate == BURST else 0, slo=AE.SLO_SPEC,
                    page_size=PAGE, options=options, predictor=predictor_for() if predictor else None)  # fmt: skip


def capacity(ctx: Context, prof: str, wl: str) -> float:
    r = ctx.runner.one(ag_cell(ctx, "sarathi", prof, wl, BURST, {"token_budget": 2048}), f"capacity {prof}")
    return r["summary"]["completed"] / r["summary"]["duration_s"]


def _tiny(params: dict[str, Any]) -> dict[str, Any]:
    import profiles
    from eval.slo import parse_slo

    prof = profiles.get(params["profile"])
    return AE.tiny_oracle_check(prof, params["workload"], parse_slo(params["slo"], prof), params["seeds"],
                                params["size"], params["rate"])  # fmt: skip


register_runner("tiny_oracle", _tiny)


def sweep(ctx: Context) -> dict[str, Any]:
    """eval.accelgen_eval's ``results["runs"]`` shape, one cached cell per policy and rate."""
    s = ctx.settings
    ks = [(p, w) for p in s.ag_profiles for w in s.ag_workloads]
    caps = {k: capacity(ctx, *k) for k in ks}
    pols = AE.policy_set(s.quick)
    plan = [(k, round(caps[k] * x, 3), lab, name, opts) for k in ks for x in s.ag_loads for lab, name, opts in pols]
    res = ctx.runner.run([ag_cell(ctx, name, *k, rate, opts) for k, rate, _l, name, opts in plan], "accelgen sweep")
    runs: dict[str, Any] = {}
    for (k, rate, lab, _n, _o), r in zip(plan, res, strict=True):
        e = runs.setdefault("/".join(k), {"capacity_rps": caps[k], "rates": [], "policies": {}})
        if rate not in e["rates"]:
            e["rates"].append(rate)
        e["policies"].setdefault(lab, []).append(r)
    return runs


def _best_sarathi(e: dict[str, Any], i: int) -> tuple[str, dict[str, Any]]:
    sar = [k for k in e["policies"] if k.startswith("sarathi-")]
    lab = max(sar, key=lambda k: e["policies"][k][i]["summary"]["goodput_rps"])
    return lab, e["policies"][lab][i]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def claims(runs: dict[str, Any]) -> dict[str, Any]:
    """Per key and rate: accelgen vs the best fixed-chunk Sarathi setting at that rate (by goodput)."""
    out: dict[str, Any] = {}
    for key, e in runs.items():
        rows = []
        for i, rate in enumerate(e["rates"]):
            lab, sar = _best_sarathi(e, i)
            ag, s = e["policies"]["accelgen"][i], sar["summary"]
            a = ag["summary"]
            rows.append({"rate": rate, "best_sarathi": lab,
                         "throughput_x": _ratio(a["throughput_tok_s"], s["throughput_tok_s"]),
                         "goodput_x": _ratio(a["goodput_rps"], s["goodput_rps"]),
                         "slo_points": 100 * (a["slo_attainment"] - s["slo_attainment"]),
                         "latency_mean_x": _ratio(sar["e2e_mean_ms"], ag["e2e_mean_ms"]),
                         "latency_p99_x": _ratio(s["e2e_p99_ms"], a["e2e_p99_ms"])})  # fmt: skip
        out[key] = rows
    return out


def _per_class(r: dict[str, Any], field: str) -> dict[str, float | None]:
    return {c: (r["by_class"].get(c) or {}).get(field) for c in ("tight", "medium", "loose")}


def _rows(e: dict[str, Any]) -> dict[str, Any]:
    pol = {}
    for lab, rs in e["policies"].items():
        pol[lab] = {f: [r["summary"][f] for r in rs] for f in ("throughput_tok_s", "goodput_rps", "slo_attainment",
                                                               "e2e_p99_ms", "tbt_p99_ms", "preemptions")}  # fmt: skip
        pol[lab]["e2e_mean_ms"] = [r["e2e_mean_ms"] for r in rs]
        pol[lab]["tbt_attainment_by_class"] = [_per_class(r, "tbt_slo_attainment") for r in rs]
        pol[lab]["slo_attainment_by_class"] = [_per_class(r, "slo_attainment") for r in rs]
        pol[lab]["oracle_exact_share"] = [r.get("oracle_exact_share") for r in rs]
    return {"capacity_rps": e["capacity_rps"], "rates": e["rates"], "policies": pol}


@figure("accelgen_vs_rate", "AccelGen vs fixed-chunk baselines: throughput, goodput, per-class attainment, latency",
        P.accelgen_grid)  # fmt: skip
def accelgen_vs_rate(ctx: Context) -> dict[str, Any]:
    runs = sweep(ctx)
    return {"slo_spec": AE.SLO_SPEC, "num_requests": ctx.settings.ag_n, "runs": {k: _rows(e) for k, e in runs.items()},
            "vs_best_sarathi": claims(runs), "targets": AE.targets({"runs": runs})}  # fmt: skip


@figure("accelgen_vs_chunk_size", "fixed Sarathi token budgets vs AccelGen's dynamic budget, at 0.8x and 1.1x capacity",
        P.chunk_size_lines)  # fmt: skip
def accelgen_vs_chunk_size(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    out: dict[str, Any] = {}
    for prof in s.ag_profiles:
        wl = s.ag_workloads[0]
        cap = capacity(ctx, prof, wl)
        for load in (0.8, 1.1):
            rate = round(cap * load, 3)
            cells = [ag_cell(ctx, "sarathi", prof, wl, rate, {"token_budget": b}) for b in s.ag_chunk_sizes]
            cells += [ag_cell(ctx, "accelgen", prof, wl, rate), ag_cell(ctx, "sglang", prof, wl, rate)]
            res = ctx.runner.run(cells, f"chunk sizes {prof}")
            pick = lambda r: {"goodput_rps": r["summary"]["goodput_rps"], "throughput_tok_s": r["summary"][  # noqa: E731
                "throughput_tok_s"], "slo_attainment": r["summary"]["slo_attainment"], "e2e_mean_ms": r["e2e_mean_ms"],
                "tight_tbt_attainment": _per_class(r, "tbt_slo_attainment")["tight"]}  # fmt: skip
            out[f"{prof}/{wl}@{load}x"] = {"rate": rate, "chunk_sizes": list(s.ag_chunk_sizes),
                                          "sarathi": [pick(r) for r in res[:-2]], "accelgen": pick(res[-2]),
                                          "sglang": pick(res[-1])}  # fmt: skip
    return {"runs": out}


@figure("oracle_gap", "AccelGen and cacheopt+accelgen goodput as a share of the Oracle's (A4)", P.oracle_gap)
def oracle_gap(ctx: Context) -> dict[str, Any]:
    runs = sweep(ctx)
    s = ctx.settings
    out: dict[str, Any] = {}
    for key, e in runs.items():
        prof, wl = key.split("/")
        tiny = ctx.runner.one({"kind": "tiny_oracle", "profile": prof, "workload": wl, "slo": AE.SLO_SPEC,
                               "seeds": s.ag_tiny_seeds, "size": 8, "rate": round(e["capacity_rps"] * 1.5, 3)},
                              "exact Oracle instances")  # fmt: skip
        og = [r["summary"]["goodput_rps"] for r in e["policies"]["oracle"]]
        out[key] = {"rates": e["rates"], "oracle_goodput": og,
                    "oracle_exact_share": [r.get("oracle_exact_share") for r in e["policies"]["oracle"]],
                    "share": {lab: [_ratio(r["summary"]["goodput_rps"], o) for r, o in zip(e["policies"][lab], og,
                                                                                          strict=True)]
                              for lab in ("accelgen", "cacheopt+accelgen", "sarathi-512")},
                    "tiny": tiny}  # fmt: skip
    return {"runs": out}


COMBINED = (("sglang", "sglang", {}), ("sarathi-512", "sarathi", {"token_budget": 512}), ("cacheopt", "cacheopt", {}),
            ("accelgen", "accelgen", {}), ("cacheopt+accelgen", "cacheopt+accelgen", {}))  # fmt: skip


@figure("combined_mode", "cacheopt+accelgen beside each paper's system on each paper's workload", P.combined_bars)
def combined_mode(ctx: Context) -> dict[str, Any]:
    """Two settings: CacheOPT's (KV competition, default SLO classes) at its target rate and 1.25x, and AccelGen's
    (mixed prompts, three TBT classes) at 0.8x and 1.1x capacity. Policies with CacheOPT get the predictor."""
    s = ctx.settings
    out: dict[str, Any] = {}
    co_t = cacheopt_figs.target_rate(ctx)["target"]
    key = next(iter(co_t))
    prof, wl = key.split("/")
    rates = [round(co_t[key]["rate"] * x, 4) for x in (1.0, 1.25)]
    cells = [cacheopt_figs.cell(ctx, n, prof, wl, r, options=o) for r in rates for _l, n, o in COMBINED]
    out[f"cacheopt setting: {key}"] = _combined(ctx, cells, rates)
    prof, wl = s.ag_profiles[0], s.ag_workloads[0]
    cap = capacity(ctx, prof, wl)
    rates = [round(cap * x, 3) for x in (0.8, 1.1)]
    cells = [ag_cell(ctx, n, prof, wl, r, o, predictor="cacheopt" in n) for r in rates for _l, n, o in COMBINED]
    out[f"accelgen setting: {prof}/{wl}"] = _combined(ctx, cells, rates)
    return {"runs": out}


def _combined(ctx: Context, cells: list[dict[str, Any]], rates: list[float]) -> dict[str, Any]:
    res = ctx.runner.run(cells, "combined mode")
    fields = ("goodput_rps", "slo_attainment", "ttft_p99_ms", "stall_p99_ms", "tbt_p99_ms", "preemptions")
    pol: dict[str, Any] = {}
    for i, r in enumerate(res):
        lab = COMBINED[i % len(COMBINED)][0]
        row = pol.setdefault(lab, {f: [] for f in (*fields, "tight_tbt_attainment")})
        for f in fields:
            row[f].append(r["summary"][f])
        row["tight_tbt_attainment"].append(_per_class(r, "tbt_slo_attainment")["tight"])
    return {"rates": rates, "policies": pol}
