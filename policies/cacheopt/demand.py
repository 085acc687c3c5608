"""C1 — per-request KV demand from the bounded predicted output length.

CacheOPT allocates a request the KV it will hold over its whole life: the prompt tokens that are not already in the
radix prefix cache plus a *bounded* prediction of the output still to come. The bound (point estimate + padding at a
load-adapted confidence) comes from the predictor service through :attr:`WaitingView.estimate`; this module only
turns it into tokens. Without an estimate (predictor off or late, or C1 switched off for the ablation) the request's
visible cap, ``max_new_tokens``, is the only safe bound — that is also what C1-off means: allocate for the worst case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from policies.length_dist import LengthDistribution, z_of
from policies.views import LengthEstimate, RunningView, WaitingView


@dataclass(frozen=True, slots=True)
class Demand:
    """KV tokens a waiting request needs: ``prompt`` now (its prefill, excluding cached prefix) and ``output``
    more over its remaining (bounded) lifetime."""

    prompt: int
    output: int

    @property
    def total(self) -> int:
        return self.prompt + self.output


def output_bound(estimate: LengthEstimate | None, max_new_tokens: int, use_estimate: bool) -> int:
    """Total output tokens the request is expected to produce at most (C1), capped by ``max_new_tokens``."""
    if not use_estimate or estimate is None:
        return max_new_tokens
    return max(1, min(estimate.bound, max_new_tokens))


def demand(req: WaitingView, use_estimate: bool) -> Demand:
    """Demand of a waiting request. A re-queued (recomputed) request must re-prefill prompt + the tokens it had
    generated (``seq_len``) minus what the prefix cache still holds; its remaining output is the bound minus what
    it already produced (at least one token, since it has not finished)."""
    prompt = max(req.seq_len - req.cached_len, 0)
    remaining = max(output_bound(req.estimate, req.max_new_tokens, use_estimate) - req.output_len, 1)
    return Demand(prompt, remaining)


def overran(r: RunningView, use_estimate: bool) -> bool:
    """A running request has produced at least its bounded estimate: only such requests may draw the reserve (C3)."""
    return r.output_len >= output_bound(r.estimate, r.max_new_tokens, use_estimate)


def remaining_tokens(r: RunningView) -> int:
    """Expected tokens still to decode (C4's remaining job time): the point estimate minus what is produced; past
    the point estimate, the bound; without an estimate, ``max_new_tokens``. At least one."""
    est = r.estimate
    if est is None:
        return max(r.max_new_tokens - r.output_len, 1)
    left = est.point - r.output_len
    if left <= 0:
        left = min(est.bound, r.max_new_tokens) - r.output_len
    return max(left, 1)


def length_distribution(est: LengthEstimate | None) -> LengthDistribution | None:
    """The request's predictive length distribution (pool rule): the predictor's quantiles when it gave them, else a
    log-normal through its point (median) and its bound at the bound's confidence; None without an estimate."""
    if est is None:
        return None
    if est.dist is not None:
        return est.dist
    point = max(float(est.point), 1.0)
    bound = max(float(est.bound), point)
    z = z_of(est.confidence) if 0.5 < est.confidence < 1.0 else 1.2816  # a bound without a usable level: as 0.9
    sigma = math.log(bound / point) / z if bound > point else 0.05
    return LengthDistribution.lognormal(point, sigma)
