"""AccelGen A2 order, A3 KV safety and packing, and the A1 property on whole plans (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.accelgen.chunk import ChunkSizer
from policies.accelgen.gate import PagedPhysicalGate
from policies.accelgen.packing import alignment, dominant_share
from policies.accelgen.policy import AccelGenPolicy
from policies.accelgen.priority import (
    TIER_CHUNKED,
    TIER_FEASIBLE,
    TIER_LATE,
    TIER_RESUME,
    order_waiting,
    prune_by_slack,
)
from policies.base import create
from policies.config import AccelGenConfig, ExtConfig
from policies.latency import BatchShape, IterationLatencyModel
from policies.views import SLO, PoolView, RunningView, SchedulerView, WaitingView

MODEL = IterationLatencyModel(
    c0_s=0.0015, c_tok_s=2.2e-5, c_attn_prefill_s=1.06e-9, c_attn_decode_s=5.6e-8, c_seq_s=6.6e-6, pivot_tokens=240
)


def cfg(**kw) -> ExtConfig:
    return ExtConfig(accelgen=replace(AccelGenConfig(), **kw))


def w(rid: str, arrival: float, prompt: int, ttft: float | None = 2000, tbt: float | None = 50, **kw) -> WaitingView:
    return WaitingView(rid, arrival, prompt, 256, SLO(ttft, tbt), **kw)


def r(rid: str, ctx: int, tbt: float | None) -> RunningView:
    return RunningView(rid, 0.0, ctx - 10, 10, 256, ctx, ctx, SLO(None, tbt))


def order(view: SchedulerView, binding: float | None = None, grouping: bool = True, mode: str = "both") -> list[str]:
    cands, _ = order_waiting(
        view, MODEL, binding_ms=binding, feasible_tbt={}, group_ratio=1.5, urgent_slack_frac=0.5, starve_s=30.0,
        grouping=grouping, group_mode=mode,
    )  # fmt: skip
    return [c.req.rid for c in cands]


def test_a2_tiers_and_least_slack() -> None:
    now = 10.0
    waiting = (
        w("late", 0.0, 100, ttft=500),  # its deadline passed
        w("loose_ttft", 9.9, 100, ttft=5000),
        w("tight_ttft", 9.9, 100, ttft=1000),
        w("resumed", 5.0, 100, output_len=5, first_token_s=6.0),
        w("chunk", 9.0, 4000, prefilled_len=1024),
        w("no_ttft", 1.0, 100, ttft=None),
        w("starving", now - 31.0, 100, ttft=None, tbt=None),
    )
    view = SchedulerView(now, waiting, (), PoolView(100_000, 100_000), chunked_rid="chunk")
    expected = ["chunk", "starving", "resumed", "tight_ttft", "loose_ttft", "no_ttft", "late"]
    assert order(view, grouping=False) == expected
    cands, _ = order_waiting(view, MODEL, binding_ms=None, feasible_tbt={}, group_ratio=1.5,
                             urgent_slack_frac=0.5, starve_s=30.0)  # fmt: skip
    tiers = {c.req.rid: c.tier for c in cands}
    assert tiers["chunk"] == TIER_CHUNKED and tiers["resumed"] == TIER_RESUME and tiers["starving"] == TIER_RESUME
    assert tiers["late"] == TIER_LATE and tiers["tight_ttft"] == TIER_FEASIBLE


def test_a2_grouping_puts_binding_group_first_unless_urgent() -> None:
    now = 1.0
    waiting = (
        w("loose_first", 0.9, 100, ttft=3000, tbt=200),  # least slack but out of the 25 ms group
        w("tight", 0.95, 100, ttft=3000, tbt=30),  # 30 <= 25 * 1.5: in the group
        w("loose_urgent", 0.0, 100, ttft=1500, tbt=200),  # slack < 0.5 * ttft: grouping does not delay it
        w("no_tbt", 0.99, 100, ttft=3000, tbt=None),
    )
    view = SchedulerView(now, waiting, (), PoolView(100_000, 100_000))
    assert order(view, binding=25.0) == ["loose_urgent", "tight", "loose_first", "no_tbt"]
    assert order(view, binding=25.0, grouping=False) == ["loose_urgent", "loose_first", "tight", "no_tbt"]
    # No running binding SLO: the least-slack waiting request's SLO (200, of loose_urgent) defines the group.
    assert order(view, binding=None)[:2] == ["loose_urgent", "loose_first"]


def test_a2_grouping_tighter_mode_defers_only_tighter_requests() -> None:
    now = 1.0
    waiting = (
        w("tighter", 0.8, 100, ttft=3000, tbt=10),  # least slack, but 10 < 25 / 1.5: it would shrink the budget
        w("loose", 0.9, 100, ttft=3000, tbt=200),  # looser: rides along, not deferred in this mode
        w("tight", 0.95, 100, ttft=3000, tbt=30),
    )
    view = SchedulerView(now, waiting, (), PoolView(100_000, 100_000))
    assert order(view, binding=25.0, mode="tighter") == ["loose", "tight", "tighter"]
    assert order(view, binding=25.0, mode="both") == ["tight", "tighter", "loose"]


def test_a3_alignment_prefers_abundant_resource() -> None:
    # Budget nearly full, KV plentiful: the KV-heavy candidate scores higher than the token-heavy one.
    assert alignment(10, 5000, 20, 9000, 1000, 10000) > alignment(20, 100, 20, 9000, 1000, 10000)


def test_a3_dominant_share_prefers_what_strains_the_scarce_resource_least() -> None:
    # KV scarce (1000 left), budget plentiful: a short-output request beats a short prompt with a long output.
    assert dominant_share(400, 450, 2000, 1000) < dominant_share(50, 900, 2000, 1000)
    # Budget scarce: the short prompt wins.
    assert dominant_share(50, 900, 100, 100_000) < dominant_share(90, 100, 100, 100_000)


def test_a2_slack_pruning_defers_the_long_request_that_would_sink_others() -> None:
    # 1 ms per prefill token. EDF: long (1000 tokens, deadline 1.05 s) then three short ones (100 tokens, 1.2 s):
    # EDF meets only `long`; Moore-Hodgson defers `long` and meets the three short ones.
    now = 0.0
    waiting = (w("long", 0.0, 1000, ttft=1050), *(w(f"s{i}", 0.0, 100, ttft=1200) for i in range(3)))
    view = SchedulerView(now, waiting, (), PoolView(100_000, 100_000))
    cands, _ = order_waiting(view, MODEL, binding_ms=None, feasible_tbt={}, group_ratio=1.5,
                             urgent_slack_frac=0.5, starve_s=30.0, grouping=False)  # fmt: skip
    assert prune_by_slack(cands, now, 1e-3) == 1
    assert {c.req.rid: c.tier for c in cands}["long"] == TIER_LATE
    cands2, _ = order_waiting(view, MODEL, binding_ms=None, feasible_tbt={}, group_ratio=1.5,
                              urgent_slack_frac=0.5, starve_s=30.0, grouping=False, sec_per_token=1e-3)  # fmt: skip
    assert [c.req.rid for c in cands2][-1] == "long"


def test_paged_gate_counts_pages_and_pinned_prefix() -> None:
    gate = PagedPhysicalGate()
    running = (r("a", 32, None),)  # 32 % 16 == 0: its next decode takes a new page
    view = SchedulerView(0.0, (w("x", 0.0, 100, cached_len=64),), running, PoolView(1000, 200, page_size=16))
    gate.begin(view)
    adm = gate.admit(view.waiting[0], 36)
    assert adm is not None and adm.reserve_tokens == 48 + 16 + 64  # ceil16(36) + one decode page + pinned prefix
    assert gate.admit(WaitingView("y", 0.0, 100, 64), 60) is None  # 200 - 16 - 128 = 56 left < 64 + 16


def test_plan_is_mixed_and_chunk_is_budget_after_decodes() -> None:
    pol = create("accelgen", MODEL, config=cfg())
    running = tuple(r(f"r{i}", 1000, 40.0) for i in range(8))
    view = SchedulerView(0.0, (w("long", 0.0, 20_000),), running, PoolView(200_000, 150_000))
    plan = pol.plan(view)
    assert plan.run_decodes and plan.token_budget is not None
    assert [a.rid for a in plan.admit] == ["long"]
    assert plan.admit[0].prefill_tokens == plan.token_budget - len(running)
    t = MODEL.iteration_s(BatchShape(prefill=((plan.admit[0].prefill_tokens, 0),), decode_ctx=(1000,) * 8))
    assert t <= 0.040


def test_best_effort_request_does_not_constrain_and_is_admitted() -> None:
    pol = AccelGenPolicy(MODEL, config=cfg())
    running = (r("impossible", 1000, 0.5), r("loose", 1000, None))
    view = SchedulerView(0.0, (w("x", 0.0, 3000, tbt=0.1),), running, PoolView(100_000, 90_000))
    plan = pol.plan(view)
    assert plan.notes["best_effort"] == 1.0 and "limit_ms" not in plan.notes
    assert plan.token_budget == AccelGenConfig().max_budget and plan.admit[0].rid == "x"


def test_a1_off_uses_fixed_budget() -> None:
    pol = create("accelgen", MODEL, config=cfg(dynamic_chunk=False, pivot_tokens=512))
    view = SchedulerView(0.0, (w("long", 0.0, 5000),), (r("a", 100, 10.0),), PoolView(100_000, 90_000))
    plan = pol.plan(view)
    assert plan.token_budget == 512 and plan.admit[0].prefill_tokens == 511


waiting_st = st.lists(
    st.tuples(
        st.integers(1, 6000),  # prompt
        st.integers(0, 3000),  # cached prefix
        st.sampled_from([None, 20.0, 30.0, 50.0, 100.0, 250.0]),  # TBT SLO
        st.floats(0.0, 5.0),  # arrival
    ),
    max_size=12,
)
running_st = st.lists(
    st.tuples(st.integers(2, 6000), st.sampled_from([None, 12.0, 20.0, 30.0, 50.0, 100.0, 250.0])), max_size=60
)


def build(waiting, running, free: int) -> SchedulerView:
    ws = tuple(
        WaitingView(f"w{i}", a, p, 128, SLO(1000.0, t), cached_len=min(c, p - 1))
        for i, (p, c, t, a) in enumerate(waiting)
    )
    rs = tuple(RunningView(f"r{i}", 0.0, ctx - 1, 1, 128, ctx, ctx, SLO(None, t)) for i, (ctx, t) in enumerate(running))
    return SchedulerView(5.0, ws, rs, PoolView(1_000_000, free))


@settings(max_examples=150, deadline=None)
@given(waiting_st, running_st, st.integers(0, 200_000), st.booleans())
def test_property_plan_meets_tightest_slo_and_never_exceeds_kv(waiting, running, free, multi) -> None:
    pol = AccelGenPolicy(MODEL, config=cfg(min_budget=1, multi_resource=multi))
    view = build(waiting, running, free)
    plan = pol.plan(view)
    by_rid = {x.rid: x for x in view.waiting}
    # A3: never more KV than is available (the physical gate: prompt tokens + one decode token each).
    assert sum(a.prefill_tokens + 1 for a in plan.admit) <= max(free - len(running), 0)
    assert sum(1 for a in plan.admit if a.prefill_tokens < by_rid[a.rid].prompt_len - by_rid[a.rid].cached_len) <= 1
    # A1: predicted iteration time <= the tightest included SLO whenever the minimum feasible size fits.
    slos = [t for _, t in running if t is not None]
    if not slos:
        return
    limit = min(slos) / 1e3
    shape = BatchShape(
        prefill=tuple((a.prefill_tokens, by_rid[a.rid].cached_len) for a in plan.admit),
        decode_ctx=tuple(ctx for ctx, _ in running),
    )
    decode_only = MODEL.iteration_s(BatchShape(decode_ctx=shape.decode_ctx))
    if decode_only <= limit:
        assert MODEL.iteration_s(shape) <= limit + 1e-12
    else:
        assert plan.admit == ()
    assert sum(a.prefill_tokens for a in plan.admit) <= plan.token_budget - len(running) or plan.admit == ()


def test_online_refit_adopts_the_measured_model() -> None:
    """A1's online refit: measured iterations from a 2x slower machine make the budget shrink."""
    slow = IterationLatencyModel(c0_s=0.003, c_tok_s=4.4e-5, c_attn_prefill_s=2.1e-9, c_attn_decode_s=1.1e-7)
    pol = AccelGenPolicy(MODEL, config=cfg(refit_interval=20))
    running = tuple(r(f"r{i}", 800, 40.0) for i in range(8))
    view = SchedulerView(0.0, (w("long", 0.0, 20_000),), running, PoolView(200_000, 150_000))
    before = pol.plan(view).token_budget
    for k in range(40):
        shape = BatchShape(prefill=(((k * 37) % 900 + 16, (k * 101) % 3000),), decode_ctx=(500 + k,) * (k % 12))
        pol.observe_iteration(shape, slow.iteration_s(shape))
    assert pol.fitter is not None and pol.fitter.refits >= 1
    after = pol.plan(view).token_budget
    assert after < before
    assert pol.latency is pol.fitter.model  # later budgets are sized with the refitted model
    # ... for the SLO over the error margin the refitted model still leaves (its residual error on the window)
    assert pol.margin >= 1.0
    assert after == ChunkSizer(pol.fitter.model, 32, 8192).budget(0.040 / pol.margin, (800,) * 8, 0)


def test_demand_gate_keeps_expected_growth_and_learns_the_mean() -> None:
    from policies.accelgen.gate import DemandKVGate

    gate = DemandKVGate(prior_output=100, prior_weight=1)
    running = (RunningView("a", 0.0, 100, 20, 512, 120, 120),)  # expects 100 - 20 = 80 more tokens
    view = SchedulerView(0.0, (w("x", 0.0, 200),), running, PoolView(10_000, 300))
    gate.begin(view)  # 300 - 1 (next decode) - 80 (growth) = 219 left
    assert gate.admit(view.waiting[0], 200) is None  # 200 + 1 + 100 expected output = 301 > 219
    for _ in range(9):
        gate.observe_output(10)
    assert gate.mean_output == 19.0  # (100 + 9 * 10) / 10
    gate.begin(view)  # growth now 0 (the running request passed the mean): 299 left
    adm = gate.admit(view.waiting[0], 200)
    assert adm is not None and adm.reserve_tokens == 200 + 1 + 19


def test_demand_gate_empty_server_always_progresses() -> None:
    from policies.accelgen.gate import DemandKVGate

    gate = DemandKVGate(prior_output=10_000)
    view = SchedulerView(0.0, (w("x", 0.0, 300),), (), PoolView(1_000, 1_000))
    gate.begin(view)
    assert gate.admit(view.waiting[0], 300) is not None  # the expectation alone does not fit; physics does


# --- A2 chunk yield and A1's TTFT guard (issue 12: the tight-chat beside long-prompt regime) ----------------------
def _chunk_view(*chats: WaitingView, running: tuple = (), now: float = 1.0) -> SchedulerView:
    chunk = w("long", 0.0, 20_000, ttft=60_000, tbt=500, prefilled_len=4096)
    return SchedulerView(now, (chunk, *chats), running, PoolView(400_000, 300_000), chunked_rid="long")


def test_chunk_yield_lets_urgent_short_prompts_join_ahead_of_the_chunk() -> None:
    chats = (w("chat1", 0.99, 30, ttft=40, tbt=15), w("chat2", 0.995, 25, ttft=40, tbt=15))
    running = tuple(r(f"r{i}", 500, 15.0) for i in range(4))
    plan = AccelGenPolicy(MODEL, config=cfg()).plan(_chunk_view(*chats, running=running))
    rids = [a.rid for a in plan.admit]
    assert rids[0] == "long" and set(rids[1:]) == {"chat1", "chat2"}  # the chunk first (SGLang continues it first)
    tokens = {a.rid: a.prefill_tokens for a in plan.admit}
    assert tokens["chat1"] == 30 and tokens["chat2"] == 25
    assert 1 <= tokens["long"] <= plan.token_budget - len(running) - 55
    shape = BatchShape(prefill=((tokens["long"], 4096), (30, 0), (25, 0)), decode_ctx=(500,) * 4)
    assert MODEL.iteration_s(shape) <= 0.015 + 1e-12
    first = AccelGenPolicy(MODEL, config=cfg(chunk_yield=False)).plan(_chunk_view(*chats, running=running))
    assert [a.rid for a in first.admit] == ["long"]  # without the yield the chat waits for the long prefill


def test_chunk_yield_admits_only_whole_requests_ahead_and_keeps_a_page_for_the_chunk() -> None:
    """A request ahead of the chunk that does not fit whole waits (one chunked prefill at a time); when the ones
    ahead fill the SLO limit, the chunk still gets its page (SGLang's chunked_req_limit must be > 0)."""
    big = w("urgent_big", 0.99, 3000, ttft=400, tbt=None)
    small = w("urgent_small", 0.99, 40, ttft=300, tbt=None)
    running = tuple(r(f"r{i}", 500, 12.0) for i in range(8))
    plan = AccelGenPolicy(MODEL, config=cfg()).plan(_chunk_view(big, small, running=running))
    tokens = {a.rid: a.prefill_tokens for a in plan.admit}
    assert "urgent_big" not in tokens and tokens["urgent_small"] == 40 and tokens["long"] >= 1
    partial = [a for a in plan.admit if a.rid != "long"]
    assert all(a.prefill_tokens == 40 for a in partial)


def test_ttft_guard_caps_iterations_while_a_tight_ttft_class_is_around() -> None:
    """Nothing with a TBT SLO runs, so A1 alone would use the maximum budget; a chat with a 30 ms TTFT was seen,
    so an iteration is capped at half of that until no such request has been seen for 30 s."""
    pol = AccelGenPolicy(MODEL, config=cfg())
    long_only = SchedulerView(0.0, (w("long", 0.0, 20_000, ttft=60_000, tbt=None),), (), PoolView(400_000, 300_000))
    assert pol.plan(long_only).token_budget == AccelGenConfig().max_budget
    with_chat = SchedulerView(1.0, (*long_only.waiting, w("chat", 1.0, 20, ttft=30, tbt=None)), (),
                              PoolView(400_000, 300_000))  # fmt: skip
    plan = pol.plan(with_chat)
    assert plan.notes["ttft_cap_ms"] == pytest.approx(0.5 * 30)
    shape = BatchShape(prefill=tuple((a.prefill_tokens, 0) for a in plan.admit))
    assert MODEL.iteration_s(shape) <= 0.5 * 0.030 + 1e-12 and plan.token_budget < 1000
    later = replace(long_only, now_s=20.0)
    assert pol.plan(later).notes["ttft_cap_ms"] == pytest.approx(0.5 * 30)  # remembered for 30 s
    assert pol.plan(replace(long_only, now_s=31.5)).token_budget == AccelGenConfig().max_budget
    off = AccelGenPolicy(MODEL, config=cfg(ttft_guard=0.0))
    assert off.plan(with_chat).token_budget == AccelGenConfig().max_budget
    infeasible = SchedulerView(1.0, (w("chat", 1.0, 20, ttft=0.1, tbt=None),), (), PoolView(400_000, 300_000))
    assert AccelGenPolicy(MODEL, config=cfg()).plan(infeasible).notes.get("ttft_cap_ms") is None


@settings(max_examples=120, deadline=None)
@given(waiting_st, running_st, st.integers(1, 8000), st.integers(0, 4000), st.integers(0, 400_000))
def test_property_chunk_yield_plan(waiting, running, chunk_prompt, chunk_done, free) -> None:
    """With a chunk in progress: it is listed first whenever admitted, at most one admission is partial and only
    the chunk may be it, KV is never exceeded, and A1's limit holds whenever the decodes and one page fit."""
    chunk_done = min(chunk_done, chunk_prompt - 1)
    base = build(waiting, running, free)
    chunk = WaitingView("chunk", 0.0, chunk_prompt, 128, SLO(5000.0, None), prefilled_len=chunk_done)
    view = replace(base, waiting=(chunk, *base.waiting), chunked_rid="chunk")
    pol = AccelGenPolicy(MODEL, config=cfg(min_budget=1))
    plan = pol.plan(view)
    by_rid = {x.rid: x for x in view.waiting}
    if any(a.rid == "chunk" for a in plan.admit):
        assert plan.admit[0].rid == "chunk"

    def done(rid: str) -> int:
        return max(by_rid[rid].cached_len, by_rid[rid].prefilled_len)

    partial = [a.rid for a in plan.admit if a.prefill_tokens < by_rid[a.rid].prompt_len - done(a.rid)]
    assert partial in ([], ["chunk"])
    assert sum(a.prefill_tokens for a in plan.admit) + len(running) <= max(free, 0) or plan.admit == ()
    slos = [t for _, t in running if t is not None]
    if slos and plan.admit:
        limit = min(slos) / 1e3
        shape = BatchShape(
            prefill=tuple((a.prefill_tokens, done(a.rid)) for a in plan.admit),
            decode_ctx=tuple(ctx for ctx, _ in running),
        )  # fmt: skip
        floor = MODEL.iteration_s(BatchShape(prefill=((1, chunk_done),), decode_ctx=shape.decode_ctx))
        if floor <= limit:
            assert MODEL.iteration_s(shape) <= limit + 1e-12
