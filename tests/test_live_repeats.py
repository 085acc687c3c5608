"""Live-run plumbing (eval.live_repeats, used by scripts/live_experiment.py and eval.demo): the load average around
every side, the warning above 1.0 per core, repeats with alternating order, median and range; and a tiny real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval import demo
from eval.live_repeats import load_warning, median_and_range, run_repeats, with_load

ROOT = Path(__file__).resolve().parents[1]


def test_load_is_recorded_around_a_side_and_warned_above_one_per_core(capsys: pytest.CaptureFixture[str]) -> None:
    loads = iter([0.4, 1.2])
    s = with_load("stock", lambda: {"completed": 3}, cores=2, load=lambda: next(loads))
    assert s["load_avg_1min"] == [0.4, 1.2] and "load_warning" not in s and s["cpu_count"] == 2
    loads = iter([0.5, 2.5])
    s = with_load("ext", lambda: {"completed": 3}, cores=2, load=lambda: next(loads))
    assert "exceeds 1 per core" in s["load_warning"] and "ext" in s["load_warning"]
    assert "warning: ext" in capsys.readouterr().err
    assert load_warning("x", 2.0, 2.0, cores=2) is None and load_warning("x", 0.1, 2.01, cores=2)


def test_repeats_alternate_and_report_median_and_range() -> None:
    calls: list[tuple[str, int]] = []

    def side(name: str, values: list[float]):
        def run(i: int) -> dict:
            calls.append((name, i))
            return {"slo_attainment": values[i], "mode": "cap", "load_avg_1min": [0.2 * i, 0.3 * i]}

        return run

    rep = run_repeats(3, [("stock", side("stock", [0.9, 0.5, 0.7])), ("ext", side("ext", [0.8, 0.8, 1.0]))])
    assert rep["order"] == [["stock", "ext"], ["ext", "stock"], ["stock", "ext"]]
    assert calls == [("stock", 0), ("ext", 0), ("ext", 1), ("stock", 1), ("stock", 2), ("ext", 2)]
    assert rep["median"]["stock"]["slo_attainment"] == 0.7 and rep["range"]["stock"]["slo_attainment"] == [0.5, 0.9]
    assert rep["median"]["ext"]["repeats"] == 3 and rep["median"]["ext"]["mode"] == "cap"
    assert rep["median"]["stock"]["load_avg_1min"] == [0.4, 0.6]  # the worst repeat
    md = demo.table(rep["median"]["stock"], rep["median"]["ext"], "+ext x", rep["range"])
    assert "0.700 [0.500-0.900]" in md and "| repeats | 3 | 3 |" in md
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        run_repeats(0, [])
    with pytest.raises(ValueError, match="no repeats"):
        median_and_range([])


@pytest.mark.server
@pytest.mark.slow
def test_tiny_live_run_with_repeats(tmp_path: Path) -> None:
    """A real run: stock and cacheopt on the tiny CPU server, 2 repeats of 6 requests each."""
    out = tmp_path / "live"
    cmd = [sys.executable, str(ROOT / "scripts" / "live_experiment.py"), "--num-requests", "6", "--rate", "4",
           "--repeats", "2", "--timeout", "900", "--out", str(out)]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["config"]["repeats"] == 2 and len(doc["repeats"]) == 2
    assert doc["config"]["order"] == [["stock", "ext"], ["ext", "stock"]]
    for r in doc["repeats"]:
        for side in ("stock", "ext"):
            before, after = r[side]["load_avg_1min"]
            assert before >= 0 and after >= 0 and r[side]["completed"] == 6
    assert doc["stock"]["repeats"] == 2 and "completed" in doc["range"]["ext"]
    assert (out / "repeat-1" / "requests_stock.jsonl").exists()
    assert "| repeats | 2 | 2 |" in (out / "comparison.md").read_text()
