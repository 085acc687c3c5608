"""Live probes of the fidelity run (issue 11): how the real server runs *now*, measured around each replay, and the
two latency variants built from them (the profile with its per-iteration constant raised to the measured lone decode
step; every iteration scaled by measured / predicted). Split from :mod:`eval.fidelity`, which replays and compares."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace

import httpx
import numpy as np

import profiles
from policies.latency import BatchShape, IterationLatencyModel

LONE_SHAPE = BatchShape((), (16 + 24,))  # the contention probe's decode step: 16-token prompt, mid-way through 48


class FidelityError(RuntimeError):
    """A probe or run could not produce a measurement (one line why)."""


@dataclass(frozen=True)
class ScaledLatency:
    """A profile with every iteration ``factor`` times slower: the simulator under the machine's contention at
    run time (the shared 2-core host slows the server's every step; the fitted profile is its fastest rounds)."""

    base: profiles.Profile
    factor: float

    def iteration_s(self, shape: BatchShape) -> float:
        return self.factor * self.base.iteration_s(shape)

    def swap_s(self, tokens: int) -> float:
        return self.factor * self.base.swap_s(tokens)

    def prefill_s(self, tokens: int, context_before: int = 0) -> float:
        return self.factor * self.base.prefill_s(tokens, context_before)


def with_overhead(profile: profiles.Profile, lone_ms: float) -> IterationLatencyModel:
    """The profile with its per-iteration constant raised so that a lone decode step takes ``lone_ms``: the
    server's per-iteration overhead (Python scheduler, overlap thread, detokenizer and HTTP streaming, and the
    machine's contention on them) that a bare-forward profile lacks, added where it occurs: once per iteration."""
    lat = profile.latency
    extra = lone_ms / 1e3 - lat.iteration_s(LONE_SHAPE)
    return replace(lat, c0_s=lat.c0_s + max(extra, 0.0))


def lone_decode_ms(base_url: str, new_tokens: int = 48, prompt_len: int = 16) -> float:
    """Mean per-token time of one stream decoding alone, from its second token to its last: the server's decode-1
    step as the machine runs it now. Not a median of gaps: a lagging client reads several buffered events at once
    (gaps of ~0), so only the span over the token count is robust."""
    rng = np.random.default_rng(11)
    body = {"input_ids": rng.integers(16, 2000, prompt_len).tolist(), "stream": True,
            "sampling_params": {"max_new_tokens": new_tokens, "ignore_eos": True, "temperature": 0.0}}  # fmt: skip
    events: list[tuple[float, int]] = []
    with httpx.Client(base_url=base_url, timeout=120.0) as c, c.stream("POST", "/generate", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                events.append((time.perf_counter(), int(json.loads(line[5:])["meta_info"]["completion_tokens"])))
    if len(events) < 2:
        raise FidelityError(f"lone decode probe: the server streamed {len(events)} events for {new_tokens} tokens")
    (t0, k0), (t1, k1) = events[0], events[-1]
    return (t1 - t0) / max(k1 - k0, 1) * 1e3


def contention_factor(base_url: str, profile: profiles.Profile) -> tuple[float, float]:
    """(measured lone decode step ms, measured / the profile's prediction for that step)."""
    ms = lone_decode_ms(base_url)
    pred = profile.iteration_s(LONE_SHAPE) * 1e3
    return ms, ms / pred


def isolated_ttft_ms(base_url: str, prompt_len: int = 64, n: int = 5) -> float:
    """Median TTFT of a lone streamed request: the fixed client/HTTP/tokenizer-manager/detokenizer path that every
    real TTFT carries on top of queueing and prefill (the simulator's TTFT has none of it)."""
    rng = np.random.default_rng(7)
    out = []
    with httpx.Client(base_url=base_url, timeout=60.0) as c:
        for _ in range(n):
            body = {"input_ids": rng.integers(16, 2000, prompt_len).tolist(), "stream": True,
                    "sampling_params": {"max_new_tokens": 2, "temperature": 0.0}}  # fmt: skip
            t0 = time.perf_counter()
            with c.stream("POST", "/generate", json=body) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        out.append(time.perf_counter() - t0)
                        break
    return float(np.median(out) * 1e3)
