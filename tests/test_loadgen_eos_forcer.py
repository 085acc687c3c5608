"""The EOS forcer (sglang_ext.logit_processors) against a model of SGLang 0.5.23's request lifecycle.

The model reproduces what the forcer must survive (see the module docstring): chunked prefill samples and discards
middle chunks; the overlap scheduler launches batch k+1 before committing batch k's token, so ``output_ids`` lags;
a retraction discards the in-flight token and re-prefills prompt + committed output. Whatever the mix, the request
must commit exactly ``target_len`` tokens, the last one EOS and no EOS before. The real server check is in
tests/test_loadgen_server.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eval.loadgen import forcer_ref
from sglang_ext.logit_processors import ForceEosAtLength

EOS, VOCAB = 2, 50


def drive(prompt: int, target: int, chunk: int, overlap: bool, retract_at: int | None, cap: int = 10_000) -> list[int]:
    """Run one request through the lifecycle model; return its committed output ids."""
    req = SimpleNamespace(origin_input_ids=[7] * prompt, output_ids=[], full_untruncated_fill_ids=[], extend_end=None,
                          decode_batch_idx=0, eos_token_ids={EOS}, tokenizer=None)  # fmt: skip
    params = {"target_len": target, "__req__": req}
    proc, gen = ForceEosAtLength(), torch.Generator().manual_seed(prompt * 1000 + target)
    state = {"epoch": 0, "finished": False}
    prefilled, needs_prefill, retracted, pending = 0, True, False, None

    def commit(res: tuple[int, bool, int]) -> None:
        tok, middle, epoch = res
        if middle or epoch != state["epoch"] or state["finished"]:
            return  # discarded: a middle chunk, a token in flight at a retraction, or past the finish
        req.output_ids.append(tok)
        state["finished"] = tok == EOS or len(req.output_ids) >= cap

    for _ in range(20 * (prompt + target) + 100):
        if state["finished"]:
            break
        if retract_at is not None and not retracted and not needs_prefill and len(req.output_ids) >= retract_at:
            retracted, needs_prefill, prefilled = True, True, 0  # reset_for_retract
            req.decode_batch_idx, req.extend_end = 0, None
            state["epoch"] += 1
        if needs_prefill:
            fill = prompt + len(req.output_ids)
            req.full_untruncated_fill_ids = [0] * fill
            prefilled = min(prefilled + chunk, fill)
            req.extend_end, middle = prefilled, prefilled < fill
            needs_prefill = middle
        else:
            req.decode_batch_idx += 1
            middle = False
        logits = proc(torch.randn(1, VOCAB, generator=gen), [params])
        logits[0, EOS] += 0.0 if logits[0, EOS].isinf() else 5.0  # a model that loves EOS must still not stop early
        res = (int(logits.argmax()), middle, state["epoch"])
        if overlap:
            if pending is not None:
                commit(pending)
            pending = res
        else:
            commit(res)
    if pending is not None:
        commit(pending)
    return req.output_ids


@settings(max_examples=300, deadline=None)
@given(
    prompt=st.integers(1, 300),
    target=st.integers(1, 60),
    chunk=st.sampled_from([16, 64, 100_000]),
    overlap=st.booleans(),
    retract=st.one_of(st.none(), st.integers(0, 70)),
)
def test_commits_exactly_target_tokens_ending_in_eos(
    prompt: int, target: int, chunk: int, overlap: bool, retract: int | None
) -> None:
    out = drive(prompt, target, chunk, overlap, retract)
    assert len(out) == target
    assert out[-1] == EOS and EOS not in out[:-1]


def test_target_one_is_eos_alone_and_cap_still_wins() -> None:
    assert drive(50, 1, 16, True, None) == [EOS]
    assert len(drive(50, 30, 64, True, None, cap=10)) == 10  # a cap below the target ends by length


def test_rows_are_independent_and_unmarked_rows_untouched() -> None:
    a = SimpleNamespace(origin_input_ids=[1] * 5, output_ids=[], full_untruncated_fill_ids=[0] * 5, extend_end=5,
                        decode_batch_idx=0, eos_token_ids={EOS}, tokenizer=None)  # fmt: skip
    b = SimpleNamespace(
        **{**vars(a), "origin_input_ids": [1] * 3, "full_untruncated_fill_ids": [0] * 3, "extend_end": 3}
    )
    logits = torch.zeros(3, VOCAB)
    out = ForceEosAtLength()(logits, [{"target_len": 1, "__req__": a}, {"target_len": 4, "__req__": b}, None])
    assert int(out[0].argmax()) == EOS and torch.isinf(out[0]).sum() == VOCAB - 1
    assert out[1, EOS] == float("-inf") and torch.isfinite(out[1, :EOS]).all()
    assert torch.equal(out[2], torch.zeros(VOCAB))


def test_without_request_handle_it_counts_calls_and_honours_eos_override() -> None:
    params = {"target_len": 3, "eos_id": 9}
    picks = [int(ForceEosAtLength()(torch.zeros(1, VOCAB), [params]).argmax()) for _ in range(3)]
    assert picks[:2] != [9, 9] and picks[2] == 9


def test_serialises_by_reference_with_sglangs_own_serialization() -> None:
    text = forcer_ref()
    assert text == ForceEosAtLength.to_str()  # the load generator sends exactly SGLang's serialization
    assert len(text) < 400 and b"sglang_ext.logit_processors" in bytes.fromhex(json.loads(text)["callable"])
    assert isinstance(ForceEosAtLength.from_str(text), ForceEosAtLength)  # what the server does with it


def test_no_policy_view_carries_the_target_length() -> None:
    """The target travels only in ``custom_params`` for the forcer: the processor string is the class (the same
    for every request) and the adapter's views of a request are the same with or without a target."""
    from policies.views import SLO
    from sglang_ext.adapter import translate

    def req(params: dict) -> SimpleNamespace:
        sp = SimpleNamespace(max_new_tokens=500, custom_params=params)
        return SimpleNamespace(rid="r", origin_input_ids=[1] * 30, output_ids=[5] * 7, sampling_params=sp,
                               extend_end=None, prefix_len=0)  # fmt: skip

    slo_only = {"ttft_slo_ms": 900.0, "tbt_slo_ms": 50.0}
    with_target, without = req({**slo_only, "target_len": 42}), req(slo_only)
    default = SLO(None, None)
    assert translate.request_slo(with_target, default) == translate.request_slo(without, default)
    from host.core import AllocationFields

    alloc = AllocationFields(kv_allocated=36)
    running = lambda r, t, slo, est, _: translate.running_view(r, t, slo, est, alloc, None, None)  # noqa: E731
    for build in (translate.waiting_view, running):
        a, b = (build(r, 0.0, translate.request_slo(r, default), None, None) for r in (with_target, without))
        assert a == b and "42" not in repr(a)
