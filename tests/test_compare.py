"""``python -m eval.compare`` end to end on a small real run (simulator, no stubs), the tuned variant's choice, the
capacity search, and bad arguments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eval import scenarios as SC
from eval.compare.__main__ import main
from eval.compare.capacity import find_capacity
from eval.compare.engine import aggregate, pick_best
from eval.variants import VARIANTS


def test_list_and_variants(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("chat-h100-8b", "sharegpt-a100-40gb-13b", "reasoning-h100-8b-32k", "burst", "mixed-code-conv",
                 "tight-chat-long-h100-8b"):  # fmt: skip
        assert name in out
    assert main(["--variants"]) == 0
    assert "sglang-tuned" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "flag"),
    [(["--scenario", "nope", "--out", "x"], "unknown scenario"), (["--scenario", "burst"], "--out"),
     (["--scenario", "burst", "--out", "x", "--policies", "nope"], "unknown variant"),
     (["--scenario", "burst", "--out", "x", "--rates", "fast"], "--rates"),
     (["--scenario", "burst", "--out", "x", "--seeds", "0"], "--seeds"),
     (["--scenario", "burst", "--out", "x", "--slo", "nope"], "unknown SLO setting"),
     (["--scenario", "burst", "--out", "x", "--latency-error", "bias=x"], "--latency-error")],
)  # fmt: skip
def test_bad_arguments_exit_2_with_one_line(argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert flag in err and "\n" not in err


def test_small_comparison_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--scenario", "sharegpt-a100-40gb-13b", "--policies", "cacheopt,vllm", "--rates", "0.2,0.6",
            "--seeds", "2", "--requests", "40", "--slo", "both", "--out", str(out), "--cache", str(tmp_path / "c"),
            "--jobs", "2", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / "compare.json").read_text())
    assert doc["rates"] == [0.2, 0.6] and doc["seeds"] == [0, 1] and set(doc["slo"]) == {"absolute", "relative"}
    assert doc["interval"].startswith("95% Student-t") and doc["fingerprint"] and doc["commit"]
    assert "sglang" in doc["variants"]  # matched baseline of cacheopt, added
    matched = "sglang-mixed" in doc["variants"] or "sglang-mixed" in doc["unavailable"]
    assert matched  # vllm's matched baseline: run, or listed as unavailable with its reason
    sec = doc["slo"]["absolute"]
    for name in ("sglang", "cacheopt", "vllm"):
        rows = sec["results"][name]
        assert [r["rate"] for r in rows] == [0.2, 0.6]
        for r in rows:
            att = r["metrics"]["slo_attainment"]
            assert att["k"] == 2 and att["lo"] is not None and att["lo"] <= att["mean"] <= att["hi"]
            assert 0 < r["kv_peak_frac"]["mean"] <= 1 and 0 <= r["kv_mean_frac"]["mean"] <= r["kv_peak_frac"]["mean"]
            assert set(r["preempt_per_1k"]) == {"recompute", "swap", "total"}
            assert r["metrics"]["completed"]["mean"] + r["rejected"]["mean"] <= 40
        assert "max_rate" in sec["max_rate_90"][name]
    cmp = sec["comparisons"]["cacheopt"]["sglang"]
    assert cmp["matched"] and len(cmp["per_rate"]) == 2 and "slo_verdict" in cmp["per_rate"][0]
    assert not sec["comparisons"]["cacheopt"]["vllm"]["matched"]
    md = (out / "compare.md").read_text()
    assert "## SLO setting: absolute" in md and "preempt./1k" in md
    again = main([*argv[:-1], "--no-progress"])  # cached: same numbers
    assert again == 0 and json.loads((out / "compare.json").read_text())["slo"] == doc["slo"]


def _fake_result(att: float, goodput: float) -> dict[str, Any]:
    from eval.metrics import SUMMARY_FIELDS

    summary = dict.fromkeys(SUMMARY_FIELDS, 1.0) | {"slo_attainment": att, "goodput_rps": goodput}
    return {"summary": summary, "by_class": {}, "kv_peak_frac": 0.5, "kv_mean_frac": 0.2, "rejected": 0,
            "preempt_per_1k": {"recompute": 0.0, "swap": 0.0, "total": 0.0}, "wall_s": 0.1}  # fmt: skip


def test_priority_follows_the_tightest_tbt_class() -> None:
    from eval.compare.cell import priority_by_class

    assert priority_by_class("tight=1:5x:3x,medium=1:10x:6x,loose=1:20x:12x") == "loose=0,medium=1,tight=2"
    assert priority_by_class("app:alpaca=5x:2x,arxiv=20x:12x") == "alpaca=1,arxiv=0"
    assert priority_by_class("abs:2000:100") == ""  # one class: nothing to order


def test_tuned_variant_takes_the_best_member() -> None:
    members = {"c512": aggregate([_fake_result(0.80, 5.0)]), "c256": aggregate([_fake_result(0.95, 4.0)]),
               "c128": aggregate([_fake_result(0.95, 4.5)])}  # fmt: skip
    assert pick_best(members)[0] == "c128"  # highest attainment, then goodput


class _Runner:
    """A cell runner whose baseline meets 90% attainment exactly below ``knee`` req/s (a known answer)."""

    def __init__(self, knee: float, ceiling: float | None = None) -> None:
        self.knee = knee
        self.ceiling = ceiling or 2 * knee  # the burst's completion rate
        self.calls: list[Any] = []

    def run(self, cells: list[dict[str, Any]], desc: str = "") -> list[dict[str, Any]]:
        return [self.one(c) for c in cells]

    def one(self, cell: dict[str, Any], desc: str = "") -> dict[str, Any]:
        self.calls.append(cell["rate"])
        if cell["rate"] == SC.BURST:
            return {"summary": {"completed": 100, "duration_s": 100 / self.ceiling}}
        return {"summary": {"slo_attainment": 0.95 if cell["rate"] <= self.knee else 0.5}}


def test_capacity_search_brackets_the_knee() -> None:
    r = _Runner(knee=3.3)
    res = find_capacity(SC.get("chat-h100-8b"), VARIANTS["sglang"], r, steps=8)  # type: ignore[arg-type]
    assert res["capacity_rps"] <= 3.3 < res["first_failing_rps"]
    assert res["first_failing_rps"] - res["capacity_rps"] < 6.6 / 2**7
    high = find_capacity(SC.get("chat-h100-8b"), VARIANTS["sglang"], _Runner(1e9, 1.0), steps=2)  # type: ignore[arg-type]
    assert high["first_failing_rps"] is None and high["capacity_rps"] >= 1.5**3  # never misses: a lower bound


def test_seeds_draw_other_requests_on_trace_workloads() -> None:
    from eval.compare.cell import cell_params
    from eval.workloads import load_workload

    sc = SC.get("burst")
    p0, p2 = (cell_params(sc, VARIANTS["sglang"], "burst", s, "absolute", num_requests=50) for s in (0, 2))
    assert "start" not in p0["workload_kwargs"] and p2["workload_kwargs"]["start"] == 100
    a = load_workload(sc.workload, num_requests=50, rate=1.0, seed=0, **p0["workload_kwargs"])
    b = load_workload(sc.workload, num_requests=50, rate=1.0, seed=2, **p2["workload_kwargs"])
    assert [s.prompt_len for s in a] != [s.prompt_len for s in b]


class _ClassRunner:
    """Cells whose overall attainment holds at every rate while the tight class breaks above ``knee`` req/s for the
    variant ``weak`` (a sweep member or a variant that sheds one class); every other variant keeps both classes."""

    def __init__(self, knee: float, weak: str) -> None:
        self.knee, self.weak = knee, weak

    def run(self, cells: list[dict[str, Any]], desc: str = "") -> list[dict[str, Any]]:
        out = []
        for c in cells:
            bad = c["variant"] == self.weak and c["rate"] > self.knee
            r = _fake_result(0.95, 1.0)
            r["by_class"] = {"tight": {"slo_attainment": 0.5 if bad else 0.95},
                             "loose": {"slo_attainment": 1.0 if bad else 0.95}}  # fmt: skip
            out.append(r)
        return out


def test_every_class_max_rate_is_not_gamed_by_shedding_one_class() -> None:
    from eval.compare.engine import run_compare
    from eval.variants import Variant

    sc = SC.get("tight-chat-long-h100-8b")
    weak = VARIANTS["accelgen-a2-off"]
    doc = run_compare(sc, [weak, VARIANTS["accelgen"]], [1.0, 2.0, 3.0], [0], ["relative"],
                      _ClassRunner(1.5, weak.name))  # type: ignore[arg-type]  # fmt: skip
    sec = doc["relative"]
    assert sec["max_rate_90"][weak.name]["bounded"] is False  # overall 0.95 everywhere
    every = sec["max_rate_90_all_classes"]
    assert every[weak.name]["bounded"] and 1.0 <= every[weak.name]["max_rate"] < 2.0
    assert every["accelgen"] == {"max_rate": 3.0, "bounded": False, "first_miss": None, "target": 0.9}
    # a tuned sweep is judged by its best member for the criterion: the member that sheds the tight class loses
    a, b = (Variant(f"m{i}", "sglang", {"ext_sglang_mixed_chunk": True}, True, c) for i, c in ((1, 256), (2, 512)))
    tuned = Variant("sglang-tuned", "sglang", {"ext_sglang_mixed_chunk": True}, True, sweep=(a, b))
    sec = run_compare(sc, [tuned], [1.0, 2.0], [0], ["relative"], _ClassRunner(0.5, "m1"))["relative"]  # type: ignore[arg-type]
    assert all(r["best_worst_class"] == {"member": "m2", "value": 0.95} for r in sec["results"]["sglang-tuned"])
    assert sec["max_rate_90_all_classes"]["sglang-tuned"]["bounded"] is False


def test_latency_error_reaches_the_policy_and_the_truth() -> None:
    from eval.compare.cell import cell_params, run_cell
    from eval.variants import Variant

    sc = SC.get("tight-chat-long-h100-8b")
    # A1 without its margin and refit trusts the model it is handed (with them it corrects itself within iterations)
    naive = Variant("naive", "accelgen", {"ext_accelgen_error_margin": False, "ext_accelgen_online_refit": False}, True)
    exact = cell_params(sc, naive, 12.0, 0, "relative", num_requests=60)
    assert "latency_error" not in exact  # exact cells keep their parameters (and cache keys)
    under = cell_params(sc, naive, 12.0, 0, "relative", num_requests=60, latency_error="bias=-0.3")
    assert under["latency_error"] == "bias=-0.3"
    a, b = run_cell(exact), run_cell(under)
    assert b["summary"]["tbt_p99_ms"] > a["summary"]["tbt_p99_ms"]  # an under-predicting A1 sizes chunks larger
    noisy = cell_params(sc, VARIANTS["sglang-mixed"], 12.0, 0, "relative", num_requests=60, latency_error="noise=0.3")
    base = cell_params(sc, VARIANTS["sglang-mixed"], 12.0, 0, "relative", num_requests=60)
    assert run_cell(noisy)["summary"]["tbt_p99_ms"] != run_cell(base)["summary"]["tbt_p99_ms"]  # the truth jitters
