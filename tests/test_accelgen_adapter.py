"""The SGLang seam of AccelGen's chunk yield: the plugin's hook on ``SchedulePolicy.shortest_prefill_chunk_limit``
hands SGLang the plan's tokens for the in-progress chunk (``PrefillAdder.chunked_req_limit``), and nothing else."""

from __future__ import annotations

from collections import Counter
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
        monkeypatch.setattr(hooks, "_ADAPTER", SimpleNamespace(plan=plan, counters=Counter()))

    yield install


def test_chunk_gets_the_planned_tokens_page_aligned(planned) -> None:
    planned(Admit("long", 300), Admit("chat", 25))
    original, calls = _original(None)
    assert hooks.around_chunk_limit(original, None, SimpleNamespace(rid="long"), [], 480, 16) == 288
    assert hooks.around_chunk_limit(original, None, SimpleNamespace(rid="long"), [], 480, 1) == 300
    assert calls == [("long", 480, 16), ("long", 480, 1)]  # SGLang's own rule still runs (and is combined)
    assert hooks._ADAPTER.counters["chunk_yields"] == 2
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


@pytest.mark.server
def test_real_server_caps_the_chunk_for_short_prompts(tmp_path) -> None:
    """In the real server: a long prompt is being chunked (budget capped at 128 tokens) when short prompts with a
    tight TTFT arrive; AccelGen lets them join ahead of the chunk through SGLang's chunked_req_limit (counted), and
    every request completes at its length."""
    import concurrent.futures as cf
    import json
    import re
    import time

    import httpx

    from eval.server import ServerProcess, cpu_server_args

    extra = ["--ext-policy", "accelgen", "--ext-accelgen-max-budget", "128", "--ext-accelgen-min-budget", "16"]
    args = cpu_server_args(pool_tokens=4096, extra=extra)
    with ServerProcess(args, log_path=tmp_path / "server.log", env={"SGLANG_EXT_LOG_EVERY_S": "0.5"}) as srv:

        def one(i: int) -> int:
            long = i == 0
            time.sleep(0 if long else 0.3 + 0.05 * i)
            ids = list(range(300, 300 + (2400 if long else 12 + i)))
            slo = {"ttft_slo_ms": 60_000.0 if long else 2000.0, "tbt_slo_ms": 5000.0}
            body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 8, "min_new_tokens": 8,
                                                          "custom_params": slo}}  # fmt: skip
            r = httpx.post(srv.base_url + "/generate", json=body, timeout=300)
            r.raise_for_status()
            return int(r.json()["meta_info"]["completion_tokens"])

        with cf.ThreadPoolExecutor(6) as ex:
            assert list(ex.map(one, range(6))) == [8] * 6
        time.sleep(1.0)
        log = srv.log_text()
    counters = [json.loads(c.replace("'", '"')) for c in re.findall(r"sglang_ext counters: (\{.*\})", log)]
    assert counters and counters[-1].get("chunk_yields", 0) > 0
