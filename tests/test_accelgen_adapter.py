"""The SGLang seam of AccelGen's chunk yield: the plugin's hook on ``SchedulePolicy.shortest_prefill_chunk_limit``
hands SGLang the plan's tokens for the in-progress chunk (``PrefillAdder.chunked_req_limit``), and nothing else."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from policies.views import Admit, IterationPlan
from sglang_ext.adapter import hooks


def _original(result):
    calls = []

    def original(policy, chunked_req, waiting_queue, budget, page_size):
        calls.append((chunked_req.rid, budget, page_size))
        return result

    return original, calls


@pytest.fixture
def planned(monkeypatch):
    def install(*admits: Admit):
        plan = IterationPlan(admit=admits, token_budget=512)
        monkeypatch.setattr(hooks, "_ADAPTER", SimpleNamespace(plan=plan))

    yield install


def test_chunk_gets_the_planned_tokens_page_aligned(planned) -> None:
    planned(Admit("long", 300), Admit("chat", 25))
    original, calls = _original(None)
    assert hooks.around_chunk_limit(original, None, SimpleNamespace(rid="long"), [], 480, 16) == 288
    assert hooks.around_chunk_limit(original, None, SimpleNamespace(rid="long"), [], 480, 1) == 300
    assert calls == [("long", 480, 16), ("long", 480, 1)]  # SGLang's own rule still runs (and is combined)
    original, _ = _original(256)  # SGLang's shortest-prefill-first cap, when set, still applies
    assert hooks.around_chunk_limit(original, None, SimpleNamespace(rid="long"), [], 480, 16) == 256


def test_chunk_keeps_at_least_a_page_and_the_default_otherwise(planned) -> None:
    planned(Admit("long", 3), Admit("chat", 25))
    original, _ = _original(None)
    assert hooks.around_chunk_limit(original, None, SimpleNamespace(rid="long"), [], 480, 16) == 16
    planned(Admit("long", 480))  # the plan gives it the whole budget: SGLang's default
    assert hooks.around_chunk_limit(original, None, SimpleNamespace(rid="long"), [], 480, 16) is None
    planned(Admit("chat", 25))  # not in the plan: SGLang's default
    assert hooks.around_chunk_limit(original, None, SimpleNamespace(rid="long"), [], 480, 16) is None


def test_stock_server_is_untouched(monkeypatch) -> None:
    monkeypatch.setattr(hooks, "_ADAPTER", None)
    original, calls = _original(128)
    assert hooks.around_chunk_limit(original, None, SimpleNamespace(rid="x"), [], 480, 16) == 128 and calls
    assert any(t.endswith("SchedulePolicy.shortest_prefill_chunk_limit") for t, _, kind in hooks.SCHEDULER_HOOKS
               if kind == "AROUND")  # fmt: skip
