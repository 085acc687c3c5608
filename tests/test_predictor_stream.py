"""The shifted-stream evaluation (issue 15.3) runs end to end on the shipped data: a model trained on one source,
prompts answered by the others, and the online calibration ends nearer its target than the static one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from predictors import evaluate

pytestmark = pytest.mark.slow


def test_stream_evaluation_writes_curves_and_online_beats_static(tmp_path: Path) -> None:
    evaluate.main(["--stream", "--out", str(tmp_path), "--seeds", "1", "--delay", "0", "--step", "0.2",
                   "--lag-scale", "4"])  # fmt: skip
    doc = json.loads((tmp_path / "stream.json").read_text())
    assert (tmp_path / "stream-d0.png").stat().st_size > 10_000
    d = doc["delays"]["0"]
    assert d["n"] > 400 and len(d["switches"]) == 2 and set(d["methods"]) >= {"static", "online", "best_constant"}
    assert len(d["methods"]["online"]["running_coverage"][2]) == d["n"]
    for q in ("0.9", "0.95"):
        online, static = (d["methods"][m]["summary"][q] for m in ("online", "static"))
        assert online["max_running_error_after_200"] < static["max_running_error_after_200"]
        assert abs(online["coverage"] - float(q)) < abs(static["coverage"] - float(q)) + 0.005
