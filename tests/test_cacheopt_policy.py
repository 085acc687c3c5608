"""The ``cacheopt`` policy: registration, SGLang-style alternation, chunking, counters, delegation to the gate."""

from __future__ import annotations

import policies.cacheopt  # noqa: F401 - registers "cacheopt"
from policies.base import available, create
from policies.config import CacheOptConfig, ExtConfig, SGLangBaselineConfig
from tests.cacheopt_views import FakeLatency, running, view, waiting


def policy(chunk: int = 256, **kw):
    kw.setdefault("admission", "paper")
    cfg = ExtConfig(sglang=SGLangBaselineConfig(chunked_prefill_size=chunk), cacheopt=CacheOptConfig(**kw))
    return create("cacheopt", FakeLatency(), config=cfg)


def test_registered() -> None:
    assert "cacheopt" in available()
    assert create("cacheopt", FakeLatency()).name == "cacheopt"


def test_prefill_iteration_when_admitting_with_chunking() -> None:
    p = policy(chunk=256)
    plan = p.plan(view(wait=[waiting("a", prompt=100), waiting("b", prompt=600), waiting("c", prompt=10)]))
    assert [(a.rid, a.prefill_tokens) for a in plan.admit] == [("a", 100), ("b", 156)]
    assert plan.run_decodes is False and plan.token_budget == 256
    assert plan.notes["admits"] == 2


def test_chunk_in_progress_continues_first() -> None:
    p = policy(chunk=256)
    p.plan(view(wait=[waiting("b", prompt=600)]))
    w = [waiting("a", prompt=50), waiting("b", prompt=600, prefilled_len=256, kv_allocated=650)]
    plan = p.plan(view(wait=w, chunked_rid="b", free=10_000 - 256))
    assert [(a.rid, a.prefill_tokens) for a in plan.admit] == [("b", 256)]


def test_decode_iteration_when_nothing_fits() -> None:
    p = policy(reserve_tokens=0, reuse=False)
    r = running("r", prompt=100, out=10, alloc=1000)
    plan = p.plan(view([r], [waiting("a", prompt=100)], capacity=1000))
    assert plan.admit == () and plan.run_decodes and plan.token_budget == 1


def test_mixed_chunk_runs_decodes_with_the_prefill() -> None:
    p = policy(mixed_chunk=True)
    plan = p.plan(view([running("r")], [waiting("a", prompt=100)]))
    assert plan.run_decodes and plan.token_budget == 101


def test_never_fitting_request_is_skipped_and_counted() -> None:
    p = policy(reserve_tokens=0)
    plan = p.plan(view(wait=[waiting("huge", prompt=5000), waiting("a", prompt=100)], capacity=1000))
    assert [a.rid for a in plan.admit] == ["a"] and plan.notes["never_fit"] == 1


def test_swapped_request_resumes_without_forward_tokens() -> None:
    p = policy()
    plan = p.plan(view(wait=[waiting("s", prompt=300, output_len=20, swapped_out=True)]))
    assert [(a.rid, a.prefill_tokens) for a in plan.admit] == [("s", 0)]
    assert plan.run_decodes  # a swap-in alone computes nothing: decodes go on


def test_notes_topups_draws_and_hold_reach_the_plan() -> None:
    for admission in ("paper", "pool"):
        p = policy(topup_tokens=16, admission=admission)
        plan = p.plan(view([running("near", prompt=100, out=50, alloc=150, bound=50)]))
        assert plan.topups == (("near", 16),) and plan.notes["topups"] == 1 and plan.reserve_draws == ()
        assert plan.kv_hold is not None and plan.kv_hold >= 64  # the reserve is held in the engine's budget
        assert {"reuse", "reserve_draws", "reserve_left", "committed", "never_fit", "hold"} <= set(plan.notes)


def test_admissions_carry_their_engine_charge() -> None:
    plan = policy().plan(view(wait=[waiting("x", prompt=100, bound=50)]))
    assert plan.admit[0].budget_tokens == 151 and plan.admit[0].reserve_tokens == 150


def test_victims_delegate_to_the_gate_and_swap_follows_the_host() -> None:
    p = policy()
    run = [running("a", tbt_ms=100), running("b", tbt_ms=1000)]
    assert [v.rid for v in p.choose_victims(view(run), 5)] == ["b"]
    from policies.capabilities import HostCapabilities
    from policies.views import PreemptMode

    cheap_swap = FakeLatency(swap_per_token_s=1e-9)
    for swap, mode in ((True, PreemptMode.SWAP), (False, PreemptMode.RECOMPUTE)):
        q = create("cacheopt", cheap_swap, ExtConfig(), HostCapabilities(swap=swap))
        assert q.choose_victims(view(run), 5)[0].mode is mode
