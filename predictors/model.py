"""The length model: a hashed-n-gram ridge score stacked into one xgboost booster that predicts several quantiles
of log output length (CacheOPT C1).

Why quantiles of log length: response lengths are heavy-tailed (10 to 4000 tokens for one instruction set), so the
loss is taken on ``log1p(len)``; quantiles survive the monotone back-transform exactly, so the model's 0.5 quantile
is the point estimate (the median minimises MAE) and its upper quantiles (0.8 ... 0.99) are each request's own
predictive distribution, which :mod:`predictors.calibration` shifts to calibrated coverage. All levels live in one
booster (``reg:quantileerror`` with a vector ``quantile_alpha``) grown with ``multi_strategy="multi_output_tree"``:
each round adds *one* tree whose leaves hold all five levels, so a batch costs one ``inplace_predict`` call walking
150 trees instead of 5 x 300 one-output trees (faster in a side-by-side timing while building this, at equal
Kendall tau on the calibration split; one booster per level walks as many trees as the one-output form).

Inputs: the dense prompt features (:mod:`predictors.features`), the ridge text score (:mod:`predictors.ridge`) and
the answer *source* as a one-hot (which model or deployment produces the answers: the same instruction gets 340
tokens from one model and 510 from another). A request naming no source, or one the model does not know, gets the
"unknown" column: training duplicates every row with its source hidden, so that case is learned, not extrapolated.

A model directory holds ``model.ubj`` (the booster), ``ridge.npy``, ``meta.json`` (feature spec + version,
tokenizer id, levels, sources, training info) and ``calibration.json`` (per-level conformal offsets per source for
:mod:`predictors.calibration`, and the single-bound calibration of :mod:`predictors.bounds`). Loading checks the
feature version and the tokenizer id so a model cannot be used with other features.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from predictors.features import Features, FeatureSpec, FeatureVersionError, Featurizer, tokenizer_id
from predictors.ridge import HashedRidge

LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
SPREAD_Q = 0.9  # the quantile whose distance above the median is a request's spread (scaled-residual conformal)
MODEL_FILE, META_FILE, CALIB_FILE = "model.ubj", "meta.json", "calibration.json"
UNKNOWN = -1  # source index of a request naming no (known) source


@dataclass
class TrainParams:
    """Booster and ridge settings. The booster reads ~40 dense columns (most of the text signal arrives through
    the one ridge column), so shallow trees suffice. Chosen on the calibration split's Kendall tau over two split
    salts, never on test (depth 1-3, 150-500 rounds, column share 0.5-0.8, ridge lambda 0.1-1, one- or multi-output
    trees: all within 0.38-0.40, i.e. noise), with predict cost in view: 150 multi-output depth-2 trees."""

    rounds: int = 150
    max_depth: int = 2
    eta: float = 0.05
    subsample: float = 0.8
    colsample_bytree: float = 0.5
    min_child_weight: float = 10.0
    reg_lambda: float = 1.0
    ridge_lambda: float = 0.3
    seed: int = 0

    def xgb(self, levels: Sequence[float]) -> dict[str, Any]:
        return {
            "objective": "reg:quantileerror",
            "quantile_alpha": np.array(levels),
            "max_depth": self.max_depth,
            "eta": self.eta,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "min_child_weight": self.min_child_weight,
            "lambda": self.reg_lambda,
            "seed": self.seed,
            "nthread": 1,
            "tree_method": "hist",
            "multi_strategy": "multi_output_tree",
        }


@dataclass
class Prediction:
    """Per-request model outputs in tokens: ``quantiles[:, j]`` is the ``levels[j]``-quantile (monotone in j);
    ``point`` the median and ``spread`` q0.9 - median (>= 1), for the single-bound kinds of ``predictors.bounds``."""

    quantiles: np.ndarray
    levels: tuple[float, ...] = LEVELS

    @property
    def point(self) -> np.ndarray:
        return self.quantiles[:, self.levels.index(0.5)]

    @property
    def spread(self) -> np.ndarray:
        return np.maximum(self.quantiles[:, self.levels.index(SPREAD_Q)] - self.point, 1.0)

    @property
    def log_quantiles(self) -> np.ndarray:
        return np.log(self.quantiles)


@dataclass
class LengthModel:
    booster: xgb.Booster
    featurizer: Featurizer
    ridge: HashedRidge
    sources: tuple[str, ...] = ()
    levels: tuple[float, ...] = LEVELS
    calibration: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def source_index(self, names: Sequence[str | None]) -> np.ndarray:
        """Column of each named source, :data:`UNKNOWN` for None or a name the model was not trained on."""
        pos = {s: i for i, s in enumerate(self.sources)}
        return np.array([pos.get(n, UNKNOWN) if isinstance(n, str) else UNKNOWN for n in names], dtype=np.int64)

    def design(self, F: Features, source_idx: np.ndarray, text_score: np.ndarray | None = None) -> np.ndarray:
        """The booster's input: dense features, the ridge score (or ``text_score``: out-of-fold in training),
        one-hot source (all zero = unknown)."""
        score = self.ridge.score(F.ngrams) if text_score is None else text_score
        onehot = np.zeros((F.dense.shape[0], len(self.sources)), dtype=np.float32)
        known = source_idx >= 0
        onehot[np.flatnonzero(known), source_idx[known]] = 1.0
        return np.hstack([F.dense, score[:, None].astype(np.float32), onehot])

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, featurizer: Featurizer, ridge: HashedRidge, sources: Sequence[str],
            params: TrainParams | None = None, levels: Sequence[float] = LEVELS) -> LengthModel:  # fmt: skip
        """Train the booster on design rows ``X`` (see :meth:`design`) and lengths ``y`` (tokens)."""
        params = params or TrainParams()
        dtrain = xgb.DMatrix(X, label=np.log1p(y.astype(np.float64)))
        booster = xgb.train(params.xgb(levels), dtrain, num_boost_round=params.rounds)
        meta = {
            "feature_spec": featurizer.spec.to_json(),
            "tokenizer_id": tokenizer_id(featurizer.spec.tokenizer),
            "levels": list(levels),
            "sources": list(sources),
            "train_params": params.__dict__,
            "n_train": len(y),
        }
        return cls(booster, featurizer, ridge, tuple(sources), tuple(levels), meta=meta)

    def predict(self, X: np.ndarray) -> Prediction:
        """One booster call for the whole batch; levels are sorted per row (xgboost does not enforce monotone
        quantiles) and lengths are at least 1 token."""
        if X.shape[0] == 0:
            return Prediction(np.zeros((0, len(self.levels))), self.levels)
        raw = np.asarray(self.booster.inplace_predict(X), dtype=np.float64).reshape(X.shape[0], -1)
        return Prediction(np.maximum(np.expm1(np.sort(raw, axis=1)), 1.0), self.levels)

    def predict_features(self, F: Features, sources: Sequence[str | None] | np.ndarray) -> Prediction:
        idx = sources if isinstance(sources, np.ndarray) else self.source_index(sources)
        return self.predict(self.design(F, idx))

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(out / MODEL_FILE)
        self.ridge.save(out)
        (out / META_FILE).write_text(json.dumps(self.meta, indent=1, sort_keys=True) + "\n")
        save_calibration(out, self.calibration)
        return out

    @classmethod
    def load(cls, path: str | Path) -> LengthModel:
        """Load a model directory; raise :class:`FeatureVersionError` if it was built with other features."""
        path = Path(path)
        if not (path / META_FILE).exists():
            raise FileNotFoundError(f"{path}: not a predictor model directory (no {META_FILE})")
        meta = json.loads((path / META_FILE).read_text())
        spec = FeatureSpec.from_json(meta["feature_spec"])
        have = tokenizer_id(spec.tokenizer)
        if meta.get("tokenizer_id") != have:
            raise FeatureVersionError(f"{path}: trained with tokenizer {meta.get('tokenizer_id')}, found {have}")
        booster = xgb.Booster(params={"nthread": 1})
        booster.load_model(path / MODEL_FILE)
        calib = json.loads((path / CALIB_FILE).read_text()) if (path / CALIB_FILE).exists() else {}
        return cls(booster, Featurizer(spec), HashedRidge.load(path), tuple(meta.get("sources", ())),
                   tuple(meta.get("levels", LEVELS)), calib, meta)  # fmt: skip


def save_calibration(out: str | Path, calibration: dict[str, Any]) -> None:
    """Written atomically (temp file + rename): the service refits it while others may read it."""
    p = Path(out) / CALIB_FILE
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(calibration, indent=1, sort_keys=True) + "\n")
    tmp.replace(p)
