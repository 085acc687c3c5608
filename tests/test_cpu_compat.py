"""The pure-torch sgl_kernel stand-in: same results as the Triton kernels it replaces, and present only where the
real sgl_kernel is missing."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from sglang_ext import cpu_compat


def test_stand_in_is_importable_as_sgl_kernel() -> None:
    mod = importlib.import_module("sgl_kernel")
    if cpu_compat.real_sgl_kernel_available():
        pytest.skip("a real sgl_kernel is installed: the stand-in must stay out of the way")
    assert mod.__file__.startswith(str(cpu_compat.STAND_IN_DIR))
    assert str(cpu_compat.STAND_IN_DIR) in sys.path


def test_assign_req_to_token_pool_matches_reference() -> None:
    sk = importlib.import_module("sgl_kernel")
    req_to_token = torch.zeros((4, 16), dtype=torch.int32)
    rows = torch.tensor([2, 0, 3])
    start = torch.tensor([0, 5, 3])
    end = torch.tensor([4, 7, 3])  # the last request adds nothing
    out = torch.arange(100, 106, dtype=torch.int64)
    sk.assign_req_to_token_pool_cpu(rows, req_to_token, start, end, out, 16)
    expected = torch.zeros((4, 16), dtype=torch.int32)
    expected[2, 0:4] = torch.tensor([100, 101, 102, 103], dtype=torch.int32)
    expected[0, 5:7] = torch.tensor([104, 105], dtype=torch.int32)
    assert torch.equal(req_to_token, expected)


def test_copy_all_layer_kv_cache_copies_rows_in_every_buffer() -> None:
    sk = importlib.import_module("sgl_kernel")
    bufs = [torch.arange(40, dtype=torch.float32).reshape(10, 4) + 100 * i for i in range(3)]
    ptrs = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.uint64)
    strides = torch.tensor([b.stride(0) * b.element_size() for b in bufs], dtype=torch.int64)
    before = [b.clone() for b in bufs]
    sk.copy_all_layer_kv_cache_cpu(ptrs, strides, torch.tensor([7, 8]), torch.tensor([1, 2]))
    for b, old in zip(bufs, before, strict=True):
        assert torch.equal(b[7], old[1]) and torch.equal(b[8], old[2])
        assert torch.equal(b[:7], old[:7]) and torch.equal(b[9], old[9])


def test_other_cpu_ops_import_but_refuse_to_run() -> None:
    sk = importlib.import_module("sgl_kernel")
    with pytest.raises(NotImplementedError, match="verify_tree_greedy_cpu"):
        sk.verify_tree_greedy_cpu()
    with pytest.raises(AttributeError):
        sk.some_cuda_only_op  # noqa: B018 - non-_cpu names are real AttributeErrors
