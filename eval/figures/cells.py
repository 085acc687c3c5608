"""Cells: the unit of work of ``python -m eval.reproduce``, and the resumable cache that keeps them.

A *cell* is one simulation or one external measurement (a live server slice, a predictor evaluation). Its
parameters are a JSON-able dict; its key is a SHA-256 of that dict plus a fingerprint of the code that computes it
(:data:`FINGERPRINT_PATHS`: policies, the host layer, the simulator, workloads, caps, SLOs, estimates, metrics,
profiles, the predictor's code and model files, the scenarios, variants, stored capacities and the compare engine).
A finished cell is stored as ``<cache>/<key>.json`` and never recomputed while the code is unchanged; a code change
gives new keys, so a report never mixes results of two code versions silently.

Kinds: ``compare`` (``eval.compare.cell``: one variant of one named scenario, the comparison and figure path) and
``sim`` (a bare simulation replaying a live run's requests, for the simulator-fidelity figure).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
FINGERPRINT_PATHS = ("policies", "host", "eval/sim", "profiles", "data/profiles", "predictors", "eval/workloads.py",
                     "eval/caps.py", "eval/slo.py", "eval/estimates.py", "eval/metrics.py", "eval/scenarios.py",
                     "eval/capacity.json", "eval/variants.py", "eval/compare", "eval/figures/cells.py")  # fmt: skip
BURST = "burst"  # a rate meaning "every request arrives at t = 0"


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of every file whose content can change a cell's result (sorted paths + bytes)."""
    h = hashlib.sha256()
    for rel in FINGERPRINT_PATHS:
        p = ROOT / rel
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts and f.suffix in (".py", ".json", ".ubj", ".csv", ""):
                h.update(str(f.relative_to(ROOT)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def git_commit() -> str:
    """The checkout's short commit (``+dirty`` when tracked files differ from it), or ``unknown``."""
    import subprocess

    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10)  # noqa: E731
        head = run("rev-parse", "--short", "HEAD").stdout.strip()
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) if head else "unknown"


def shown_path(path: str | Path) -> str:
    """A path as a recorded command or report shows it: relative to the repository, else its name (never an
    absolute machine path)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return Path(path).name


def shown_argv(argv: list[str]) -> str:
    return " ".join(shown_path(x) if x.startswith("/") else x for x in argv)


def cell_key(params: dict[str, Any], fingerprint: str | None = None) -> str:
    blob = json.dumps({"params": params, "code": fingerprint or code_fingerprint()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class CellCache:
    """``<root>/<key>.json`` per finished cell: ``{"params", "result", "code", "finished"}``."""

    def __init__(self, root: str | Path, fingerprint: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint or code_fingerprint()
        self.hits = 0
        self.misses = 0

    def path(self, params: dict[str, Any]) -> Path:
        return self.root / f"{cell_key(params, self.fingerprint)}.json"

    def get(self, params: dict[str, Any]) -> dict[str, Any] | None:
        p = self.path(params)
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())["result"]
        except (json.JSONDecodeError, KeyError):
            return None  # a cell cut off mid-write is recomputed

    def put(self, params: dict[str, Any], result: dict[str, Any]) -> None:
        p = self.path(params)
        tmp = p.with_suffix(".tmp")
        doc = {"params": params, "code": self.fingerprint, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "result": result}  # fmt: skip
        tmp.write_text(json.dumps(doc, default=_json_default) + "\n")
        os.replace(tmp, p)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def sim_cell(policy: str, profile: str, workload: str, rate: float | str, *, n: int, seed: int = 0,
             slo: str = "default", pool_tokens: int | None = None, page_size: int = 16, flags: dict | None = None,
             scale: float = 1.0, max_context: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Parameters of one bare simulation cell (the fidelity figure's replay of a live run): ``flags`` are
    ``--ext-*`` dests building the ExtConfig; no length estimates (the live side learns them online)."""
    return {"kind": "sim", "policy": policy, "profile": profile, "workload": workload,
            "rate": rate if rate == BURST else round(float(rate), 4), "n": n, "seed": seed, "slo": slo,
            "pool_tokens": pool_tokens, "page_size": page_size, "flags": flags or {}, "scale": scale,
            "max_context": max_context}  # fmt: skip


def run_sim(params: dict[str, Any]) -> dict[str, Any]:
    """Compute one bare simulation cell (pure: same params and code, same result)."""
    import profiles
    from eval.metrics import summarize_by_class
    from eval.sim import Simulator, make_policy
    from eval.slo import parse_slo
    from eval.workloads import load_workload
    from policies.config import POLICY_CHOICES, from_flat

    t0 = time.perf_counter()
    prof = profiles.get(params["profile"])
    slo = parse_slo(params["slo"], prof)
    burst = params["rate"] == BURST
    specs = load_workload(params["workload"], num_requests=params["n"], rate=1.0 if burst else params["rate"],
                          seed=params["seed"], slo=slo, scale=params["scale"],
                          max_context=params["max_context"])  # fmt: skip
    if burst:
        specs = [replace(s, arrival_s=0.0) for s in specs]
    flags = dict(params["flags"])
    if params["policy"] in POLICY_CHOICES:
        flags.setdefault("ext_policy", params["policy"])
    pol = make_policy(params["policy"], prof, from_flat(flags), page_size=params["page_size"])
    pool = params["pool_tokens"] or prof.kv_capacity_tokens
    res = Simulator(pol, prof, pool_tokens=pool, page_size=params["page_size"]).run(specs)
    return {"summary": res.summary, "by_class": summarize_by_class(res.records), "iterations": res.stats.iterations,
            "stats": {k: v for k, v in vars(res.stats).items() if isinstance(v, (int, float))}, "pool_tokens": pool,
            "wall_s": time.perf_counter() - t0}  # fmt: skip


def _run_compare(params: dict[str, Any]) -> dict[str, Any]:
    from eval.compare.cell import run_cell

    return run_cell(params)


RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"sim": run_sim, "compare": _run_compare}
PARALLEL_KINDS = ("sim", "compare")  # pure simulations: safe to run in worker processes


def register_runner(kind: str, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    RUNNERS[kind] = fn


def _run_one(params: dict[str, Any]) -> dict[str, Any]:
    return RUNNERS[params["kind"]](params)


class CellRunner:
    """Runs cells through the cache: cached ones are read, the rest computed (``jobs`` worker processes for
    simulation cells), each stored as soon as it finishes, with a tqdm bar per batch."""

    def __init__(self, cache: CellCache, jobs: int = 1, progress: bool = True) -> None:
        self.cache = cache
        self.jobs = max(1, jobs)
        self.progress = progress
        self.computed = 0

    def run(self, cells: Iterable[dict[str, Any]], desc: str = "cells") -> list[dict[str, Any]]:
        cells = list(cells)
        results: list[dict[str, Any] | None] = [self.cache.get(c) for c in cells]
        todo: dict[str, list[int]] = {}
        for i, (c, r) in enumerate(zip(cells, results, strict=True)):
            if r is None:
                todo.setdefault(cell_key(c, self.cache.fingerprint), []).append(i)
        self.cache.hits += len(cells) - sum(len(v) for v in todo.values())
        if todo:
            bar = tqdm(total=len(todo), desc=desc, unit="cell", disable=not self.progress, leave=False)
            firsts = {k: v[0] for k, v in todo.items()}
            parallel = (
                self.jobs > 1 and len(todo) > 1 and all(cells[i]["kind"] in PARALLEL_KINDS for i in firsts.values())
            )
            if parallel:
                with ProcessPoolExecutor(max_workers=min(self.jobs, len(todo))) as ex:
                    futs = {ex.submit(_run_one, cells[i]): k for k, i in firsts.items()}
                    for f in as_completed(futs):
                        self._store(cells, results, todo[futs[f]], f.result())
                        bar.update()
            else:
                for k, i in firsts.items():
                    self._store(cells, results, todo[k], _run_one(cells[i]))
                    bar.update()
            bar.close()
        return [r for r in results if r is not None]

    def _store(self, cells: list, results: list, idx: list[int], res: dict[str, Any]) -> None:
        self.cache.put(cells[idx[0]], res)
        self.cache.misses += 1
        self.computed += 1
        for i in idx:
            results[i] = res

    def one(self, cell: dict[str, Any], desc: str = "cell") -> dict[str, Any]:
        return self.run([cell], desc)[0]


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
