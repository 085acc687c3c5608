"""``python -m eval.accelgen_summary DIR``: issue 12's targets from the ``eval.compare`` runs stored under ``DIR``.

Why a separate step: the runs behind the targets are many ``eval.compare`` invocations (the main scenario for AccelGen
and for the SGLang baselines on grids around each one's breaking point, the sweeps, the ablation, the latency-error
runs, the exact-Oracle instances), each committed as ``DIR/<run>/compare.{json,md}`` with its command and code
fingerprint. This reads them back and restates every target as a ratio of numbers those files hold; it computes
nothing new. Writes ``DIR/targets.json`` and ``DIR/targets.md`` (and prints the markdown).

Conventions. *Max rate* is the compare engine's "every SLO class at >= 90% attainment" rate
(``max_rate_90_all_classes``, interpolated between swept rates; ``>=`` when no swept rate misses). A variant's max rate
is read from the run that swept it; when two runs sweep it, the one with more seeds, then more requests, wins.
*Stable loads* for goodput are the swept rates at which both sides keep every class at >= 90%. Max rates and goodput
come from exact-model runs only; latency-error runs and the Oracle's tiny exhaustive instances have their own tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BASELINES = {"tuned": "sglang-tuned", "untuned default": "sglang", "matched (mixed, device chunk)": "sglang-mixed"}
ABLATION = ("accelgen", "accelgen-a1-off", "accelgen-a2-off", "accelgen-a3-off",
            "accelgen-no-yield", "accelgen-no-guard", "accelgen-no-margin", "edf")  # fmt: skip


def load_runs(root: Path) -> dict[str, dict[str, Any]]:
    """``{run name: compare.json document}`` for every ``root/<run>/compare.json``."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("*/compare.json"))}


def _worst(e: dict[str, Any]) -> float | None:
    vals = [c["slo_attainment"]["mean"] for c in e["by_class"].values() if c["slo_attainment"]["mean"] is not None]
    return min(vals) if vals else e["metrics"]["slo_attainment"]["mean"]


def _capacity_run(doc: dict[str, Any]) -> bool:
    """A run that measures capacity: the exact latency model, and not the Oracle's tiny exhaustive instances."""
    return doc.get("latency_error", "exact") in ("exact", "") and not any(
        "oracle-exact" in sec["results"] for sec in doc["slo"].values()
    )


def max_rates(runs: dict[str, dict[str, Any]], scenario: str, setting: str) -> dict[str, dict[str, Any]]:
    """Per variant, its every-class max rate in ``scenario``/``setting`` from the run that swept it best."""
    best: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
    for name, doc in runs.items():
        if doc["scenario"]["name"] != scenario or setting not in doc["slo"] or not _capacity_run(doc):
            continue
        sec = doc["slo"][setting]
        for v, m in sec.get("max_rate_90_all_classes", {}).items():
            rank = (len(doc["seeds"]), doc["num_requests"])
            if v not in best or rank > best[v][0]:
                best[v] = (rank, {**m, "run": name, "rates": doc["rates"], "seeds": len(doc["seeds"]),
                                  "requests": doc["num_requests"]})  # fmt: skip
    return {v: x for v, (_, x) in best.items()}


def _fmt_rate(m: dict[str, Any] | None) -> str:
    if m is None:
        return "not run"
    if m["max_rate"] is None:
        return f"< {m['rates'][0]:g} (misses at every swept rate)"
    return ("" if m["bounded"] else ">= ") + f"{m['max_rate']:.2f}"


def ratio_line(ours: dict[str, Any] | None, base: dict[str, Any] | None) -> tuple[float | None, str]:
    """(ratio, text): ours / base max rate, with the direction of any bound."""
    if ours is None or base is None or ours["max_rate"] is None:
        return None, "-"
    if base["max_rate"] is None:
        return None, f"> {ours['max_rate'] / base['rates'][0]:.2f}x (the baseline misses at every swept rate)"
    x = ours["max_rate"] / base["max_rate"]
    if not ours["bounded"] and base["bounded"]:
        return x, f">= {x:.2f}x"
    if ours["bounded"] and not base["bounded"]:
        return x, f"<= {x:.2f}x"
    if not ours["bounded"] and not base["bounded"]:
        return x, f"{x:.2f}x (both bounds)"
    return x, f"{x:.2f}x"


def goodput_rows(runs: dict[str, dict[str, Any]], scenario: str, setting: str, ours: str) -> list[dict[str, Any]]:
    """Goodput of ``ours`` against each baseline at the rates both ran in one run (means and 95% intervals)."""
    out = []
    for name, doc in runs.items():
        if doc["scenario"]["name"] != scenario or setting not in doc["slo"] or not _capacity_run(doc):
            continue
        res = doc["slo"][setting]["results"]
        if ours not in res:
            continue
        for who, b in BASELINES.items():
            if b not in res:
                continue
            for i, rate in enumerate(doc["rates"]):
                o, e = res[ours][i], res[b][i]
                wo, wb = _worst(o), _worst(e)
                out.append({"run": name, "baseline": who, "rate": rate, "ours": o["metrics"]["goodput_rps"],
                            "base": e["metrics"]["goodput_rps"],
                            "stable": (wo or 0) >= 0.9 and (wb or 0) >= 0.9,
                            "ratio": _div(o["metrics"]["goodput_rps"]["mean"], e["metrics"]["goodput_rps"]["mean"]),
                            "tuned_choice": e.get("tuned_choice")})  # fmt: skip
    return out


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _ci(c: dict[str, Any], nd: int = 2) -> str:
    if c is None or c.get("mean") is None:
        return "-"
    if c.get("lo") is None:
        return f"{c['mean']:.{nd}f}"
    return f"{c['mean']:.{nd}f} [{c['lo']:.{nd}f}, {c['hi']:.{nd}f}]"


def error_rows(runs: dict[str, dict[str, Any]], tight_class: str) -> list[dict[str, Any]]:
    """Latency-model error runs of ``accelgen`` against the exact-model run of the same scenario, rates, seeds and
    requests: the tight class's TBT attainment and goodput / exact goodput per rate."""
    exact = {}
    for doc in runs.values():
        if (
            doc.get("latency_error", "exact") in ("exact", "")
            and "accelgen" in next(iter(doc["slo"].values()))["results"]
        ):
            exact[(doc["scenario"]["name"], tuple(doc["rates"]), len(doc["seeds"]), doc["num_requests"])] = doc
    out = []
    for name, doc in runs.items():
        err = doc.get("latency_error", "exact")
        if err in ("exact", ""):
            continue
        key = (doc["scenario"]["name"], tuple(doc["rates"]), len(doc["seeds"]), doc["num_requests"])
        ref = exact.get(key)
        for setting, sec in doc["slo"].items():
            if "accelgen" not in sec["results"]:
                continue
            for i, rate in enumerate(doc["rates"]):
                e = sec["results"]["accelgen"][i]
                r = ref["slo"][setting]["results"]["accelgen"][i] if ref and setting in ref["slo"] else None
                tight = e["by_class"].get(tight_class, {}).get("tbt_slo_attainment")
                out.append({"run": name, "error": err, "setting": setting, "rate": rate, "tight_tbt": tight,
                            "goodput": e["metrics"]["goodput_rps"],
                            "exact_goodput": r["metrics"]["goodput_rps"] if r else None,
                            "goodput_x_exact": _div(e["metrics"]["goodput_rps"]["mean"],
                                                    r["metrics"]["goodput_rps"]["mean"] if r else None)})  # fmt: skip
    return out


def oracle_rows(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Small instances where the Oracle searches every order (``oracle-exact``): accelgen's SLO attainment (=
    SLO-meeting requests, same instances) over the Oracle's."""
    out = []
    for name, doc in runs.items():
        for setting, sec in doc["slo"].items():
            res = sec["results"]
            if "oracle-exact" not in res or "accelgen" not in res:
                continue
            for i, rate in enumerate(doc["rates"]):
                o, a = res["oracle-exact"][i], res["accelgen"][i]
                out.append({"run": name, "setting": setting, "rate": rate, "instances": len(doc["seeds"]),
                            "size": doc["num_requests"], "oracle_exact_share": o["oracle_exact_share"]["mean"],
                            "oracle": o["metrics"]["slo_attainment"]["mean"],
                            "accelgen": a["metrics"]["slo_attainment"]["mean"],
                            "ratio": _div(a["metrics"]["slo_attainment"]["mean"],
                                          o["metrics"]["slo_attainment"]["mean"])})  # fmt: skip
    return out


def summarize(root: Path, main_scenario: str, tight_class: str) -> dict[str, Any]:
    runs = load_runs(root)
    scenarios = sorted({(d["scenario"]["name"], s) for d in runs.values() for s in d["slo"]})
    headline = {}
    for sc, setting in scenarios:
        mr = max_rates(runs, sc, setting)
        if "accelgen" not in mr:
            continue
        headline[f"{sc}/{setting}"] = {
            "max_rate": {v: mr.get(v) for v in ("accelgen", *BASELINES.values(), "oracle") if v in mr},
            "ratios": {who: ratio_line(mr["accelgen"], mr.get(b))[1] for who, b in BASELINES.items()},
            "ratio_values": {who: ratio_line(mr["accelgen"], mr.get(b))[0] for who, b in BASELINES.items()},
            "ablation": {v: mr[v] for v in ABLATION if v in mr},
        }
    return {
        "main_scenario": main_scenario,
        "headline": headline,
        "goodput": {f"{sc}/{st}": goodput_rows(runs, sc, st, "accelgen") for sc, st in scenarios},
        "latency_error": error_rows(runs, tight_class),
        "oracle": oracle_rows(runs),
        "runs": {
            n: {"command": d["command"], "fingerprint": d["fingerprint"], "commit": d["commit"]}
            for n, d in runs.items()
        },
    }


def markdown(s: dict[str, Any], root: str = "docs/results/compare") -> str:
    lines = ["# AccelGen against a tuned SGLang: issue 12's targets", "",
             f"Generated by `python -m eval.accelgen_summary {root}` from the `eval.compare` runs in "
             "this directory (each run's command, code fingerprint and commit are in its `compare.md`).", "",
             "## Max rate with every SLO class at >= 90% attainment (req/s)", "",
             "| scenario / SLO setting | accelgen | sglang-tuned | sglang (untuned) | sglang-mixed | vs tuned | "
             "vs untuned | vs matched |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, h in s["headline"].items():
        mr = h["max_rate"]
        cells = [_fmt_rate(mr.get(v)) for v in ("accelgen", "sglang-tuned", "sglang", "sglang-mixed")]
        rat = [h["ratios"][w] for w in BASELINES]
        lines.append(f"| {key} | " + " | ".join(cells + rat) + " |")
    abl = [(k, h["ablation"]) for k, h in s["headline"].items() if len(h["ablation"]) > 1]
    if abl:
        lines += ["", "## Ablation: max rate with every class at >= 90% (req/s)", ""]
        for key, a in abl:
            lines.append(f"- {key}: " + ", ".join(f"{v} {_fmt_rate(m)}" for v, m in a.items()))
    good = [r for rows in s["goodput"].values() for r in rows if r["stable"]]
    if good:
        lines += ["", "## Goodput at stable loads (every class >= 90% for both; mean [95% interval], req/s)", "",
                  "| run | rate | baseline | accelgen | baseline goodput | ratio | tuned choice |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in good:
            tc = r["tuned_choice"]
            choice = f"chunk {tc['chunk']}{', prio' if tc['priority'] else ''}" if tc else ""
            lines.append(f"| {r['run']} | {r['rate']:g} | {r['baseline']} | {_ci(r['ours'])} | {_ci(r['base'])} | "
                         f"{r['ratio']:.3f} | {choice} |")  # fmt: skip
    if s["latency_error"]:
        lines += ["", "## Latency-model error (accelgen; the policy's model is wrong, the simulated truth is not)", "",
                  "| run | error | SLO setting | rate | tight-class TBT att. | goodput | exact-model goodput | "
                  "x exact |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in s["latency_error"]:
            x = "-" if r["goodput_x_exact"] is None else f"{r['goodput_x_exact']:.3f}"
            lines.append(f"| {r['run']} | {r['error']} | {r['setting']} | {r['rate']:g} | {_ci(r['tight_tbt'], 3)} | "
                         f"{_ci(r['goodput'])} | {_ci(r['exact_goodput'])} | {x} |")  # fmt: skip
    if s["oracle"]:
        lines += ["", "## Against the exact Oracle (small instances, every order searched)", "",
                  "| run | SLO setting | rate | instances x size | Oracle exact share | Oracle att. | accelgen att. | "
                  "ratio |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in s["oracle"]:
            lines.append(f"| {r['run']} | {r['setting']} | {r['rate']:g} | {r['instances']} x {r['size']} | "
                         f"{r['oracle_exact_share']:.2f} | {r['oracle']:.3f} | {r['accelgen']:.3f} | "
                         f"{r['ratio']:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.accelgen_summary", description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="directory holding <run>/compare.json")
    ap.add_argument("--scenario", default="tight-chat-long-h100-8b", help="the headline scenario")
    ap.add_argument("--tight-class", default="alpaca", help="the tight TBT class of the latency-error runs")
    a = ap.parse_args(argv)
    if not a.root.is_dir() or not any(a.root.glob("*/compare.json")):
        print(f"error: {a.root}: no <run>/compare.json below it", file=sys.stderr)
        return 2
    s = summarize(a.root, a.scenario, a.tight_class)
    (a.root / "targets.json").write_text(json.dumps(s, indent=1) + "\n")
    md = markdown(s, str(a.root).rstrip("/"))
    (a.root / "targets.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
