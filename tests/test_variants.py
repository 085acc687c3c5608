"""The variant table (eval.variants): matched baselines, availability with reasons, the tuned sweep, and policies
built at the profile's chunk with the variant's batching mode."""

from __future__ import annotations

import pytest

import profiles
from eval.variants import TUNED_CHUNKS, VARIANTS, Variant, available_members, build_policy, resolve, unavailable_reason


def test_matched_baselines() -> None:
    for v in VARIANTS.values():
        assert v.matched == ("sglang-mixed" if v.mixed else "sglang")
    assert not VARIANTS["cacheopt"].mixed and VARIANTS["cacheopt-mixed"].mixed and VARIANTS["accelgen"].mixed
    assert VARIANTS["cacheopt"].estimates and not VARIANTS["sglang"].estimates


def test_resolve_adds_matched_baselines_and_reports_unavailable() -> None:
    ok, missing = resolve(["cacheopt", "accelgen"])
    names = [v.name for v in ok] + list(missing)
    assert names.count("sglang") == 1 and "sglang-mixed" in names  # added for matching
    assert [v.name for v in ok][:2] == ["cacheopt", "accelgen"]
    with pytest.raises(ValueError, match=r"unknown variant.*valid: sglang"):
        resolve(["nope"])


def test_unavailable_reasons_name_the_problem() -> None:
    assert unavailable_reason(Variant("x", "no-such-policy")) == "policy 'no-such-policy' is not registered"
    assert "no flag --ext-cacheopt-nope" in unavailable_reason(Variant("x", "cacheopt", {"ext_cacheopt_nope": 1}))
    assert "declare the variant mixed" in unavailable_reason(Variant("x", "vllm"))  # vllm always mixes
    assert "does not run mixed chunk" in unavailable_reason(Variant("x", "cacheopt", mixed=True))
    assert unavailable_reason(VARIANTS["cacheopt-mixed"]) is None


def test_tuned_sweep_members() -> None:
    tuned = VARIANTS["sglang-tuned"]
    assert {m.chunk for m in tuned.sweep} == set(TUNED_CHUNKS) and all(m.mixed for m in tuned.sweep)
    assert len(tuned.sweep) == 2 * len(TUNED_CHUNKS)  # with and without priority scheduling
    members = available_members(tuned)
    assert all(unavailable_reason(m) is None for m in members)
    assert (unavailable_reason(tuned) is None) == bool(members)


def test_build_policy_uses_the_profile_chunk_unless_the_variant_sets_one() -> None:
    prof = profiles.get("h100-llama3-8b")
    pol = build_policy(VARIANTS["sglang"], prof, page_size=1, chunk=8192, context_len=8192)
    assert pol.chunked_prefill_size == 8192 and pol.host.context_len == 8192 and not pol.mixed
    sar = build_policy(Variant("s", "sarathi", mixed=True, chunk=512), prof, page_size=1, chunk=8192, context_len=None)
    assert sar.token_budget == 512 and sar.mixed
    co = build_policy(VARIANTS["cacheopt-mixed"], prof, page_size=16, chunk=8192, context_len=None)
    assert co.mixed and co.host.page_size == 16
    ex = build_policy(Variant("o", "oracle", mixed=True, attrs={"exact_limit": 8}), prof, page_size=1, chunk=8192,
                      context_len=None)  # fmt: skip
    assert ex.exact_limit == 8
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        build_policy(Variant("o", "oracle", mixed=True, attrs={"nope": 1}), prof, page_size=1, chunk=8192,
                     context_len=None)  # fmt: skip
