"""Cells: the unit of work of ``python -m eval.reproduce``, and the resumable cache that keeps them.

A *cell* is one simulation (policy x profile x workload x rate x options) or one external measurement (a live
server slice, a predictor evaluation). Its parameters are a JSON-able dict; its key is a SHA-256 of that dict plus
a fingerprint of the code that computes it (policies, simulator, workloads, SLOs, metrics, profiles, predictor
model). A finished cell is stored as ``<cache>/<key>.json`` and never recomputed while the code is unchanged; a
code change gives new keys, so a report never mixes results of two code versions silently.

Simulation cells return the same shape as ``eval.accelgen_eval.simulate`` (summary in the eval.metrics schema,
per-class summaries, mean e2e latency, iteration count, Oracle exactness) so the figure modules read one format.
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
FINGERPRINT_PATHS = ("policies", "host", "eval/sim", "profiles", "eval/workloads.py", "eval/slo.py", "eval/metrics.py",
                     "data/profiles", "predictors/bounds.py", "predictors/models", "eval/cacheopt_eval.py",
                     "eval/accelgen_eval.py", "eval/figures/cells.py")  # fmt: skip
BURST = "burst"  # a rate meaning "every request arrives at t = 0"


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of every file whose content can change a cell's result (sorted paths + bytes)."""
    h = hashlib.sha256()
    for rel in FINGERPRINT_PATHS:
        p = ROOT / rel
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts and f.suffix in (".py", ".json", ".ubj", ".md", ""):
                h.update(str(f.relative_to(ROOT)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


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
             slo: str = "default", pool_tokens: int | None = None, page_size: int = 16, options: dict | None = None,
             flags: dict | None = None, predictor: dict | None = None, scale: float = 1.0,
             max_context: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Parameters of one simulation cell. ``options``: policy constructor keywords (``token_budget``, ...);
    ``flags``: ``--ext-*`` dests (``ext_cacheopt_reuse``: False ...) building the ExtConfig; ``predictor``: the
    synthetic estimator's settings (None: the policy sees only ``max_new_tokens``)."""
    return {"kind": "sim", "policy": policy, "profile": profile, "workload": workload,
            "rate": rate if rate == BURST else round(float(rate), 4), "n": n, "seed": seed, "slo": slo,
            "pool_tokens": pool_tokens, "page_size": page_size, "options": options or {}, "flags": flags or {},
            "predictor": predictor, "scale": scale, "max_context": max_context}  # fmt: skip


def predictor_for(flags: dict[str, Any] | None = None, sigma: float | str | None = "fitted") -> dict[str, Any]:
    """The length-estimate settings of a CacheOPT cell: eval.cacheopt_eval's log-normal error model (``sigma``:
    ``"fitted"`` = the committed predictor's held-out error, ``None`` = no predictor) at the config's confidence
    rule (``--ext-predictor-alpha/beta``)."""
    from policies.config import from_flat

    cfg = from_flat(flags or {}).predictor
    return {"sigma": sigma, "alpha": cfg.alpha, "beta": cfg.beta}


def _estimator(pred: dict[str, Any], specs: list, rate: float, seed: int) -> Callable | None:
    """eval.cacheopt_eval's estimator: a per-request table drawn from the true lengths with the predictor's error
    (the simulator only ever shows the policy the estimate)."""
    from eval import cacheopt_eval
    from predictors.bounds import adapt_confidence

    sigma = cacheopt_eval.predictor_sigma() if pred["sigma"] == "fitted" else pred["sigma"]
    conf = adapt_confidence(pred["alpha"], pred["beta"], rate)
    return cacheopt_eval.estimator(specs, sigma, conf, seed + 17)


def run_sim(params: dict[str, Any]) -> dict[str, Any]:
    """Compute one simulation cell (pure: same params and code, same result)."""
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
    unknown = set(params["options"]) - {"token_budget"}
    if unknown:
        raise ValueError(f"cell options {sorted(unknown)}: only token_budget (a fixed chunk) is known")
    pol = make_policy(params["policy"], prof, from_flat(flags), page_size=params["page_size"],
                      chunk=params["options"].get("token_budget"))  # fmt: skip
    rate = float(len(specs)) if burst else float(params["rate"])
    est = _estimator(params["predictor"], specs, rate, params["seed"]) if params["predictor"] else None
    pool = params["pool_tokens"] or prof.kv_capacity_tokens
    res = Simulator(pol, prof, pool_tokens=pool, page_size=params["page_size"], estimator=est).run(specs)
    done = [r for r in res.records if r.ok and r.finish_s is not None]
    out: dict[str, Any] = {
        "summary": res.summary,
        "by_class": summarize_by_class(res.records),
        "e2e_mean_ms": float(np.mean([(r.finish_s - r.arrival_s) * 1e3 for r in done])) if done else None,
        "iterations": res.stats.iterations,
        "stats": {k: v for k, v in vars(res.stats).items() if isinstance(v, (int, float))},
        "pool_tokens": pool,
        "wall_s": time.perf_counter() - t0,
    }
    if hasattr(pol, "exact_decisions"):
        total = pol.exact_decisions + pol.heuristic_decisions
        out["oracle_exact_share"] = pol.exact_decisions / total if total else 1.0
    return out


RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"sim": run_sim}


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
            parallel = self.jobs > 1 and len(todo) > 1 and all(cells[i]["kind"] == "sim" for i in firsts.values())
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
