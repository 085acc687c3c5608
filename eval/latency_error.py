"""Latency-model error injection for the simulator (AccelGen A1's robustness runs, issue 12.2).

Why: the simulator executes iterations with a latency model, and by default it hands the policy the very same model,
so A1 — which sizes every iteration right up to the tightest TBT SLO — is never wrong. A real server is: the profile
was measured on another machine, the scheduler adds overhead, iteration times jitter. Three kinds of error, which a
run can combine:

* **bias** (``bias``): the policy's model predicts ``(1 + bias)`` times the truth for every shape (``-0.15``: it
  under-predicts by 15%, the dangerous direction). Exact as an :class:`IterationLatencyModel` (every time
  coefficient scaled), so the policy's online refit starts from it as it would from a wrong profile.
* **shape error** (``coef_sigma``): each time coefficient of the policy's model multiplied by its own seeded
  lognormal factor (``exp(N(0, sigma))``): a profile whose *shape* is wrong (its per-token cost right but its
  attention cost off, ...), not only its scale.
* **noise** (``noise_cv``): the *truth* jitters — every executed iteration takes the model's time times a seeded
  lognormal factor with mean 1 and coefficient of variation ``noise_cv`` (:class:`NoisyLatency`). No model can
  predict it; only a margin covers it.

The SLOs of a scenario stay computed on the true profile, so an erroneous run is comparable with the exact one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from policies.latency import BatchShape, IterationLatencyModel

TIME_COEFFICIENTS = ("c0_s", "c_tok_s", "c_attn_prefill_s", "c_attn_decode_s", "c_seq_s")


def biased(model: IterationLatencyModel, bias: float) -> IterationLatencyModel:
    """``model`` predicting ``(1 + bias)`` times its own time for every shape (swap times unchanged)."""
    if not (math.isfinite(bias) and bias > -1):
        raise ValueError(f"latency bias must be a finite number > -1, got {bias}")
    f = 1.0 + bias
    return replace(model, **{k: getattr(model, k) * f for k in TIME_COEFFICIENTS})


def shape_error(model: IterationLatencyModel, sigma: float, seed: int) -> IterationLatencyModel:
    """``model`` with each time coefficient multiplied by its own ``exp(N(0, sigma))`` (seeded)."""
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"latency coefficient sigma must be >= 0, got {sigma}")
    rng = np.random.default_rng(seed)
    factors = np.exp(rng.normal(0.0, sigma, len(TIME_COEFFICIENTS)))
    return replace(model, **{k: getattr(model, k) * float(x) for k, x in zip(TIME_COEFFICIENTS, factors, strict=True)})


class NoisyLatency:
    """A truth that jitters: ``iteration_s`` is ``base.iteration_s(shape)`` times a lognormal factor with mean 1 and
    coefficient of variation ``cv``, drawn fresh (seeded) on every call — the simulator calls it once per executed
    iteration. ``prefill_s`` and ``swap_s`` (used for SLOs and swap times) stay noiseless."""

    def __init__(self, base: Any, cv: float, seed: int = 0) -> None:
        if not (math.isfinite(cv) and cv >= 0):
            raise ValueError(f"latency noise CV must be >= 0, got {cv}")
        self.base = base
        self.cv = cv
        self._sigma = math.sqrt(math.log1p(cv * cv))
        self._rng = np.random.default_rng(seed)

    def iteration_s(self, shape: BatchShape) -> float:
        t = self.base.iteration_s(shape)
        if self.cv == 0 or t <= 0:
            return t
        return t * math.exp(self._rng.normal(-(self._sigma**2) / 2, self._sigma))

    def swap_s(self, tokens: int) -> float:
        return self.base.swap_s(tokens)

    def prefill_s(self, tokens: int, context_before: int = 0) -> float:
        return self.base.prefill_s(tokens, context_before)


@dataclass(frozen=True)
class LatencyError:
    """One error setting of a run (module docstring); ``LatencyError()`` is the exact model."""

    bias: float = 0.0
    coef_sigma: float = 0.0
    noise_cv: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bias) and self.bias > -1):
            raise ValueError(f"latency bias must be > -1, got {self.bias}")
        if not (self.coef_sigma >= 0 and self.noise_cv >= 0):
            raise ValueError("latency coefficient sigma and noise CV must be >= 0")

    @property
    def exact(self) -> bool:
        return self.bias == 0 and self.coef_sigma == 0 and self.noise_cv == 0

    def label(self) -> str:
        if self.exact:
            return "exact"
        bits = []
        if self.bias:
            bits.append(f"bias {self.bias:+.0%}")
        if self.coef_sigma:
            bits.append(f"shape sigma {self.coef_sigma:g}")
        if self.noise_cv:
            bits.append(f"noise cv {self.noise_cv:g}")
        return ", ".join(bits)

    def policy_model(self, profile: Any) -> Any:
        """What the policy is handed: the profile with its model biased and shape-perturbed (a profile keeps its
        name and pool; only its latency model is wrong)."""
        model = profile.latency if hasattr(profile, "latency") else profile
        if self.bias:
            model = biased(model, self.bias)
        if self.coef_sigma:
            model = shape_error(model, self.coef_sigma, self.seed)
        return replace(profile, latency=model) if hasattr(profile, "latency") else model

    def truth(self, profile: Any, seed: int = 0) -> Any:
        """What the simulator executes with: the profile, jittered when ``noise_cv`` > 0."""
        return NoisyLatency(profile, self.noise_cv, seed=1_000_003 * self.seed + seed) if self.noise_cv else profile


def parse(spec: str) -> LatencyError:
    """``exact`` or comma-separated ``bias=-0.15``, ``shape=0.1``, ``noise=0.05``, ``seed=1`` (a CLI value)."""
    spec = spec.strip()
    if spec in ("", "exact"):
        return LatencyError()
    kw: dict[str, Any] = {}
    names = {"bias": "bias", "shape": "coef_sigma", "noise": "noise_cv", "seed": "seed"}
    for part in spec.split(","):
        key, sep, val = part.partition("=")
        if not sep or key.strip() not in names:
            raise ValueError(f"latency error {spec!r}: parts are bias=X, shape=X, noise=X, seed=N; got {part!r}")
        try:
            kw[names[key.strip()]] = int(val) if key.strip() == "seed" else float(val)
        except ValueError:
            raise ValueError(f"latency error {spec!r}: {key.strip()} needs a number, got {val!r}") from None
    return LatencyError(**kw)
