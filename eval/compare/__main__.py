"""``python -m eval.compare``: one comparison command over named scenarios and policy variants (issue 10.5).

    python -m eval.compare --list                                   # scenarios
    python -m eval.compare --variants                               # the variant table (and what is unavailable)
    python -m eval.compare --scenario reasoning-h100-8b-32k --policies sglang-mixed,cacheopt-mixed --seeds 3 \\
        --out runs/compare/reasoning
    python -m eval.compare --scenario chat-h100-8b --capacity       # compute and store the grid's anchor

Writes ``OUT/compare.json`` (eval.compare.engine's document) and ``OUT/compare.md`` (the tables, also printed).
Matched baselines are added to ``--policies`` when missing (a mixed variant against ``sglang-mixed``, the others
against ``sglang``). Cells are cached under ``--cache`` keyed by their parameters and the code fingerprint, and run in
``--jobs`` worker processes. Bad arguments exit 2 with one line naming the flag.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from eval import latency_error
from eval import scenarios as SC
from eval.compare import stats as S
from eval.compare.capacity import find_capacity
from eval.compare.engine import run_compare
from eval.compare.render import markdown
from eval.figures.cells import ROOT, CellCache, CellRunner, code_fingerprint, git_commit, shown_argv
from eval.variants import VARIANTS, resolve, unavailable_reason


def parse_rates(text: str | None) -> list[float | str] | None:
    if not text:
        return None
    out: list[float | str] = []
    for part in text.split(","):
        p = part.strip()
        if p == SC.BURST:
            out.append(p)
            continue
        try:
            x = float(p)
        except ValueError:
            raise ValueError(f"--rates: {p!r} is not a number or 'burst'") from None
        if not x > 0:
            raise ValueError(f"--rates: {p} must be > 0")
        out.append(x)
    nums = [r for r in out if r != SC.BURST]
    if len(nums) != len(out) and nums:
        raise ValueError("--rates: 'burst' cannot be mixed with numeric rates")
    return sorted(out, key=lambda r: 0.0 if r == SC.BURST else float(r))


def scenario_header(sc: SC.Scenario) -> dict[str, Any]:
    import profiles

    prof = profiles.get(sc.profile)
    return {"name": sc.name, "what": sc.what, "profile": sc.profile, "workload": sc.workload, "cap": sc.cap,
            "pool_tokens": sc.pool_tokens or prof.kv_capacity_tokens, "device_chunk": prof.chunked_prefill_size,
            "context_len": prof.context_len, "mem_fraction_static": prof.mem_fraction_static,
            "page_size": sc.page_size, "estimates": sc.estimates, "slo": sc.slo, "slo_why": sc.slo_why,
            "primary_slo": sc.primary_slo, "kv": sc.kv, "max_prompt": sc.max_prompt,
            "output_scale": sc.output_scale, "long_share": sc.long_share, "loads": list(sc.loads)}  # fmt: skip


def anchor(sc: SC.Scenario, names: list[str]) -> tuple[str, float | None]:
    """Grid anchor: the scenario's own anchor when it names one and it is stored; else sglang-mixed's capacity when
    every compared variant is mixed and it is stored, else sglang's."""
    if sc.anchor and SC.stored_capacity(sc.name, sc.anchor) is not None:
        return sc.anchor, SC.stored_capacity(sc.name, sc.anchor)
    if all(VARIANTS[n].mixed for n in names):
        cap = SC.stored_capacity(sc.name, "sglang-mixed")
        if cap is not None:
            return "sglang-mixed", cap
    return "sglang", SC.stored_capacity(sc.name, "sglang")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="print the scenarios and exit")
    ap.add_argument("--variants", action="store_true", help="print the policy variants and exit")
    ap.add_argument("--scenario", help="scenario name (see --list)")
    ap.add_argument("--policies", default="sglang,cacheopt", help="comma-separated variants (see --variants)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0..K-1 (default: the scenario's)")
    ap.add_argument("--rates", default=None, help="comma-separated req/s or 'burst' (default: the scenario's grid)")
    ap.add_argument("--slo", default=None, help="SLO setting(s): absolute, relative or both (default: primary)")
    ap.add_argument("--requests", type=int, default=None, help="requests per run (default: the scenario's)")
    ap.add_argument("--estimates", default=None, help="estimate regime: in-distribution or off-source")
    ap.add_argument("--latency-error", default="exact",
                    help="exact, or bias=X,shape=X,noise=X,seed=N: the policy's latency model is wrong and/or the "
                         "simulated truth jitters (eval.latency_error); SLOs stay the true profile's")  # fmt: skip
    ap.add_argument("--capacity", action="store_true",
                    help="compute and store matched sglang's capacity (--scenario all: every scenario)")  # fmt: skip
    ap.add_argument("--out", default=None, help="output directory (compare.json, compare.md)")
    ap.add_argument("--cache", default=str(ROOT / "runs" / "compare-cache"), help="cell cache directory")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    try:
        return _run(a, argv)
    except ValueError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


def _run(a: argparse.Namespace, argv: list[str] | None) -> int:
    if a.list:
        for sc in SC.SCENARIOS.values():
            cap = SC.stored_capacity(sc.name)
            print(f"{sc.name:26s} {sc.what} [{sc.kv}; capacity {cap if cap is not None else 'not stored'}]")
        return 0
    if a.variants:
        for v in VARIANTS.values():
            why = unavailable_reason(v)
            print(f"{v.name:22s} {'mixed' if v.mixed else 'plain'}  vs {v.matched:13s} {v.what}"
                  + (f"  [unavailable: {why}]" if why else ""))  # fmt: skip
        return 0
    if not a.scenario:
        raise ValueError("--scenario: required (see --list)")
    if a.capacity and a.scenario == "all":
        for name in SC.SCENARIOS:
            if not SC.SCENARIOS[name].burst:
                _run(argparse.Namespace(**{**vars(a), "scenario": name}), argv)
        return 0
    sc = SC.get(a.scenario)
    if a.seeds is not None and a.seeds < 1:
        raise ValueError("--seeds: must be >= 1")
    if a.requests is not None and a.requests < 1:
        raise ValueError("--requests: must be >= 1")
    runner = CellRunner(CellCache(a.cache), jobs=a.jobs, progress=not a.no_progress)
    t0 = time.monotonic()
    if a.capacity:
        for base in dict.fromkeys(("sglang", "sglang-mixed", *([sc.anchor] if sc.anchor else []))):
            why = unavailable_reason(VARIANTS[base])
            if why:
                print(f"[compare] {base}: unavailable ({why}); capacity not computed", file=sys.stderr)
                continue
            res = find_capacity(sc, VARIANTS[base], runner, num_requests=a.requests)
            res["command"] = f"python -m eval.compare --scenario {sc.name} --capacity"
            res["fingerprint"] = code_fingerprint()
            SC.store_capacity(sc.name, base, res)
            print(f"[compare] {sc.name}: {base} capacity {res['capacity_rps']} req/s (throughput ceiling "
                  f"{res['throughput_rps']:.3g} req/s) -> {SC.CAPACITY_FILE.name}")  # fmt: skip
        return 0
    if not a.out:
        raise ValueError("--out: required")
    names = [n.strip() for n in a.policies.split(",") if n.strip()]
    variants, missing = resolve(names)
    settings = list(sc.slo) if a.slo == "both" else [a.slo or sc.primary_slo]
    for st in settings:
        sc.slo_spec(st)
    anchor_name, cap = anchor(sc, [v.name for v in variants] or names)
    rates = parse_rates(a.rates) or SC.rate_grid(sc, cap)
    seeds = list(range(a.seeds or sc.seeds))
    try:
        err = latency_error.parse(a.latency_error)
    except ValueError as e:
        raise ValueError(f"--latency-error: {e}") from None
    doc = run_compare(sc, variants, rates, seeds, settings, runner, num_requests=a.requests, regime=a.estimates,
                      latency_error="exact" if err.exact else a.latency_error.strip())  # fmt: skip
    cmd = "python -m eval.compare " + shown_argv(argv if argv is not None else sys.argv[1:])
    out = {"scenario": scenario_header(sc), "command": cmd, "fingerprint": code_fingerprint(), "commit": git_commit(),
           "interval": S.INTERVAL, "max_rate_method": S.MAX_RATE_METHOD, "tie_rule": S.TIE_RULE,
           "capacity": {"anchor": anchor_name, "value": cap, "sglang": SC.stored_capacity(sc.name, "sglang"),
                        "sglang-mixed": SC.stored_capacity(sc.name, "sglang-mixed"),
                        **({sc.anchor: SC.stored_capacity(sc.name, sc.anchor)} if sc.anchor else {})},
           "latency_error": "exact" if err.exact else a.latency_error.strip(),
           "rates": rates, "seeds": seeds, "num_requests": a.requests or sc.num_requests,
           "variants": {v.name: {"policy": v.policy, "flags": v.flags, "mixed": v.mixed, "matched": v.matched,
                                 "chunk": v.chunk, "estimates": v.estimates, "what": v.what} for v in variants},
           "unavailable": missing, "slo": doc, "wall_s": time.monotonic() - t0,
           "cells": {"computed": runner.cache.misses, "cached": runner.cache.hits}}  # fmt: skip
    d = Path(a.out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "compare.json").write_text(json.dumps(out, indent=1) + "\n")
    md = markdown(out)
    (d / "compare.md").write_text(md)
    print(md)
    print(f"[compare] wrote {d}/compare.{{json,md}} in {out['wall_s']:.0f} s ({runner.cache.misses} cells computed, "
          f"{runner.cache.hits} cached)", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
