"""Client caps and SGLang's context rule at arrival (eval.caps), in the simulator host too."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st

import profiles
from eval.caps import CapError, check_cap_setting, client_cap, sglang_arrival
from eval.sim import Simulator, make_policy
from eval.workloads import RequestSpec


def test_client_cap_takes_no_output_length() -> None:
    assert "output" not in " ".join(inspect.signature(client_cap).parameters)
    assert client_cap(1000, "context", 8192) == 8192 - 1000 - 2
    assert client_cap(1000, 2048, 8192) == 2048 == client_cap(1000, 2048, None)
    with pytest.raises(CapError, match="needs max_context"):
        client_cap(10, "context", None)
    with pytest.raises(CapError, match="oracle"):
        client_cap(10, "exact", 100)
    assert check_cap_setting(None, 4096) == "context" and check_cap_setting(None, None) == 4096
    with pytest.raises(CapError, match="positive int"):
        check_cap_setting(0, None)


def test_context_rule_rejects_as_sglang_does() -> None:
    pool = 100_000
    # tokenizer_manager: input >= context is refused; input + max_new > context is refused (no auto-truncate)
    assert sglang_arrival(4096, 1, pool_tokens=pool, context_len=4096)[0] is None
    max_new, why = sglang_arrival(3000, 2048, pool_tokens=pool, context_len=4096)
    assert max_new is None and "exceed the context length" in why
    # exactly fitting: accepted; init_req_max_new_tokens caps at max_req_len - input - 1 = (4096-1) - 2048 - 1
    assert sglang_arrival(2048, 2048, pool_tokens=pool, context_len=4096) == (2046, "")
    # the context room a client without max_tokens gets always passes
    assert sglang_arrival(1000, client_cap(1000, "context", 4096), pool_tokens=pool, context_len=4096)[0] == 3094
    # validate_input_length: input >= max_req_len - 5 is aborted
    assert sglang_arrival(4090, 1, pool_tokens=pool, context_len=4096)[0] is None
    # without a context the pool decides (the simulator's old rule, unchanged)
    assert sglang_arrival(500, 10_000, pool_tokens=1000, page_size=16)[0] == min(1000 - 2 - 500, 1000 - 512 - 16 - 1)
    assert sglang_arrival(994, 1, pool_tokens=1000)[0] is None


@given(st.integers(1, 40_000), st.integers(1, 40_000), st.sampled_from([None, 2048, 4096, 32768]),
       st.integers(64, 500_000), st.sampled_from([1, 16]))  # fmt: skip
def test_arrival_invariants(prompt: int, max_new: int, ctx: int | None, pool: int, page: int) -> None:
    got, why = sglang_arrival(prompt, max_new, pool_tokens=pool, page_size=page, context_len=ctx)
    if got is None:
        assert why.startswith("rejected")
        return
    assert why == "" and 1 <= got <= max_new
    assert prompt + got <= (ctx or pool)
    assert -(-prompt // page) * page + got + page + 1 <= pool  # a request alone in an empty pool fits


def _spec(rid: str, prompt: int, cap: int) -> RequestSpec:
    return RequestSpec(rid, 0.0, prompt, 50, cap)


def test_simulator_applies_the_context_rule() -> None:
    prof = profiles.get("a100-40gb-llama2-13b")
    assert prof.context_len == 4096
    pol = make_policy("sglang", prof, page_size=1, context_len=prof.context_len)
    specs = [_spec("fits", 1000, 2048), _spec("too-long-cap", 3000, 2048), _spec("too-long-prompt", 5000, 10)]
    res = Simulator(pol, prof, pool_tokens=prof.kv_capacity_tokens).run(specs)
    by = {r.rid: r for r in res.records}
    assert by["fits"].ok and by["fits"].output_len == 50
    assert "exceed the context length" in by["too-long-cap"].error
    assert "longer than the context length" in by["too-long-prompt"].error
    assert res.stats.rejected == 2
    free = make_policy("sglang", prof, page_size=1)  # no context declared: only the pool decides
    assert Simulator(free, prof, pool_tokens=prof.kv_capacity_tokens).run(specs[:2]).stats.rejected == 0


@pytest.mark.slow
def test_input_length_check_matches_sglangs_own_function() -> None:
    """eval.caps's abort rule against SGLang's ``validate_input_length`` on the same lengths."""
    from types import SimpleNamespace

    from sglang.srt.managers.utils import validate_input_length

    ctx, pool = 4096, 100_000
    max_req_input_len = min(ctx - 1, pool - 1) - 5  # tp_worker.py
    for prompt in (10, 4000, 4084, 4085, 4086, 4090, 4095):
        req = SimpleNamespace(origin_input_ids=list(range(prompt)))
        theirs = validate_input_length(req, max_req_input_len, False) is None
        ours = sglang_arrival(prompt, 1, pool_tokens=pool, context_len=ctx)[0] is not None
        assert ours == theirs, prompt
