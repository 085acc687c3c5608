"""The live AccelGen experiment's logic (scripts/accelgen_live.py) without a server: the chunk-effect summary of
probe samples, the tuned-stock choice, the verdicts, the report; the chunk model preset; profiles from a JSON path."""

from __future__ import annotations

import json

import pytest

import profiles
from scripts import accelgen_live as al
from scripts.make_tiny_model import PRESETS, parameters


def _side(att: dict[str, float], goodput: float, slo: float) -> dict:
    return {"summary": {"slo_attainment": slo, "goodput_rps": goodput, "tbt_p99_ms": 10.0, "ttft_p99_ms": 100.0},
            "by_class": {k: {"slo_attainment": v, "tbt_slo_attainment": v} for k, v in att.items()}}  # fmt: skip


def test_chunk_effect_from_probe_samples() -> None:
    samples = [
        {"kind": "decode", "decode_batch": 1, "decode_ctx": 40, "seconds": 0.010},
        {"kind": "decode", "decode_batch": 1, "decode_ctx": 530, "seconds": 0.012},
        {"kind": "decode", "decode_batch": 8, "decode_ctx": 40, "seconds": 0.020},
        {"kind": "prefill", "prefill": [[256, 0]], "seconds": 0.080},
        {"kind": "prefill", "prefill": [[64, 0]], "seconds": 0.025},
        {"kind": "prefill", "prefill": [[256, 512]], "seconds": 0.095},  # cached context: not in the table
    ]
    eff = al.chunk_effect(samples)
    assert eff["decode_1_s"] == 0.010 and eff["decode_8_s"] == 0.020
    assert [r["tokens"] for r in eff["prefill"]] == [64, 256]
    assert eff["prefill"][1]["x_decode_1"] == pytest.approx(8.0) and eff["prefill"][1]["x_decode_8"] == 4.0
    md = al.chunk_effect_md(eff, "# t")
    assert "| 256 | 80.0 | 8.0 | 4.0 |" in md
    with pytest.raises(ValueError, match="no decode"):
        al.chunk_effect([s for s in samples if s["kind"] == "prefill"])


def test_tuned_is_the_best_worst_class_then_goodput_and_verdicts() -> None:
    stock = {
        "stock-c64": _side({"chat": 0.95, "long": 0.70}, 1.5, 0.85),
        "stock-c256": _side({"chat": 0.80, "long": 0.99}, 1.9, 0.90),  # higher overall, worse worst class
        "stock-c128": _side({"chat": 0.95, "long": 0.85}, 1.7, 0.90),
    }
    assert al.pick_tuned(stock) == "stock-c128"
    reps = [
        {"stock": stock, "tuned": "stock-c128", "accelgen": _side({"chat": 0.99, "long": 0.95}, 2.1, 0.97)},
        {"stock": stock, "tuned": "stock-c128", "accelgen": _side({"chat": 0.90, "long": 0.80}, 1.36, 0.85)},
    ]
    v = al.verdicts(reps)
    assert v["per_repeat_attainment_ge"] == [True, False] and not v["attainment_ge_tuned_every_repeat"]
    assert v["goodput_x"] == pytest.approx([2.1 / 1.7, 0.8]) and v["goodput_x_range"] == pytest.approx([0.8, 2.1 / 1.7])
    config = {"preset": "chunk", "requests": 12, "workload": "mixed-chat-long", "long_share": 0.3, "scale": 4.0,
              "rate": 1.0, "slo": al.DEFAULT_SLO, "profile": "p.json", "pool_tokens": 8192, "chunks": (64, 128, 256),
              "repeats": 2}  # fmt: skip
    md = al.report_md({"config": config, "repeats": reps, "verdicts": v})
    assert "stock-c128 (tuned)" in md and "every repeat: False" in md and md.count("| accelgen |") == 2


def test_bad_arguments_exit_2_with_one_line(capsys) -> None:
    assert al.main(["--chunks", "64,x"]) == 2
    assert al.main(["--rate", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --chunks: expected comma-separated integers, got '64,x'", "error: --rate: out of range"]


def test_chunk_preset_puts_per_token_compute_far_above_the_tiny_model() -> None:
    assert set(PRESETS) == {"tiny", "chunk"}
    tiny, chunk = parameters("tiny"), parameters("chunk")
    assert chunk["mflop_per_token"] > 300 * tiny["mflop_per_token"]
    assert chunk["layers_M"] == pytest.approx(47.19, rel=1e-3)


def test_profile_from_a_json_path(tmp_path) -> None:
    src = profiles.get("cpu-tiny-torch")
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"name": "measured-here", "model": src.latency.to_dict(), "kv_capacity_tokens": 1234,
                                "device": "cpu", "source": "test"}))  # fmt: skip
    p = profiles.get(str(path))
    assert p.name == "measured-here" and p.kv_capacity_tokens == 1234 and p.latency == src.latency
    with pytest.raises(ValueError, match="unknown latency profile"):
        profiles.get(str(tmp_path / "missing.json"))
