"""GPU roofline profiles: plausible magnitudes and orderings; registry lists valid names."""

from __future__ import annotations

import pytest

import profiles
from policies.latency import BatchShape
from profiles.specs import MODELS

GPU_NAMES = [f"{g}-{m}" for g in ("h100", "a100") for m in ("llama2-7b", "llama2-13b", "llama3-8b", "opt-13b")]


def test_all_gpu_profiles_available() -> None:
    assert set(GPU_NAMES) <= set(profiles.available())


def test_unknown_profile_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown latency profile 'h200-x'.*h100-llama3-8b"):
        profiles.get("h200-x")


def test_public_parameter_counts() -> None:
    expected = {"llama2-7b": 6.74e9, "llama2-13b": 13.0e9, "llama3-8b": 8.03e9, "opt-13b": 12.85e9}
    for name, params in expected.items():
        assert MODELS[name].params == pytest.approx(params, rel=0.01), name
    assert MODELS["llama3-8b"].kv_bytes_per_token == 131072  # GQA: 8 KV heads
    assert MODELS["llama2-7b"].kv_bytes_per_token == 524288


def test_h100_llama3_8b_magnitudes() -> None:
    p = profiles.get("h100-llama3-8b")
    assert 6e-3 <= p.iteration_s(BatchShape(decode_ctx=(512,))) <= 15e-3
    assert 30e-3 <= p.prefill_s(2048) <= 120e-3
    assert 100 <= p.latency.pivot_tokens <= 600  # compute saturation of an 8B model on H100
    assert 2e5 <= p.kv_capacity_tokens <= 6e5
    assert 1e-3 <= p.swap_s(1000) <= 20e-3


@pytest.mark.parametrize("model", ["llama2-7b", "llama2-13b", "llama3-8b", "opt-13b"])
def test_h100_faster_than_a100(model: str) -> None:
    h, a = profiles.get(f"h100-{model}"), profiles.get(f"a100-{model}")
    for shape in (BatchShape(decode_ctx=(1024,) * 32), BatchShape(prefill=((2048, 0),))):
        assert h.iteration_s(shape) < a.iteration_s(shape)
    assert h.swap_s(4096) < a.swap_s(4096)  # PCIe Gen5 vs Gen4


@pytest.mark.parametrize("gpu", ["h100", "a100"])
def test_13b_slower_than_7b_and_fewer_kv_tokens(gpu: str) -> None:
    small, big = profiles.get(f"{gpu}-llama2-7b"), profiles.get(f"{gpu}-llama2-13b")
    for shape in (BatchShape(decode_ctx=(256,)), BatchShape(prefill=((1024, 1024),), decode_ctx=(512,) * 8)):
        assert big.iteration_s(shape) > small.iteration_s(shape)
    assert big.kv_capacity_tokens < small.kv_capacity_tokens


def test_roofline_regimes() -> None:
    """Decode below the pivot is flat in batch size (weight streaming); prefill above it is ~linear in tokens."""
    m = profiles.get("h100-llama3-8b").latency
    one, eight = m.iteration_s(BatchShape(decode_ctx=(16,))), m.iteration_s(BatchShape(decode_ctx=(16,) * 8))
    assert eight / one < 1.05
    t2k, t4k = m.prefill_s(2048), m.prefill_s(4096)
    assert 1.8 < t4k / t2k < 2.4
    assert m.max_tokens_within(0.05, decode_ctx=[1024] * 32) > 1000
