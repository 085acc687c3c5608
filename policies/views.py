"""Typed views a host (SGLang adapter or simulator) hands to a policy, and the decisions a policy returns.

Why views: policies are engine-free. A host translates its own state (SGLang's ``Req``/``ScheduleBatch`` or the
simulator's requests) into these small frozen records, calls the policy, and applies the returned decision.
Neither host makes scheduling decisions of its own.

Hidden truth: no view carries a request's true output length. Only :class:`OracleWaitingView` /
:class:`OracleRunningView` do, and only a policy registered with ``needs_oracle=True`` is handed them (A4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from policies.length_dist import LengthDistribution


@dataclass(frozen=True, slots=True)
class SLO:
    """Per-request latency objectives in milliseconds; ``None`` means no objective of that kind."""

    ttft_ms: float | None = None
    tbt_ms: float | None = None


@dataclass(frozen=True, slots=True)
class LengthEstimate:
    """Output-length prediction for one request (C1): a point estimate, an upper bound at ``confidence`` (the
    paper's per-request padding) and, where the predictor gives one, the whole predictive distribution (quantiles),
    which pool-level admission combines over requests."""

    point: int
    bound: int
    confidence: float
    fallback: bool = False  # True when the predictor had not answered and a documented fallback was used
    dist: LengthDistribution | None = None  # total output length's quantiles (None: point/bound only)


@dataclass(frozen=True, slots=True)
class WaitingView:
    """A request in the waiting queue (new, or re-queued after a preemption)."""

    rid: str
    arrival_s: float
    prompt_len: int
    max_new_tokens: int  # the visible cap the user sent
    slo: SLO = SLO()
    cached_len: int = 0  # prompt tokens already held by the radix prefix cache
    output_len: int = 0  # tokens generated before a preemption (recompute re-prefills prompt + these)
    prefilled_len: int = 0  # mid-prefill: tokens of the sequence already in the KV pool, its cached prefix included
    estimate: LengthEstimate | None = None
    swapped_out: bool = False  # KV sits in host memory: resuming is a swap-in, not a prefill
    first_token_s: float | None = None  # set when the request already produced tokens before a preemption
    kv_allocated: int = 0  # mid-prefill: cached prefix + its ledger allocation (0 = not admitted yet)
    priority: int | None = None  # SGLang's request priority (the client's field; in the simulator from its class)

    @property
    def seq_len(self) -> int:
        """Tokens that must be in the KV pool before this request can decode again."""
        return self.prompt_len + self.output_len


@dataclass(frozen=True, slots=True)
class RunningView:
    """A request in the running (decoding) batch."""

    rid: str
    arrival_s: float
    prompt_len: int
    output_len: int
    max_new_tokens: int
    kv_used: int  # tokens of KV this request holds now (its cached prefix included)
    kv_allocated: int  # cached prefix + its ledger allocation (>= kv_used); kv_used when it holds no allocation
    slo: SLO = SLO()
    estimate: LengthEstimate | None = None
    last_token_s: float | None = None
    first_token_s: float | None = None
    cached_len: int = 0  # prefix tokens shared with the radix cache (not freed by a preemption)
    kv_lent: int = 0  # tokens of its allocation lent to pairwise guests (C2; the host's ledger)
    lender: str | None = None  # a guest's lender: a request id or ``host.ledger.BATCH`` (C2)
    reserve_drawn: int = 0  # tokens of its top-ups drawn from the global reserve (C3)
    priority: int | None = None  # SGLang's request priority (see WaitingView)

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.output_len


@dataclass(frozen=True, slots=True)
class OracleWaitingView(WaitingView):
    """A waiting request with its true output length. Built only for policies with ``needs_oracle``."""

    true_output_len: int = 0


@dataclass(frozen=True, slots=True)
class OracleRunningView(RunningView):
    true_output_len: int = 0


@dataclass(frozen=True, slots=True)
class PoolView:
    """The KV pool in tokens. ``free_tokens`` counts physically free slots; ``evictable_tokens`` is radix-cache
    content that can be evicted on demand (SGLang counts it as available)."""

    capacity_tokens: int
    free_tokens: int
    evictable_tokens: int = 0
    page_size: int = 1
    reserve_tokens: int = 0  # global reserve held back for requests that overrun their estimate (C3)

    @property
    def available_tokens(self) -> int:
        return self.free_tokens + self.evictable_tokens


@dataclass(frozen=True, slots=True)
class SchedulerView:
    """Everything a policy sees at one scheduling point. ``now_s`` is the host's clock (wall or simulated):
    policies never read a clock themselves. ``waiting`` lists admitted requests whose prefill is under way (those
    with ``kv_allocated > 0``) before every other waiting request (both hosts do; CacheOPT's gate stops reading at
    the first one without an allocation)."""

    now_s: float
    waiting: tuple[WaitingView, ...]
    running: tuple[RunningView, ...]
    pool: PoolView
    arrival_rate: float = 0.0  # requests/s, as measured by the host over a recent window
    chunked_rid: str | None = None  # request whose prefill is in progress (continues first)


class PreemptMode(str, Enum):
    RECOMPUTE = "recompute"
    SWAP = "swap"


@dataclass(frozen=True, slots=True)
class Admit:
    """Admit (or continue) a waiting request this iteration with ``prefill_tokens`` of its prompt.
    ``reserve_tokens`` is its private KV allocation over its lifetime (prompt beyond its cached prefix + the output
    it may grow into; C2), recorded in the host's ledger. ``budget_tokens`` is what the engine's admission budget
    charges it (SGLang's ``total_tokens``; None: extend + reserved output + a page, see ``host.budget``)."""

    rid: str
    prefill_tokens: int
    reserve_tokens: int = 0
    host_rid: str | None = None  # its lender when it reuses allocated-but-unused KV: a request id or BATCH (C2)
    budget_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Preempt:
    rid: str
    mode: PreemptMode = PreemptMode.RECOMPUTE


@dataclass(frozen=True, slots=True)
class IterationPlan:
    """One iteration's decision: who joins (in order), the token budget, top-ups and preemptions."""

    admit: tuple[Admit, ...] = ()
    token_budget: int | None = None  # forward tokens this iteration (decodes + prefill chunk); None = host default
    preempt: tuple[Preempt, ...] = ()
    topups: tuple[tuple[str, int], ...] = ()  # (rid, extra tokens reserved) (C3)
    reserve_draws: tuple[tuple[str, int], ...] = ()  # the top-ups (rid, tokens) drawn from the global reserve (C3)
    kv_hold: int | None = None  # free KV kept back for running requests' growth + the reserve (engine budget offset)
    run_decodes: bool = True  # False: this iteration is prefill-only (SGLang's default alternation)
    notes: dict[str, float] = field(default_factory=dict)  # counters for logs/metrics, never read by hosts
