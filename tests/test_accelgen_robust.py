"""A1 with a wrong latency model (issue 12.2): the error-injection wrappers, the error margin, and the policy and the
simulator together (a biased / noisy model must not cost the tight class its TBT SLO)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import profiles
from eval.latency_error import LatencyError, NoisyLatency, biased, parse, shape_error
from eval.metrics import summarize_by_class
from eval.sim import Simulator, make_policy
from eval.slo import parse_slo
from eval.workloads import load_workload
from policies.accelgen.policy import AccelGenPolicy
from policies.config import AccelGenConfig, ExtConfig
from policies.latency import BatchShape, ErrorMargin, IterationLatencyModel
from policies.views import SLO, PoolView, RunningView, SchedulerView, WaitingView

MODEL = IterationLatencyModel(
    c0_s=0.0015, c_tok_s=2.2e-5, c_attn_prefill_s=1.06e-9, c_attn_decode_s=5.6e-8, c_seq_s=6.6e-6, pivot_tokens=240
)
shapes = st.builds(
    BatchShape,
    prefill=st.lists(st.tuples(st.integers(1, 4096), st.integers(0, 8192)), max_size=3).map(tuple),
    decode_ctx=st.lists(st.integers(1, 8192), min_size=1, max_size=64).map(tuple),
)


def cfg(**kw) -> ExtConfig:
    return ExtConfig(accelgen=replace(AccelGenConfig(), **kw))


# --- error injection ----------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(shape=shapes, bias=st.floats(-0.5, 0.5))
def test_bias_scales_every_prediction(shape: BatchShape, bias: float) -> None:
    assert biased(MODEL, bias).iteration_s(shape) == pytest.approx((1 + bias) * MODEL.iteration_s(shape), rel=1e-9)


def test_shape_error_is_seeded_and_changes_the_shape_not_only_the_scale() -> None:
    a, b = shape_error(MODEL, 0.2, seed=3), shape_error(MODEL, 0.2, seed=3)
    assert a == b and a != MODEL and shape_error(MODEL, 0.2, seed=4) != a
    decode = BatchShape(decode_ctx=(1000,) * 32)
    chunk = BatchShape(prefill=((2048, 0),))
    r_decode = a.iteration_s(decode) / MODEL.iteration_s(decode)
    r_chunk = a.iteration_s(chunk) / MODEL.iteration_s(chunk)
    assert abs(r_decode - r_chunk) > 1e-3
    assert shape_error(MODEL, 0.0, seed=1) == MODEL


def test_noisy_truth_has_mean_one_and_the_asked_cv() -> None:
    shape = BatchShape(prefill=((512, 0),), decode_ctx=(100,) * 8)
    noisy = NoisyLatency(MODEL, cv=0.1, seed=0)
    x = np.asarray([noisy.iteration_s(shape) for _ in range(20_000)]) / MODEL.iteration_s(shape)
    assert x.mean() == pytest.approx(1.0, abs=0.005) and x.std() == pytest.approx(0.1, rel=0.05)
    again = NoisyLatency(MODEL, cv=0.1, seed=0)
    assert [again.iteration_s(shape) for _ in range(3)] == list(x[:3] * MODEL.iteration_s(shape))
    assert noisy.prefill_s(100) == MODEL.prefill_s(100)  # SLOs stay computed on the noiseless truth


def test_latency_error_spec_and_profiles() -> None:
    prof = profiles.get("h100-llama3-8b")
    err = parse("bias=-0.15,noise=0.05,seed=2")
    assert err == LatencyError(bias=-0.15, noise_cv=0.05, seed=2) and not err.exact
    pm = err.policy_model(prof)
    assert pm.name == prof.name and pm.kv_capacity_tokens == prof.kv_capacity_tokens
    assert pm.latency.c_tok_s == pytest.approx(0.85 * prof.latency.c_tok_s)
    assert isinstance(err.truth(prof), NoisyLatency) and LatencyError().truth(prof) is prof
    assert parse("exact").exact and LatencyError().policy_model(prof) == prof
    for bad in ("bias", "bias=x", "speed=1", "bias=-1"):
        with pytest.raises(ValueError, match=r"bias|latency error"):
            parse(bad)


# --- the margin ---------------------------------------------------------------------------------------------------
def test_margin_is_one_for_an_exact_model() -> None:
    m = ErrorMargin()
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = BatchShape(prefill=((int(rng.integers(1, 2000)), 0),), decode_ctx=(500,) * int(rng.integers(1, 40)))
        m.observe(s, MODEL.iteration_s(s), MODEL.iteration_s(s))
    assert m.value == 1.0


def test_margin_catches_an_under_predicting_model_within_a_few_iterations_and_rebase_removes_it() -> None:
    slow = biased(MODEL, 0.25)  # the truth: 25% slower than the model predicts
    m = ErrorMargin(min_samples=16)
    s = BatchShape(prefill=((300, 0),), decode_ctx=(800,) * 16)
    m.observe(s, slow.iteration_s(s), MODEL.iteration_s(s))
    assert m.value == pytest.approx(1.25)  # one measurement is enough before min_samples (the largest ratio)
    for k in range(40):
        s = BatchShape(prefill=((100 + 7 * k, 0),), decode_ctx=(800,) * 16)
        m.observe(s, slow.iteration_s(s), MODEL.iteration_s(s))
    assert m.value == pytest.approx(1.25)
    assert m.rebase(slow) == 1.0  # the refit found the truth: no margin left


def test_margin_is_the_quantile_clamped() -> None:
    rng = np.random.default_rng(1)
    ratios = np.exp(rng.normal(0, 0.1, 400))
    m = ErrorMargin(0.9, window=512, every=1)
    s = BatchShape(decode_ctx=(100,))
    for r in ratios:
        m.observe(s, r * 0.01, 0.01)
    assert m.value == pytest.approx(float(np.quantile(ratios, 0.9)))
    over = ErrorMargin(0.9)
    for _ in range(50):
        over.observe(s, 0.5, 0.1)  # 5x slower than predicted: capped
        assert over.value <= 2.0
    assert over.value == 2.0
    fast = ErrorMargin(0.9)
    for _ in range(50):
        fast.observe(s, 0.05, 0.1)  # an over-predicting model never loosens the limit
    assert fast.value == 1.0
    with pytest.raises(ValueError):
        ErrorMargin(0.0)


# --- the policy ---------------------------------------------------------------------------------------------------
def _view() -> SchedulerView:
    running = tuple(RunningView(f"r{i}", 0.0, 790, 10, 256, 800, 800, SLO(None, 40.0)) for i in range(16))
    return SchedulerView(1.0, (WaitingView("long", 0.5, 20_000, 256, SLO(60_000.0, 500.0)),), running,
                         PoolView(400_000, 300_000))  # fmt: skip


@pytest.mark.parametrize("bias", [-0.2, -0.1, 0.0])
def test_policy_with_margin_keeps_the_true_iteration_within_the_slo(bias: float) -> None:
    """The policy decides with a model that under-predicts; after measuring a few iterations of the truth, the
    truth of its planned iteration is within the tightest TBT SLO (without the margin and the refit it is not)."""
    truth = MODEL
    wrong = biased(MODEL, bias)
    view = _view()

    def true_time(pol: AccelGenPolicy) -> float:
        plan = pol.plan(view)
        shape = BatchShape(tuple((a.prefill_tokens, 0) for a in plan.admit), tuple(r.seq_len for r in view.running))
        return truth.iteration_s(shape)

    naive = AccelGenPolicy(wrong, cfg(error_margin=False, online_refit=False))
    guarded = AccelGenPolicy(wrong, cfg(online_refit=False))
    for k in range(4):  # the host's measurements
        s = BatchShape(prefill=((200 + 50 * k, 0),), decode_ctx=(800,) * 16)
        naive.observe_iteration(s, truth.iteration_s(s))
        guarded.observe_iteration(s, truth.iteration_s(s))
    assert true_time(guarded) <= 0.040 + 1e-12
    if bias < 0:
        assert true_time(naive) > 0.040
        assert guarded.margin == pytest.approx(1 / (1 + bias))
    else:
        assert guarded.margin == 1.0 and true_time(guarded) == true_time(naive)


def test_refit_then_margin_rebased() -> None:
    wrong = biased(MODEL, -0.2)
    pol = AccelGenPolicy(wrong, cfg(refit_interval=20))
    rng = np.random.default_rng(0)
    for _ in range(60):
        s = BatchShape(prefill=((int(rng.integers(16, 2000)), int(rng.integers(0, 3000))),),
                       decode_ctx=(int(rng.integers(100, 3000)),) * int(rng.integers(0, 40)))  # fmt: skip
        pol.observe_iteration(s, MODEL.iteration_s(s))
    assert pol.fitter is not None and pol.fitter.refits >= 1
    assert pol.margin == pytest.approx(1.0, abs=0.02)  # the refit removed the bias: the margin no longer pays for it


def test_margin_off_without_host_measurements() -> None:
    from policies.capabilities import HostCapabilities

    pol = AccelGenPolicy(MODEL, ExtConfig(), HostCapabilities(measures_iterations=False))
    assert pol.error_margin is None and pol.margin == 1.0 and pol.target_s(0.05) == 0.05


@pytest.mark.slow
def test_simulated_tight_class_survives_an_under_predicting_and_a_noisy_model() -> None:
    """End to end in the simulator: the policy gets a model 15% too fast and a jittering truth (CV 0.1); the
    tight class's TBT attainment stays >= 0.9 with the margin, and is lower without margin and refit."""
    prof = profiles.get("h100-llama3-8b")
    slo = parse_slo("tight=1:5x:2x,loose=1:20x:12x", prof)
    specs = load_workload("mixed-code-conv", num_requests=150, rate=9.0, seed=0, slo=slo)
    err = LatencyError(bias=-0.15, noise_cv=0.1, seed=0)

    def tight_tbt(config: ExtConfig) -> float:
        pol = make_policy("accelgen", err.policy_model(prof), config, page_size=16)
        res = Simulator(pol, err.truth(prof), pool_tokens=prof.kv_capacity_tokens, page_size=16).run(specs)
        return summarize_by_class(res.records)["tight"]["tbt_slo_attainment"]

    guarded = tight_tbt(ExtConfig(policy="accelgen"))
    naive = tight_tbt(cfg(error_margin=False, online_refit=False))
    assert guarded >= 0.9 and naive < guarded - 0.1 and not math.isnan(guarded)


def _chat_long_specs(n: int = 80, rate: float = 8.0, seed: int = 0) -> list:
    """Tight chat (25-token prompts, TTFT 40 ms, TBT 2x an isolated decode step) beside 6,000-token prompts."""
    from eval.workloads import RequestSpec

    prof = profiles.get("h100-llama3-8b")
    rng = np.random.default_rng(seed)
    t, out = 0.0, []
    for i in range(n):
        t += float(rng.exponential(1 / rate))
        if i % 4 == 0:
            out.append(RequestSpec(f"long{i}", t, 6000, 64, 256, 60_000.0, 200.0, "long"))
        else:
            tbt = 2e3 * prof.iteration_s(BatchShape(decode_ctx=(25 + 150,)))
            out.append(RequestSpec(f"chat{i}", t, 25, 150, 512, 40.0, tbt, "chat"))
    return out


@pytest.mark.parametrize("yield_", [True, False])
def test_simulated_chat_beside_long_prompts_needs_the_chunk_yield(yield_: bool) -> None:
    """The regime of scenario tight-chat-long: with the in-progress chunk always first, a chat request arriving
    during a long prefill waits for all of it and misses a 40 ms TTFT; with the yield it joins the next iteration."""
    prof = profiles.get("h100-llama3-8b")
    pol = make_policy("accelgen", prof, cfg(chunk_yield=yield_), page_size=16)
    res = Simulator(pol, prof, pool_tokens=prof.kv_capacity_tokens, page_size=16).run(_chat_long_specs())
    chat = summarize_by_class(res.records)["chat"]
    if yield_:
        assert chat["ttft_slo_attainment"] >= 0.95 and chat["tbt_slo_attainment"] >= 0.95
    else:
        assert chat["ttft_slo_attainment"] < 0.9
