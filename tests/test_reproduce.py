"""eval.reproduce: the resumable cell cache, figure selection, the report read from the figure JSONs, and a tiny
real run (simulator, no stubs) of the CacheOPT figures end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from eval import reproduce
from eval.figures import Settings, all_figures
from eval.figures import cells as C
from eval.figures.report import render, report_fingerprint

TINY = C.sim_cell("sglang", "h100-llama2-13b", "azure-conv", 2.0, n=20, slo="default", max_context=4096)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Count calls of the real simulation runner."""
    calls: list[dict] = []
    real = C.RUNNERS["sim"]

    def counting(params: dict) -> dict:
        calls.append(params)
        return real(params)

    monkeypatch.setitem(C.RUNNERS, "sim", counting)
    return calls


def test_finished_cell_is_not_recomputed(tmp_path: Path, counted: list[dict]) -> None:
    runner = C.CellRunner(C.CellCache(tmp_path, fingerprint="t"), jobs=1, progress=False)
    first = runner.one(TINY)
    assert len(counted) == 1 and first["summary"]["submitted"] == 20
    again = runner.one(TINY)
    assert len(counted) == 1 and again == first
    resumed = C.CellRunner(C.CellCache(tmp_path, fingerprint="t"), jobs=1, progress=False)  # a new process
    assert resumed.run([TINY, TINY]) == [first, first]
    assert len(counted) == 1 and resumed.computed == 0
    other = {**TINY, "rate": 3.0}
    resumed.one(other)
    assert len(counted) == 2  # different parameters: a different cell


def test_duplicate_cells_in_one_batch_run_once(tmp_path: Path, counted: list[dict]) -> None:
    runner = C.CellRunner(C.CellCache(tmp_path, fingerprint="t"), jobs=1, progress=False)
    out = runner.run([TINY, dict(TINY), TINY])
    assert len(counted) == 1 and out[0] == out[1] == out[2]


def test_code_change_or_cut_off_file_recomputes(tmp_path: Path, counted: list[dict]) -> None:
    cache = C.CellCache(tmp_path, fingerprint="v1")
    C.CellRunner(cache, progress=False).one(TINY)
    C.CellRunner(C.CellCache(tmp_path, fingerprint="v2"), progress=False).one(TINY)
    assert len(counted) == 2  # another code fingerprint: new key
    cache.path(TINY).write_text('{"params": ')  # a write cut off mid-way
    C.CellRunner(cache, progress=False).one(TINY)
    assert len(counted) == 3
    assert json.loads(cache.path(TINY).read_text())["params"] == TINY


def test_cell_key_ignores_dict_order() -> None:
    a = C.sim_cell("cacheopt", "p", "w", 1.0, n=5, flags={"ext_cacheopt_reuse": False, "ext_cacheopt_topup": True})
    b = {k: a[k] for k in reversed(list(a))}
    b["flags"] = {"ext_cacheopt_topup": True, "ext_cacheopt_reuse": False}
    assert C.cell_key(a, "f") == C.cell_key(b, "f") != C.cell_key({**a, "n": 6}, "f")


def test_only_selects_one_figure() -> None:
    chosen, skipped = reproduce.select(["max_sustainable_rate"], live=True)
    assert chosen == ["max_sustainable_rate"]
    assert set(skipped) == set(all_figures()) - {"max_sustainable_rate"}
    chosen, _ = reproduce.select(["oracle_gap,live_cpu"], live=False)
    assert chosen == ["oracle_gap"]
    with pytest.raises(SystemExit, match="unknown figure"):
        reproduce.select(["no_such_figure"], live=True)


def _tiny_settings() -> Settings:
    return replace(Settings.for_mode(True), loads=(0.5, 1.3), num_requests=30)


def test_tiny_reproduce_runs_only_the_selected_figures(tmp_path: Path) -> None:
    """A real (stub-free) run through the compare engine: one scenario, two rates, 30 requests; twice, the second
    from cache."""
    only = ["tail_latency_vs_rate,max_sustainable_rate"]
    kw = {"only": only, "cache_dir": tmp_path / "cells", "jobs": 1, "live": False, "progress": False}
    rec = reproduce.run(_tiny_settings(), tmp_path / "out", **kw)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.json")) == ["max_sustainable_rate.json", "run.json",
                                                          "tail_latency_vs_rate.json"]  # fmt: skip
    assert (out / "tail_latency_vs_rate.png").stat().st_size > 1000
    assert rec["cells_computed"] > 0
    data = json.loads((out / "max_sustainable_rate.json").read_text())
    key = "sharegpt-a100-40gb-13b/absolute"
    assert {"sglang", "cacheopt", "vllm", "sarathi"} <= set(data["runs"][key])
    for pol, m in data["runs"][key].items():
        assert m["max_rate"] is None or m["max_rate"] > 0, pol
    tail = json.loads((out / "tail_latency_vs_rate.json").read_text())
    assert tail["runs"][key]["policies"]["cacheopt"]["slo_attainment_ci"]  # intervals travel with the means
    assert tail["claims"]["absolute"]["cacheopt"]["matched_sglang"]["ttft_p99_x"]["baseline"] == "sglang"
    report = (out / "REPORT.md").read_text()
    assert "## Headline claims: SLO setting `absolute`" in report and "not selected (--only)" in report
    assert report_fingerprint(report) == (rec["fingerprint"], rec["commit"])
    rec2 = reproduce.run(_tiny_settings(), out, **kw)
    assert rec2["cells_computed"] == 0 and rec2["cells_cached"] > 0
    assert json.loads((out / "max_sustainable_rate.json").read_text()) == data


def _fake_run(out: Path, names: list[str]) -> dict:
    return {"command": "test", "settings": {"quick": True}, "figures": names, "skipped": {}, "wall_s": 1.0,
            "figure_wall_s": dict.fromkeys(names, 0.5), "cells_computed": 0, "cells_cached": 0,
            "fingerprint": "f", "commit": "c"}  # fmt: skip


def test_report_rows_come_from_the_json(tmp_path: Path) -> None:
    """The same report code renders different numbers when the figure JSON changes: nothing is typed in; a tie is
    written as a tie."""
    figs = {n: f for n, f in all_figures().items() if n == "max_sustainable_rate"}

    def write(ratio: float, family: float) -> str:
        key = "sc/absolute"
        m = {p: {"max_rate": 3.0 * r, "first_miss": None, "bounded": True}
             for p, r in (("sglang", 1.0), ("cacheopt", ratio), ("vllm", 1.0))}  # fmt: skip
        data = {"attainment": 0.9, "runs": {key: m}, "ratio_vs_matched": {key: {"cacheopt": ratio}},
                "ratio_vs_family": {key: {"cacheopt": {"vllm": family}}}}  # fmt: skip
        (tmp_path / "max_sustainable_rate.json").write_text(json.dumps(data))
        return render(tmp_path, tmp_path / "REPORT.md", figs, _fake_run(tmp_path, list(figs)))

    a = write(1.8765, 1.2)
    assert "1.88x (sc/absolute)" in a and "| met |" in a and "missed (76% of it)" in a
    b = write(1.2345, 1.005)
    assert "1.23x (sc/absolute)" in b and "missed (78% of it)" in b and "1.88x" not in b
    assert "tie (no difference at the best point)" in b  # 1.005x against the family is a tie, not a win
    c = write(0.8, 0.9)
    assert "worse than the baseline" in c
    assert "| CacheOPT (cacheopt) | up to x lower tail TBT (pooled p99) | 3.29x | - (not run)" in c
