"""The ``cacheopt`` policy: registration, SGLang-style alternation, chunking, counters, delegation to the gate."""

from __future__ import annotations

import policies.cacheopt  # noqa: F401 - registers "cacheopt"
from policies.base import available, create
from policies.config import CacheOptConfig, ExtConfig, SGLangBaselineConfig
from tests.cacheopt_views import FakeLatency, running, view, waiting


def policy(chunk: int = 256, **kw):
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
    w = [waiting("a", prompt=50), waiting("b", prompt=600, prefilled_len=256)]
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


def test_notes_and_topups_reach_the_plan() -> None:
    p = policy(topup_tokens=16)
    plan = p.plan(view([running("near", prompt=100, out=50, alloc=150, bound=50)]))
    assert plan.topups == (("near", 16),) and plan.notes["topups"] == 1
    assert {"reuse", "reserve_draws", "reserve_left", "committed", "never_fit"} <= set(plan.notes)


def test_victims_and_finish_delegate_to_the_gate() -> None:
    p = policy()
    run = [running("a", tbt_ms=100), running("b", tbt_ms=1000)]
    assert [v.rid for v in p.choose_victims(view(run), 5)] == ["b"]
    p.plan(view(wait=[waiting("x")]))
    assert "x" in p.gate.ledger.alloc
    p.on_finish("x", 3)
    assert "x" not in p.gate.ledger.alloc
