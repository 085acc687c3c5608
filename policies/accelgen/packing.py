"""AccelGen A3: multi-resource batching — fill both the iteration's token budget and the free KV.

Within the A2 order, requests are taken one at a time. With A3 on, the pick is made from a *window*: the next
``window`` candidates that share the head's priority class ``(tier, group_penalty)`` (so packing never jumps a
priority class). Each is scored by its *dominant resource share* (vector bin packing for the number of items,
as in DRF, Ghodsi et al. NSDI'11):

    share = max(t / B, k / K)

with ``t`` its tokens this iteration, ``k`` its KV demand estimate (tokens still to prefill + its predicted
output, or nothing when no estimate is visible) and ``B``/``K`` the token budget and KV left now. The smallest
share wins: the candidate that strains the scarcer resource least, so the pass fits as many whole requests as
both resources allow (goodput counts requests) — short prompts when compute is scarce, short predicted outputs
when KV is, and the budget's remainder goes to the next request's chunk. Ties keep the A2 order. A Tetris-style
alignment score (``demand . capacity_left``), which favours big requests, was measured first and lost goodput
(it delays short prompts' first tokens); :func:`alignment` keeps it for comparison. With A3 off the head is
always taken.

KV is never exceeded: the :class:`KVGate` decides every admission (its own accounting, not the score's estimate).
A request the gate refuses is skipped so that smaller ones can backfill, except when it is in tier 0/1 (in-progress
chunk, resumed or starving request): then the pass stops, so the KV those requests wait for is not taken by
lower-priority ones. At most one admission is partial (a chunked prefill), and it ends the pass.
"""

from __future__ import annotations

from collections.abc import Callable

from policies.accelgen.priority import TIER_RESUME, Candidate
from policies.kv_gate import KVGate
from policies.views import Admit


def kv_demand(c: Candidate) -> int:
    """The score's visible KV demand estimate for a candidate (the gate keeps its own exact accounting)."""
    est = c.req.estimate
    return c.remaining + (est.point if est is not None else 0)


def dominant_share(t: int, k: int, b_left: int, k_left: int) -> float:
    """A3's score (lower is better): the larger of the shares of budget and KV left that the candidate takes."""
    return max(t / max(b_left, 1), k / max(k_left, 1))


def alignment(t: int, k: int, b_left: int, k_left: int, b0: int, k0: int) -> float:
    """Tetris alignment score of demand ``(t, k)`` against capacity left ``(b_left, k_left)``."""
    b0, k0 = max(b0, 1), max(k0, 1)
    return (min(t, b_left) / b0) * (b_left / b0) + (min(k, k_left) / k0) * (max(k_left, 0) / k0)


def pack(
    cands: list[Candidate],
    chunk_tokens: int,
    kv_free: int,
    gate: KVGate,
    fit: Callable[[Candidate, int], int],
    on_admit: Callable[[Candidate, int], None] | None = None,
    *,
    window: int = 8,
    multi_resource: bool = True,
    strict: bool = False,
    whole_only: bool = False,
) -> tuple[list[Admit], int]:
    """Choose admissions. ``chunk_tokens``: prefill tokens this iteration (budget after decodes); ``kv_free``:
    KV tokens free for the score; ``fit(c, t)``: the largest ``t' <= t`` that keeps the iteration within its SLO
    limit (A1's check on the actual shape); ``on_admit(c, t)`` is told of each admission. Returns the admissions
    and the prefill tokens used. ``strict``: every refusal stops the pass (no backfilling; the Oracle's order).
    ``whole_only``: a candidate is admitted only with all its remaining prompt, else skipped (requests packed ahead
    of an in-progress chunk: SGLang runs one chunked prefill at a time)."""
    admits: list[Admit] = []
    left, k_left = chunk_tokens, kv_free
    pending = list(cands)
    too_big = 1 << 62  # whole_only: the smallest prompt that did not fit the SLO limit (larger ones are skipped)
    while pending:
        idx = 0
        if multi_resource and window > 1 and left > 0:
            head_cls = pending[0].cls
            best = float("inf")
            for i, c in enumerate(pending[:window]):
                if c.cls != head_cls:
                    break
                s = dominant_share(min(c.remaining, left), kv_demand(c), left, k_left)
                if s < best - 1e-12:
                    best, idx = s, i
        c = pending.pop(idx)
        if whole_only and (c.remaining > left or c.remaining >= too_big):
            continue
        want = min(c.remaining, left)
        if c.remaining > 0 and want <= 0:
            break  # budget spent; swap-ins (0 tokens) may still follow in order, but only while budget remains
        t = fit(c, want) if want > 0 else 0
        if whole_only and t < c.remaining:
            too_big = min(too_big, c.remaining)
            continue  # it would be a second chunked prefill: it waits (smaller ones may still fit)
        if c.remaining > 0 and t <= 0:
            break  # not one more token fits the SLO limit
        adm = gate.admit(c.req, t)
        if adm is None:
            if strict or c.tier <= TIER_RESUME:
                break
            continue
        admits.append(adm)
        if on_admit is not None:
            on_admit(c, t)
        left -= t
        k_left -= kv_demand(c)
        if t < c.remaining:
            break  # the one partial (chunked) admission ends the pass
    return admits, chunk_tokens - left
