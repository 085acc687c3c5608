"""The length model: one xgboost booster predicting several quantiles of log output length (CacheOPT C1).

Why quantiles of log length: response lengths are heavy-tailed (10 to 4000 tokens for one instruction set), so the
loss is taken on ``log1p(len)``; quantiles survive the monotone back-transform exactly, so the model's 0.5 quantile
is the point estimate (the median minimises MAE) and its upper quantiles give each request's own *spread*, which the
conformal bound (``predictors.bounds``) rescales to a calibrated guarantee. All quantiles live in one booster
(``reg:quantileerror`` with a vector ``quantile_alpha``) so serving is a single ``inplace_predict`` call per batch.

A model directory holds ``model.ubj`` (the booster), ``meta.json`` (feature spec + version, tokenizer id, quantiles,
training info) and ``calibration.json`` (everything the bounds need, refittable online by the service). Loading
checks the feature version and the tokenizer id so a model cannot be used with other features.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from predictors.features import FeatureSpec, FeatureVersionError, Featurizer, tokenizer_id

QUANTILES = (0.5, 0.9)
SPREAD_Q = 0.9  # the quantile whose distance above the median is a request's spread (conformal scale)
MODEL_FILE, META_FILE, CALIB_FILE = "model.ubj", "meta.json", "calibration.json"


@dataclass
class TrainParams:
    """Booster settings. Small trees and strong subsampling: ~1000 training rows and 272 mostly sparse features.
    Defaults chosen on the calibration split's Kendall tau (never on test) among depth 2-4 / 150-500 rounds,
    with predict cost in view (2 quantiles x 300 rounds = 600 trees per batch call)."""

    rounds: int = 300
    max_depth: int = 3
    eta: float = 0.05
    subsample: float = 0.8
    colsample_bytree: float = 0.3
    min_child_weight: float = 3.0
    reg_lambda: float = 1.0
    seed: int = 0

    def xgb(self) -> dict[str, Any]:
        return {
            "objective": "reg:quantileerror",
            "quantile_alpha": np.array(QUANTILES),
            "max_depth": self.max_depth,
            "eta": self.eta,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "min_child_weight": self.min_child_weight,
            "lambda": self.reg_lambda,
            "seed": self.seed,
            "nthread": 1,
            "tree_method": "hist",
        }


@dataclass
class Prediction:
    """Per-request model outputs in tokens: ``point`` (median) and ``spread`` (q0.9 - median, >= 1)."""

    point: np.ndarray
    spread: np.ndarray
    quantiles: np.ndarray  # (n, len(QUANTILES)) in tokens


@dataclass
class LengthModel:
    booster: xgb.Booster
    featurizer: Featurizer
    calibration: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, spec: FeatureSpec, params: TrainParams | None = None) -> LengthModel:
        params = params or TrainParams()
        dtrain = xgb.DMatrix(X, label=np.log1p(y.astype(np.float64)))
        booster = xgb.train(params.xgb(), dtrain, num_boost_round=params.rounds)
        meta = {
            "feature_spec": spec.to_json(),
            "tokenizer_id": tokenizer_id(spec.tokenizer),
            "quantiles": list(QUANTILES),
            "train_params": params.__dict__,
            "n_train": len(y),
        }
        return cls(booster=booster, featurizer=Featurizer(spec), meta=meta)

    def predict(self, X: np.ndarray) -> Prediction:
        """One booster call for the whole batch; quantiles are sorted (xgboost does not enforce monotonicity)."""
        if X.shape[0] == 0:
            z = np.zeros(0)
            return Prediction(z, z, np.zeros((0, len(QUANTILES))))
        raw = np.asarray(self.booster.inplace_predict(X), dtype=np.float64).reshape(X.shape[0], -1)
        q = np.maximum(np.expm1(np.sort(raw, axis=1)), 1.0)
        point = q[:, QUANTILES.index(0.5)]
        spread = np.maximum(q[:, QUANTILES.index(SPREAD_Q)] - point, 1.0)
        return Prediction(point=point, spread=spread, quantiles=q)

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(out / MODEL_FILE)
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
        return cls(booster=booster, featurizer=Featurizer(spec), calibration=calib, meta=meta)


def save_calibration(out: str | Path, calibration: dict[str, Any]) -> None:
    """Written atomically (temp file + rename): the service refits it while others may read it."""
    p = Path(out) / CALIB_FILE
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(calibration, indent=1, sort_keys=True) + "\n")
    tmp.replace(p)
