"""A scenario's capacity: the highest Poisson rate at which matched ``sglang`` keeps >= 90% SLO attainment.

Why this anchor: the rate grid of a comparison must put the interesting region (where stock SGLang starts to miss
its SLOs) in the middle of the sweep, on every scenario alike. The search runs the baseline with the scenario's
request count, seed 0 and primary SLO setting: first with every request at t = 0 (the completion rate there, a
throughput ceiling, brackets the search from above; it is raised x1.5 up to four times while attainment still
holds), then ``steps`` bisection steps between the last passing and first failing rate. Each probe is a cached cell.
For a tuned (sweep) baseline every probe runs all its members and takes the best attainment (and the best burst
completion rate for the bracket), as ``sglang-tuned`` is the best member per rate.
"""

from __future__ import annotations

from typing import Any

from eval.compare.cell import cell_params
from eval.figures.cells import CellRunner
from eval.scenarios import BURST, Scenario
from eval.variants import Variant, available_members

TARGET = 0.9


def find_capacity(scenario: Scenario, baseline: Variant, runner: CellRunner, *, steps: int = 6, seed: int = 0,
                  num_requests: int | None = None) -> dict[str, Any]:  # fmt: skip
    """``{"capacity_rps", "throughput_rps", "probes": [(rate, attainment)], ...}`` for ``baseline`` in
    ``scenario`` (module docstring)."""
    setting = scenario.primary_slo
    members = available_members(baseline)

    def att(rate: float | str) -> dict[str, Any]:
        cells = [cell_params(scenario, m, rate, seed, setting, num_requests=num_requests) for m in members]
        runs = [r["summary"] for r in runner.run(cells, f"capacity {scenario.name} {baseline.name} @ {rate}")]
        if rate == BURST:
            return max(runs, key=lambda s: s["completed"] / s["duration_s"] if s["duration_s"] > 0 else 0.0)
        return max(runs, key=lambda s: s["slo_attainment"])

    b = att(BURST)
    hi = b["completed"] / b["duration_s"] if b["duration_s"] > 0 else 1.0
    probes: list[tuple[float, float]] = []
    lo = 0.0
    for _ in range(4):
        a = att(round(hi, 4))["slo_attainment"]
        probes.append((round(hi, 4), a))
        if a < TARGET:
            break
        lo, hi = hi, hi * 1.5
    else:
        return _doc(scenario, baseline, lo, hi, probes, b, steps, seed, bounded=False)
    for _ in range(steps):
        mid = round((lo + hi) / 2, 4)
        a = att(mid)["slo_attainment"]
        probes.append((mid, a))
        lo, hi = (mid, hi) if a >= TARGET else (lo, mid)
    return _doc(scenario, baseline, lo, hi, probes, b, steps, seed, bounded=True)


def _doc(scenario: Scenario, baseline: Variant, lo: float, hi: float, probes: list, burst: dict, steps: int,
         seed: int, *, bounded: bool) -> dict[str, Any]:  # fmt: skip
    return {
        "capacity_rps": round(lo if lo > 0 else hi / 2 ** (steps + 1), 4),
        "first_failing_rps": round(hi, 4) if bounded else None,
        "throughput_rps": burst["completed"] / burst["duration_s"] if burst["duration_s"] > 0 else None,
        "probes": probes,
        "baseline": baseline.name,
        "slo_setting": scenario.primary_slo,
        "seed": seed,
        "definition": "highest Poisson rate with >= 90% SLO attainment of the baseline (eval.compare.capacity)",
    }
