"""Simulator fidelity as a benchmark (issue 3 item 6): real tiny SGLang CPU server vs the simulator on the same
slice, for the ``sglang`` and ``vllm`` baselines; prints the tables (relative errors, preemptions, throughput).

A thin entry over :mod:`eval.fidelity` with the reduced form as default (one rate, 60 requests, ~4 min); pass
``--full`` for the committed configuration (2 rates x 2 repeats x 150 requests, ~20 min). Results and their
analysis: docs/results/fidelity/README.md.

Usage: ``python -m benchmarks.bench_fidelity [--full] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import sys

from eval import fidelity


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_fidelity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the committed configuration instead of the reduced one")
    ap.add_argument("--out", default="runs/bench_fidelity")
    a = ap.parse_args(argv)
    return fidelity.main([*([] if a.full else ["--quick"]), "--out", a.out])


if __name__ == "__main__":
    sys.exit(main())
