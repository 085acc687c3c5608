"""CacheOPT evaluation in the simulator: ``sglang``, ``vllm``, ``sarathi`` vs ``cacheopt`` (C1-C5), with ablations and
parameter sensitivity. Writes JSON + PNG + a markdown table to ``docs/results/cacheopt/``.

Setup. Profiles ``h100-llama3-8b``, ``h100-llama2-13b``, ``a100-llama2-13b`` (profiles: roofline latency, the
profile's own KV pool, 16-token pages). Workloads ``azure-conv`` (Azure 2023 conversation trace lengths) and
``sharegpt`` (ShareGPT length stats), Poisson arrivals, visible cap ``max_new_tokens = max(2 x true, 512)``
(eval.workloads "auto"). Three SLO classes, equal shares, relative to each request's isolated latency (eval.slo):
tight TTFT 5x / TBT 3x, medium 10x / 6x, loose 20x / 12x. Rates are multiples of a measured capacity: the
completion rate of ``sglang`` when every request arrives at once (a throughput capacity: with relative TBT SLOs the
SLO capacity is far lower, so the sweep is geometric from 2% to 110% of it).

Length estimates (C1). The workloads carry no prompt text, so the text predictor cannot run on them. Each request
gets an estimate drawn from a log-normal error model fitted to the committed predictor's held-out residuals
(``predictors/models/alpaca-mistral/residuals.json``: ``log(point/true)`` has standard deviation sigma ~ 0.65):
``point = true * exp(N(0, sigma))`` and the calibrated bound ``point * exp(sigma * z(conf))`` with the paper's
``conf = alpha / (1 + beta * rate)``, capped at ``max_new_tokens``. The policy never sees the true length. The
sensitivity section varies sigma (predictor quality) and shows "no predictor" (C1 falls back to ``max_new_tokens``).

Policies. ``cacheopt`` keeps SGLang's batching (prefill batches alternate with decode steps), so its differences from
``sglang`` are KV management only; ``cacheopt-mixed`` additionally lets decodes ride along with the prefill chunk
(``--ext-cacheopt-mixed-chunk``, SGLang's ``--enable-mixed-chunk``), which is a batching change, reported apart.

Derived numbers: per rate the eval.metrics summary (p95/p99 TTFT, TBT, stall; TTFT/TBT/overall SLO attainment;
preemptions; throughput) and CacheOPT's decision counters; per policy the highest rate with >= 90% SLO attainment
(linear interpolation between the last swept rate that holds it and the next); the issue's targets at the highest
swept rate where ``sglang`` still holds 90%.

Usage: ``python -m eval.cacheopt_eval [--quick] [--out docs/results/cacheopt]`` (``--quick``: one profile and
workload, 500 requests, four rates, a reduced ablation and sensitivity; < 3 min).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

import profiles
from eval.sim import Simulator, make_policy
from eval.slo import parse_slo
from eval.workloads import RequestSpec, load_workload
from policies.config import CacheOptConfig, ExtConfig, PredictorConfig
from policies.views import LengthEstimate
from predictors.bounds import adapt_confidence

SLO_SPEC = "tight=1:5x:3x,medium=1:10x:6x,loose=1:20x:12x"
PAGE = 16
RESIDUALS = Path(__file__).resolve().parent.parent / "predictors" / "models" / "alpaca-mistral" / "residuals.json"
METRICS = ("ttft_p95_ms", "ttft_p99_ms", "tbt_p95_ms", "tbt_p99_ms", "stall_p95_ms", "stall_p99_ms",
           "ttft_slo_attainment", "tbt_slo_attainment", "slo_attainment", "preemptions", "throughput_tok_s",
           "completed", "failed")  # fmt: skip
ABLATIONS = ("demand", "reuse", "topup", "victim", "swap_or_recompute")


def predictor_sigma() -> float:
    """Standard deviation of ``log(point / true)`` on the committed predictor's calibration split."""
    res = json.loads(RESIDUALS.read_text())
    return float(np.std(np.log(np.asarray(res["point"], float) / np.asarray(res["true"], float))))


def estimator(specs: list[RequestSpec], sigma: float | None, conf: float, seed: int):
    """The simulator's estimator: a per-rid table drawn here from the true lengths (the policy only ever sees the
    estimate). ``sigma=None``: no predictor (every estimate missing, C1 falls back to ``max_new_tokens``)."""
    if sigma is None:
        return None
    rng = np.random.default_rng(seed)
    pad = float(np.exp(sigma * NormalDist().inv_cdf(conf)))
    table = {}
    for s in specs:
        point = max(1, round(s.output_len * float(np.exp(rng.normal(0.0, sigma)))))
        bound = max(point, int(np.ceil(point * pad)))
        table[s.rid] = LengthEstimate(min(point, s.max_new_tokens), min(bound, s.max_new_tokens), conf)
    return lambda spec: table[spec.rid]


def simulate(prof: profiles.Profile, name: str, cfg: ExtConfig, specs: list[RequestSpec], est) -> dict[str, Any]:
    pol = make_policy(name, prof, cfg, page_size=PAGE)
    t0 = time.perf_counter()
    res = Simulator(pol, prof, pool_tokens=prof.kv_capacity_tokens, page_size=PAGE, estimator=est).run(specs)
    out = {k: res.summary.get(k) for k in METRICS}
    out["swaps"] = res.stats.swaps_out
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    if hasattr(pol, "totals"):
        out["decisions"] = dict(pol.totals)
    return out


def capacity_rps(prof: profiles.Profile, workload: str, n: int, slo) -> float:
    """Completion rate of ``sglang`` with every request arriving at t=0 (requests/s)."""
    specs = [replace(s, arrival_s=0.0) for s in load_workload(workload, num_requests=n, rate=1.0, seed=1, slo=slo)]
    res = Simulator(
        make_policy("sglang", prof, page_size=PAGE), prof, pool_tokens=prof.kv_capacity_tokens, page_size=PAGE
    ).run(specs)
    return res.summary["completed"] / res.summary["duration_s"]


def variants(quick: bool) -> list[tuple[str, str, CacheOptConfig | None]]:
    """(label, registered policy, CacheOPT config or None)."""
    return [("sglang", "sglang", None), ("vllm", "vllm", None), ("sarathi", "sarathi", None),
            ("cacheopt", "cacheopt", CacheOptConfig()),
            ("cacheopt-mixed", "cacheopt", CacheOptConfig(mixed_chunk=True))]  # fmt: skip


def run_point(prof, wl: str, n: int, rate: float, slo, label_cfgs, sigma, alpha=0.95, beta=0.001, seed=0,
              max_new: int | str = "auto"):  # fmt: skip
    specs = load_workload(wl, num_requests=n, rate=rate, seed=seed, slo=slo, max_new_tokens=max_new)
    conf = adapt_confidence(alpha, beta, rate)
    out = {}
    for label, name, co in label_cfgs:
        cfg = ExtConfig(policy=name, predictor=PredictorConfig(alpha=alpha, beta=beta), cacheopt=co or CacheOptConfig())
        out[label] = simulate(prof, name, cfg, specs, estimator(specs, sigma, conf, seed + 17))
    return out


def max_rate(rates: list[float], att: list[float | None], target: float = 0.9) -> float | None:
    """Highest rate holding ``target`` attainment, interpolated linearly towards the first rate that misses it."""
    best = None
    for i, (r, a) in enumerate(zip(rates, att, strict=True)):
        if a is None or a < target:
            if best is not None and i > 0 and att[i - 1] is not None:
                a0, r0 = att[i - 1], rates[i - 1]
                return r0 + (r - r0) * (a0 - target) / max(a0 - a, 1e-9) if a is not None else r0
            return best
        best = r
    return best


def targets(entry: dict[str, Any]) -> dict[str, Any]:
    """Per baseline B (sglang, the issue's reference; vllm and sarathi beside it): at the highest swept rate where B
    still holds 90% SLO attainment, B's p99 stall / TTFT / TBT over each CacheOPT variant's, and the ratio of the
    highest rates holding 90%. Also the same ratios at the heaviest swept rate (overload)."""
    rates, pols = entry["rates"], entry["policies"]
    mr = {k: max_rate(rates, [p["slo_attainment"] for p in v]) for k, v in pols.items()}
    out: dict[str, Any] = {"max_rate_90": mr, "vs": {}}
    for base_label in ("sglang", "vllm", "sarathi"):
        held = [i for i, p in enumerate(pols[base_label]) if (p["slo_attainment"] or 0) >= 0.9]
        t: dict[str, Any] = {}
        for where, i in (("at_90", held[-1] if held else None), ("overload", len(rates) - 1)):
            if i is None:
                continue
            t[where] = {"rate": rates[i]}
            for lab in ("cacheopt", "cacheopt-mixed"):
                b, c = pols[base_label][i], pols[lab][i]
                t[where][lab] = {f"{m}_p99_ratio": _ratio(b[f"{m}_p99_ms"], c[f"{m}_p99_ms"]) for m in
                                 ("stall", "ttft", "tbt")}  # fmt: skip
        for lab in ("cacheopt", "cacheopt-mixed"):
            t.setdefault("max_rate_ratio", {})[lab] = _ratio(mr.get(lab), mr.get(base_label))
        out["vs"][base_label] = t
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def scenarios(quick: bool) -> list[tuple[str, str, int | str]]:
    """(profile, workload, max_new_tokens policy). The last one repeats a KV-bound pair with the fixed cap many
    clients send (4096): the visible cap then says nothing about the true length."""
    if quick:
        return [("h100-llama2-13b", "azure-conv", "auto")]
    out = [(p, w, "auto") for p in ("h100-llama3-8b", "h100-llama2-13b", "a100-llama2-13b")
           for w in ("azure-conv", "sharegpt")]  # fmt: skip
    return [*out, ("h100-llama2-13b", "azure-conv", 4096)]


def scenario_key(pname: str, wl: str, max_new: int | str) -> str:
    return f"{pname}/{wl}" if max_new == "auto" else f"{pname}/{wl}/max_new={max_new}"


def run(quick: bool, out_dir: Path, only: list[str] | None = None, merge: Path | None = None,
        studies_too: bool = False) -> dict[str, Any]:  # fmt: skip
    """Sweep every scenario (``only``: just those keys, merged into the results JSON ``merge``), then the studies
    (unless ``only`` is given), and render."""
    sigma = predictor_sigma()
    loads = (0.15, 0.3, 0.5, 0.8) if quick else (0.02, 0.04, 0.07, 0.1, 0.15, 0.2, 0.3, 0.45, 0.65, 0.9, 1.1)
    n = 500 if quick else 1000
    res: dict[str, Any] = {"quick": quick, "slo_spec": SLO_SPEC, "num_requests": n, "page_size": PAGE,
                           "predictor_sigma": sigma, "runs": {}}  # fmt: skip
    if merge is not None:
        res = json.loads(merge.read_text())
    for pname, wl, max_new in scenarios(quick):
        key = scenario_key(pname, wl, max_new)
        if only and key not in only:
            continue
        prof = profiles.get(pname)
        slo = parse_slo(SLO_SPEC, prof)
        cap = capacity_rps(prof, wl, n, slo)
        entry: dict[str, Any] = {"capacity_rps": cap, "max_new_tokens": max_new, "rates": [], "policies": {}}
        for load in loads:
            rate = round(cap * load, 3)
            entry["rates"].append(rate)
            for label, r in run_point(prof, wl, n, rate, slo, variants(quick), sigma, max_new=max_new).items():
                entry["policies"].setdefault(label, []).append(r)
                print(f"{key} rate={rate:.2f} {label:15s} slo={r['slo_attainment']:.3f} "
                      f"ttft99={r['ttft_p99_ms']:.0f} stall99={r['stall_p99_ms']:.0f} "
                      f"pre={r['preemptions']} ({r['wall_s']}s)", flush=True)  # fmt: skip
        res["runs"][key] = entry
    if not only or studies_too:
        res["ablation"], res["sensitivity"] = studies(quick, sigma, res)
    render(res, out_dir)
    return res


def render(res: dict[str, Any], out_dir: Path) -> None:
    for e in res["runs"].values():
        e["targets"] = targets(e)
    out_dir.mkdir(parents=True, exist_ok=True)
    sfx = "-quick" if res["quick"] else ""
    (out_dir / f"results{sfx}.json").write_text(json.dumps(res, indent=1) + "\n")
    plot(res, out_dir / f"cacheopt{sfx}.png")
    (out_dir / f"README{sfx}.md").write_text(markdown(res, f"cacheopt{sfx}.png"))


def studies(quick: bool, sigma: float, res: dict[str, Any]) -> tuple[dict, dict]:
    """Ablation (drop one component) and sensitivity on h100-llama2-13b / azure-conv where the KV pool binds
    (65% and 90% of the measured capacity; with the ``auto`` cap and with the fixed 4096 cap). At light load no
    component changes any decision, so studying there shows nothing. C3-C5 act only when requests outgrow their
    allocations, so one ablation point uses an under-confident predictor (alpha 0.3: bounds below the point
    estimate, most requests overrun) to exercise the reserve, victim choice and swap-or-recompute."""
    prof = profiles.get("h100-llama2-13b")
    slo = parse_slo(SLO_SPEC, prof)
    cap = res["runs"]["h100-llama2-13b/azure-conv"]["capacity_rps"]
    n = res["num_requests"]
    pts = [("auto", 0.9, 0.95)] if quick else [("auto", 0.65, 0.95), ("auto", 0.9, 0.95), (4096, 0.9, 0.95),
                                                ("auto", 0.9, 0.3)]  # fmt: skip
    abl: dict[str, Any] = {"points": [{"max_new": m, "rate": round(cap * x, 3), "alpha": a} for m, x, a in pts],
                           "rows": {}}  # fmt: skip
    cfgs = [("all", "cacheopt", CacheOptConfig())] + [
        (f"-{c}", "cacheopt", replace(CacheOptConfig(), **{c: False})) for c in ABLATIONS
    ]
    cfgs.append(("-reuse (host scope)", "cacheopt", CacheOptConfig(reuse_scope="host")))
    cfgs.append(("+mixed chunk", "cacheopt", CacheOptConfig(mixed_chunk=True)))
    for p in abl["points"]:
        pr = run_point(prof, "azure-conv", n, p["rate"], slo, cfgs, sigma, alpha=p["alpha"], max_new=p["max_new"])
        for label, r in pr.items():
            abl["rows"].setdefault(label, []).append(r)
            print(f"ablation {p} {label:20s} slo={r['slo_attainment']:.3f} ttft99={r['ttft_p99_ms']:.0f} "
                  f"stall99={r['stall_p99_ms']:.0f} pre={r['preemptions']}", flush=True)  # fmt: skip
    max_new, rate = (pts[0][0], round(cap * pts[0][1], 3)) if quick else (4096, round(cap * 0.9, 3))
    sens: dict[str, Any] = {"rate": rate, "max_new": max_new, "rows": []}
    one = [("cacheopt", "cacheopt", CacheOptConfig())]
    grid: list[tuple[str, Any, dict]] = [("sigma", s, {"sigma": s}) for s in ((None, 0.2, 1.0) if quick else
                                                                            (None, 0.0, 0.2, 0.4, 1.0))]  # fmt: skip
    if not quick:
        grid += [("alpha", a, {"alpha": a}) for a in (0.5, 0.8, 0.99)]
        grid += [("beta", b, {"beta": b}) for b in (0.0, 0.05, 0.5)]
    for name, value, kw in grid:
        sig = kw.pop("sigma", sigma)
        r = run_point(prof, "azure-conv", n, rate, slo, one, sig, max_new=max_new, **kw)["cacheopt"]
        sens["rows"].append({"param": name, "value": value, **r})
    knobs = [("reserve_tokens", (0, 256, 2048)), ("topup_horizon", (0, 8, 32))]
    for field, values in knobs[:1] if quick else knobs:
        for v in values:
            co = [("cacheopt", "cacheopt", replace(CacheOptConfig(), **{field: v}))]
            r = run_point(prof, "azure-conv", n, rate, slo, co, sigma, max_new=max_new)["cacheopt"]
            sens["rows"].append({"param": field, "value": v, **r})
    for row in sens["rows"]:
        print(
            f"sensitivity {row['param']}={row['value']} slo={row['slo_attainment']:.3f} "
            f"ttft99={row['ttft_p99_ms']:.0f} stall99={row['stall_p99_ms']:.0f} pre={row['preemptions']}",
            flush=True,
        )
    return abl, sens


_STYLE = {
    "sglang": {"color": "black", "linestyle": "--", "linewidth": 2.2, "zorder": 1},
    "cacheopt": {"color": "tab:red", "zorder": 3},
    "cacheopt-mixed": {"color": "tab:purple", "zorder": 3},
}


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(res["runs"])
    mets = (("slo_attainment", "SLO attainment"), ("ttft_p99_ms", "p99 TTFT (ms)"), ("stall_p99_ms", "p99 stall (ms)"),
            ("tbt_p99_ms", "p99 TBT (ms)"), ("preemptions", "preemptions"))  # fmt: skip
    fig, axes = plt.subplots(len(keys), len(mets), figsize=(3.6 * len(mets), 2.9 * len(keys)), squeeze=False)
    for row, key in enumerate(keys):
        e = res["runs"][key]
        for col, (m, label) in enumerate(mets):
            ax = axes[row][col]
            for pol, runs in e["policies"].items():
                style = _STYLE.get(pol, {})
                ax.plot(e["rates"], [r[m] for r in runs], marker="o", markersize=3, label=pol, **style)
            ax.set_title(f"{key}\n{label}", fontsize=8)
            ax.set_xlabel("rate (req/s, log)", fontsize=8)
            ax.set_xscale("log")
            if m.endswith("_ms"):
                ax.set_yscale("log")
            if m == "slo_attainment":
                ax.axhline(0.9, color="grey", linewidth=0.6, linestyle=":")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _f(x: Any, d: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:.{d}f}" if isinstance(x, float) else str(x)


def markdown(res: dict[str, Any], png: str) -> str:
    lines = [f"# CacheOPT in the simulator{' (quick)' if res['quick'] else ''}", "",
             f"Regenerate: `python -m eval.cacheopt_eval{' --quick' if res['quick'] else ''}`. "
             f"{res['num_requests']} requests per point, one seed; SLO classes `{res['slo_spec']}`; "
             f"estimates: log-normal error, sigma = {res['predictor_sigma']:.2f} (the predictor's held-out error).",
             "", f"![]({png})", ""]  # fmt: skip
    for key, e in res["runs"].items():
        t = e["targets"]
        lines += [f"## {key} (capacity {e['capacity_rps']:.2f} req/s)", ""]
        lines += ["| rate | policy | SLO att. | TTFT att. | TBT att. | p95/p99 TTFT ms | p95/p99 TBT ms | "
                  "p95/p99 stall ms | preempt. | tok/s |", "|" + "---|" * 10]  # fmt: skip
        for i, rate in enumerate(e["rates"]):
            for pol, runs in e["policies"].items():
                r = runs[i]
                lines.append(
                    f"| {rate:.2f} | {pol} | {_f(r['slo_attainment'], 3)} | {_f(r['ttft_slo_attainment'], 3)} | "
                    f"{_f(r['tbt_slo_attainment'], 3)} | {_f(r['ttft_p95_ms'])}/{_f(r['ttft_p99_ms'])} | "
                    f"{_f(r['tbt_p95_ms'])}/{_f(r['tbt_p99_ms'])} | {_f(r['stall_p95_ms'])}/{_f(r['stall_p99_ms'])} | "
                    f"{r['preemptions']} | {_f(r['throughput_tok_s'])} |"
                )
        lines += ["", "Highest rate with >= 90% SLO attainment (req/s): "
                  + ", ".join(f"{k} {_f(v, 2)}" for k, v in t["max_rate_90"].items()), ""]  # fmt: skip
        for base_label, t_b in t["vs"].items():
            for where, label in (("at_90", f"highest swept rate where {base_label} holds 90%"),
                                 ("overload", "heaviest swept rate")):  # fmt: skip
                if where not in t_b:
                    lines.append(f"- vs {base_label}: it never holds 90% on this sweep.")
                    continue
                x = t_b[where]
                parts = "; ".join(
                    f"{lab} stall {_f(x[lab]['stall_p99_ratio'], 2)}x, TTFT {_f(x[lab]['ttft_p99_ratio'], 2)}x, "
                    f"TBT {_f(x[lab]['tbt_p99_ratio'], 2)}x"
                    for lab in ("cacheopt", "cacheopt-mixed")
                )
                lines.append(
                    f"- vs {base_label} at {x['rate']:.2f} req/s ({label}), {base_label}'s p99 over ours: {parts}"
                )
            mrr = t_b["max_rate_ratio"]
            lines.append(f"- max rate at 90% over {base_label}'s: cacheopt {_f(mrr['cacheopt'], 2)}x, "
                         f"cacheopt-mixed {_f(mrr['cacheopt-mixed'], 2)}x")  # fmt: skip
        lines.append("")
    abl = res["ablation"]
    lines += ["## Ablation (h100-llama2-13b / azure-conv)", "", "| variant | max_new | rate | alpha | SLO att. | "
              "p99 TTFT ms | p99 stall ms | p99 TBT ms | preempt. | swaps | reuse | top-ups | reserve draws |",
              "|" + "---|" * 13]  # fmt: skip
    for label, rows in abl["rows"].items():
        for p, r in zip(abl["points"], rows, strict=True):
            d = r.get("decisions", {})
            lines.append(f"| {label} | {p['max_new']} | {p['rate']:.2f} | {p.get('alpha', 0.95)} | "
                         f"{_f(r['slo_attainment'], 3)} | "
                         f"{_f(r['ttft_p99_ms'])} | {_f(r['stall_p99_ms'])} | {_f(r['tbt_p99_ms'])} | "
                         f"{r['preemptions']} | {r.get('swaps', '-')} | {_f(d.get('reuse'))} | {_f(d.get('topups'))} | "
                         f"{_f(d.get('reserve_draws'))} |")  # fmt: skip
    sens = res["sensitivity"]
    lines += ["", f"## Sensitivity (h100-llama2-13b / azure-conv, max_new {sens.get('max_new', 'auto')}, "
              f"{sens['rate']:.2f} req/s)", "",
              "| parameter | value | SLO att. | p99 TTFT ms | p99 stall ms | preempt. |", "|" + "---|" * 6]  # fmt: skip
    for r in sens["rows"]:
        val = "no predictor" if r["param"] == "sigma" and r["value"] is None else r["value"]
        lines.append(f"| {r['param']} | {val} | {_f(r['slo_attainment'], 3)} | {_f(r['ttft_p99_ms'])} | "
                     f"{_f(r['stall_p99_ms'])} | {r['preemptions']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one profile/workload, 500 requests, 4 rates (< 3 min)")
    ap.add_argument("--out", type=Path, default=Path("docs/results/cacheopt"))
    ap.add_argument("--render", type=Path, default=None, help="re-derive targets, plot and tables from a results JSON")
    ap.add_argument("--only", action="append", default=None, help="run just this scenario key (repeatable)")
    ap.add_argument("--merge", type=Path, default=None, help="add the --only scenarios to this results JSON")
    ap.add_argument("--studies", action="store_true", help="with --only: rerun the ablation and sensitivity too")
    a = ap.parse_args()
    t0 = time.time()
    if a.render:
        render(json.loads(a.render.read_text()), a.out)
    else:
        run(a.quick, a.out, a.only, a.merge, a.studies)
    print(f"done in {time.time() - t0:.0f} s -> {a.out}")


if __name__ == "__main__":
    main()
