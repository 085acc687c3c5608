"""``python -m predictors.train``: fit the length model and its calibration (CacheOPT C1).

Protocol (the one the evaluation reports): every instruction is assigned to train / calib / test by a hash of its
text (``predictors.data.split_of``), the same in every file. The booster trains on the *train* instructions of all
``--data`` files (several models' answers to one instruction are several samples of "how long does this ask make a
response"); the calibration (conformal scores, Hoeffding range) and the constant baselines are fitted on the
``--calib-source`` file only (default: the first ``--data`` file), because a bound must be calibrated on the
distribution it will serve. Test instructions are never seen here.

Example (the committed model)::

    python -m predictors.train --data data/prompts/alpacaeval_Mistral-7B-Instruct-v0.2.json \
        --data data/prompts/alpacaeval_Meta-Llama-3-8B-Instruct.json --out predictors/models/alpaca-mistral
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from predictors.bounds import Calibration
from predictors.data import DEFAULT_FRACTIONS, PromptSet, load_prompts
from predictors.features import FeatureSpec, Featurizer
from predictors.model import LengthModel, TrainParams

RESIDUALS_FILE = "residuals.json"


def featurize(fz: Featurizer, ps: PromptSet) -> tuple[np.ndarray, np.ndarray]:
    """Features and prompt token counts, computing each distinct instruction once."""
    uniq = sorted(set(ps.instructions))
    X, plen = fz.from_texts(uniq)
    pos = {s: i for i, s in enumerate(uniq)}
    idx = np.array([pos[s] for s in ps.instructions], dtype=np.int64)
    return X[idx], plen[idx]


def train(data: list[str], out: str, calib_source: str | None = None, salt: str = "alpaca",
          max_new_tokens: int = 4096, spec: FeatureSpec | None = None,
          params: TrainParams | None = None) -> LengthModel:  # fmt: skip
    spec = spec or FeatureSpec()
    ps = load_prompts(data, salt=salt, max_new_tokens=max_new_tokens)
    src = Path(calib_source or data[0]).stem
    fz = Featurizer(spec)
    X, plen = featurize(fz, ps)
    tr = ps.split == "train"
    cal = (ps.split == "calib") & (np.array(ps.source) == src)
    tr_src = tr & (np.array(ps.source) == src)
    if cal.sum() < 20 or tr.sum() < 20:
        raise SystemExit(f"too few rows: {tr.sum()} train, {cal.sum()} calib (is --calib-source among --data?)")
    t0 = time.perf_counter()
    model = LengthModel.fit(X[tr], ps.output_len[tr], spec, params)
    fit_s = time.perf_counter() - t0
    pred = model.predict(X[cal])
    y_cal = ps.output_len[cal].astype(np.float64)
    calib = Calibration.fit(pred.point, pred.spread, y_cal, ps.output_len[tr_src].astype(np.float64), plen[tr_src])
    model.calibration = calib.to_json()
    model.meta.update(
        data=[Path(d).name for d in data], calib_source=src, split_salt=salt, split_fractions=DEFAULT_FRACTIONS,
        max_new_tokens=max_new_tokens, n_calib=int(cal.sum()), fit_seconds=round(fit_s, 3),
        true_length_note="output tokens under the Mistral SentencePiece tokenizer (exact for Mistral outputs, "
        "an approximation for other models' outputs)",
    )  # fmt: skip
    model.save(out)
    residuals = {"point": pred.point.round(3).tolist(), "spread": pred.spread.round(3).tolist(),
                 "true": y_cal.tolist(), "prompt_len": plen[cal].tolist()}  # fmt: skip
    (Path(out) / RESIDUALS_FILE).write_text(json.dumps(residuals) + "\n")
    return model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append", required=True, help="AlpacaEval-shaped JSON file (repeatable)")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--calib-source", default=None, help="file whose calib rows calibrate the bounds (default: first)")
    ap.add_argument("--salt", default="alpaca", help="split salt (changing it re-draws the split)")
    ap.add_argument("--max-new-tokens", type=int, default=4096, help="cap applied to true lengths")
    ap.add_argument("--n-hash", type=int, default=FeatureSpec.n_hash, help="hashed n-gram buckets")
    for f in fields(TrainParams):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    a = ap.parse_args(argv)
    params = TrainParams(**{f.name: getattr(a, f.name) for f in fields(TrainParams)})
    model = train(a.data, a.out, a.calib_source, a.salt, a.max_new_tokens, FeatureSpec(n_hash=a.n_hash), params)
    m = model.meta
    print(f"trained on {m['n_train']} rows, calibrated on {m['n_calib']} ({m['calib_source']}) "
          f"in {m['fit_seconds']} s -> {a.out}")  # fmt: skip


if __name__ == "__main__":
    main()
