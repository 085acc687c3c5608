"""``python -m predictors.evaluate --stream``: calibration under a shifted stream (CacheOPT C1, issue 15.3).

Setup. A model is trained and calibrated on **one** source (``--train-source``, default Mistral-7B answers; train
and calib instructions). The stream then serves the *test* instructions answered by the **other** sources, one
source after another (each shuffled, seeded), so the answer distribution switches twice: the model has never seen
these answers, and the static calibration is for another distribution. Finishes are fed back ``--delay`` requests
after their arrival, with the exact final length, for each of ``DELAYS``: 0 is the textbook online setting (a
request's length is known before the next one is predicted); 8 and 32 are requests in flight on a server, where the
tracker acts on stale errors. Every request names its source as its class.

Methods, all on the same predictions:

* ``static``: split-conformal offsets from the training source's calibration rows, never updated;
* ``online``: :class:`~predictors.calibration.OnlineCalibrator` (quantile tracking per class, module docstring
  there), started from the static offsets;
* ``online_global``: the same with no class named (one tracker for all traffic);
* ``best_constant``: per level, the one constant bound that reaches the level's coverage on the *whole stream*,
  chosen in hindsight (an oracle no server has).

The tracker's ``step`` and ``lag_scale`` are chosen on a *validation* stream built the same way from the
**calib** instructions (never the test ones): among the ``STEPS`` x ``LAG_SCALES`` grid, the configurations that
meet both targets at delay 0 there; of those the cheapest (smallest over-reservation at q = 0.9, delay 0), then the
smallest worst error at delay 8, then the smaller lag scale. The calibrator's defaults are that choice; the grid is
kept in the JSON. (Test-stream results of several grid points were looked at while building this; the rule and the
grid are stated so the choice can be checked.)

Reported per delay and level: running coverage and running over-reservation (``sum(bound - true) / sum(true)``)
against request count, the worst running-coverage error after 200 requests, the worst error over sliding windows
of 100 requests that start after the first 200, and the same for ``--seeds`` other stream orders. Writes
``stream.json`` and ``stream-d<delay>.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from predictors.calibration import GLOBAL, OnlineCalibrator, StaticCalibration, calibrated
from predictors.data import load_prompts
from predictors.model import LengthModel
from predictors.train import featurize, train

DATA = Path(__file__).resolve().parent.parent / "data" / "prompts"
SOURCES = ("Mistral-7B-Instruct-v0.2", "gpt4_0314", "Meta-Llama-3-8B-Instruct", "Qwen1.5-7B-Chat")
STEPS = (0.2, 0.3, 0.5, 1.0)
LAG_SCALES = (1.0, 2.0, 4.0)
DELAYS = (0, 8, 32)
BURN_IN, WINDOW, RUN_TOL, WIN_TOL = 200, 100, 0.02, 0.03
TARGET_Q = (0.9, 0.95)


def build_stream(model: LengthModel, sources: list[str], split: str, seed: int) -> dict[str, Any]:
    """Log raw quantiles, true lengths and class names of ``split`` rows of ``sources``, source after source."""
    rng = np.random.default_rng(seed)
    parts = []
    for s in sources:
        ps = load_prompts([str(DATA / f"alpacaeval_{s}.json")], salt=model.meta.get("split_salt", "alpaca"),
                          max_new_tokens=int(model.meta.get("max_new_tokens", 4096)))  # fmt: skip
        ps = ps.subset(ps.split == split)
        ps = ps.subset(rng.permutation(len(ps.instructions)))
        F, _ = featurize(model.featurizer, ps).rows(np.ones(len(ps.instructions), dtype=bool))
        lp = model.predict_features(F, [None] * len(ps.instructions)).log_quantiles  # never trained on it
        parts.append((lp, ps.output_len.astype(np.float64), [s] * len(ps.instructions)))
    switches = np.cumsum([len(p[1]) for p in parts])[:-1].tolist()
    return {"log_pred": np.vstack([p[0] for p in parts]), "true": np.concatenate([p[1] for p in parts]),
            "cls": [c for p in parts for c in p[2]], "switches": switches}  # fmt: skip


def replay(stream: dict[str, Any], static: StaticCalibration, step: float, named: bool, delay: int,
           lag_scale: float = 2.0) -> np.ndarray:  # fmt: skip
    """Bounds (n, L) the online calibrator issues, feeding each finish back ``delay`` arrivals later."""
    cal = OnlineCalibrator(static, step=step, lag_scale=lag_scale)
    lp, y, n = stream["log_pred"], stream["true"], len(stream["true"])
    out = np.zeros_like(lp)
    for t in range(n):
        name = stream["cls"][t] if named else None
        out[t] = cal.issue([str(t)], lp[t : t + 1], [name])[0]
        if t - delay >= 0:
            cal.observe(str(t - delay), int(y[t - delay]))
    return out


def curves(bounds: np.ndarray, y: np.ndarray, levels: tuple[float, ...]) -> dict[str, Any]:
    hit = y[:, None] <= bounds
    t = np.arange(1, y.size + 1)[:, None]
    run_cov = np.cumsum(hit, 0) / t
    run_over = np.cumsum(bounds - y[:, None], 0) / np.cumsum(y)[:, None]
    c = np.vstack([np.zeros((1, hit.shape[1])), np.cumsum(hit, 0)])
    win = (c[WINDOW:] - c[:-WINDOW]) / WINDOW  # win[s] = coverage of requests s .. s+99
    res: dict[str, Any] = {
        "running_coverage": run_cov.round(4).T.tolist(),
        "running_over": run_over.round(4).T.tolist(),
    }
    res["summary"] = {}
    for j, q in enumerate(levels):
        after = run_cov[BURN_IN - 1 :, j] - q
        w = win[BURN_IN:, j] - q if win.shape[0] > BURN_IN else np.zeros(1)
        res["summary"][str(q)] = {
            "coverage": float(hit[:, j].mean()), "over_reservation": float(run_over[-1, j]),
            "max_running_error_after_200": float(np.abs(after).max()),
            "max_window_error_after_200": float(np.abs(w).max()),
            "running_ok": bool(np.abs(after).max() <= RUN_TOL + 1e-9),
            "windows_ok": bool(np.abs(w).max() <= WIN_TOL + 1e-9),
        }  # fmt: skip
    return res


def best_constant(y: np.ndarray, levels: tuple[float, ...]) -> np.ndarray:
    k = np.minimum(np.ceil(np.asarray(levels) * y.size).astype(int), y.size)
    return np.broadcast_to(np.sort(y)[k - 1], (y.size, len(levels))).astype(np.float64)


def methods(stream: dict[str, Any], static: StaticCalibration, step: float, lag_scale: float,
            delay: int) -> dict[str, np.ndarray]:  # fmt: skip
    return {
        "static": calibrated(stream["log_pred"], static.offsets_for(GLOBAL)),
        "online": replay(stream, static, step, True, delay, lag_scale),
        "online_global": replay(stream, static, step, False, delay, lag_scale),
        "best_constant": best_constant(stream["true"], static.levels),
    }


def worst_error(summary: dict[str, Any]) -> float:
    """Worst error in window-tolerance units: running errors count at the window tolerance's scale."""
    return max(max(summary[str(q)]["max_window_error_after_200"],
                   summary[str(q)]["max_running_error_after_200"] * WIN_TOL / RUN_TOL) for q in TARGET_Q)  # fmt: skip


def choose(stream: dict[str, Any], static: StaticCalibration) -> tuple[tuple[float, float], dict[str, Any]]:
    """(step, lag_scale) by the rule of the module docstring, and the validation grid behind it."""
    grid: dict[str, Any] = {}
    for step in STEPS:
        for ls in LAG_SCALES:
            r = {d: curves(replay(stream, static, step, True, d, ls), stream["true"], static.levels)["summary"]
                 for d in (0, 8)}  # fmt: skip
            grid[f"{step},{ls}"] = {"worst_d0": worst_error(r[0]), "worst_d8": worst_error(r[8]),
                                    "over_d0_q0.9": r[0]["0.9"]["over_reservation"]}  # fmt: skip
    ok = [k for k, v in grid.items() if v["worst_d0"] <= WIN_TOL + 1e-9] or list(grid)
    best = min(ok, key=lambda k: (round(grid[k]["over_d0_q0.9"], 3), round(grid[k]["worst_d8"], 3), k))
    step, ls = (float(x) for x in best.split(","))
    return (step, ls), grid


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = doc["levels"]
    fig, axes = plt.subplots(2, len(TARGET_Q), figsize=(6 * len(TARGET_Q), 7.5), sharex=True)
    for col, q in enumerate(TARGET_Q):
        j = levels.index(q)
        for name, r in doc["methods"].items():
            cov, over = np.array(r["running_coverage"][j]), np.array(r["running_over"][j])
            t = np.arange(1, cov.size + 1)
            axes[0, col].plot(t, cov, label=name)
            axes[1, col].plot(t, over, label=name)
        axes[0, col].axhspan(q - RUN_TOL, q + RUN_TOL, color="k", alpha=0.08)
        axes[0, col].axhline(q, color="k", lw=0.8, ls=":")
        axes[0, col].set(ylabel="running coverage", title=f"q = {q} (band: +-2 points)", ylim=(q - 0.2, 1.0))
        axes[1, col].set(xlabel="requests", ylabel="running over-reservation sum(b-y)/sum(y)")
        for ax in axes[:, col]:
            for s in doc["switches"]:
                ax.axvline(s, color="grey", lw=0.8, ls="--")
            ax.axvline(BURN_IN, color="k", lw=0.6)
        axes[0, col].legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"trained on {doc['train_source']}; stream: {' -> '.join(doc['stream_sources'])} (test split); "
        f"feedback delay {doc['delay']}, step {doc['step']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_delay(model: LengthModel, static: StaticCalibration, others: list[str], delay: int, seeds: int,
              step: float, lag_scale: float) -> dict[str, Any]:  # fmt: skip
    stream = build_stream(model, others, "test", seed=0)
    doc: dict[str, Any] = {"delay": delay, "step": step, "lag_scale": lag_scale, "switches": stream["switches"],
                           "n": len(stream["true"]), "methods": {}, "seeds": {}}  # fmt: skip
    for name, b in methods(stream, static, step, lag_scale, delay).items():
        doc["methods"][name] = curves(b, stream["true"], static.levels)
    for seed in range(1, seeds + 1):
        st = build_stream(model, others, "test", seed=seed)
        doc["seeds"][str(seed)] = {k: curves(b, st["true"], static.levels)["summary"]
                                   for k, b in methods(st, static, step, lag_scale, delay).items()}  # fmt: skip
    return doc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-source", default=SOURCES[0], choices=SOURCES)
    ap.add_argument("--out", default="docs/results/predictor", help="directory for stream.json and the PNGs")
    ap.add_argument(
        "--delay",
        type=int,
        action="append",
        default=None,
        help=f"arrivals between a request and its finish feedback (repeatable; default {DELAYS})",
    )
    ap.add_argument("--seeds", type=int, default=10, help="other stream orders summarised")
    ap.add_argument("--step", type=float, default=None, help="tracker step (default: chosen on the calib stream)")
    ap.add_argument("--lag-scale", type=float, default=None, help="tracker lag scale (default: chosen likewise)")
    a = ap.parse_args(argv)
    others = [s for s in SOURCES if s != a.train_source]
    model = train([str(DATA / f"alpacaeval_{a.train_source}.json")], None)
    static = StaticCalibration.from_json(model.calibration["quantile"])
    grid: dict[str, Any] = {}
    if a.step is None or a.lag_scale is None:
        (step, ls), grid = choose(build_stream(model, others, "calib", seed=1000), static)
    step, ls = a.step if a.step is not None else step, a.lag_scale if a.lag_scale is not None else ls
    print(f"tracker step {step}, lag scale {ls} (validation stream on calib instructions)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python -m predictors.evaluate --stream " + " ".join(argv or [])
    doc: dict[str, Any] = {"command": cmd, "step": step, "lag_scale": ls, "validation_grid": grid,
                           "train_source": a.train_source, "stream_sources": others, "levels": list(static.levels),
                           "targets": {"q": TARGET_Q, "running_tol_after_200": RUN_TOL, "window": WINDOW,
                                       "window_tol": WIN_TOL}, "delays": {}}  # fmt: skip
    for delay in a.delay or DELAYS:
        d = doc["delays"][str(delay)] = run_delay(model, static, others, delay, a.seeds, step, ls)
        plot({**doc, **d}, out / f"stream-d{delay}.png")
        print(f"delay {delay}: stream of {d['n']} requests ({' -> '.join(others)}), trained on {a.train_source}")
        for name, r in d["methods"].items():
            for q in TARGET_Q:
                s = r["summary"][str(q)]
                held = sum(v[name][str(q)]["running_ok"] and v[name][str(q)]["windows_ok"] for v in d["seeds"].values())
                print(
                    f"  {name:14s} q={q}: coverage {s['coverage']:.3f} over {s['over_reservation']:.3f} "
                    f"worst running err after 200 {s['max_running_error_after_200']:.3f} worst window err "
                    f"{s['max_window_error_after_200']:.3f}; both targets held in {held}/{a.seeds} other orders"
                )
    (out / "stream.json").write_text(json.dumps(doc) + "\n")


if __name__ == "__main__":
    main()
