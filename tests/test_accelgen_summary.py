"""eval.accelgen_summary: which committed compare run each number of issue 12's targets comes from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eval.accelgen_summary import main, summarize


def _entry(att: float, goodput: float) -> dict[str, Any]:
    ci = lambda m: {"mean": m, "lo": m, "hi": m}  # noqa: E731
    return {"metrics": {"goodput_rps": ci(goodput), "slo_attainment": ci(att)},
            "by_class": {"alpaca": {"slo_attainment": ci(att), "tbt_slo_attainment": ci(att)}},
            "oracle_exact_share": ci(1.0)}  # fmt: skip


def _doc(rates: list[float], seeds: int, results: dict[str, list[tuple[float, float]]], *,
         error: str = "exact") -> dict[str, Any]:  # fmt: skip
    from eval.compare.stats import max_rate_at

    return {"scenario": {"name": "tight-chat-long-h100-8b"}, "rates": rates, "seeds": list(range(seeds)),
            "num_requests": 1000, "latency_error": error, "command": "python -m eval.compare ...", "fingerprint": "f",
            "commit": "c",
            "slo": {"relative": {"results": {v: [_entry(a, g) for a, g in rows] for v, rows in results.items()},
                                 "max_rate_90_all_classes": {v: max_rate_at(rates, [a for a, _ in rows])
                                                             for v, rows in results.items()}}}}  # fmt: skip


def _write(root: Path, name: str, doc: dict[str, Any]) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "compare.json").write_text(json.dumps(doc))


def test_targets_come_from_the_best_capacity_run_only(tmp_path: Path) -> None:
    ok, bad = (0.99, 10.0), (0.5, 5.0)
    _write(tmp_path, "main", _doc([8, 16], 3, {"accelgen": [ok, bad], "sglang-tuned": [bad, bad],
                                               "sglang": [bad, bad]}))  # fmt: skip
    _write(tmp_path, "low", _doc([1, 2], 5, {"sglang": [ok, bad]}))  # more seeds: sglang's max rate comes from here
    _write(tmp_path, "err", _doc([8, 16], 3, {"accelgen": [(0.95, 9.5), bad]}, error="bias=-0.15"))
    _write(tmp_path, "orc", _doc([50], 9, {"accelgen": [ok], "oracle-exact": [ok]}))  # tiny: never a capacity
    s = summarize(tmp_path, "tight-chat-long-h100-8b", "alpaca")
    h = s["headline"]["tight-chat-long-h100-8b/relative"]
    assert h["max_rate"]["accelgen"]["run"] == "main" and h["max_rate"]["sglang"]["run"] == "low"
    assert h["ratio_values"]["untuned default"] > 1 and h["ratio_values"]["tuned"] is None  # tuned misses everywhere
    assert h["ratios"]["tuned"].startswith("> ")
    assert {r["run"] for r in s["goodput"]["tight-chat-long-h100-8b/relative"]} == {"main"}
    (err,) = [r for r in s["latency_error"] if r["rate"] == 8]
    assert err["goodput_x_exact"] == 0.95 and err["tight_tbt"]["mean"] == 0.95
    assert [r["run"] for r in s["oracle"]] == ["orc"] and s["oracle"][0]["ratio"] == 1.0
    assert main([str(tmp_path)]) == 0 and "## Latency-model error" in (tmp_path / "targets.md").read_text()


def test_no_runs_is_one_line_and_exit_2(tmp_path: Path, capsys: Any) -> None:
    assert main([str(tmp_path)]) == 2
    assert "no <run>/compare.json" in capsys.readouterr().err
