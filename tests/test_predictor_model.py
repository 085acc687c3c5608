"""Training a small length model in seconds, save/load checks, the split, per-source calibration, the source
feature, the committed model's size and quality, and the simulator-side estimator."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from predictors.calibration import GLOBAL, StaticCalibration, calibrated
from predictors.data import load_prompts, split_of
from predictors.features import FEATURE_VERSION, FeatureSpec, FeatureVersionError
from predictors.model import LEVELS, META_FILE, UNKNOWN, LengthModel, TrainParams
from predictors.synthetic import make_estimator
from predictors.train import train

DATA = Path(__file__).resolve().parent.parent / "data" / "prompts"
MISTRAL = str(DATA / "alpacaeval_Mistral-7B-Instruct-v0.2.json")
LLAMA = str(DATA / "alpacaeval_Meta-Llama-3-8B-Instruct.json")
SHIPPED = Path(__file__).resolve().parent.parent / "predictors" / "models" / "alpaca-mistral"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    t0 = time.perf_counter()
    train([MISTRAL], str(out), spec=FeatureSpec(n_hash=64), params=TrainParams(rounds=40))
    assert time.perf_counter() - t0 < 30
    return out


def test_split_is_by_instruction_and_never_leaks() -> None:
    ps = load_prompts([MISTRAL, LLAMA])
    by_ins: dict[str, set[str]] = {}
    for ins, sp in zip(ps.instructions, ps.split, strict=True):
        by_ins.setdefault(ins, set()).add(str(sp))
    assert all(len(s) == 1 for s in by_ins.values())
    shares = {s: float(np.mean(ps.split == s)) for s in ("train", "calib", "test")}
    assert 0.5 < shares["train"] < 0.7 and 0.12 < shares["test"] < 0.28
    assert split_of("x") == split_of("x") and split_of("x", salt="a") in ("train", "calib", "test")


def test_trained_model_predicts_and_round_trips(model_dir: Path) -> None:
    m = LengthModel.load(model_dir)
    F, _ = m.featurizer.from_texts(["Write a 1000 word essay about the ocean.", "Is 7 prime? Answer yes or no."])
    pred = m.predict_features(F, [None, None])
    assert pred.quantiles.shape == (2, len(LEVELS)) and m.levels == LEVELS
    assert (pred.point >= 1).all() and (pred.spread >= 1).all()
    assert (np.diff(pred.quantiles, axis=1) >= 0).all()
    assert m.meta["calib_source"].startswith("alpacaeval_Mistral")
    assert json.loads((model_dir / "residuals.json").read_text())["true"]
    static = StaticCalibration.from_json(m.calibration["quantile"])
    assert set(static.offsets) == {GLOBAL, "alpacaeval_Mistral-7B-Instruct-v0.2"}


def test_model_learns_something(model_dir: Path) -> None:
    """Better than predicting the training median for everyone, on held-out test instructions."""
    m = LengthModel.load(model_dir)
    ps = load_prompts([MISTRAL], max_new_tokens=4096)
    te, tr = ps.subset(ps.split == "test"), ps.subset(ps.split == "train")
    F, _ = m.featurizer.from_texts(te.instructions)
    mae = np.abs(m.predict_features(F, [None] * len(te.instructions)).point - te.output_len).mean()
    assert mae < np.abs(np.median(tr.output_len) - te.output_len).mean()


def test_loading_another_feature_version_fails(model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    meta = json.loads((bad / META_FILE).read_text())
    meta["feature_spec"]["version"] = 999
    (bad / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(FeatureVersionError, match="feature version 999"):
        LengthModel.load(bad)
    meta["feature_spec"]["version"] = FEATURE_VERSION
    meta["tokenizer_id"] = "other.model:0000"
    (bad / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(FeatureVersionError, match="tokenizer"):
        LengthModel.load(bad)


def test_synthetic_estimator_is_seeded_and_calibrated_like_the_model(model_dir: Path) -> None:
    est_a = make_estimator(model_dir, "conformal", seed=3)
    est_b = make_estimator(model_dir, "conformal", seed=3)
    rng = np.random.default_rng(0)
    true = rng.choice(json.loads((model_dir / "residuals.json").read_text())["true"], 2000)
    a = [est_a(int(t), 4096, 0.0) for t in true]
    assert a == [est_b(int(t), 4096, 0.0) for t in true]
    assert all(e.point <= e.bound <= 4096 for e in a)
    cov = np.mean([t <= e.bound for t, e in zip(true, a, strict=True)])
    assert cov >= 0.9  # conf 0.95 on the calibration distribution itself
    assert est_a(100, 4096, 1000.0).confidence == pytest.approx(0.95 / 2)


def test_source_is_a_feature_and_each_source_is_calibrated(tmp_path: Path) -> None:
    """Two answer sets: the source's one-hot moves the prediction (Llama-3 answers the same asks at more length),
    an unknown name is the hidden-source column, and each source gets its own conformal offsets."""
    m = train([MISTRAL, LLAMA], str(tmp_path), spec=FeatureSpec(n_hash=256), params=TrainParams(rounds=60))
    names = ("alpacaeval_Mistral-7B-Instruct-v0.2", "alpacaeval_Meta-Llama-3-8B-Instruct")
    assert m.sources == names
    assert m.source_index([names[1], "someone-else", None]).tolist() == [1, UNKNOWN, UNKNOWN]
    ps = load_prompts([MISTRAL])
    F, _ = m.featurizer.from_texts(ps.subset(ps.split == "test").instructions)
    mistral, llama = (m.predict_features(F, [n] * F.dense.shape[0]).point for n in names)
    assert np.median(llama) > np.median(mistral)
    static = StaticCalibration.from_json(LengthModel.load(tmp_path).calibration["quantile"])
    assert set(static.offsets) == {GLOBAL, *names} and static.n[GLOBAL] == static.n[names[0]] + static.n[names[1]]


def test_static_calibration_covers_held_out_rows_of_its_source(tmp_path: Path) -> None:
    """Split-conformal per level: on the test instructions of the calibrated source, each level covers about its
    share (159 rows: within 0.1 of q at every level; the finite-sample guarantee is marginal over splits)."""
    m = train([MISTRAL], str(tmp_path), spec=FeatureSpec(n_hash=256), params=TrainParams(rounds=60))
    ps = load_prompts([MISTRAL])
    te = ps.subset(ps.split == "test")
    F, _ = m.featurizer.from_texts(te.instructions)
    static = StaticCalibration.from_json(m.calibration["quantile"])
    q = calibrated(m.predict_features(F, [None] * len(te.instructions)).log_quantiles, static.offsets_for(GLOBAL))
    cov = (te.output_len[:, None] <= q).mean(0)
    assert np.all(np.abs(cov - np.array(LEVELS)) <= 0.1), cov


def test_committed_model_is_small_current_and_ranks(tmp_path: Path) -> None:
    """The shipped model loads with this code, stays under 5 MB, knows all four answer sets, and ranks held-out
    instructions better than chance on each (tau > 0.25; the measured values are in docs/predictor.md)."""
    from scipy.stats import kendalltau

    size = sum(f.stat().st_size for f in SHIPPED.iterdir())
    assert size < 5 << 20, size
    m = LengthModel.load(SHIPPED)
    assert len(m.sources) == 4 and m.levels == LEVELS
    for path in sorted(DATA.glob("alpacaeval_*.json")):
        ps = load_prompts([str(path)])
        te = ps.subset(ps.split == "test")
        F, _ = m.featurizer.from_texts(te.instructions)
        point = m.predict_features(F, [path.stem] * len(te.instructions)).point
        assert kendalltau(point, te.output_len)[0] > 0.25, path.stem
