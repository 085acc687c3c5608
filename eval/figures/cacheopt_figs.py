"""CacheOPT figures (C1-C5) from ``eval.compare`` runs of the KV scenarios: tail latency, SLO attainment, KV use and
preemptions vs rate, and the max rate at >= 90% attainment, each variant against its matched SGLang.

Setup: the run's CacheOPT scenarios (eval.scenarios: KV loose chat, KV tight ShareGPT on an A100 40GB, reasoning
lengths at 32k context, a burst), SGLang's own pools and device-default chunks, client caps that do not know the true
length, and CacheOPT estimates with the real predictor's measured error (eval.estimates). Variants (eval.variants):
``cacheopt`` against ``sglang`` (SGLang's alternation of prefill and decode batches), ``cacheopt-mixed`` against
``sglang-mixed`` (decodes riding with prefill chunks), with the CacheOPT paper's baseline family (``vllm``,
``sarathi``) beside them. Claims are restated per matched pair and per family baseline; a tie is a tie.
"""

from __future__ import annotations

from typing import Any

from eval.figures import Context, figure
from eval.figures import plots as P
from eval.figures import sweeps as W

OURS = ("cacheopt", "cacheopt-mixed")
FAMILY = ("vllm", "sarathi")  # the CacheOPT paper's baselines (vLLM-family schedulers)
LATENCY = (("ttft_p99", "ttft_p99_x"), ("tbt_p99", "tbt_p99_x"), ("stall_p99", "stall_p99_x"))
ATTAIN = (("slo_attainment", "slo_points"), ("ttft_slo_attainment", "ttft_slo_attainment_points"),
          ("tbt_slo_attainment", "tbt_slo_attainment_points"))  # fmt: skip


def co_runs(ctx: Context) -> dict[str, dict[str, Any]]:
    """One comparison per CacheOPT scenario (cached cells; cheap to ask again)."""
    s = ctx.settings
    return {sc: W.compare(ctx, sc, s.co_variants, desc=f"cacheopt {sc}") for sc in s.co_scenarios}


def _best(runs: dict[str, dict[str, Any]], ours: str, bases: tuple[str, ...], field: str, verdict: str,
          setting_: str) -> Any:  # fmt: skip
    """The largest ``field`` of ``ours`` against any of ``bases`` over every scenario and rate of one SLO setting
    ("up to", as the paper states it), with where it is and its verdict (``tie`` when the means are a tie)."""
    cands = []
    for name, doc in runs.items():
        for setting, sec in doc.get("slo", {}).items():
            if setting != setting_:
                continue
            for b, c in sec["comparisons"].get(ours, {}).items():
                if b not in bases:
                    continue
                for x in c["per_rate"]:
                    if x.get(field) is not None:
                        cands.append({"value": x[field], "verdict": x.get(verdict), "scenario": name,
                                      "setting": setting, "rate": x["rate"], "baseline": b,
                                      "matched": c["matched"]})  # fmt: skip
    return max(cands, key=lambda c: c["value"], default=None)


def claims(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per SLO setting and CacheOPT variant, the paper's claims against its matched SGLang and the paper's family."""
    settings = sorted({st for doc in runs.values() for st in doc.get("slo", {})})
    out: dict[str, Any] = {}
    for st in settings:
        for ours in OURS:
            matched = "sglang-mixed" if ours.endswith("mixed") else "sglang"
            per: dict[str, Any] = {}
            for who, bases in (("matched_sglang", (matched,)), ("family", FAMILY)):
                row: dict[str, Any] = {}
                for metric, field in LATENCY:
                    row[field] = _best(runs, ours, bases, field, f"{metric}_verdict", st)
                for metric, field in ATTAIN:
                    v = "slo_verdict" if metric == "slo_attainment" else f"{metric}_verdict"
                    row[field] = _best(runs, ours, bases, field, v, st)
                per[who] = row
            out.setdefault(st, {})[ours] = per
    return out


@figure(
    "tail_latency_vs_rate",
    "p99 TTFT, pooled p99 TBT and p99 stall (worst gap per request) vs arrival rate, every variant at matched batching",
    P.lines_vs_rate(("ttft_p99_ms", "tbt_p99_ms", "stall_p99_ms"), log=True),
)
def tail_latency_vs_rate(ctx: Context) -> dict[str, Any]:  # fmt: skip
    runs = co_runs(ctx)
    return {"runs": W.plot_runs(runs), "claims": claims(runs), "skipped": W.skipped(runs)}


@figure(
    "slo_attainment_vs_rate",
    "TTFT, TBT and joint SLO attainment vs arrival rate (means over seeds)",
    P.lines_vs_rate(("ttft_slo_attainment", "tbt_slo_attainment", "slo_attainment"), ylim=(0, 1.02)),
)
def slo_attainment_vs_rate(ctx: Context) -> dict[str, Any]:  # fmt: skip
    runs = co_runs(ctx)
    return {"runs": W.plot_runs(runs), "claims": claims(runs), "skipped": W.skipped(runs)}


@figure(
    "kv_use_vs_rate",
    "peak and time-weighted mean KV in use (fraction of the pool) and preemptions per 1,000 "
    "requests vs rate: does KV bind?",
    P.lines_vs_rate(("kv_peak_frac", "kv_mean_frac", "preempt_per_1k")),
)
def kv_use_vs_rate(ctx: Context) -> dict[str, Any]:  # fmt: skip
    runs = co_runs(ctx)
    return {"runs": W.plot_runs(runs), "skipped": W.skipped(runs)}


@figure(
    "max_sustainable_rate",
    "highest arrival rate with >= 90% SLO attainment, per variant (interpolated)",
    P.max_rate_bars,
)
def max_sustainable_rate(ctx: Context) -> dict[str, Any]:  # fmt: skip
    runs = co_runs(ctx)
    out: dict[str, Any] = {"attainment": 0.9, "runs": {}, "ratio_vs_matched": {}, "ratio_vs_family": {}}
    for name, doc in runs.items():
        for setting, sec in doc.get("slo", {}).items():
            key = f"{name}/{setting}"
            mr = sec["max_rate_90"]
            if not mr:
                continue  # a burst has no rate axis
            out["runs"][key] = mr
            for ours in OURS:
                cmp = sec["comparisons"].get(ours, {})
                m = next((c.get("max_rate_x") for c in cmp.values() if c["matched"]), None)
                out["ratio_vs_matched"].setdefault(key, {})[ours] = m
                fam = {b: cmp[b].get("max_rate_x") for b in FAMILY if b in cmp}
                out["ratio_vs_family"].setdefault(key, {})[ours] = fam
    out["skipped"] = W.skipped(runs)
    return out
