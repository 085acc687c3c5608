"""AccelGen evaluation in the simulator: fixed-chunk baselines vs ``accelgen``, ``cacheopt+accelgen`` and the Oracle.

Why: AccelGen's claim (A1-A3) is that one fixed chunk size (Sarathi-Serve, SGLang's ``--chunked-prefill-size``)
either wastes compute or breaks tight TBT SLOs when short and long prompts with heterogeneous SLOs mix. This
script measures that claim on GPU latency profiles with real length data, across arrival rates, and writes
JSON + PNG + markdown to ``docs/results/accelgen/``.

Setup. Profiles ``h100-llama3-8b`` and ``h100-llama2-13b`` (profiles, their own KV pool sizes, 16-token
pages). Workloads ``mixed-code-conv`` (Azure 2023 code = long prompts + conv = short) and ``mixed-arxiv-sharegpt``
(arXiv summarization + ShareGPT lengths). Three SLO classes, equal shares, relative to each request's isolated
latency (eval.slo): tight = TTFT 5x / TBT 3x, medium = 10x / 6x, loose = 20x / 12x. Policies: ``sglang``,
``vllm``, ``sarathi`` at token budgets 256/512/1024/2048, ``accelgen``, ``cacheopt+accelgen``, ``oracle``.
Rates: multiples of a measured capacity — the completion rate of ``sarathi`` (budget 2048) when every request
arrives at once — so each profile/workload pair is swept from light load to overload.

Derived numbers (all from eval.metrics records; ``e2e_mean_ms`` is the one extra column, the mean end-to-end
latency the summary schema has no field for). Targets checked: goodput vs the best fixed-chunk Sarathi at each
rate; ``accelgen`` vs the Oracle at rates where every Oracle decision was exact; the tight class's TBT attainment
of ``accelgen`` at the first rate where a Sarathi setting's falls below 80%.

Usage: ``python -m eval.accelgen_eval [--quick] [--out docs/results/accelgen]``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import profiles
from eval.metrics import summarize_by_class
from eval.sim import Simulator, make_policy, sim_capabilities
from eval.slo import parse_slo
from eval.workloads import load_workload
from policies import base
from policies.config import ExtConfig

SLO_SPEC = "tight=1:5x:3x,medium=1:10x:6x,loose=1:20x:12x"
SARATHI_BUDGETS = (256, 512, 1024, 2048)
PAGE = 16


def policy_set(quick: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, registered name, options)."""
    budgets = (512, 2048) if quick else SARATHI_BUDGETS
    out = [("sglang", "sglang", {}), ("vllm", "vllm", {})]
    out += [(f"sarathi-{b}", "sarathi", {"token_budget": b}) for b in budgets]
    out += [("accelgen", "accelgen", {}), ("cacheopt+accelgen", "cacheopt+accelgen", {}), ("oracle", "oracle", {})]
    return out


def build(prof: profiles.Profile, name: str, options: dict[str, Any]) -> base.Policy:
    """Policy ``name`` for the simulator; options: ``config``, ``token_budget`` (a fixed chunk), ``gate`` (an
    AccelGen KV gate), ``exact_limit`` (the Oracle's exhaustive-search bound)."""
    from policies.accelgen.policy import AccelGenPolicy

    cfg = options.get("config")
    chunk = options.get("token_budget")
    if "gate" in options:
        caps = sim_capabilities(name, cfg or ExtConfig(), page_size=PAGE, chunk=chunk)
        return AccelGenPolicy(prof, cfg, caps, gate=options["gate"])
    pol = make_policy(name, prof, cfg, page_size=PAGE, chunk=chunk)
    if "exact_limit" in options:
        pol.exact_limit = int(options["exact_limit"])  # type: ignore[attr-defined]
    return pol


def simulate(prof: profiles.Profile, name: str, options: dict[str, Any], specs: list) -> dict[str, Any]:
    pol = build(prof, name, options)
    sim = Simulator(pol, prof, pool_tokens=prof.kv_capacity_tokens, page_size=PAGE)
    t0 = time.perf_counter()
    res = sim.run(specs)
    done = [r for r in res.records if r.ok and r.finish_s is not None]
    out: dict[str, Any] = {
        "summary": res.summary,
        "by_class": summarize_by_class(res.records),
        "e2e_mean_ms": float(np.mean([(r.finish_s - r.arrival_s) * 1e3 for r in done])) if done else None,
        "iterations": res.stats.iterations,
        "wall_s": time.perf_counter() - t0,
    }
    if hasattr(pol, "exact_decisions"):
        total = pol.exact_decisions + pol.heuristic_decisions
        out["oracle_exact_share"] = pol.exact_decisions / total if total else 1.0
    return out


def tiny_oracle_check(prof: profiles.Profile, workload: str, slo, seeds: int, size: int, rate: float) -> dict:
    """Small instances where the Oracle's search is exact at every decision (``exact_limit >= size``): ``size``
    requests per instance, ``seeds`` instances; SLO-meeting requests summed over the instances per policy."""
    good: dict[str, int] = {}
    exact_share = []
    for seed in range(seeds):
        specs = load_workload(workload, num_requests=size, rate=rate, seed=100 + seed, slo=slo)
        for label, name, opts in (("accelgen", "accelgen", {}), ("cacheopt+accelgen", "cacheopt+accelgen", {}),
                                  ("sarathi-512", "sarathi", {"token_budget": 512}),
                                  ("oracle", "oracle", {"exact_limit": size})):  # fmt: skip
            pol = build(prof, name, opts)
            res = Simulator(pol, prof, pool_tokens=prof.kv_capacity_tokens, page_size=PAGE).run(specs)
            good[label] = good.get(label, 0) + sum(r.meets_ttft() and r.meets_tbt() for r in res.records)
            if name == "oracle":
                total = pol.exact_decisions + pol.heuristic_decisions
                exact_share.append(pol.exact_decisions / total if total else 1.0)
    return {"instances": seeds, "size": size, "rate": rate, "good_requests": good,
            "oracle_all_exact": all(x == 1.0 for x in exact_share),
            "accelgen_over_oracle": good["accelgen"] / good["oracle"] if good["oracle"] else None}  # fmt: skip


ABLATIONS: dict[str, dict[str, Any]] = {
    "accelgen (all on)": {},
    "A1 off (fixed budget = pivot_tokens)": {"dynamic_chunk": False},
    "A2 off (FCFS)": {"slo_priority": False},
    "A2 without SLO grouping": {"slo_group_ratio": 1e9},
    "A2 grouping also defers looser SLOs (mode both)": {"slo_group_mode": "both"},
    "A2 without slack pruning": {"slack_pruning": False},
    "A3 off (strict order)": {"multi_resource": False},
}


def ablation(prof: profiles.Profile, specs: list) -> dict[str, Any]:
    """Each AccelGen component switched off alone (config flags), plus the physical KV gate instead of the
    demand gate, on one workload and rate."""
    from policies.accelgen.gate import PagedPhysicalGate
    from policies.config import AccelGenConfig, ExtConfig

    out = {}
    for label, kw in ABLATIONS.items():
        cfg = ExtConfig(accelgen=replace(AccelGenConfig(), **kw))
        out[label] = simulate(prof, "accelgen", {"config": cfg}, specs)["summary"]
    out["A3 KV side off (physical gate)"] = simulate(prof, "accelgen", {"gate": PagedPhysicalGate()}, specs)["summary"]
    return out


def capacity_rps(prof: profiles.Profile, workload: str, n: int, slo) -> float:
    """Completion rate of sarathi-2048 with every request arriving at t=0 (requests/s)."""
    specs = [replace(s, arrival_s=0.0) for s in load_workload(workload, num_requests=n, rate=1.0, seed=1, slo=slo)]
    res = Simulator(build(prof, "sarathi", {"token_budget": 2048}), prof, pool_tokens=prof.kv_capacity_tokens,
                    page_size=PAGE).run(specs)  # fmt: skip
    return res.summary["completed"] / res.summary["duration_s"]


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    profs = ("h100-llama3-8b", "h100-llama2-13b")
    workloads = ("mixed-code-conv",) if quick else ("mixed-code-conv", "mixed-arxiv-sharegpt")
    loads = (0.5, 0.8, 1.1) if quick else (0.4, 0.6, 0.8, 1.0, 1.2, 1.5)
    n = 200 if quick else 1000
    results: dict[str, Any] = {"quick": quick, "slo_spec": SLO_SPEC, "num_requests": n, "page_size": PAGE, "runs": {}}
    for pname in profs:
        prof = profiles.get(pname)
        slo = parse_slo(SLO_SPEC, prof)
        for wl in workloads:
            cap = capacity_rps(prof, wl, n, slo)
            key = f"{pname}/{wl}"
            entry: dict[str, Any] = {"capacity_rps": cap, "rates": [], "policies": {}}
            entry["tiny"] = tiny_oracle_check(prof, wl, slo, 10 if quick else 30, 8, round(cap * 1.5, 3))
            print(f"{pname}/{wl} tiny instances: {entry['tiny']}", flush=True)
            for load in loads:
                rate = round(cap * load, 3)
                entry["rates"].append(rate)
                specs = load_workload(wl, num_requests=n, rate=rate, seed=0, slo=slo)
                for label, name, opts in policy_set(quick):
                    r = simulate(prof, name, opts, specs)
                    entry["policies"].setdefault(label, []).append(r)
                    s = r["summary"]
                    print(f"{key} rate={rate:.2f} {label:18s} goodput={s['goodput_rps']:.2f} "
                          f"slo={s['slo_attainment']:.2f} tbt={s['tbt_slo_attainment']:.2f} ({r['wall_s']:.1f}s)",
                          flush=True)  # fmt: skip
            abl_rate = entry["rates"][min(len(loads) - 1, 3 if not quick else 2)]
            specs = load_workload(wl, num_requests=n, rate=abl_rate, seed=0, slo=slo)
            entry["ablation"] = {"rate": abl_rate, "results": ablation(prof, specs)}
            results["runs"][key] = entry
    results["targets"] = targets(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if quick else ""
    (out_dir / f"results{suffix}.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out_dir / f"accelgen{suffix}.png")
    (out_dir / f"README{suffix}.md").write_text(markdown(results, f"accelgen{suffix}.png"))
    return results


def _cls(r: dict[str, Any], cls: str, field: str) -> float | None:
    c = r["by_class"].get(cls)
    return None if c is None else c[field]


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's three targets, measured per profile/workload."""
    out: dict[str, Any] = {}
    for key, e in results["runs"].items():
        pol = e["policies"]
        sar = [k for k in pol if k.startswith("sarathi-")]
        ratios, vs_oracle, tight = [], [], []
        for i, rate in enumerate(e["rates"]):
            best = max(pol[k][i]["summary"]["goodput_rps"] for k in sar)
            ag = pol["accelgen"][i]["summary"]["goodput_rps"]
            ratios.append({"rate": rate, "accelgen_over_best_sarathi": ag / best if best else None})
            o = pol["oracle"][i]
            if o.get("oracle_exact_share", 0) == 1.0:
                og = o["summary"]["goodput_rps"]
                vs_oracle.append({"rate": rate, "accelgen_over_oracle": ag / og if og else None})
        for k in sar:
            below = [i for i, _ in enumerate(e["rates"]) if (_cls(pol[k][i], "tight", "tbt_slo_attainment") or 1) < 0.8]
            if below:
                i = below[0]
                tight.append({"sarathi": k, "rate": e["rates"][i],
                              "sarathi_tight_tbt": _cls(pol[k][i], "tight", "tbt_slo_attainment"),
                              "accelgen_tight_tbt": _cls(pol["accelgen"][i], "tight", "tbt_slo_attainment"),
                              "combined_tight_tbt": _cls(pol["cacheopt+accelgen"][i], "tight",
                                                         "tbt_slo_attainment")})  # fmt: skip
        out[key] = {"goodput_vs_best_sarathi": ratios, "accelgen_vs_exact_oracle": vs_oracle, "tight_tbt": tight}
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results["runs"])
    metrics = (("goodput_rps", "goodput (req/s)"), ("tight_tbt", "tight-class TBT attainment"),
               ("slo_attainment", "SLO attainment (all)"), ("e2e_p99_ms", "p99 latency (ms)"))  # fmt: skip
    fig, axes = plt.subplots(len(keys), len(metrics), figsize=(4.2 * len(metrics), 3.2 * len(keys)), squeeze=False)
    for row, key in enumerate(keys):
        e = results["runs"][key]
        for col, (m, label) in enumerate(metrics):
            ax = axes[row][col]
            for pol, runs in e["policies"].items():
                if m == "tight_tbt":
                    ys = [_cls(r, "tight", "tbt_slo_attainment") for r in runs]
                else:
                    ys = [r["summary"][m] for r in runs]
                style = {"linestyle": "--", "color": "black"} if pol == "oracle" else {"marker": "o", "markersize": 3}
                ax.plot(e["rates"], ys, label=pol, **style)
            ax.set_title(f"{key}\n{label}", fontsize=8)
            ax.set_xlabel("rate (req/s)", fontsize=8)
            if m == "e2e_p99_ms":
                ax.set_yscale("log")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict[str, Any], png: str) -> str:
    lines = [
        "# AccelGen in the simulator" + (" (quick)" if results["quick"] else ""),
        "",
        "Generated by `python -m eval.accelgen_eval" + (" --quick" if results["quick"] else "") + "` (see its",
        f"docstring for the setup). SLO classes `{results['slo_spec']}` (multiples of isolated latency),",
        f"{results['num_requests']} requests per run, Poisson arrivals (seed 0), page size {results['page_size']}.",
        "",
        f"![plots]({png})",
        "",
    ]
    for key, e in results["runs"].items():
        lines += [f"## {key} (capacity {e['capacity_rps']:.2f} req/s)", ""]
        hdr = "| policy | rate | throughput tok/s | goodput req/s | SLO att. | tight / medium / loose TBT att. | " \
              "tight / medium / loose SLO att. | e2e mean ms | e2e p99 ms | TBT p99 ms | preemptions |"  # fmt: skip
        lines += [hdr, "|" + "---|" * 11]
        for pol, runs in e["policies"].items():
            for rate, r in zip(e["rates"], runs, strict=True):
                s = r["summary"]
                tbt = " / ".join(f"{_cls(r, c, 'tbt_slo_attainment') or 0:.2f}" for c in ("tight", "medium", "loose"))
                att = " / ".join(f"{_cls(r, c, 'slo_attainment') or 0:.2f}" for c in ("tight", "medium", "loose"))
                lines.append(
                    f"| {pol} | {rate:.2f} | {s['throughput_tok_s']:.0f} | {s['goodput_rps']:.2f} | "
                    f"{s['slo_attainment']:.2f} | {tbt} | {att} | {r['e2e_mean_ms'] or 0:.0f} | "
                    f"{s['e2e_p99_ms'] or 0:.0f} | {s['tbt_p99_ms'] or 0:.1f} | {s['preemptions']} |"
                )
        t = results["targets"][key]
        lines += ["", "Targets:", ""]
        ratios = ", ".join(
            f"{x['rate']:.2f}: {x['accelgen_over_best_sarathi']:.2f}x" for x in t["goodput_vs_best_sarathi"]
        )
        lines.append(f"- goodput accelgen / best fixed-chunk sarathi, per rate: {ratios}")
        exact = ", ".join(f"{x['rate']:.2f}: {x['accelgen_over_oracle']:.3f}" for x in t["accelgen_vs_exact_oracle"])
        lines.append(
            f"- goodput accelgen / Oracle at sweep rates where every Oracle decision was exact: {exact or 'none'}"
        )
        tiny = e["tiny"]
        lines.append(
            f"- small instances ({tiny['instances']} x {tiny['size']} requests at {tiny['rate']:.2f} req/s, Oracle "
            f"exact at every decision: {tiny['oracle_all_exact']}): SLO-meeting requests {tiny['good_requests']}; "
            f"accelgen / Oracle = {tiny['accelgen_over_oracle']:.3f}"
        )
        for x in t["tight_tbt"]:
            lines.append(
                f"- {x['sarathi']} tight-class TBT attainment {x['sarathi_tight_tbt']:.2f} at rate {x['rate']:.2f} "
                f"(first rate below 0.80); accelgen's there: {x['accelgen_tight_tbt']:.2f}, "
                f"cacheopt+accelgen's: {x['combined_tight_tbt']:.2f}"
            )
        ab = e["ablation"]
        lines += ["", f"Ablation at {ab['rate']:.2f} req/s:", "", "| variant | goodput req/s | SLO att. | TTFT att. | "
                  "TBT att. | preemptions |", "|---|---|---|---|---|---|"]  # fmt: skip
        for label, s in ab["results"].items():
            lines.append(
                f"| {label} | {s['goodput_rps']:.2f} | {s['slo_attainment']:.3f} | "
                f"{s['ttft_slo_attainment']:.3f} | {s['tbt_slo_attainment']:.3f} | {s['preemptions']} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one workload, 3 rates, 200 requests (<= 3 min)")
    ap.add_argument("--out", default="docs/results/accelgen")
    args = ap.parse_args()
    t0 = time.perf_counter()
    run(args.quick, Path(args.out))
    print(f"done in {time.perf_counter() - t0:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
