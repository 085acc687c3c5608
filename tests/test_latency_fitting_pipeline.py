"""Measured-file -> fit_profile -> profiles pipeline, and the server probe's gap arithmetic."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import profiles
from eval.server_probe import per_token_gaps
from policies.latency import BatchShape, IterationLatencyModel

ROOT = Path(__file__).resolve().parents[1]


def _fit_script():
    spec = importlib.util.spec_from_file_location("fit_profile", ROOT / "scripts" / "fit_profile.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_fit_profile_roundtrip(tmp_path: Path) -> None:
    truth = IterationLatencyModel(c0_s=5e-3, c_tok_s=2e-5, c_attn_prefill_s=3e-9, c_attn_decode_s=1e-7, c_seq_s=3e-4)
    rng = np.random.default_rng(0)
    recs = []
    for n in (16, 64, 256, 1024):
        for c in (0, 512, 1536):
            s = BatchShape(prefill=((n, c),))
            recs.append(
                {"kind": "prefill", "prefill": [[n, c]], "seconds": truth.iteration_s(s) * rng.uniform(0.98, 1.02)}
            )
    for b in (1, 4, 16):
        for ctx in (64, 512):
            s = BatchShape(decode_ctx=(ctx,) * b)
            recs.append({"kind": "decode", "decode_batch": b, "decode_ctx": ctx, "seconds": truth.iteration_s(s)})
    measured = tmp_path / "x.measured.json"
    measured.write_text(json.dumps({"backend": "test", "device": "dev", "date": "2026-01-01", "samples": recs}))
    out = tmp_path / "x.json"
    _fit_script().main([str(measured), "--name", "x", "--kv-capacity-tokens", "1000", "--out", str(out)])
    prof = profiles.load_json(out)
    assert prof.kv_capacity_tokens == 1000 and prof.device == "dev" and prof.date
    assert prof.extra["fit"]["heldout"]["n"] == len(recs) // 4
    assert prof.extra["fit"]["heldout"]["median"] < 0.05
    assert prof.prefill_s(512, 0) == pytest.approx(truth.prefill_s(512, 0), rel=0.05)


def test_stored_profiles_load_with_provenance() -> None:
    for name in profiles.available():
        p = profiles.get(name)
        assert p.device and p.source and p.kv_capacity_tokens > 0, name
        assert 0 < p.iteration_s(BatchShape(decode_ctx=(128,))) < p.prefill_s(2048), name
        if name.startswith("cpu-"):
            assert p.date and p.extra["fit"]["heldout"]["n"] > 0, name


def test_per_token_gaps_splits_coalesced_chunks_and_windows() -> None:
    events = [(0.0, 1), (0.01, 2), (0.03, 4), (0.04, 5), (0.10, 6)]
    assert per_token_gaps(events, 0.0, 0.05) == pytest.approx([0.01, 0.01, 0.01])
    assert per_token_gaps(events, 0.02, 1.0) == pytest.approx([0.01, 0.06])
