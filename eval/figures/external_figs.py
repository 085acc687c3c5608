"""Figures from outside the simulator sweeps: the predictor's coverage vs over-reservation (CacheOPT C1, via
predictors.evaluate), the live CPU server (stock vs policy, tiny model), and the simulator's fidelity to that
server (the same trace slice replayed in the simulator on the fitted ``cpu-tiny-torch`` profile).
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from eval.figures import Context, figure, live
from eval.figures import plots as P
from eval.figures.cells import ROOT, register_runner, sim_cell

PREDICTOR_MODEL = "predictors/models/alpaca-mistral"
PREDICTOR_DATA = "data/prompts/alpacaeval_Mistral-7B-Instruct-v0.2.json"
PREDICTOR_OTHER = ("data/prompts/alpacaeval_gpt4_0314.json", "data/prompts/alpacaeval_Qwen1.5-7B-Chat.json")
FIDELITY_METRICS = ("ttft_p50_ms", "ttft_p99_ms", "tbt_p50_ms", "tbt_p99_ms", "stall_p99_ms", "e2e_p50_ms",
                    "e2e_p99_ms", "throughput_tok_s", "slo_attainment", "preemptions")  # fmt: skip


def _predictor_eval(params: dict[str, Any]) -> dict[str, Any]:
    from predictors import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--model", str(ROOT / params["model"]), "--data", str(ROOT / params["data"]), "--out", tmp]
        for o in params["other"]:
            argv += ["--other", str(ROOT / o)]
        for q in params["q"]:
            argv += ["--q", str(q)]
        with contextlib.redirect_stdout(io.StringIO()):  # its per-bound printout; the JSON has it all
            evaluate.main(argv)
        doc = json.loads((Path(tmp) / f"{Path(params['model']).name}.json").read_text())
    return {"q": doc["q"], "sources": doc["sources"]}


def _live(params: dict[str, Any]) -> dict[str, Any]:
    out = ROOT / "runs" / "repro-live" / f"{params['policy']}-{params['n']}-{params['rate']}"
    doc = live.run_pair(device="cpu", model="tiny", policy=params["policy"], workload_name=params["workload"],
                        num_requests=params["n"], rate=params["rate"], pool_tokens=params["pool_tokens"],
                        seed=params["seed"], out=out)  # fmt: skip
    return {"config": doc["config"], "stock": live.strip(doc["stock"]), "ext": live.strip(doc["ext"])}


register_runner("predictor_eval", _predictor_eval)
register_runner("live", _live)


@figure("predictor_coverage_vs_overreservation",
        "output-length bounds: coverage (share of true lengths under the bound) vs over-reservation, per bound kind",
        P.predictor_scatter, group="predictor")  # fmt: skip
def predictor_coverage_vs_overreservation(ctx: Context) -> dict[str, Any]:
    params = {"kind": "predictor_eval", "model": PREDICTOR_MODEL, "data": PREDICTOR_DATA,
              "other": list(PREDICTOR_OTHER), "q": list(ctx.settings.predictor_q)}  # fmt: skip
    res = ctx.runner.one(params, "predictor evaluation")
    rows = []
    for src, r in res["sources"].items():
        for key, b in r["bounds"].items():
            rows.append({"source": src, "bound": b["kind"], "q": b["q"], "coverage": b["coverage"],
                         "over_reservation": b["over_reservation"], "best_constant": b["vs_best_constant"]["kind"],
                         "best_constant_over": b["vs_best_constant"]["over_reservation"],
                         "reduction_vs_best_constant": b["vs_best_constant"]["reduction"], "key": key})  # fmt: skip
    return {"model": PREDICTOR_MODEL, "q": res["q"], "rows": rows,
            "mae": {s: r["mae"] for s, r in res["sources"].items()},
            "kendall_tau": {s: r["kendall_tau"] for s, r in res["sources"].items()}}  # fmt: skip


def live_cell(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    return {"kind": "live", "policy": s.live_policy, "workload": "azure-conv", "n": s.live_requests,
            "rate": s.live_rate, "pool_tokens": s.live_pool_tokens, "seed": 0}  # fmt: skip


@figure("live_cpu", "stock SGLang vs the extension on the real CPU server (tiny model, small KV pool), one run",
        P.live_bars, group="live")  # fmt: skip
def live_cpu(ctx: Context) -> dict[str, Any]:
    r = ctx.runner.one(live_cell(ctx), "live CPU server")
    st, ex = r["stock"], r["ext"]
    ratios = {k: (st[k] / ex[k] if isinstance(st.get(k), (int, float)) and ex.get(k) else None)
              for k in ("ttft_p99_ms", "tbt_p99_ms", "stall_p99_ms", "e2e_p99_ms", "preemptions")}  # fmt: skip
    return {"title": live.title(r["config"]), "config": r["config"], "stock": st, "ext": ex,
            "stock_over_ext": ratios}  # fmt: skip


@figure("simulator_fidelity", "the simulator (every CPU latency profile) vs the real CPU server on the same requests",
        P.fidelity_bars, group="live")  # fmt: skip
def simulator_fidelity(ctx: Context) -> dict[str, Any]:
    r = ctx.runner.one(live_cell(ctx), "live CPU server")
    cfg = r["config"]
    kw = live.sim_specs_params(cfg)
    profs = cpu_profiles()
    cells = [sim_cell(pol, p, cfg["workload"], cfg["rate"], **kw) for p in profs for pol in ("sglang", cfg["policy"])]
    res = ctx.runner.run(cells, "fidelity sims")
    sides: dict[str, Any] = {}
    for i, prof in enumerate(profs):
        pairs = (("stock", r["stock"], res[2 * i]["summary"]), (cfg["policy"], r["ext"], res[2 * i + 1]["summary"]))
        for side, real, sim in pairs:
            sides.setdefault(prof, {})[side] = {
                m: {"real": real.get(m), "sim": sim.get(m),
                    "sim_over_real": sim[m] / real[m] if real.get(m) and sim.get(m) is not None else None}
                for m in FIDELITY_METRICS
            }  # fmt: skip
    others = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "results").glob("fidelity*"))
    return {"title": live.title(cfg), "profiles": profs, "sides": sides, "other_fidelity_results": others}


def cpu_profiles() -> list[str]:
    """Every fitted CPU profile (profiles): each is checked against the same live run."""
    import profiles

    return [p for p in profiles.available() if p.startswith("cpu")]
