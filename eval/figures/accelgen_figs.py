"""AccelGen figures (A1-A4) from ``eval.compare`` runs of the mixed-prompt scenarios: goodput, per-class attainment
and latency vs rate, fixed chunk sizes against AccelGen's dynamic budget, and the gap to the Oracle.

Setup: the run's AccelGen scenarios (eval.scenarios: Azure code + conversation with SLOs per application, and a
tight-TBT short chat beside long-prompt summarisation), SGLang's device-default chunk. AccelGen is mixed, so its
matched baseline is ``sglang-mixed``; the claims are restated against ``sglang-tuned`` (SGLang + mixed chunk at its
best chunk per rate, with or without priority scheduling by class: what a user who tunes SGLang runs), against the
untuned ``sglang`` default (the paper's framing) and against the best fixed-chunk ``sarathi`` (the paper's family).
"""

from __future__ import annotations

from typing import Any

from eval.figures import Context, figure
from eval.figures import plots as P
from eval.figures import sweeps as W
from eval.variants import Variant

BASES = {"tuned": "sglang-tuned", "matched": "sglang-mixed", "untuned default": "sglang", "family": "sarathi"}
OURS = ("accelgen", "cacheopt+accelgen")
ANCHOR = "sglang-mixed"  # AccelGen is mixed: its grid is anchored on its matched baseline's capacity


def ag_runs(ctx: Context) -> dict[str, dict[str, Any]]:
    s = ctx.settings
    return {sc: W.compare(ctx, sc, s.ag_variants, desc=f"accelgen {sc}", anchor=ANCHOR) for sc in s.ag_scenarios}


def _claims(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per scenario/setting and rate: accelgen against each baseline of :data:`BASES` (ratios of means)."""
    out: dict[str, Any] = {}
    for name, doc in runs.items():
        for setting, sec in doc.get("slo", {}).items():
            key = f"{name}/{setting}"
            res = sec["results"]
            if "accelgen" not in res:
                continue
            rows = []
            for i, rate in enumerate(doc["rates"]):
                ag = res["accelgen"][i]
                row: dict[str, Any] = {"rate": rate}
                for who, b in BASES.items():
                    if b not in res:
                        continue
                    be = res[b][i]
                    x = sec["comparisons"]["accelgen"][b]["per_rate"][i]
                    row[who] = {"baseline": b, "throughput_x": x["throughput_x"], "goodput_x": x["goodput_x"],
                                "slo_points": x["slo_points"], "slo_verdict": x["slo_verdict"],
                                "latency_mean_x": _ratio(be["e2e_mean_ms"]["mean"], ag["e2e_mean_ms"]["mean"]),
                                "tuned_choice": be.get("tuned_choice")}  # fmt: skip
                rows.append(row)
            mr = sec["max_rate_90"]
            out[key] = {"per_rate": rows, "max_rate_x": {who: sec["comparisons"]["accelgen"][b].get("max_rate_x")
                                                         for who, b in BASES.items() if b in res},
                        "max_rate_90": mr}  # fmt: skip
    return out


def _pick(m: dict[str, Any], name: str, i: int) -> dict[str, Any]:
    return {f: m[name][f][i] for f in ("goodput_rps", "slo_attainment", "e2e_mean_ms")}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


@figure(
    "accelgen_vs_rate",
    "AccelGen vs tuned SGLang, stock SGLang and fixed-chunk Sarathi: goodput, attainment per class and latency vs rate",
    P.accelgen_grid,
)
def accelgen_vs_rate(ctx: Context) -> dict[str, Any]:  # fmt: skip
    runs = ag_runs(ctx)
    return {"runs": W.plot_runs(runs), "claims": _claims(runs), "skipped": W.skipped(runs)}


@figure(
    "accelgen_vs_chunk_size",
    "SGLang + mixed chunk and Sarathi at fixed chunk sizes vs AccelGen's dynamic budget",
    P.chunk_size_lines,
)
def accelgen_vs_chunk_size(ctx: Context) -> dict[str, Any]:  # fmt: skip
    s = ctx.settings
    out: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for sc in s.ag_scenarios:
        fixed = [Variant(f"sarathi-c{c}", "sarathi", mixed=True, chunk=c) for c in s.ag_chunk_sizes]
        mixed = [Variant(f"sglang-mixed-c{c}", "sglang", {"ext_sglang_mixed_chunk": True}, True, c)
                 for c in s.ag_chunk_sizes]  # fmt: skip
        doc = W.compare(
            ctx, sc, ["accelgen", "sglang", *fixed, *mixed], loads=s.study_loads, desc=f"chunks {sc}", anchor=ANCHOR
        )
        if "skipped" in doc:
            skipped[sc] = doc["skipped"]
            continue
        for setting, sec in doc["slo"].items():
            m = W.means(sec)
            for i, rate in enumerate(doc["rates"]):
                row = {"rate": rate, "chunk_sizes": list(s.ag_chunk_sizes), "accelgen": _pick(m, "accelgen", i),
                       "sglang": _pick(m, "sglang", i), "sarathi": [_pick(m, v.name, i) for v in fixed],
                       "sglang_mixed": [_pick(m, v.name, i) for v in mixed if v.name in m]}  # fmt: skip
                out[f"{sc}/{setting}@{rate}"] = row
    return {"runs": out, "skipped": skipped, "unavailable_note": "sglang-mixed members run only where the sglang "
            "baseline supports mixed chunk (eval.variants)"}  # fmt: skip


@figure(
    "oracle_gap",
    "AccelGen and cacheopt+accelgen goodput as a share of the Oracle's (A4), and exact small instances",
    P.oracle_gap,
)
def oracle_gap(ctx: Context) -> dict[str, Any]:  # fmt: skip
    s = ctx.settings
    runs = ag_runs(ctx)
    out: dict[str, Any] = {}
    for name, doc in runs.items():
        if "skipped" in doc or any("oracle" not in sec["results"] for sec in doc["slo"].values()):
            continue
        exact = Variant("oracle-exact", "oracle", mixed=True, attrs={"exact_limit": 8})
        tiny = W.compare(
            ctx,
            name,
            ["accelgen", "cacheopt+accelgen", "sarathi", exact],
            loads=(1.5,),
            seeds=range(100, 100 + s.ag_tiny_seeds),
            num_requests=8,
            desc=f"exact Oracle {name}",
        )
        for setting, sec in doc["slo"].items():
            res = sec["results"]
            og = [e["metrics"]["goodput_rps"]["mean"] for e in res["oracle"]]
            t = tiny["slo"][setting]["results"]
            att = {k: t[k][0]["metrics"]["slo_attainment"]["mean"] for k in t}
            share = {lab: [_ratio(e["metrics"]["goodput_rps"]["mean"], o) for e, o in zip(res[lab], og, strict=True)]
                     for lab in (*OURS, "sarathi") if lab in res}  # fmt: skip
            out[f"{name}/{setting}"] = {
                "rates": doc["rates"], "oracle_goodput": og, "share": share,
                "oracle_exact_share": [e["oracle_exact_share"]["mean"] for e in res["oracle"]],
                "tiny": {"instances": len(tiny["seeds"]), "size": 8, "rate": tiny["rates"][0], "attainment": att,
                         "oracle_all_exact": (t["oracle-exact"][0]["oracle_exact_share"]["mean"] or 0) >= 1.0,
                         "accelgen_over_oracle": _ratio(att.get("accelgen"), att.get("oracle-exact"))},
            }  # fmt: skip
    return {"runs": out, "skipped": W.skipped(runs)}
