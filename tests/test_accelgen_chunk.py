"""A1 budget sizing: monotone in the SLO, never above the SLO per the model, pivot respected, fast path agrees
with the generic search, best-effort helper."""

from __future__ import annotations

import pytest

from policies.accelgen.chunk import ChunkSizer, classify_slo, is_best_effort, min_feasible_tbt_ms
from policies.latency import BatchShape, IterationLatencyModel

MODEL = IterationLatencyModel(
    c0_s=0.0015, c_tok_s=2.2e-5, c_attn_prefill_s=1.06e-9, c_attn_decode_s=5.6e-8, c_seq_s=6.6e-6, pivot_tokens=240
)


class Generic:
    """The same model seen only through the LatencyModel protocol (no closed form): exercises the search."""

    def iteration_s(self, shape: BatchShape) -> float:
        return MODEL.iteration_s(shape)

    def prefill_s(self, tokens: int, context_before: int = 0) -> float:
        return MODEL.prefill_s(tokens, context_before)

    def swap_s(self, tokens: int) -> float:
        return 0.0


DECODES = tuple(range(500, 500 + 40 * 50, 50))


def test_budget_monotone_in_slo() -> None:
    sizer = ChunkSizer(MODEL, 32, 8192)
    budgets = [sizer.budget(ms / 1e3, DECODES, 1000) for ms in range(5, 400, 5)]
    assert budgets == sorted(budgets)
    assert budgets[0] < budgets[-1]


@pytest.mark.parametrize("model", [MODEL, Generic()], ids=["closed-form", "search"])
@pytest.mark.parametrize("slo_ms", [12.0, 20.0, 50.0, 150.0])
def test_budget_meets_slo_and_is_largest(model, slo_ms: float) -> None:
    sizer = ChunkSizer(model, 32, 8192)
    b = sizer.budget(slo_ms / 1e3, DECODES, 700)
    chunk = b - len(DECODES)
    t = MODEL.iteration_s(BatchShape(prefill=((chunk, 700),), decode_ctx=DECODES))
    assert t <= slo_ms / 1e3
    if b < 8192:  # one more token would break the SLO
        t1 = MODEL.iteration_s(BatchShape(prefill=((chunk + 1, 700),), decode_ctx=DECODES))
        assert t1 > slo_ms / 1e3


def test_search_matches_closed_form() -> None:
    fast, slow = ChunkSizer(MODEL, 32, 8192), ChunkSizer(Generic(), 32, 8192)
    for ms in (8, 10, 15, 25, 40, 80, 200, 600):
        for ctx in (0, 3000):
            assert fast.budget(ms / 1e3, DECODES, ctx) == slow.budget(ms / 1e3, DECODES, ctx)


def test_pivot_respected_when_slo_allows() -> None:
    sizer = ChunkSizer(MODEL, 32, 8192)
    pivot_time = MODEL.iteration_s(BatchShape(prefill=((240 - 4, 0),), decode_ctx=(100,) * 4))
    b = sizer.budget(pivot_time * 1.001, (100,) * 4, 0)
    assert b >= 240
    # A SLO tighter than a pivot-sized iteration wins: the budget drops below the pivot but still meets it.
    b2 = sizer.budget(pivot_time * 0.999, (100,) * 4, 0)
    assert 32 <= b2 < 240


def test_decodes_alone_break_slo_gives_floor() -> None:
    sizer = ChunkSizer(MODEL, 32, 8192)
    decode_only = MODEL.iteration_s(BatchShape(decode_ctx=DECODES))
    assert sizer.budget(decode_only * 0.9, DECODES, 0) == max(32, len(DECODES))


def test_clamps_and_no_slo() -> None:
    sizer = ChunkSizer(MODEL, 64, 4096)
    assert sizer.budget(None, DECODES) == 4096
    assert sizer.budget(1e-6, DECODES) == 64  # infeasible: the floor
    assert sizer.budget(10.0, DECODES) == 4096
    many = (10,) * 5000
    assert sizer.budget(None, many) == 5000  # decodes are never dropped


def test_min_feasible_tbt() -> None:
    m = min_feasible_tbt_ms(MODEL)
    assert m == pytest.approx(1e3 * MODEL.iteration_s(BatchShape(decode_ctx=(1,))))
    assert min_feasible_tbt_ms(MODEL, 100_000) > m
    assert is_best_effort(MODEL, m * 0.5)
    assert not is_best_effort(MODEL, m * 2)
    assert not is_best_effort(MODEL, None)


def test_classify_slo_bad_input() -> None:
    m = min_feasible_tbt_ms(MODEL, 1000)
    assert classify_slo(MODEL, 0.0, 50.0)[0] == "reject"
    assert classify_slo(MODEL, 500.0, -1.0)[0] == "reject"
    assert classify_slo(MODEL, 500.0, float("nan"))[0] == "reject"
    kind, why = classify_slo(MODEL, 500.0, m * 0.9, 1000)
    assert kind == "best_effort" and "minimum possible iteration time" in why
    assert classify_slo(MODEL, 500.0, m * 1.1, 1000) == ("ok", "")
    assert classify_slo(MODEL, None, None) == ("ok", "")
