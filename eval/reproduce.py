"""``python -m eval.reproduce [--quick] [--only FIGURE] [--out DIR]``: regenerate every paper figure and the report.

Why one command: a reader judges a research extension by whether it regenerates the papers' figures and whether
the claims hold on their own machine. This composes the project's evaluations — the compare engine
(``eval.compare``: named scenarios x policy variants at matched batching, seeds, intervals), predictors.evaluate,
the live CPU server through eval.server + eval.loadgen — into figures, each named after what it shows (``--list``),
and writes ``DIR/<figure>.json``, ``DIR/<figure>.png`` and the report (CacheOPT C1-C5 and AccelGen A1-A4 headline
claims against matched stock SGLang and against each paper's own baseline family, honest about ties and misses). The
report's first lines state the code fingerprint and commit of the code that computed it.

Resumable: every simulation is a cell stored under ``--cache`` as JSON keyed by a hash of its parameters and of the
code that computes it; a finished cell is never recomputed, so an interrupted run continues where it stopped. Seeds
are fixed. ``--quick`` (<= 10 min on 2 cores) runs one KV-bound and one AccelGen scenario at three loads, one seed,
150 requests, the primary SLO setting; the full run (hours) runs every scenario with its own grid, requests, seeds
and both SLO settings. Scenario grids need stored capacities (``python -m eval.compare --scenario all --capacity``).

    python -m eval.reproduce --quick                      # docs/figures/*.{json,png} + docs/REPORT.md
    python -m eval.reproduce --only max_sustainable_rate --out /tmp/repro --report /tmp/repro/REPORT.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eval.figures import Context, Settings, all_figures
from eval.figures.cells import ROOT, CellCache, CellRunner, code_fingerprint, git_commit, shown_argv, shown_path
from eval.figures.report import render


def select(only: list[str] | None, live: bool, predictor: bool = True) -> tuple[list[str], dict[str, str]]:
    """Figure names to run (registry order) and the reason each other one is skipped."""
    figs = all_figures()
    names = [n.strip() for o in (only or []) for n in o.split(",") if n.strip()]
    unknown = [n for n in names if n not in figs]
    if unknown:
        raise SystemExit(f"error: unknown figure(s) {', '.join(unknown)}; valid: {', '.join(figs)}")
    chosen = names or list(figs)
    skipped = {n: "not selected (--only)" for n in figs if n not in chosen}
    if not live:
        for n in [n for n in chosen if figs[n].group == "live"]:
            chosen.remove(n)
            skipped[n] = "skipped (--no-live)"
    if not predictor:
        for n in [n for n in chosen if figs[n].group == "predictor"]:
            chosen.remove(n)
            skipped[n] = "skipped"
    return chosen, skipped


def run(settings: Settings, out: Path, *, only: list[str] | None = None, report: Path | None = None,
        cache_dir: Path | None = None, jobs: int = 2, live: bool = True, progress: bool = True,
        command: str = "python -m eval.reproduce") -> dict[str, Any]:  # fmt: skip
    """Build the selected figures (JSON + PNG) and the report; returns the run record (also ``out/run.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    report = report or out / "REPORT.md"
    cache = CellCache(cache_dir or ROOT / "runs" / "repro-cache")
    runner = CellRunner(cache, jobs=jobs, progress=progress)
    ctx = Context(settings, runner, out, log=lambda m: print(m, file=sys.stderr, flush=True))
    figs = all_figures()
    chosen, skipped = select(only, live)
    t0 = time.monotonic()
    walls: dict[str, float] = {}
    for name in chosen:
        t = time.monotonic()
        ctx.log(f"[reproduce] {name}: {figs[name].what}")
        data = figs[name].build(ctx)
        (out / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
        figs[name].plot(data, out / f"{name}.png")
        walls[name] = time.monotonic() - t
        ctx.log(f"[reproduce] {name} done in {walls[name]:.1f} s (cells: {cache.misses} computed, {cache.hits} cached)")
    record = {"command": command, "settings": asdict(settings), "figures": chosen, "skipped": skipped,
              "figure_wall_s": walls, "wall_s": time.monotonic() - t0, "cells_computed": cache.misses,
              "cells_cached": cache.hits, "fingerprint": code_fingerprint(), "commit": git_commit(),
              "cache": shown_path(cache.root)}  # fmt: skip
    (out / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render(out, report, {n: figs[n] for n in figs if n in chosen or n in skipped}, record))
    ctx.log(
        f"[reproduce] wrote {shown_path(report)} and {len(chosen)} figure(s) in {shown_path(out)} in "
        f"{record['wall_s']:.0f} s"
    )
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.reproduce", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sweeps (<= 10 min on 2 cores)")
    ap.add_argument("--only", action="append", help="figure name(s), comma-separated or repeated (see --list)")
    ap.add_argument("--out", default=None, help="directory for <figure>.json/.png (default docs/figures)")
    ap.add_argument("--report", default=None, help="report path (default docs/REPORT.md, or OUT/REPORT.md with --out)")
    ap.add_argument("--cache", default=None, help="cell cache directory (default runs/repro-cache)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes for simulations")
    ap.add_argument("--no-live", action="store_true", help="skip the figures that start a real SGLang server")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--list", action="store_true", help="list the figures and exit")
    args = ap.parse_args(argv)
    if args.list:
        for name, fig in all_figures().items():
            print(f"{name:40s} {fig.what}")
        return 0
    out = Path(args.out) if args.out else ROOT / "docs" / "figures"
    report = Path(args.report) if args.report else (out / "REPORT.md" if args.out else ROOT / "docs" / "REPORT.md")
    cmd = "python -m eval.reproduce" + (" " + shown_argv(argv if argv is not None else sys.argv[1:])).rstrip()
    run(Settings.for_mode(args.quick), out, only=args.only, report=report,
        cache_dir=Path(args.cache) if args.cache else None, jobs=args.jobs, live=not args.no_live,
        progress=not args.no_progress, command=cmd.strip())  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
