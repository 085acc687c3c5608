"""SLO classes (eval.slo): relative and absolute objectives, the seeded class mix, spec parsing and bad specs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from eval.slo import (
    SLOSpecError,
    absolute,
    isolated_tbt_s,
    isolated_ttft_s,
    parse_slo,
)
from eval.workloads import RequestSpec, load_workload
from policies.latency import BatchShape, IterationLatencyModel

MODEL = IterationLatencyModel(c0_s=0.004, c_tok_s=2e-5, c_attn_prefill_s=1e-9, c_attn_decode_s=1e-7, c_seq_s=1e-4)


def _specs(n: int = 30) -> list[RequestSpec]:
    return load_workload("azure-conv", num_requests=n, scale=4.0)


def test_relative_objectives_are_multiples_of_isolated_latency() -> None:
    spec = parse_slo("only=1:4x:2.5x", MODEL)
    assert spec is not None
    out = spec.assign(_specs(), np.random.default_rng(0))
    for s in out:
        assert s.slo_class == "only"
        assert s.ttft_slo_ms == pytest.approx(4 * MODEL.prefill_s(s.prompt_len) * 1e3)
        iso_tbt = MODEL.iteration_s(BatchShape(decode_ctx=(s.prompt_len + s.output_len,)))
        assert s.tbt_slo_ms == pytest.approx(2.5 * iso_tbt * 1e3)
    longest = max(out, key=lambda s: s.prompt_len)
    shortest = min(out, key=lambda s: s.prompt_len)
    assert longest.ttft_slo_ms > shortest.ttft_slo_ms  # same tightness, scaled to each request


def test_chunked_isolated_ttft_sums_the_chunks() -> None:
    chunks = [(64, 0), (64, 64), (22, 128)]
    expected = sum(MODEL.prefill_s(n, before) for n, before in chunks)
    assert isolated_ttft_s(MODEL, 150, chunk_tokens=64) == pytest.approx(expected)
    assert isolated_ttft_s(MODEL, 150, chunk_tokens=None) == pytest.approx(MODEL.prefill_s(150))
    assert isolated_tbt_s(MODEL, 100, 20) == pytest.approx(MODEL.iteration_s(BatchShape(decode_ctx=(120,))))


def test_absolute_and_missing_objectives() -> None:
    out = absolute(500.0, 80.0).assign(_specs(5), np.random.default_rng(0))
    assert {(s.ttft_slo_ms, s.tbt_slo_ms, s.slo_class) for s in out} == {(500.0, 80.0, "abs")}
    spec = parse_slo("abs:700:-")
    assert spec is not None
    out = spec.assign(_specs(3), np.random.default_rng(0))
    assert all(s.ttft_slo_ms == 700.0 and s.tbt_slo_ms is None for s in out)
    mixed = parse_slo("a=1:300:-,b=1:-:5x", MODEL)
    assert mixed is not None
    assert {s.slo_class for s in mixed.assign(_specs(40), np.random.default_rng(2))} == {"a", "b"}


def test_default_mix_shares_and_seeding() -> None:
    spec = parse_slo("default", MODEL)
    assert spec is not None and [c.name for c in spec.classes] == ["tight", "medium", "loose"]
    specs = load_workload("azure-conv", num_requests=3000, scale=4.0, slo=spec, seed=1)
    counts = Counter(s.slo_class for s in specs)
    assert all(abs(counts[k] / 3000 - 1 / 3) < 0.04 for k in ("tight", "medium", "loose"))
    by = {k: [s.tbt_slo_ms / isolated_tbt_s(MODEL, s.prompt_len, s.output_len) / 1e3 for s in specs
              if s.slo_class == k] for k in counts}  # fmt: skip
    assert np.allclose(by["tight"], 3.0) and np.allclose(by["loose"], 12.0)
    again = load_workload("azure-conv", num_requests=3000, scale=4.0, slo=spec, seed=1)
    assert [s.slo_class for s in again] == [s.slo_class for s in specs]
    other = load_workload("azure-conv", num_requests=3000, scale=4.0, slo=spec, seed=2)
    assert [s.slo_class for s in other] != [s.slo_class for s in specs]
    skewed = parse_slo("t=9:1x:1x,l=1:9x:9x", MODEL)
    share = Counter(s.slo_class for s in load_workload("azure-conv", num_requests=2000, slo=skewed))["t"] / 2000
    assert share == pytest.approx(0.9, abs=0.03)


def test_none_spec() -> None:
    assert parse_slo("none") is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("abs:-5:100", "positive number"),
        ("abs:fast:100", "not a number"),
        ("abs:2x:100", "milliseconds, not multiples"),
        ("abs:100", "expected abs:TTFT_MS:TBT_MS"),
        ("tight=1:3x", "expected NAME=SHARE:TTFT:TBT"),
        ("tight=0:3x:3x", "share must be > 0"),
        ("tight=x:3x:3x", "share 'x' is not a number"),
        ("a=1:3x:3x,a=1:5x:5x", "distinct"),
        ("default", "need a latency model"),
    ],
)
def test_bad_specs_fail_with_one_line(text: str, problem: str) -> None:
    with pytest.raises(SLOSpecError, match=problem) as info:
        parse_slo(text)
    assert "\n" not in str(info.value)


def test_per_application_classes() -> None:
    spec = parse_slo("app:alpaca=5x:2x,arxiv=6000:175", MODEL)
    assert spec is not None and spec.by_source
    specs = load_workload("mixed-chat-long", num_requests=200, rate=2.0, seed=3, slo=spec, max_context=8192)
    for s in specs:
        assert s.slo_class == s.source
        if s.source == "arxiv":
            assert (s.ttft_slo_ms, s.tbt_slo_ms) == (6000.0, 175.0)
        else:
            assert s.tbt_slo_ms == pytest.approx(2 * isolated_tbt_s(MODEL, s.prompt_len, s.output_len) * 1e3)
    any_other = parse_slo("app:alpaca=500:30,*=2000:100")
    assert any_other is not None
    out = any_other.assign(_specs(3), np.random.default_rng(0))  # azure-conv: caught by "*"
    assert {(s.slo_class, s.tbt_slo_ms) for s in out} == {("*", 100.0)}
    with pytest.raises(SLOSpecError, match="no class for source 'azure-conv'"):
        parse_slo("app:alpaca=500:30").assign(_specs(2), np.random.default_rng(0))  # type: ignore[union-attr]
    with pytest.raises(SLOSpecError, match="expected SOURCE=TTFT:TBT"):
        parse_slo("app:alpaca=500")


def test_production_settings_carry_their_source() -> None:
    from eval.slo import PRODUCTION

    assert PRODUCTION["chat"].ttft_ms == 2000 and PRODUCTION["chat"].tbt_ms == 100
    assert PRODUCTION["reasoning"].tbt_ms == 80 and PRODUCTION["long-context"].ttft_ms == 6000
    assert all("inference_rules.adoc" in p.source for p in PRODUCTION.values())
