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
    cols = _running_columns(run)
    for r, c in zip(run, cols, strict=True):
        assert c.tolist() == [r.kv_allocated, r.kv_used, r.kv_lent, r.reserve_drawn, r.cached_len, r.lender == BATCH]
    assert _running_columns([]).shape == (0, 6)
    for page in (1, 16):  # the decode step's KV read from the columns equals common.decode_need
        step = len(run) if page == 1 else page * int(np.count_nonzero(cols[:, 1] % page == 0))
        assert step == decode_need(run, page)
