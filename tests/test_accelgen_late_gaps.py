"""A1's late-gap allowance (``--ext-accelgen-late-gap-share``): where an extend pass has a fixed cost close to a
decode step, no chunk meets a tight TBT SLO; the allowance plans a few large chunks instead, and never plans more
late gaps for a request than its share."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.accelgen.policy import AccelGenPolicy
from policies.config import AccelGenConfig, ExtConfig
from policies.latency import BatchShape, IterationLatencyModel
from policies.views import SLO, PoolView, RunningView, SchedulerView, WaitingView

# The CPU server's shape: a ~29 ms decode step, +28 ms for any iteration that carries a prefill chunk.
CPU = IterationLatencyModel(c0_s=0.029, c_tok_s=8e-5, c_seq_s=1.2e-3, c_prefill_s=0.028)
TBT_MS = 60.0  # ~2x an isolated decode step: a decode step meets it, no iteration carrying a chunk does


def policy(share: float, model: IterationLatencyModel = CPU) -> AccelGenPolicy:
    cfg = ExtConfig(accelgen=replace(AccelGenConfig(), late_gap_share=share, ttft_guard=0.0))
    return AccelGenPolicy(model, cfg)


def view(outputs: tuple[int, ...], now: float = 1.0, new_prompt: bool = False) -> SchedulerView:
    """Tight chat requests decoding (``outputs`` tokens each) and a long prompt mid-prefill (the rest of it waits
    for an allowance); ``new_prompt`` adds a chat prompt that just arrived."""
    running = tuple(
        RunningView(f"r{i}", 0.0, 20, n, 512, 20 + n, 20 + n, SLO(None, TBT_MS)) for i, n in enumerate(outputs)
    )
    waiting = (WaitingView("long", 0.5, 2000, 256, SLO(60_000, 1000), prefilled_len=256),)
    if new_prompt:
        waiting += (WaitingView("chat", now, 20, 256, SLO(150, TBT_MS)),)
    return SchedulerView(now, waiting, running, PoolView(100_000, 100_000), chunked_rid="long")


def predicted_ms(p: AccelGenPolicy, v: SchedulerView) -> tuple[int, float]:
    plan = p.plan(v)
    chunk = sum(a.prefill_tokens for a in plan.admit)
    shape = BatchShape(prefill=((chunk, 0),) if chunk else (), decode_ctx=tuple(r.seq_len for r in v.running))
    return chunk, CPU.iteration_s(shape) * 1e3


def test_without_allowance_every_iteration_carries_a_late_floor_chunk() -> None:
    chunk, ms = predicted_ms(policy(0.0), view((40, 40, 40)))
    assert 0 < chunk <= AccelGenConfig().min_budget and ms > TBT_MS  # the progress floor, over the tight SLO


def test_allowance_plans_few_large_chunks_within_each_share() -> None:
    p = policy(0.05)
    chunk, ms = predicted_ms(p, view((40, 40, 40)))  # one late gap of 40: 2.5% <= 5%
    assert chunk > 30 * AccelGenConfig().min_budget
    assert TBT_MS < ms <= 3.0 * TBT_MS  # late, within the stretch
    chunk, ms = predicted_ms(p, view((41, 41, 41)))  # a second: 2 <= 0.05 * 41
    assert chunk > 30 * AccelGenConfig().min_budget
    chunk, ms = predicted_ms(p, view((42, 42, 42)))  # a third would be 3 > 0.05 * 42: decode only, on time
    assert chunk == 0 and ms <= TBT_MS


def test_an_urgent_prompt_goes_ahead_in_one_large_late_chunk() -> None:
    """A young request blocks the allowance, but a new prompt (or one that starves) is prefilled anyway — late for
    everybody, so with a large chunk rather than a floor-sized one."""
    for v in (view((40, 5, 40), now=40.0), view((40, 5, 40), new_prompt=True)):  # "long" waited 39.5 s; a new chat
        chunk, ms = predicted_ms(policy(0.05), v)
        assert chunk > 30 * AccelGenConfig().min_budget and TBT_MS < ms <= 3.0 * TBT_MS


def test_chunks_that_fit_the_slo_leave_the_allowance_unused() -> None:
    """Where a chunk of min_budget tokens meets the tightest SLO (GPU-like extend costs), plans are those of
    strict A1, allowance or not."""
    gpu = replace(CPU, c_prefill_s=0.0)
    for outputs in ((40, 40, 40), (40, 5, 40), (200, 200)):
        plans = [policy(sh, gpu).plan(view(outputs)) for sh in (0.0, 0.09)]
        assert plans[0].admit == plans[1].admit and plans[0].token_budget == plans[1].token_budget


def test_a_young_request_blocks_the_allowance() -> None:
    chunk, ms = predicted_ms(policy(0.05), view((40, 5, 40)))
    assert chunk == 0 and ms <= TBT_MS


@settings(max_examples=40, deadline=None)
@given(share=st.sampled_from([0.02, 0.05, 0.09]), steps=st.integers(20, 200))
def test_planned_late_gaps_never_exceed_the_share(share: float, steps: int) -> None:
    p = policy(share)
    late = 0
    for k in range(1, steps + 1):
        _, ms = predicted_ms(p, view((k,)))
        late += ms > TBT_MS
        assert late <= share * k
