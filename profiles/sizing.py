"""The KV pool SGLang 0.5.23 allocates on one GPU for one model, and its device-default chunk, computed as SGLang does.

Why: a pool a few percent larger than the real server's moves the point where KV binds, and a chunk SGLang would not
pick changes both batching and the pool (the activation reserve grows with the chunk). Every GPU profile therefore
carries SGLang's own numbers. Sources (installed wheel, ``sglang/srt/``):

* ``arg_groups/memory_hook.py`` ``handle_gpu_memory_settings``: with ``gpu_mem`` the device memory in MiB as
  ``nvidia-smi`` reports it (``utils/common.py`` ``get_nvgpu_memory_capacity``), the default
  ``--chunked-prefill-size`` is 2048 under 20 GiB, 4096 under 60 GiB (A100-40GB, L40), 8192 under 160 GiB (H100,
  A100-80GB, H200) and 16384 above; the decode CUDA-graph ``max_bs`` is 8 / 48 / 32 / 256 / 256 / 512 for the same
  bands (tp < 4). Then ``reserved_mem = 512 + 1.5 * max(chunk, 2048) + tp*pp/8 * 1024 + reserve_for_graph_mb`` MiB,
  floored at 10 GiB on GPUs over 60 GiB, and ``mem_fraction_static = round((gpu_mem - reserved_mem) / gpu_mem, 3)``.
* same file, ``reserve_for_graph_mb``: ``2 * decode max_bs`` plus ``8`` MiB per prefill capture size when the prefill
  CUDA graph is on (the breakable graph is the CUDA default: ``model_executor/cuda_graph_config.py``
  ``default_prefill_backend``); the prefill sizes are ``arg_groups/cuda_graph_hook.py``
  ``generate_prefill_cuda_graph_batch_sizes(max_bs = chunk)``, with ``max_bs`` capped at 4096 for Llama-2 model paths.
* ``mem_cache/kv_cache_configurator.py`` ``_profile_available_bytes``: the KV budget is the free memory after the
  weights are loaded minus ``pre_model_load_memory * (1 - mem_fraction_static)``, i.e.
  ``pre * mem_fraction_static - weights``; ``model_executor/pool_configurator.py``
  ``DefaultPoolConfigurator.calculate_pool_sizes`` divides it by the per-token cell size (K and V of every layer,
  ``_compute_cell_size``) and floors to the page size.

``pre_model_load_memory`` is the free memory after the CUDA context exists: device memory minus
:data:`CUDA_CONTEXT_MIB` (an assumption: the CUDA 12 context plus cuBLAS/NCCL start-up take about 0.5 GiB on
H100/A100). Single GPU (tp = pp = 1), no speculative decoding, no multimodal encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

from .specs import GPUSpec, ModelSpec

CUDA_CONTEXT_MIB = 512  # assumption, see the module docstring
MIB = 1 << 20


def device_chunked_prefill_size(gpu_mem_mib: float) -> int:
    """SGLang's default ``--chunked-prefill-size`` for a GPU of ``gpu_mem_mib`` (handle_gpu_memory_settings)."""
    if gpu_mem_mib < 20 * 1024:
        return 2048
    if gpu_mem_mib < 60 * 1024:
        return 4096
    if gpu_mem_mib < 160 * 1024:
        return 8192
    return 16384


def decode_graph_max_bs(gpu_mem_mib: float, tp_size: int = 1) -> int:
    """SGLang's default decode CUDA-graph ``max_bs`` (handle_gpu_memory_settings)."""
    if gpu_mem_mib < 20 * 1024:
        return 8
    if gpu_mem_mib < 35 * 1024:
        return 48 if tp_size < 4 else 160
    if gpu_mem_mib < 60 * 1024:
        return 32 if tp_size < 4 else 160
    if gpu_mem_mib < 160 * 1024:
        return 256 if tp_size < 4 else 512
    return 512


def prefill_graph_sizes(max_bs: int) -> list[int]:
    """``generate_prefill_cuda_graph_batch_sizes``: captured prefill token counts up to ``max_bs``."""
    sizes = [*range(4, 33, 4), *range(48, 257, 16), *range(288, 513, 32), *range(576, 1025, 64),
             *range(1280, 4097, 256), *range(4608, max_bs + 1, 512)]  # fmt: skip
    return [s for s in sizes if s <= max_bs]


def reserved_mem_mib(gpu_mem_mib: float, chunk: int, model: ModelSpec, tp_size: int = 1, pp_size: int = 1) -> float:
    """Activation + CUDA-graph reserve (MiB) that ``mem_fraction_static`` leaves out (handle_gpu_memory_settings)."""
    prefill_max_bs = min(chunk, 4096) if "llama-2" in model.repo.lower() else chunk
    graph = 2 * decode_graph_max_bs(gpu_mem_mib, tp_size) + 8 * len(prefill_graph_sizes(prefill_max_bs))
    reserved = 512 + 1.5 * max(chunk, 2048) + tp_size * pp_size / 8 * 1024 + graph
    if gpu_mem_mib > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    return reserved


def mem_fraction_static(gpu_mem_mib: float, reserved_mib: float) -> float:
    return round((gpu_mem_mib - reserved_mib) / gpu_mem_mib, 3)


@dataclass(frozen=True)
class SGLangSizing:
    """What SGLang 0.5.23 decides at start-up for one GPU, model and chunk."""

    chunked_prefill_size: int
    reserved_mib: float
    mem_fraction_static: float
    kv_pool_tokens: int


def sglang_sizing(gpu: GPUSpec, model: ModelSpec, chunk: int | None = None, page_size: int = 1) -> SGLangSizing:
    """SGLang's sizing with its device-default chunk, or with ``--chunked-prefill-size chunk``."""
    gpu_mem = float(gpu.memory_mib)
    chunk = chunk or device_chunked_prefill_size(gpu_mem)
    reserved = reserved_mem_mib(gpu_mem, chunk, model)
    mfs = mem_fraction_static(gpu_mem, reserved)
    pre_bytes = (gpu_mem - CUDA_CONTEXT_MIB) * MIB
    budget = int(pre_bytes * mfs) - model.weight_bytes_resident
    tokens = max(budget // model.kv_bytes_per_token, 0) // page_size * page_size
    return SGLangSizing(chunk, reserved, mfs, int(tokens))
