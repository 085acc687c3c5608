"""Named latency profiles for the simulator and the policies: ``get(name)`` / ``available()``.

Two kinds: GPU profiles derived from FLOPs and bytes (``<gpu>-<model>``, profiles/gpu.py), and fitted
profiles stored as JSON under data/profiles/ (``cpu-tiny``, and GPU calibrations once measured). Both carry an
:class:`IterationLatencyModel` and the KV pool size (tokens) the simulator defaults to. GPU profiles also carry what
SGLang 0.5.23 decides for that device and model (profiles/sizing.py): its default ``--chunked-prefill-size``, the
``mem_fraction_static`` it computes, and the model's context length; :func:`kv_capacity_at` gives the pool at another
chunk (the activation reserve grows with the chunk).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies.latency import BatchShape, IterationLatencyModel

from .gpu import derive, gpu_profile_names

PROFILE_DIR = Path(__file__).resolve().parents[1] / "data" / "profiles"


@dataclass(frozen=True)
class Profile:
    """A latency model plus what the simulator needs beside it. Satisfies ``LatencyModel`` by delegation."""

    name: str
    latency: IterationLatencyModel
    kv_capacity_tokens: int
    device: str
    source: str
    date: str = ""
    chunked_prefill_size: int | None = None  # SGLang's device-default chunk (None: not a GPU profile)
    context_len: int | None = None  # the served model's context length (prompt + output), None = unbounded
    mem_fraction_static: float | None = None  # what SGLang computes for this device, model and chunk
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def iteration_s(self, shape: BatchShape) -> float:
        return self.latency.iteration_s(shape)

    def swap_s(self, tokens: int) -> float:
        return self.latency.swap_s(tokens)

    def prefill_s(self, tokens: int, context_before: int = 0) -> float:
        return self.latency.prefill_s(tokens, context_before)

    def max_tokens_within(self, budget_s: float, decode_ctx=(), prefill_context_before: int = 0, **kw: Any) -> int:
        return self.latency.max_tokens_within(budget_s, decode_ctx, prefill_context_before, **kw)


def load_json(path: Path) -> Profile:
    """A fitted profile written by scripts/fit_profile.py."""
    d = json.loads(Path(path).read_text())
    return Profile(
        name=d["name"],
        latency=IterationLatencyModel.from_dict(d["model"]),
        kv_capacity_tokens=int(d["kv_capacity_tokens"]),
        device=d["device"],
        source=d["source"],
        date=d.get("date", ""),
        chunked_prefill_size=d.get("chunked_prefill_size"),
        context_len=d.get("context_len"),
        extra={k: v for k, v in d.items() if k not in {"name", "model", "kv_capacity_tokens", "device", "source"}},
    )


def _json_profiles() -> dict[str, Path]:
    if not PROFILE_DIR.is_dir():
        return {}
    return {p.name.removesuffix(".json"): p for p in sorted(PROFILE_DIR.glob("*.json")) if ".measured" not in p.name}


def available() -> list[str]:
    return sorted({*gpu_profile_names(), *_json_profiles()})


def get(name: str) -> Profile:
    """The profile called ``name``, or a fitted profile's JSON file when ``name`` is a path ending in ``.json`` (a
    profile measured on the machine at hand, e.g. by ``scripts/accelgen_live.py --measure``); a ValueError lists
    the valid names otherwise."""
    if name.endswith(".json") and Path(name).is_file():
        return load_json(Path(name))
    stored = _json_profiles()
    if name in stored:
        return load_json(stored[name])
    if name in gpu_profile_names():
        return Profile(**derive(name))
    raise ValueError(f"unknown latency profile {name!r}; valid: {', '.join(available())}")


def kv_capacity_at(name: str, chunk: int) -> int:
    """KV pool (tokens) SGLang would allocate for profile ``name`` run with ``--chunked-prefill-size chunk``; a
    fitted (JSON) profile keeps its stored pool."""
    if name in gpu_profile_names() and name not in _json_profiles():
        return int(derive(name, chunk)["kv_capacity_tokens"])
    return get(name).kv_capacity_tokens
