"""Pure-torch stand-in for the two ``sgl_kernel`` CPU ops SGLang 0.5.23 imports with SGLANG_USE_CPU_ENGINE=1.

Only on sys.path when the real sgl_kernel is missing (see ``sglang_ext.cpu_compat``). Semantics follow the
Triton kernels they replace (``assign_req_to_token_pool`` in ``mem_cache/allocation.py`` and
``copy_all_layer_kv_cache_tiled`` in ``kernels/ops/kvcache/cache_move.py``).
"""

from __future__ import annotations

import ctypes

import torch

__version__ = "0.0.0+sglang_ext.cpu_stand_in"


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """``req_to_token[req_pool_indices[i], start[i]:end[i]] = out_cache_loc[o_i : o_i + end[i]-start[i]]`` with
    ``o_i`` the running sum of the previous requests' lengths."""
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    rows = req_pool_indices.tolist()
    out = 0
    for row, s, e in zip(rows, starts, ends, strict=True):
        n = e - s
        if n > 0:
            req_to_token[row, s:e] = out_cache_loc[out : out + n].to(req_to_token.dtype)
        out += n


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor, strides: torch.Tensor, tgt_loc: torch.Tensor, src_loc: torch.Tensor
) -> None:
    """For every KV buffer (raw pointer + row stride in bytes), copy row ``src_loc[j]`` to row ``tgt_loc[j]``."""
    tgt = tgt_loc.tolist()
    src = src_loc.tolist()
    for ptr, stride in zip(data_ptrs.tolist(), strides.tolist(), strict=True):
        for t, s in zip(tgt, src, strict=True):
            if t != s:
                ctypes.memmove(ptr + t * stride, ptr + s * stride, stride)


def __getattr__(name: str):
    """Other ``*_cpu`` ops (speculative decoding's, imported at module level by ``kernels/ops/speculative``) are
    importable but raise when called: the CPU server never calls them. Any other name is a real AttributeError,
    so feature probes (``hasattr``/``ImportError``) still see the truth."""
    if not name.endswith("_cpu"):
        raise AttributeError(f"module 'sgl_kernel' (sglang_ext CPU stand-in) has no attribute {name!r}")

    def op(*_args: object, **_kwargs: object) -> None:
        raise NotImplementedError(f"sgl_kernel.{name} has no pure-torch stand-in (sglang_ext.cpu_compat)")

    op.__name__ = name
    return op
