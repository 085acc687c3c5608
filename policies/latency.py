"""Injected time: the latency model interface every policy and the simulator use (Vidur-style).

An iteration's time is predicted from its shape, not measured by the policy. The same class serves three
sources: GPU profiles derived from FLOPs/bytes (profiles), a fit to the tiny CPU server's measured
iterations, and AccelGen's online refit from the server's own measurements (A1).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class BatchShape:
    """What an iteration computes: prefill chunks (new tokens, tokens of context already cached before them)
    and decodes (one token each, with their context lengths)."""

    prefill: tuple[tuple[int, int], ...] = ()  # (new_tokens, context_before)
    decode_ctx: tuple[int, ...] = ()

    @property
    def new_tokens(self) -> int:
        return sum(n for n, _ in self.prefill) + len(self.decode_ctx)


class LatencyModel(Protocol):
    """Predicts seconds for one forward iteration and for host<->device KV transfer."""

    def iteration_s(self, shape: BatchShape) -> float: ...

    def swap_s(self, tokens: int) -> float:
        """One-way KV transfer time for ``tokens`` tokens (device<->host)."""
        ...

    def prefill_s(self, tokens: int, context_before: int = 0) -> float:
        """Time to prefill ``tokens`` new tokens after ``context_before`` cached ones, alone in a batch."""
        ...


def shape_features(shape: BatchShape) -> tuple[int, float, float, int, int]:
    """(new tokens, prefill attention work, decode attention work, sequences, carries prefill) of one iteration.

    Prefill attention work counts causal query-key pairs: a chunk of ``n`` new tokens after ``c`` cached ones
    attends to ``n*(c + n/2)`` pairs (FlashAttention's FLOPs are proportional to it). Decode attention reads the
    whole KV of each sequence, so its work is the sum of context lengths (memory-bound). The last feature is 1 when
    the iteration carries any prefill chunk (an extend pass), else 0 (a decode-only step)."""
    attn_p = sum(n * (c + n / 2) for n, c in shape.prefill)
    seqs = len(shape.prefill) + len(shape.decode_ctx)
    return shape.new_tokens, attn_p, float(sum(shape.decode_ctx)), seqs, int(bool(shape.prefill))


def _largest_root(a: float, b: float, c: float) -> float:
    """Largest x >= 0 with a*x^2 + b*x <= c (a, b >= 0); -1 when none, inf when unbounded."""
    if c < 0:
        return -1.0
    if a <= 0:
        return math.inf if b <= 0 else c / b
    return 2 * c / (b + math.sqrt(b * b + 4 * a * c))  # stable form of (-b + sqrt(b^2 + 4ac)) / 2a


@dataclass(frozen=True)
class IterationLatencyModel:
    """Roofline-shaped linear model of one forward iteration (AccelGen A1's ``c + b*tokens + a*attention``):

        t = c0 + c_tok * max(T, pivot_tokens) + c_attn_prefill * sum_chunks n*(c + n/2)
               + c_attn_decode * sum_decodes ctx + c_seq * sequences + c_prefill * [any prefill chunk]

    ``T`` is the iteration's new tokens. The ``max`` is the GEMM roofline: below ``pivot_tokens`` the linear
    layers are bound by streaming the weights (time flat in T), above it by compute (time linear in T); the
    pivot is the compute-saturation size AccelGen aims the budget at. ``pivot_tokens = 0`` is the plain linear
    model (CPU: no weight-streaming floor worth modelling). ``c_prefill_s`` is the fixed extra cost of an iteration
    that carries a prefill chunk over a decode-only one: SGLang runs such an iteration as an *extend* pass (prefix
    gathering, extend attention metadata, a forward mode without the decode fast paths) — small on a GPU with CUDA
    graphs (the profiles leave it at 0), but ~11 ms beside an ~18 ms decode step on the quiet CPU server's
    ``torch_native`` path (``scripts/accelgen_live.py --measure``), where a model without it believes a small chunk
    nearly free and A1 spreads a long prompt over many expensive small iterations (issue 12's live run). All
    coefficients are seconds per unit and >= 0.
    Swap (CacheOPT C5) is ``swap_overhead_s + kv_bytes_per_token * tokens / pcie_bytes_per_s`` one way.
    """

    c0_s: float
    c_tok_s: float
    c_attn_prefill_s: float = 0.0
    c_attn_decode_s: float = 0.0
    c_seq_s: float = 0.0
    pivot_tokens: float = 0.0
    kv_bytes_per_token: float = 0.0
    pcie_bytes_per_s: float = 25e9
    swap_overhead_s: float = 0.0
    c_prefill_s: float = 0.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"IterationLatencyModel.{name} must be finite and >= 0, got {value}")
        if self.pcie_bytes_per_s <= 0:
            raise ValueError("IterationLatencyModel.pcie_bytes_per_s must be > 0")

    # --- LatencyModel ---------------------------------------------------------------------------------------
    def iteration_s(self, shape: BatchShape) -> float:
        tokens, attn_p, attn_d, seqs, extend = shape_features(shape)
        if seqs == 0:
            return 0.0
        return self._time(tokens, attn_p, attn_d, seqs) + self.c_prefill_s * extend

    def swap_s(self, tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        return self.swap_overhead_s + self.kv_bytes_per_token * tokens / self.pcie_bytes_per_s

    def prefill_s(self, tokens: int, context_before: int = 0) -> float:
        return self.iteration_s(BatchShape(prefill=((tokens, context_before),)))

    # --- chunk sizing (A1) ----------------------------------------------------------------------------------
    def max_tokens_within(
        self,
        budget_s: float,
        decode_ctx: Sequence[int] = (),
        prefill_context_before: int = 0,
        limit: int = 1 << 30,
    ) -> int:
        """Largest prefill chunk ``n <= limit`` such that the iteration (this chunk after
        ``prefill_context_before`` cached tokens, plus one decode per ``decode_ctx``) is predicted to fit in
        ``budget_s``; 0 when not even one token fits. Closed form: t(n) is the max of two increasing
        quadratics (the two roofline branches), so n* is the smaller of their roots."""
        nd = len(decode_ctx)
        r = budget_s - (self.c0_s + self.c_prefill_s + self.c_seq_s * (nd + 1) + self.c_attn_decode_s * sum(decode_ctx))
        a = self.c_attn_prefill_s / 2
        b = self.c_attn_prefill_s * prefill_context_before
        x = min(
            _largest_root(a, b + self.c_tok_s, r - self.c_tok_s * nd),  # compute branch: T = nd + n
            _largest_root(a, b, r - self.c_tok_s * self.pivot_tokens),  # weight-streaming branch
        )
        n = limit if x >= limit else int(x)
        if n >= 1 and self._chunk_time(n, nd, prefill_context_before, r) > 0:
            n -= 1  # floating-point rounding at the boundary
        return max(n, 0)

    def _chunk_time(self, n: int, nd: int, cb: int, r: float) -> float:
        """Predicted time of the chunk part minus the remaining budget ``r`` (<= 0 means it fits)."""
        return self.c_tok_s * max(nd + n, self.pivot_tokens) + self.c_attn_prefill_s * n * (cb + n / 2) - r

    def _time(self, tokens: float, attn_p: float, attn_d: float, seqs: float) -> float:
        return (
            self.c0_s
            + self.c_tok_s * max(tokens, self.pivot_tokens)
            + self.c_attn_prefill_s * attn_p
            + self.c_attn_decode_s * attn_d
            + self.c_seq_s * seqs
        )

    # --- fitting --------------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        samples: Iterable[tuple[BatchShape, float]],
        *,
        template: IterationLatencyModel | None = None,
        pivot_tokens: float | None = None,
        extra: Iterable[tuple[BatchShape, float, float]] = (),
    ) -> IterationLatencyModel:
        """Non-negative least squares on measured ``(shape, seconds)`` samples, minimising *relative* error
        (iteration times span orders of magnitude; an absolute fit would ignore the short decode steps that
        TBT SLOs are about). ``pivot_tokens=None`` searches the roofline pivot over the observed token counts;
        swap parameters come from ``template``. ``extra`` adds weighted ``(shape, seconds, weight)`` pseudo
        samples (the online fitter's prior)."""
        rows = [(*shape_features(s), y, 1.0) for s, y in samples]
        rows += [(*shape_features(s), y, w) for s, y, w in extra]
        return cls.fit_rows(np.asarray(rows, dtype=float).reshape(-1, 7), template=template, pivot_tokens=pivot_tokens)

    @classmethod
    def fit_rows(
        cls, data: np.ndarray, *, template: IterationLatencyModel | None = None, pivot_tokens: float | None = None
    ) -> IterationLatencyModel:
        """:meth:`fit` on precomputed rows ``(tokens, attn_prefill, attn_decode, seqs, extend, seconds, weight)``.
        ``c_prefill_s`` is fitted only when the rows hold both decode-only and prefill iterations (otherwise the
        intercept and it are one coefficient, and it stays at the template's value, 0 by default)."""
        data = data[(data[:, 3] > 0) & (data[:, 5] > 0) & np.isfinite(data[:, 5]) & (data[:, 6] > 0)]
        if len(data) < 6:
            raise ValueError(f"need at least 6 samples with a positive time to fit 6 coefficients, got {len(data)}")
        from scipy.optimize import minimize_scalar, nnls  # lazy: only fitting needs scipy

        tokens, y, extend = data[:, 0], data[:, 5], data[:, 4]
        w = data[:, 6] / y
        both = bool(extend.min() < 0.5 < extend.max())
        base = template if template is not None else cls(0.0, 0.0)
        if pivot_tokens is not None:
            candidates = [float(pivot_tokens)]
        else:
            below = np.unique(tokens[tokens < tokens.max()])
            qs = np.unique(np.quantile(below, np.linspace(0, 1, 17))) if below.size else np.empty(0)
            candidates = [0.0, *(float(q) for q in qs if q > 0)]

        cols = [np.ones_like(y), tokens, data[:, 1], data[:, 2], data[:, 3]] + ([extend] if both else [])
        design = np.column_stack(cols) * w[:, None]
        target = (y - (0.0 if both else base.c_prefill_s * extend)) * w

        def solve(pivot: float) -> tuple[float, np.ndarray]:
            design[:, 1] = np.maximum(tokens, pivot) * w
            coef, res = nnls(design, target)
            return float(res), coef

        results = [solve(p) for p in candidates]
        floor = min(r for r, _ in results)
        i = next(k for k, (r, _) in enumerate(results) if r <= floor * (1 + 1e-9))  # ties: the smallest pivot
        pivot, (res, coef) = candidates[i], results[i]
        if len(candidates) > 1:  # refine the pivot between the grid neighbours of the best one
            lo, hi = candidates[max(i - 1, 0)], candidates[min(i + 1, len(candidates) - 1)]
            opt = minimize_scalar(lambda p: solve(p)[0], bounds=(lo, hi), method="bounded", options={"xatol": 0.5})
            if opt.fun < res:
                pivot = float(opt.x)
                res, coef = solve(pivot)
        return replace(
            base,
            c0_s=float(coef[0]),
            c_tok_s=float(coef[1]),
            c_attn_prefill_s=float(coef[2]),
            c_attn_decode_s=float(coef[3]),
            c_seq_s=float(coef[4]),
            pivot_tokens=float(pivot) if coef[1] > 0 else 0.0,
            c_prefill_s=float(coef[5]) if both else base.c_prefill_s,
        )

    def relative_errors(self, samples: Iterable[tuple[BatchShape, float]]) -> np.ndarray:
        """|predicted - measured| / measured for each sample (fit quality, held-out checks)."""
        pairs = [(self.iteration_s(s), y) for s, y in samples]
        return np.asarray([abs(p - y) / y for p, y in pairs if y > 0], dtype=float)

    def predict_rows(self, data: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`iteration_s` over rows whose first five columns are :func:`shape_features`."""
        return (
            self.c0_s
            + self.c_tok_s * np.maximum(data[:, 0], self.pivot_tokens)
            + self.c_attn_prefill_s * data[:, 1]
            + self.c_attn_decode_s * data[:, 2]
            + self.c_seq_s * data[:, 3]
            + self.c_prefill_s * data[:, 4]
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IterationLatencyModel:
        return cls(**{k: float(d[k]) for k in cls.__dataclass_fields__ if k in d})


# Shapes the prior is anchored at in online refits: decodes and prefill chunks across the usual range.
_ANCHORS = tuple(
    [BatchShape(decode_ctx=(ctx,) * b) for b in (1, 8, 64) for ctx in (128, 2048)]
    + [BatchShape(prefill=((n, c),)) for n in (32, 512, 2048) for c in (0, 2048)]
)


class OnlineLatencyFitter:
    """AccelGen A1's online refit: start from a profile, collect the server's own measured iteration times,
    refit every ``refit_every`` samples over a sliding ``window``.

    Robust to few or one-sided samples: until ``min_samples`` it keeps the prior; a refit also sees the prior's
    predictions at a fixed set of anchor shapes as pseudo-samples worth ``prior_weight`` samples in total, so a
    coefficient the data cannot identify (e.g. prefill attention when only decodes were seen) stays near the
    prior's *shape* (its predictions at the anchors times the median measured/predicted ratio of the window: a
    profile that is uniformly too fast or too slow must not pull the fit back towards its wrong scale); and a refit
    is adopted only if it does not predict the window worse than the current model."""

    def __init__(
        self,
        prior: IterationLatencyModel,
        *,
        refit_every: int = 64,
        min_samples: int = 32,
        window: int = 2048,
        prior_weight: float = 8.0,
    ) -> None:
        if refit_every < 1 or min_samples < 5 or window < min_samples or prior_weight < 0:
            raise ValueError("need refit_every >= 1, min_samples >= 5, window >= min_samples, prior_weight >= 0")
        self.prior = prior
        self.model = prior
        self.refit_every = refit_every
        self.min_samples = min_samples
        self.prior_weight = prior_weight
        self.rows: deque[tuple[float, ...]] = deque(maxlen=window)  # shape_features + (seconds, weight 1)
        self.refits = 0
        self._since = 0

    def observe(self, shape: BatchShape, seconds: float) -> IterationLatencyModel | None:
        """Record one measured iteration; returns the new model when this call refitted and adopted one."""
        feats = shape_features(shape)
        if not (seconds > 0 and math.isfinite(seconds)) or feats[3] == 0:
            return None
        self.rows.append((*feats, seconds, 1.0))
        self._since += 1
        if self._since < self.refit_every or len(self.rows) < self.min_samples:
            return None
        self._since = 0
        return self.refit()

    def refit(self) -> IterationLatencyModel | None:
        data = np.asarray(self.rows, dtype=float).reshape(-1, 7)
        w = self.prior_weight / len(_ANCHORS)
        prior_pred = self.prior.predict_rows(data)
        ok = prior_pred > 0
        scale = float(np.median(data[ok, 5] / prior_pred[ok])) if ok.any() else 1.0
        anchors = [(*shape_features(s), scale * self.prior.iteration_s(s), w) for s in _ANCHORS] if w > 0 else []
        try:
            candidate = IterationLatencyModel.fit_rows(
                np.vstack([data, np.asarray(anchors, dtype=float).reshape(-1, 7)]), template=self.model
            )
        except ValueError:
            return None
        y = data[:, 5]
        err_new = float(np.mean(np.abs(candidate.predict_rows(data) - y) / y))
        if err_new > float(np.mean(np.abs(self.model.predict_rows(data) - y) / y)):
            return None
        self.model = candidate
        self.refits += 1
        return candidate


class ErrorMargin:
    """AccelGen A1's safety margin from the latency model's *measured* error.

    Why: A1 sizes each iteration right up to the tightest TBT SLO, so any under-prediction — a profile from another
    machine, scheduler overhead, jitter — makes nearly every tight iteration miss (a 10% under-prediction took the
    tight class's TBT attainment from 1.00 to under 0.1 in the review of issue 12). The margin is the
    ``quantile``-quantile of ``measured / predicted`` iteration time over the last ``window`` measured iterations;
    A1 sizes for ``limit / margin``. A request meets its TBT SLO when at most 10% of its gaps exceed it
    (eval.metrics), so a high quantile (default 0.95) leaves each request's expected share of late gaps well under
    that. The ratios are kept against the model that decides: when the online refit adopts a new model,
    :meth:`rebase` re-predicts the window with it, so a bias the refit has removed stops costing margin.

    Clamped to ``[floor, cap]``: the floor (1.0) never loosens a limit beyond what the model predicts (an
    over-predicting model is corrected by the refit, not by the margin), the cap bounds what one bad stretch of
    measurements can cost. Until ``min_samples`` measurements the margin is the largest ratio seen (so a wrong model
    is caught within a few iterations, before any refit). With an exact model every ratio is 1 and nothing changes.
    """

    def __init__(
        self,
        quantile: float = 0.95,
        *,
        window: int = 512,
        min_samples: int = 16,
        every: int = 8,
        floor: float = 1.0,
        cap: float = 2.0,
    ) -> None:
        if not (0 < quantile <= 1 and window >= min_samples >= 1 and every >= 1 and 0 < floor <= cap):
            raise ValueError("ErrorMargin needs 0 < quantile <= 1, window >= min_samples >= 1, 0 < floor <= cap")
        self.quantile = quantile
        self.floor = floor
        self.cap = cap
        self.min_samples = min_samples
        self.every = every
        self._feats = np.zeros((window, 5))
        self._secs = np.zeros(window)
        self._ratio = np.ones(window)
        self._n = 0  # samples seen (the ring holds min(n, window))
        self._since = 0
        self.value = floor

    @property
    def samples(self) -> int:
        return min(self._n, len(self._secs))

    def observe(self, shape: BatchShape, seconds: float, predicted_s: float) -> float:
        """Record one measured iteration against the deciding model's prediction; returns the current margin."""
        if not (seconds > 0 and predicted_s > 0 and math.isfinite(seconds) and math.isfinite(predicted_s)):
            return self.value
        i = self._n % len(self._secs)
        self._feats[i] = shape_features(shape)
        self._secs[i] = seconds
        self._ratio[i] = seconds / predicted_s
        self._n += 1
        self._since += 1
        if self._n < self.min_samples:
            self.value = self._clamp(max(self.value, self._ratio[i]))
        elif self._since >= self.every or self._n == self.min_samples:
            self._update()
        return self.value

    def rebase(self, model: IterationLatencyModel) -> float:
        """The deciding model changed (online refit): re-predict the window with it and recompute the margin."""
        k = self.samples
        if k:
            pred = model.predict_rows(self._feats[:k])
            ok = pred > 0
            self._ratio[:k] = np.where(ok, self._secs[:k] / np.where(ok, pred, 1.0), 1.0)
            self._update()
        return self.value

    def _update(self) -> None:
        self._since = 0
        k = self.samples
        if k < self.min_samples:
            self.value = self._clamp(float(self._ratio[:k].max()))
        else:
            self.value = self._clamp(float(np.quantile(self._ratio[:k], self.quantile)))

    def _clamp(self, v: float) -> float:
        return min(max(v, self.floor), self.cap)
