"""Hand-made views and a fixed latency model for the CacheOPT tests (C1-C5)."""

from __future__ import annotations

from policies.config import CacheOptConfig
from policies.latency import BatchShape
from policies.length_dist import LengthDistribution
from policies.views import SLO, LengthEstimate, PoolView, RunningView, SchedulerView, WaitingView


class FakeLatency:
    """Linear and easy to reason about: 10 ms per iteration + 10 us per token; swap 10 us per token one way."""

    def __init__(self, per_token_s: float = 1e-5, swap_per_token_s: float = 1e-5) -> None:
        self.per_token_s = per_token_s
        self.swap_per_token_s = swap_per_token_s

    def iteration_s(self, shape: BatchShape) -> float:
        return 0.01 + self.per_token_s * shape.new_tokens

    def swap_s(self, tokens: int) -> float:
        return self.swap_per_token_s * tokens

    def prefill_s(self, tokens: int, context_before: int = 0) -> float:
        return 0.01 + self.per_token_s * tokens


def est(point: int, bound: int | None = None) -> LengthEstimate:
    return LengthEstimate(point=point, bound=bound if bound is not None else point, confidence=0.9)


def waiting(
    rid: str,
    prompt: int = 100,
    *,
    bound: int | None = 50,
    max_new: int = 1000,
    arrival: float = 0.0,
    ttft_ms: float | None = None,
    tbt_ms: float | None = None,
    dist: LengthDistribution | None = None,
    **kw,
) -> WaitingView:
    if dist is not None:
        estimate = LengthEstimate(int(dist.quantile(0.5)), int(dist.quantile(0.9)), 0.9, dist=dist)
    else:
        estimate = est(bound, bound) if bound is not None else None
    return WaitingView(
        rid=rid,
        arrival_s=arrival,
        prompt_len=prompt,
        max_new_tokens=max_new,
        slo=SLO(ttft_ms, tbt_ms),
        estimate=estimate,
        **kw,
    )


def running(
    rid: str,
    prompt: int = 100,
    out: int = 10,
    *,
    alloc: int | None = None,
    bound: int | None = 50,
    point: int | None = None,
    max_new: int = 1000,
    tbt_ms: float | None = None,
    arrival: float = 0.0,
    cached: int = 0,
    lent: int = 0,
    lender: str | None = None,
    drawn: int = 0,
    dist: LengthDistribution | None = None,
) -> RunningView:
    used = prompt + out
    estimate = None
    if bound is not None or dist is not None:
        p = point if point is not None else (bound if bound is not None else int(dist.quantile(0.5)))
        b = bound if bound is not None else int(dist.quantile(0.9))
        estimate = LengthEstimate(p, b, 0.9, dist=dist)
    return RunningView(
        rid=rid,
        arrival_s=arrival,
        prompt_len=prompt,
        output_len=out,
        max_new_tokens=max_new,
        kv_used=used,
        kv_allocated=alloc if alloc is not None else used,
        slo=SLO(None, tbt_ms),
        estimate=estimate,
        cached_len=cached,
        kv_lent=lent,
        lender=lender,
        reserve_drawn=drawn,
    )


def view(
    run=(), wait=(), *, capacity: int = 10_000, free: int | None = None, reserve: int = 0, now: float = 0.0, **kw
) -> SchedulerView:
    used = sum(r.kv_used for r in run)
    return SchedulerView(
        now_s=now,
        waiting=tuple(wait),
        running=tuple(run),
        pool=PoolView(capacity, capacity - used if free is None else free, reserve_tokens=reserve),
        **kw,
    )


def config(**kw) -> CacheOptConfig:
    return CacheOptConfig(**kw)


def paper(**kw) -> CacheOptConfig:
    """The paper's rule (per-request bounds, pairwise reuse)."""
    return CacheOptConfig(admission="paper", **kw)
