"""The gate's per-pass shortcuts (issue 11's decision time) change no decision: the batch read as columns in one
pass, top-ups sorted among the few below the horizon only, and the pool rule's cached live-set slots and
survival-row terms give the same plans as recomputing every pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import policies.cacheopt  # noqa: F401
from eval.cacheopt_overhead import make_view
from policies.base import create
from policies.cacheopt.gate import BATCH, _running_columns
from policies.common import decode_need
from profiles import get as get_profile


def plans(kind: str, invalidate: bool) -> list[tuple]:
    lat = get_profile("h100-llama3-8b")
    view = make_view(kind, 64, 200, np.random.default_rng(3))
    pol = create("cacheopt", lat)
    out = []
    fewer = dataclasses.replace(view, running=view.running[2:])  # two requests left (the 'gone' path)
    seq = [view, view, fewer, fewer]  # repeated views: the same live set (the cached path)
    for v in seq:
        if invalidate:
            pol.gate._rule._changed()  # forget the cached slots and terms: every pass recomputes them
        p = pol.plan(v)
        prof = pol.gate._rule.profile
        out.append((p.admit, p.topups, p.kv_hold, p.preempt, prof.mean.tolist(), prof.var.tolist()))
    return out


@pytest.mark.parametrize("kind", ["decode", "reuse", "admit"])
def test_cached_pass_terms_decide_as_recomputed_ones(kind: str) -> None:
    assert plans(kind, invalidate=False) == plans(kind, invalidate=True)


def test_running_columns_match_the_views() -> None:
    view = make_view("reuse", 50, 0, np.random.default_rng(1))
    run = list(view.running)
    run[3] = dataclasses.replace(run[3], lender=BATCH, kv_lent=0, reserve_drawn=7)
    run[4] = dataclasses.replace(run[4], lender="r0", kv_lent=5)
    run[5] = dataclasses.replace(run[5], cached_len=3)
    variants = [
        run,  # a mix: a guest of the batch, a pairwise guest, a lender, a cached prefix, a reserve draw
        list(view.running),  # no loans, draws or cached prefixes (the columns not built)
        [dataclasses.replace(r, lender=BATCH) for r in view.running],  # every request a guest of the batch
        [],
    ]
    for batch in variants:
        rooms, private, drawn, promised = _running_columns(batch)
        assert rooms.tolist() == [r.kv_allocated - r.kv_used - r.kv_lent for r in batch]
        assert private.tolist() == [r.kv_used - r.cached_len for r in batch]
        assert drawn == sum(r.reserve_drawn for r in batch)
        expected = sum(max(r.kv_allocated - r.kv_used - r.kv_lent, 0) for r in batch if r.lender != BATCH)
        assert promised == expected
    for page in (1, 16):  # the decode step's KV: common.decode_need
        step = len(run) if page == 1 else page * sum(r.kv_used % page == 0 for r in run)
        assert step == decode_need(run, page)
