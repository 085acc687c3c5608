"""Faithfulness of the ``sglang`` baseline: SGLang 0.5.23's own scheduler classes, run offline on CPU on fixed
request scripts (``tests/sglang_harness.py``), form the same batches, mix the same decodes in, and retract the same
requests as the ``sglang`` policy in the simulator — step for step.

Both of SGLang's batching modes are checked: the default (a prefill batch runs alone) and ``--enable-mixed-chunk``
(decodes ride in the prefill batch, charged to its chunk; they sit a step out when their next token does not fit,
and a mixed step never retracts). Page sizes 1 (the CPU server) and 16 (``PagedTokenToKVPoolAllocator``, the GPU
profiles) are checked with the radix cache disabled (``--disable-radix-cache``); with it enabled, prompts share
nothing, so what is checked is that a retracted request re-prefills only past its own cached prompt, as SGLang does.
Priority scheduling is checked in ``tests/test_baselines_sglang_priority.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.sglang_harness import CHUNK, Mode, StockSGLang, crowd, publish_server_args, script, simulate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sglang_ready():
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
    pytest.importorskip("sgl_kernel", reason="needs the CPU sgl_kernel stand-in (scripts/setup.sh)")
    publish_server_args()
    return True


@pytest.fixture
def server_args(sglang_ready) -> Iterator[Callable[[Mode], None]]:
    """Publish SGLang's server args for a case's flags (some classes read them), and the defaults again after."""
    yield publish_server_args
    publish_server_args()


def assert_same(stock: list, ours: list) -> None:
    for i, (a, b) in enumerate(zip(stock, ours, strict=False)):
        assert a == b, f"step {i}: stock {a} vs policy {b}"
    assert len(stock) == len(ours)


CASES = [(0, 1, False), (1, 1, False), (0, 16, False), (4, 16, False), (4, 1, True), (5, 1, True)]  # fmt: skip


@pytest.mark.parametrize(("seed", "page", "radix"), CASES)
def test_same_batches_and_retractions_as_stock_sglang(sglang_ready, seed, page, radix):
    reqs = script(seed)
    stock = StockSGLang(page, radix).run(reqs)
    ours = simulate(reqs, page, radix)
    assert any(kind == "D" and rids for kind, rids in stock), "script should make stock SGLang retract"
    assert any(kind == "P" and any(n == CHUNK for _, n in b) for kind, b in stock), "script should chunk"
    assert_same(stock, ours)


def test_full_batch_flag_is_lost_when_the_prefill_batch_becomes_the_running_batch(sglang_ready):
    """Five requests at once, three fit: NO_TOKEN sets ``batch_is_full`` on the empty running batch, which the
    prefill batch then replaces — so SGLang admits the other two at the next step instead of waiting."""
    reqs = [(0, rid, 20, 50, 200) for rid in "abcde"]
    stock = StockSGLang().run(reqs)
    assert stock[:2] == [("P", (("a", 20), ("b", 20), ("c", 20))), ("P", (("d", 20), ("e", 20)))]
    assert_same(stock, simulate(reqs))


# (seed, page, radix, long prompts): every case retracts and chunks; each mode mixes decodes into prefill chunks
MIXED_CASES = [(0, 1, False, False), (3, 16, False, False), (0, 1, False, True), (2, 16, False, True),
               (3, 1, True, True), (1, 1, True, False)]  # fmt: skip


@pytest.mark.parametrize(("seed", "page", "radix", "long"), MIXED_CASES)
def test_mixed_chunk_same_steps_as_stock_sglang(server_args, seed, page, radix, long):
    mode = Mode(page, radix, mixed=True)
    server_args(mode)
    reqs = script(seed, long=long)
    stock = StockSGLang(mode=mode).run(reqs)
    ours = simulate(reqs, mode=mode)
    assert any(kind == "D" and rids for kind, rids in stock), "script should make stock SGLang retract"
    mixed = [rid for kind, b in stock if kind == "M" for rid, _ in b]
    assert len(mixed) >= 20, "decodes should ride in prefill chunks"
    assert len(set(mixed)) < len(mixed), "a prompt should be cut into chunks beside the decodes"
    assert_same(stock, ours)


@pytest.mark.parametrize(("page", "n", "cap", "t_long", "prompt"), [(1, 24, 30, 5, 320), (16, 16, 50, 12, 200)])
def test_mixed_chunk_decodes_sit_out_when_their_token_does_not_fit(server_args, page, n, cap, t_long, prompt):
    """A crowd decoding through a long prompt's chunks uses the KV the chunks were charged against: at the last
    chunk the decodes do not fit and sit that step out (a prefill-only step with requests running), unretracted."""
    mode = Mode(page, mixed=True)
    server_args(mode)
    reqs = crowd(n, cap, t_long, prompt)
    harness = StockSGLang(mode=mode)
    stock = harness.run(reqs)
    assert harness.sat_out >= 1
    assert_same(stock, simulate(reqs, mode=mode))


def test_mixed_chunk_where_stock_sglang_runs_out_of_memory(server_args):
    """SGLang 0.5.23 charges a continuing chunk against the KV estimate, not the free KV: when the mixed-in decodes
    have used that KV, ``prepare_for_extend`` raises "Out of memory" and the scheduler dies. The mirror makes the
    same decisions up to that step and then shrinks the chunk to the free KV (documented divergence)."""
    mode = Mode(1, mixed=True)
    server_args(mode)
    reqs = crowd(24, 25, 5, 320)
    harness = StockSGLang(mode=mode)
    with pytest.raises(RuntimeError, match="Out of memory"):
        harness.run(reqs)
    ours = simulate(reqs, mode=mode)
    done = len(harness.trace)  # steps recorded before the one whose batch could not be allocated
    assert done > 10 and harness.trace == ours[:done]
    assert ours[done][0] == "P" and ours[done][1][0][0] == "L"  # the shrunk chunk, decodes sitting out
