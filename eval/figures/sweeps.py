"""The figures' access to the compare engine: one scenario's comparison under the run's settings, and the shapes the
plots and the report read.

Why one helper: every simulator figure must be at matched batching, on a named scenario's profile, pool, caps, SLOs
and estimates, over seeds with intervals. Going through ``eval.compare.engine.run_compare`` (and its cached cells)
is what guarantees that; the figures only select and reshape its document. A scenario without a stored capacity
(``python -m eval.compare --scenario NAME --capacity``) is skipped with the reason, never run on a made-up grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eval import scenarios as SC
from eval.compare.engine import run_compare
from eval.figures import Context
from eval.variants import VARIANTS, Variant, resolve, unavailable_reason

FIELDS = ("slo_attainment", "ttft_slo_attainment", "tbt_slo_attainment", "goodput_rps", "throughput_tok_s",
          "ttft_p99_ms", "tbt_p99_ms", "stall_p99_ms", "e2e_p99_ms")  # fmt: skip


def settings_of(ctx: Context, sc: SC.Scenario) -> list[str]:
    return list(sc.slo) if ctx.settings.slo == "both" else [sc.primary_slo]


def anchor_capacity(sc: SC.Scenario, anchor: str) -> tuple[str, float | None]:
    """The stored capacity of ``anchor`` (``sglang`` or ``sglang-mixed``), falling back to ``sglang``'s."""
    cap = SC.stored_capacity(sc.name, anchor)
    if cap is None and anchor != "sglang":
        return "sglang", SC.stored_capacity(sc.name, "sglang")
    return anchor, cap


def rates_of(ctx: Context, sc: SC.Scenario, loads: Sequence[float] | None = None,
             anchor: str = "sglang") -> list[float | str] | None:  # fmt: skip
    """The scenario's rates at the run's loads (x the anchor's stored capacity; the scenario's own anchor when it
    names one), or None without a capacity."""
    if sc.burst:
        return [SC.BURST]
    _name, cap = anchor_capacity(sc, sc.anchor or anchor)
    if cap is None:
        return None
    return [round(cap * x, 4) for x in (loads or ctx.settings.loads or sc.loads)]


def compare(ctx: Context, scenario: str, variants: Sequence[str | Variant], *, loads: Sequence[float] | None = None,
            seeds: Sequence[int] | None = None, num_requests: int | None = None, regime: str | None = None,
            desc: str = "", anchor: str = "sglang") -> dict[str, Any]:  # fmt: skip
    """``{"scenario", "rates", "seeds", "unavailable", "slo": {setting: run_compare section}}`` or ``{"skipped"}``.
    The grid is ``loads`` x the stored capacity of ``anchor`` (the matched baseline of the variants studied)."""
    sc = SC.get(scenario)
    rates = rates_of(ctx, sc, loads, anchor)
    if rates is None:
        return {"scenario": scenario, "skipped": f"no stored capacity (python -m eval.compare --scenario {scenario} "
                "--capacity)"}  # fmt: skip
    named = [v for v in variants if isinstance(v, str)]
    ok, missing = resolve(named)
    extra = [v for v in variants if isinstance(v, Variant) and v.name not in {o.name for o in ok}]
    for v in extra:
        why = unavailable_reason(v)
        if why:
            missing[v.name] = why
    vs = ok + [v for v in extra if v.name not in missing]
    seeds = list(seeds) if seeds is not None else list(range(ctx.settings.seeds or sc.seeds))
    doc = run_compare(sc, vs, rates, seeds, settings_of(ctx, sc), ctx.runner,
                      num_requests=num_requests or ctx.settings.num_requests, regime=regime,
                      desc=desc or scenario)  # fmt: skip
    used, cap = anchor_capacity(sc, sc.anchor or anchor)
    return {"scenario": scenario, "rates": rates, "seeds": seeds, "unavailable": missing, "slo": doc,
            "capacity": cap, "anchor": used}  # fmt: skip


def means(section: dict[str, Any], fields: Sequence[str] = FIELDS) -> dict[str, Any]:
    """``{variant: {field: [mean per rate], field + "_ci": [[lo, hi] per rate]}}`` plus KV and preemption rows."""
    out: dict[str, Any] = {}
    for name, rows in section["results"].items():
        d: dict[str, Any] = {}
        for f in fields:
            d[f] = [e["metrics"][f]["mean"] for e in rows]
            d[f + "_ci"] = [[e["metrics"][f]["lo"], e["metrics"][f]["hi"]] for e in rows]
        d["kv_peak_frac"] = [e["kv_peak_frac"]["mean"] for e in rows]
        d["kv_mean_frac"] = [e["kv_mean_frac"]["mean"] for e in rows]
        d["preempt_per_1k"] = [e["preempt_per_1k"]["total"]["mean"] for e in rows]
        d["preempt_swap_per_1k"] = [e["preempt_per_1k"]["swap"]["mean"] for e in rows]
        d["e2e_mean_ms"] = [e["e2e_mean_ms"]["mean"] for e in rows]
        d["by_class"] = [{c: v["slo_attainment"]["mean"] for c, v in e["by_class"].items()} for e in rows]
        d["tbt_by_class"] = [{c: v["tbt_slo_attainment"]["mean"] for c, v in e["by_class"].items()} for e in rows]
        if any("tuned_choice" in e for e in rows):
            d["tuned_choice"] = [e.get("tuned_choice") for e in rows]
        out[name] = d
    return out


def plot_runs(runs: dict[str, dict[str, Any]], fields: Sequence[str] = FIELDS) -> dict[str, Any]:
    """Figure rows keyed ``scenario/setting``: ``{"rates", "policies": means(...)}`` (numeric rates only)."""
    out: dict[str, Any] = {}
    for name, doc in runs.items():
        if "skipped" in doc:
            continue
        for setting, sec in doc["slo"].items():
            out[f"{name}/{setting}"] = {"rates": doc["rates"], "capacity_rps": doc["capacity"],
                                       "policies": means(sec, fields), "spec": sec["spec"]}  # fmt: skip
    return out


def skipped(runs: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {k: d["skipped"] for k, d in runs.items() if "skipped" in d}


def variant(name: str) -> Variant:
    return VARIANTS[name]
