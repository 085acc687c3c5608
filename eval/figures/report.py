"""REPORT.md from the figure JSONs of one run: each paper's headline claims restated against matched stock SGLang and
against the paper's own baseline family, per SLO setting, then the live CPU run and every figure with its caption.

Every number in the report is read from ``<out>/<figure>.json`` written by the same run (nothing is typed in here
but the papers' published numbers, which are what we compare against). The report's first lines carry the code
fingerprint and commit of the code that computed it in a fixed, machine-readable form (:data:`FINGERPRINT_LINE`), so
a test can tell when the committed report no longer matches the code. A tie is written as a tie: a claim whose best
point is within the tie rule (eval.compare.stats) is not "met", whatever its ratio.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eval.figures.cells import shown_path

PAPER = {  # the papers' abstracts (see shared notes/papers.md); (low, high) for ranges
    "co_tbt": 3.29,
    "co_ttft": 2.83,
    "co_ttft_att": 47.0,
    "co_tbt_att": 53.0,
    "co_rate": 1.58,
    "ag_thr": (1.42, 11.21),
    "ag_good": (1.43, 13.71),
    "ag_att": (37.0, 90.0),
    "ag_lat": (1.61, 12.22),
}
NOT_RUN = "not run"
FINGERPRINT_LINE = "<!-- report-code: fingerprint={fingerprint} commit={commit} -->"
FINGERPRINT_RE = re.compile(r"<!-- report-code: fingerprint=(\w+) commit=([\w+]+) -->")


def _f(x: Any, nd: int = 2, suffix: str = "") -> str:
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x}{suffix}"
    return "-" if x is None else f"{x:.{nd}f}{suffix}"


def verdict(best: dict[str, Any] | None, goal: float, *, ratio: bool = True) -> str:
    """``met`` / ``tie`` / ``worse`` / ``missed (k% of it)`` for our best point against the paper's number."""
    if best is None:
        return "no data"
    v = best["value"]
    near = abs(v - 1.0) < 0.02 if ratio else abs(v) < 1.0  # the tie rule without intervals (eval.compare.stats)
    if best.get("verdict") == "tie" or (best.get("verdict") is None and near):
        return "tie (no difference at the best point)"
    if (ratio and v <= 1.0) or (not ratio and v <= 0.0):
        return "worse than the baseline"
    return "met" if v >= goal else f"missed ({v / goal:.0%} of it)"


def _where(b: dict[str, Any] | None) -> str:
    if b is None:
        return NOT_RUN
    rate = b["rate"] if isinstance(b["rate"], str) else f"{b['rate']:.3g} req/s"
    return f"{b['scenario']} @ {rate} vs {b['baseline']}"


def _cacheopt_rows(d: dict[str, dict[str, Any]], setting: str) -> list[list[str]]:
    src = d.get("tail_latency_vs_rate") or d.get("slo_attainment_vs_rate")
    cl = (src or {}).get("claims", {}).get(setting, {})
    mr = d.get("max_sustainable_rate")
    rows: list[list[str]] = []
    for lab in ("cacheopt", "cacheopt-mixed"):
        per = cl.get(lab, {})
        for field, key, label, is_ratio in (
            ("tbt_p99_x", "co_tbt", "x lower tail TBT (pooled p99)", True),
            ("ttft_p99_x", "co_ttft", "x lower tail TTFT (p99)", True),
            ("ttft_slo_attainment_points", "co_ttft_att", "points higher TTFT SLO attainment", False),
            ("tbt_slo_attainment_points", "co_tbt_att", "points higher TBT SLO attainment", False),
        ):
            m, f = per.get("matched_sglang", {}).get(field), per.get("family", {}).get(field)
            unit, nd = ("x", 2) if is_ratio else ("", 1)
            rows.append([f"CacheOPT ({lab})", f"up to {label}", f"{PAPER[key]:g}{unit}",
                         f"{_f(m and m['value'], nd, unit)} ({_where(m)})", f"{_f(f and f['value'], nd, unit)} "
                         f"({_where(f)})", verdict(m, PAPER[key], ratio=is_ratio),
                         verdict(f, PAPER[key], ratio=is_ratio)])  # fmt: skip
        best_m = best_f = None
        for key, r in (mr or {}).get("ratio_vs_matched", {}).items():
            if key.endswith("/" + setting) and r.get(lab) is not None and (best_m is None or r[lab] > best_m[0]):
                best_m = (r[lab], key)
        for key, fam in (mr or {}).get("ratio_vs_family", {}).items():
            for b, x in fam.get(lab, {}).items():
                if key.endswith("/" + setting) and x is not None and (best_f is None or x > best_f[0]):
                    best_f = (x, f"{key} vs {b}")
        vm = {"value": best_m[0]} if best_m else None
        vf = {"value": best_f[0]} if best_f else None
        rows.append([f"CacheOPT ({lab})", "up to x higher max rate at >= 90% attainment", f"{PAPER['co_rate']}x",
                     f"{_f(best_m and best_m[0], 2, 'x')} ({best_m[1] if best_m else NOT_RUN})",
                     f"{_f(best_f and best_f[0], 2, 'x')} ({best_f[1] if best_f else NOT_RUN})",
                     verdict(vm, PAPER["co_rate"]), verdict(vf, PAPER["co_rate"])])  # fmt: skip
    return rows


def _accelgen_rows(d: dict[str, dict[str, Any]], setting: str) -> list[list[str]]:
    ag = d.get("accelgen_vs_rate")
    rows: list[list[str]] = []
    for field, key, label, unit in (
        ("throughput_x", "ag_thr", "x throughput", "x"),
        ("goodput_x", "ag_good", "x goodput", "x"),
        ("slo_points", "ag_att", "points higher SLO attainment", ""),
        ("latency_mean_x", "ag_lat", "x lower mean latency", "x"),
    ):
        lo, hi = PAPER[key]
        cells, verdicts = [], []
        for who in ("tuned", "untuned default", "family"):
            pts = [(r[who][field], k, r["rate"], r[who])
                   for k, c in (ag or {}).get("claims", {}).items() if k.endswith("/" + setting)
                   for r in c["per_rate"] if who in r and r[who][field] is not None]  # fmt: skip
            top = max(pts, key=lambda t: t[0], default=None)
            nd = 1 if unit == "" else 2
            if top is None:
                cells.append(NOT_RUN)
                verdicts.append("no data")
                continue
            rng = f"{_f(min(p[0] for p in pts), nd)}-{_f(top[0], nd)}{unit}"
            tune = top[3].get("tuned_choice")
            extra = f", chunk {tune['chunk']}{' + priority' if tune['priority'] else ''}" if tune else ""
            cells.append(f"{rng} (max at {top[1]} @ {_f(top[2], 3)} req/s vs {top[3]['baseline']}{extra})")
            best = {"value": top[0], "verdict": top[3]["slo_verdict"] if field == "slo_points" else None}
            verdicts.append(verdict(best, lo, ratio=unit == "x"))
        rows.append(["AccelGen", label, f"{lo}-{hi}{unit}", *cells, "; ".join(verdicts)])
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _settings_seen(d: dict[str, dict[str, Any]]) -> list[str]:
    seen = set()
    for name in ("tail_latency_vs_rate", "accelgen_vs_rate", "slo_attainment_vs_rate"):
        for key in (d.get(name) or {}).get("runs", {}):
            seen.add(key.rsplit("/", 1)[-1])
    return sorted(seen) or ["absolute"]


def _live(d: dict[str, dict[str, Any]]) -> list[str]:
    lv = d.get("live_cpu")
    if not lv:
        return []
    keys = ("completed", "throughput_tok_s", "ttft_p99_ms", "tbt_p99_ms", "stall_p99_ms", "e2e_p99_ms",
            "ttft_slo_attainment", "tbt_slo_attainment", "slo_attainment", "preemptions")  # fmt: skip
    rows = [[k, _f(lv["stock"].get(k), 3), _f(lv["ext"].get(k), 3)] for k in keys]
    return [f"### Live CPU server: {lv['title']}", "", *_table(["metric", "stock SGLang", "+ext"], rows), ""]


def render(out: Path, report: Path, figures: dict[str, Any], run: dict[str, Any]) -> str:
    """The report's markdown (images linked relative to ``report``)."""
    d = {n: json.loads((out / f"{n}.json").read_text()) for n in run["figures"] if (out / f"{n}.json").exists()}
    rel: Callable[[str], str] = lambda n: os.path.relpath(out / f"{n}.png", report.parent)  # noqa: E731
    s = run["settings"]
    lines = [
        "# Reproducing CacheOPT and AccelGen: report" + (" (quick run)" if s["quick"] else ""),
        "",
        FINGERPRINT_LINE.format(fingerprint=run["fingerprint"], commit=run["commit"]),
        f"Code fingerprint `{run['fingerprint']}` at commit `{run['commit']}` (eval.figures.cells.code_fingerprint: "
        "policies, host layer, simulator, workloads, caps, SLOs, estimates, profiles, predictor code and model, "
        "scenarios, variants, stored capacities, compare engine).",
        "",
        f"Generated by `{run['command']}` in {run['wall_s']:.0f} s ({run['cells_computed']} cells computed, "
        f"{run['cells_cached']} read from the cache). Every number below comes from this run's figure JSONs in "
        f"`{shown_path(out)}`.",
        "",
        "Method: every comparison goes through `python -m eval.compare` (named scenarios x policy variants x rates x "
        "seeds). Each variant is compared with stock SGLang at matched batching (a mixed-chunk variant with "
        "`sglang-mixed`, the others with `sglang`), on SGLang's own KV pool and device-default chunk for the GPU "
        "profile, with client caps that never read the true length, and CacheOPT's length estimates no better than "
        "the real predictor's (eval.estimates). Means over seeds with 95% Student-t intervals in the figure JSONs. "
        "Ratios are baseline / ours for latencies and ours / baseline otherwise; points are percentage points of "
        "attainment. 'Up to' is the best point over scenarios and rates, as the papers state their claims.",
    ]
    for st in _settings_seen(d):
        lines += ["", f"## Headline claims: SLO setting `{st}`", "",
                  *_table(["paper", "claim", "paper's number", "ours vs matched stock SGLang",
                           "ours vs the paper's baseline family (vllm, sarathi)", "verdict (matched)",
                           "verdict (family)"], _cacheopt_rows(d, st)), "",
                  *_table(["paper", "claim", "paper's number", "vs tuned SGLang (sglang-tuned)",
                           "vs untuned SGLang default", "vs best fixed chunk (sarathi: the paper's family)",
                           "verdicts (tuned; untuned; family)"], _accelgen_rows(d, st))]  # fmt: skip
    skipped = {k: v for f in d.values() for k, v in (f.get("skipped") or {}).items()}
    if skipped:
        lines += ["", "Scenarios skipped: " + "; ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))]
    lines += ["", *_live(d), "## Figures", ""]
    for name, fig in figures.items():
        took = run["figure_wall_s"].get(name)
        if name in d:
            lines += [
                f"### {name}",
                "",
                f"{fig.what} (`{name}.json`; {took:.0f} s).",
                "",
                f"![{name}]({rel(name)})",
                "",
            ]
        else:
            lines += [f"### {name}", "", f"{fig.what}: {run['skipped'].get(name, NOT_RUN)}.", ""]
    lines += ["## Settings", "", "```", json.dumps(s, indent=1), "```", ""]
    return "\n".join(lines)


def report_fingerprint(text: str) -> tuple[str, str] | None:
    """(fingerprint, commit) from a report's :data:`FINGERPRINT_LINE`, or None when it has none."""
    m = FINGERPRINT_RE.search(text)
    return (m.group(1), m.group(2)) if m else None
