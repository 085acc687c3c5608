"""``python -m predictors.train``: fit the length model and its calibration (CacheOPT C1).

Protocol (the one the evaluation reports): every instruction is assigned to train / calib / test by a hash of its
text (``predictors.data.split_of``), the same in every file, so no instruction is ever in two splits (several
models answer the same 805 AlpacaEval instructions; a split by row would leak). On the *train* instructions of all
``--data`` files:

1. the ridge text score is fitted on each instruction's mean log length over all answer sets (out-of-fold scores
   for the booster's own training rows, :mod:`predictors.ridge`);
2. the booster learns the quantiles of log length from dense features + text score + the answer source (file stem)
   as a one-hot; every row is also present with its source hidden (the "unknown source" a request may send).

On the *calib* instructions: per-level conformal offsets for each source (its rows, its source shown) and for
``"*"`` (all rows, source hidden) (:mod:`predictors.calibration`); and the single-bound calibration of
:mod:`predictors.bounds` (conformal / Hoeffding / constants) on ``--calib-source`` (default: the first file).
Test instructions are never seen here.

Example (the shipped model)::

    python -m predictors.train --out predictors/models/alpaca-mistral \
        --data data/prompts/alpacaeval_Mistral-7B-Instruct-v0.2.json \
        --data data/prompts/alpacaeval_Meta-Llama-3-8B-Instruct.json \
        --data data/prompts/alpacaeval_Qwen1.5-7B-Chat.json --data data/prompts/alpacaeval_gpt4_0314.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from predictors.bounds import Calibration
from predictors.calibration import GLOBAL, StaticCalibration
from predictors.data import DEFAULT_FRACTIONS, PromptSet, load_prompts
from predictors.features import Features, FeatureSpec, Featurizer
from predictors.model import UNKNOWN, LengthModel, TrainParams
from predictors.ridge import HashedRidge

RESIDUALS_FILE = "residuals.json"


@dataclass
class Featurized:
    """Each distinct instruction featurized once; ``idx[r]`` is row r's instruction."""

    features: Features
    prompt_len: np.ndarray
    idx: np.ndarray

    def rows(self, mask: np.ndarray) -> tuple[Features, np.ndarray]:
        sel = self.idx[mask]
        return self.features.take(sel), self.prompt_len[sel]


def featurize(fz: Featurizer, ps: PromptSet) -> Featurized:
    uniq = sorted(set(ps.instructions))
    F, plen = fz.from_texts(uniq)
    pos = {s: i for i, s in enumerate(uniq)}
    return Featurized(F, plen, np.array([pos[s] for s in ps.instructions], dtype=np.int64))


def text_scores(fz: Featurizer, fe: Featurized, ps: PromptSet, lam: float) -> tuple[HashedRidge, np.ndarray]:
    """The ridge on train instructions and every instruction's score (out-of-fold for train instructions)."""
    n_ins = fe.prompt_len.size
    tr_rows = ps.split == "train"
    y = np.log1p(ps.output_len.astype(np.float64))
    tot, cnt = np.zeros(n_ins), np.zeros(n_ins)
    np.add.at(tot, fe.idx[tr_rows], y[tr_rows])
    np.add.at(cnt, fe.idx[tr_rows], 1.0)
    tr_ins = np.flatnonzero(cnt > 0)
    F_tr = fe.features.take(tr_ins)
    target = tot[tr_ins] / cnt[tr_ins]
    nh = fz.spec.n_hash
    ridge = HashedRidge.fit(F_tr.ngrams, target, nh, lam)
    score = ridge.score(fe.features.ngrams)
    score[tr_ins] = HashedRidge.out_of_fold(F_tr.ngrams, target, nh, lam)
    return ridge, score


def train(data: list[str], out: str | None, calib_source: str | None = None, salt: str = "alpaca",
          max_new_tokens: int = 4096, spec: FeatureSpec | None = None,
          params: TrainParams | None = None) -> LengthModel:  # fmt: skip
    params = params or TrainParams()
    ps = load_prompts(data, salt=salt, max_new_tokens=max_new_tokens)
    names = [Path(d).stem for d in data]
    sources = tuple(names) if len(names) > 1 else ()
    cal_src = Path(calib_source or data[0]).stem
    src = np.array(ps.source)
    fz = Featurizer(spec or FeatureSpec())
    fe = featurize(fz, ps)
    tr, cal = ps.split == "train", ps.split == "calib"
    if (cal & (src == cal_src)).sum() < 20 or tr.sum() < 20:
        raise SystemExit(f"too few rows: {tr.sum()} train, {cal.sum()} calib (is --calib-source among --data?)")
    t0 = time.perf_counter()
    ridge, score = text_scores(fz, fe, ps, params.ridge_lambda)
    proto = LengthModel(None, fz, ridge, sources)  # type: ignore[arg-type]  # design() needs no booster
    sidx = proto.source_index(list(src))

    def design(mask: np.ndarray, source_idx: np.ndarray) -> np.ndarray:
        F, _ = fe.rows(mask)
        return proto.design(F, source_idx[mask], text_score=score[fe.idx[mask]])

    X, y = design(tr, sidx), ps.output_len[tr]
    if sources:  # every row again with its source hidden: requests naming no source are learned, not guessed
        X, y = np.vstack([X, design(tr, np.full(src.size, UNKNOWN))]), np.concatenate([y, y])
    model = LengthModel.fit(X, y, fz, ridge, sources, params)
    fit_s = time.perf_counter() - t0
    groups = {GLOBAL: (model.predict(design(cal, np.full(src.size, UNKNOWN))).log_quantiles, ps.output_len[cal])}
    for name in names:
        m = cal & (src == name)
        groups[name] = (model.predict(design(m, sidx)).log_quantiles, ps.output_len[m])
    static = StaticCalibration.fit(model.levels, groups)
    m_cal, m_tr = cal & (src == cal_src), tr & (src == cal_src)
    pred = model.predict(design(m_cal, sidx))
    y_cal = ps.output_len[m_cal].astype(np.float64)
    _, plen_tr = fe.rows(m_tr)
    _, plen_cal = fe.rows(m_cal)
    bounds = Calibration.fit(pred.point, pred.spread, y_cal, ps.output_len[m_tr].astype(np.float64), plen_tr)
    model.calibration = {**bounds.to_json(), "quantile": static.to_json()}
    model.meta.update(
        data=[Path(d).name for d in data], calib_source=cal_src, split_salt=salt, split_fractions=DEFAULT_FRACTIONS,
        max_new_tokens=max_new_tokens, n_calib=int(cal.sum()), fit_seconds=round(fit_s, 3),
        true_length_note="output tokens under the Mistral SentencePiece tokenizer (exact for Mistral outputs, "
        "an approximation for other models' outputs)",
    )  # fmt: skip
    if out is not None:
        model.save(out)
        residuals = {"point": pred.point.round(3).tolist(), "spread": pred.spread.round(3).tolist(),
                     "true": y_cal.tolist(), "prompt_len": plen_cal.tolist(),
                     "quantiles": pred.quantiles.round(2).tolist(), "levels": list(model.levels)}  # fmt: skip
        (Path(out) / RESIDUALS_FILE).write_text(json.dumps(residuals) + "\n")
    return model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append", required=True, help="AlpacaEval-shaped JSON file (repeatable)")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--calib-source", default=None, help="file whose calib rows calibrate the single bounds "
                    "(default: first)")  # fmt: skip
    ap.add_argument("--salt", default="alpaca", help="split salt (changing it re-draws the split)")
    ap.add_argument("--max-new-tokens", type=int, default=4096, help="cap applied to true lengths")
    ap.add_argument("--n-hash", type=int, default=FeatureSpec.n_hash, help="hashed n-gram buckets")
    for f in fields(TrainParams):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    a = ap.parse_args(argv)
    params = TrainParams(**{f.name: getattr(a, f.name) for f in fields(TrainParams)})
    model = train(a.data, a.out, a.calib_source, a.salt, a.max_new_tokens, FeatureSpec(n_hash=a.n_hash), params)
    m = model.meta
    print(f"trained on {m['n_train']} rows ({len(model.sources)} sources), calibrated on {m['n_calib']} "
          f"in {m['fit_seconds']} s -> {a.out}")  # fmt: skip


if __name__ == "__main__":
    main()
