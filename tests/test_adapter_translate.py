"""The adapter's translation of SGLang batches into the latency model's shapes (what A1's online refit learns from)."""

from __future__ import annotations

from types import SimpleNamespace

from policies.latency import BatchShape
from sglang_ext.adapter.translate import batch_shape


def _mode(decode: bool) -> SimpleNamespace:
    return SimpleNamespace(is_decode=lambda: decode)


def test_decode_batch_shape_is_the_contexts() -> None:
    reqs = [SimpleNamespace(origin_input_ids=[0] * 10, output_ids=[1] * 3)]
    assert batch_shape(SimpleNamespace(forward_mode=_mode(True), reqs=reqs)) == BatchShape(decode_ctx=(13,))


def test_extend_batch_reads_sglangs_per_request_extend_and_prefix_lists() -> None:
    """A mixed batch: one chunk of 64 after 128 cached tokens, and a running request decoding as a one-token extend."""
    chunk = SimpleNamespace(output_ids=[])
    decoding = SimpleNamespace(output_ids=[7, 7])
    batch = SimpleNamespace(
        forward_mode=_mode(False), reqs=[chunk, decoding], extend_lens=[64, 1], prefix_lens=[128, 41]
    )
    assert batch_shape(batch) == BatchShape(prefill=((64, 128),), decode_ctx=(42,))
