"""IterationLatencyModel: fit recovers known coefficients, chunk sizing agrees with iteration_s (A1)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.latency import BatchShape, IterationLatencyModel, OnlineLatencyFitter

TRUE = IterationLatencyModel(
    c0_s=2e-3,
    c_tok_s=3e-5,
    c_attn_prefill_s=4e-9,
    c_attn_decode_s=5e-8,
    c_seq_s=2e-5,
    pivot_tokens=200.0,
    kv_bytes_per_token=131072,
    pcie_bytes_per_s=32e9,
    swap_overhead_s=1e-4,
    c_prefill_s=1.5e-3,
)


def _shapes(rng: np.random.Generator, k: int) -> list[BatchShape]:
    out = []
    for _ in range(k):
        kind = rng.integers(3)
        dec = tuple(int(c) for c in rng.integers(16, 4096, size=int(rng.integers(0, 64))))
        pre = () if kind == 0 else ((int(rng.integers(1, 4096)), int(rng.integers(0, 4096) * (kind == 2))),)
        if not pre and not dec:
            dec = (128,)
        out.append(BatchShape(prefill=pre, decode_ctx=dec))
    return out


def test_fit_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(0)
    shapes = _shapes(rng, 1000)
    samples = [(s, TRUE.iteration_s(s) * (1 + rng.normal(0, 0.01))) for s in shapes]
    fit = IterationLatencyModel.fit(samples, template=TRUE)
    for name in ("c0_s", "c_tok_s", "c_attn_prefill_s", "c_attn_decode_s", "c_seq_s", "c_prefill_s"):
        assert getattr(fit, name) == pytest.approx(getattr(TRUE, name), rel=0.1), name
    assert fit.pivot_tokens == pytest.approx(TRUE.pivot_tokens, rel=0.15)
    held_out = [(s, TRUE.iteration_s(s)) for s in _shapes(rng, 100)]
    assert float(np.median(fit.relative_errors(held_out))) < 0.01


def test_fit_exact_without_noise_and_linear_pivot() -> None:
    linear = IterationLatencyModel(c0_s=1e-3, c_tok_s=1e-5, c_attn_prefill_s=1e-9, c_attn_decode_s=0, c_seq_s=1e-4)
    samples = [(s, linear.iteration_s(s)) for s in _shapes(np.random.default_rng(1), 200)]
    fit = IterationLatencyModel.fit(samples)
    assert fit.relative_errors(samples).max() < 1e-6


def test_fit_needs_six_samples() -> None:
    with pytest.raises(ValueError, match="at least 6"):
        IterationLatencyModel.fit([(BatchShape(decode_ctx=(1,)), 0.01)] * 5)


def test_extend_cost_is_fitted_only_when_both_kinds_of_iteration_are_seen() -> None:
    """Decode-only samples cannot tell the extend cost from the intercept: the template's value stays, and the
    prefill samples' share of it is not absorbed elsewhere when only prefills are seen."""
    rng = np.random.default_rng(3)
    decodes = [s for s in _shapes(rng, 300) if not s.prefill][:60]
    fit = IterationLatencyModel.fit([(s, TRUE.iteration_s(s)) for s in decodes], template=TRUE)
    assert fit.c_prefill_s == TRUE.c_prefill_s
    prefills = [s for s in _shapes(rng, 300) if s.prefill][:60]
    fit = IterationLatencyModel.fit([(s, TRUE.iteration_s(s)) for s in prefills], template=TRUE)
    assert fit.c_prefill_s == TRUE.c_prefill_s
    assert float(np.median(fit.relative_errors([(s, TRUE.iteration_s(s)) for s in prefills]))) < 0.01


def test_extend_cost_shrinks_the_chunk_a1_sizes() -> None:
    """A1 (max_tokens_within) pays the extend cost once per chunked iteration: with it a tight budget takes
    fewer prefill tokens, and a budget below a decode step plus the extend cost takes none."""
    bare = IterationLatencyModel(**{**TRUE.to_dict(), "c_prefill_s": 0.0, "pivot_tokens": 0.0})
    ext = IterationLatencyModel(**{**bare.to_dict(), "c_prefill_s": 5e-3})
    dec = (512,) * 8
    step = ext.iteration_s(BatchShape(decode_ctx=dec))
    assert ext.max_tokens_within(step + 4e-3, dec) == 0 < bare.max_tokens_within(step + 4e-3, dec)
    n = ext.max_tokens_within(step + 0.02, dec)
    assert 0 < n < bare.max_tokens_within(step + 0.02, dec)
    assert ext.iteration_s(BatchShape(prefill=((n, 0),), decode_ctx=dec)) <= step + 0.02


def test_invalid_coefficients_rejected() -> None:
    with pytest.raises(ValueError, match="c_tok_s"):
        IterationLatencyModel(c0_s=0.0, c_tok_s=-1.0)


def test_swap_and_prefill() -> None:
    assert TRUE.swap_s(0) == 0.0
    assert TRUE.swap_s(1000) == pytest.approx(1e-4 + 131072 * 1000 / 32e9)
    assert TRUE.prefill_s(512, 100) == TRUE.iteration_s(BatchShape(prefill=((512, 100),)))
    assert TRUE.iteration_s(BatchShape()) == 0.0
    assert IterationLatencyModel.from_dict(TRUE.to_dict()) == TRUE


@settings(max_examples=300, deadline=None)
@given(
    budget=st.floats(0.0, 0.5),
    decodes=st.lists(st.integers(1, 8192), max_size=80),
    before=st.integers(0, 8192),
    pivot=st.sampled_from([0.0, 200.0, 1000.0]),
)
def test_max_tokens_within_is_the_largest_fitting_chunk(
    budget: float, decodes: list[int], before: int, pivot: float
) -> None:
    m = IterationLatencyModel(**{**TRUE.to_dict(), "pivot_tokens": pivot})
    n = m.max_tokens_within(budget, decodes, before, limit=100_000)

    def t(k: int) -> float:
        return m.iteration_s(BatchShape(prefill=((k, before),), decode_ctx=tuple(decodes)))

    assert 0 <= n <= 100_000
    if n > 0:
        assert t(n) <= budget * (1 + 1e-12)
    if n < 100_000:
        assert t(n + 1) > budget * (1 - 1e-12)
    assert m.max_tokens_within(budget * 1.5 + 1e-3, decodes, before, limit=100_000) >= n  # monotone in budget


def test_max_tokens_within_without_attention_or_tokens_is_bounded_by_limit() -> None:
    flat = IterationLatencyModel(c0_s=1e-3, c_tok_s=0.0)
    assert flat.max_tokens_within(1.0, limit=4096) == 4096
    assert flat.max_tokens_within(1e-4) == 0


def test_online_fitter_keeps_prior_until_enough_then_tracks() -> None:
    prior = IterationLatencyModel(**{**TRUE.to_dict(), "c_tok_s": 6e-5, "c0_s": 4e-3})
    fitter = OnlineLatencyFitter(prior, refit_every=16, min_samples=32)
    rng = np.random.default_rng(2)
    shapes = _shapes(rng, 256)
    for s in shapes[:31]:
        assert fitter.observe(s, TRUE.iteration_s(s)) is None
    assert fitter.model is prior
    for s in shapes[31:]:
        fitter.observe(s, TRUE.iteration_s(s))
    assert fitter.refits >= 1
    test = [(s, TRUE.iteration_s(s)) for s in _shapes(rng, 50)]
    assert float(np.mean(fitter.model.relative_errors(test))) < 0.05 < float(np.mean(prior.relative_errors(test)))


def test_online_fitter_decode_only_keeps_prior_prefill_attention() -> None:
    fitter = OnlineLatencyFitter(TRUE, refit_every=8, min_samples=8)
    for b in range(1, 65):
        s = BatchShape(decode_ctx=(512,) * b)
        fitter.observe(s, TRUE.iteration_s(s) * 1.1)  # the server runs 10% slower than the profile
    assert fitter.refits >= 1
    long_prefill = BatchShape(prefill=((2048, 2048),))
    ratio = fitter.model.iteration_s(long_prefill) / TRUE.iteration_s(long_prefill)
    assert 0.7 < ratio < 1.5
    assert fitter.observe(BatchShape(), 0.1) is None
    assert fitter.observe(BatchShape(decode_ctx=(1,)), float("nan")) is None
