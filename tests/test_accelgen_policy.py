"""AccelGen A2 order, A3 KV safety and packing, and the A1 property on whole plans (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

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
