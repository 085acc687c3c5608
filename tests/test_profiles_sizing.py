"""GPU profiles sized as SGLang 0.5.23 sizes them (profiles/sizing.py): device-default chunk, reserve,
mem_fraction_static and KV pool, checked against SGLang's own functions where they are callable and by hand."""

from __future__ import annotations

import pytest

import profiles
from profiles.sizing import (
    CUDA_CONTEXT_MIB,
    decode_graph_max_bs,
    device_chunked_prefill_size,
    prefill_graph_sizes,
    reserved_mem_mib,
    sglang_sizing,
)
from profiles.specs import GPUS, MODELS


def test_device_default_chunks_and_graph_sizes() -> None:
    assert [device_chunked_prefill_size(m) for m in (16_000, 24_000, 40_960, 81_559, 143_771, 180_000)] == [
        2048, 4096, 4096, 8192, 8192, 16384]  # fmt: skip
    assert decode_graph_max_bs(40_960) == 32 and decode_graph_max_bs(81_559) == 256
    assert profiles.get("h100-llama3-8b").chunked_prefill_size == 8192
    assert profiles.get("a100-llama2-13b").chunked_prefill_size == 8192
    assert profiles.get("a100-40gb-llama2-13b").chunked_prefill_size == 4096


@pytest.mark.slow
def test_prefill_graph_sizes_are_sglangs() -> None:
    from sglang.srt.arg_groups.cuda_graph_hook import generate_prefill_cuda_graph_batch_sizes

    for max_bs in (128, 4096, 8192, 16384):
        assert prefill_graph_sizes(max_bs) == generate_prefill_cuda_graph_batch_sizes(max_bs)


def test_h100_llama3_8b_pool_by_hand() -> None:
    """memory_hook.py: reserve = 512 + 1.5 * 8192 + 1/8 * 1024 + (2 * 256 + 8 * 58) MiB = 13,904 > the 10 GiB floor;
    mem_fraction_static = round((81559 - 13904) / 81559, 3) = 0.83; KV = (81559 - 512) MiB * 0.83 - weights."""
    gpu, model = GPUS["h100"], MODELS["llama3-8b"]
    assert len(prefill_graph_sizes(8192)) == 58
    assert reserved_mem_mib(81559, 8192, model) == 13904
    sz = sglang_sizing(gpu, model)
    assert sz.mem_fraction_static == 0.83
    expected = (int((81559 - CUDA_CONTEXT_MIB) * 2**20 * 0.83) - model.weight_bytes_resident) // 131072
    assert sz.kv_pool_tokens == expected == profiles.get("h100-llama3-8b").kv_capacity_tokens
    assert 400_000 < expected < 430_000  # ~7% below the old (uncorrected) 448k


def test_a100_40gb_llama2_13b_is_kv_tight() -> None:
    p = profiles.get("a100-40gb-llama2-13b")
    model = MODELS["llama2-13b"]
    assert reserved_mem_mib(40960, 4096, model) == 512 + 6144 + 128 + 64 + 8 * 50  # no floor under 60 GB
    assert p.mem_fraction_static == 0.823 and p.context_len == 4096
    assert 9_000 < p.kv_capacity_tokens < 12_000  # a dozen 1k-token conversations


def test_pool_depends_on_the_chunk_and_page() -> None:
    # H100: the 10 GiB floor holds below chunk ~5.6k, so small chunks share one pool; 8192 leaves less
    small, default = profiles.kv_capacity_at("h100-llama3-8b", 512), profiles.kv_capacity_at("h100-llama3-8b", 8192)
    assert small > default == profiles.get("h100-llama3-8b").kv_capacity_tokens
    assert profiles.kv_capacity_at("h100-llama3-8b", 256) == small
    # A100-40GB: no floor, every chunk step changes the reserve
    sizes = [profiles.kv_capacity_at("a100-40gb-llama2-13b", c) for c in (2048, 4096, 8192)]
    assert sizes[0] > sizes[1] > sizes[2]
    assert sglang_sizing(GPUS["h100"], MODELS["llama3-8b"], page_size=16).kv_pool_tokens % 16 == 0


def test_context_lengths() -> None:
    assert profiles.get("h100-llama3-8b").context_len == 8192
    assert profiles.get("h100-llama3-8b-32k").context_len == 32768
    assert profiles.get("h100-llama2-13b").context_len == 4096
    same = profiles.get("h100-llama3-8b-32k")
    assert same.kv_capacity_tokens == profiles.get("h100-llama3-8b").kv_capacity_tokens  # same shape, same pool
    assert profiles.get("cpu-tiny-torch").context_len is None
