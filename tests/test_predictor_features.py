"""Features of the length predictor (C1): token counts, cues, hashing, text/ids agreement, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictors.features import (
    DENSE_NAMES,
    FEATURE_VERSION,
    FeatureError,
    FeatureSpec,
    FeatureVersionError,
    Featurizer,
    requested_length,
)


@pytest.fixture(scope="module")
def fz() -> Featurizer:
    return Featurizer(FeatureSpec(n_hash=64))


def cue(text: str, name: str) -> float:
    fz = Featurizer(FeatureSpec(n_hash=8))
    return float(fz.from_texts([text])[0][0, DENSE_NAMES.index(name)])


def test_token_count_is_the_mistral_tokenizer(fz: Featurizer) -> None:
    X, plen = fz.from_texts(["Hello world", "Write a short story about a dragon."])
    assert plen.tolist() == [len(fz.sp.encode("Hello world")), len(fz.sp.encode("Write a short story about a dragon."))]
    assert X[:, 0] == pytest.approx(np.log1p(plen))
    assert fz.vocab == 32000


def test_requested_length_cues() -> None:
    assert requested_length("write a 200 word essay") == pytest.approx(280.0)
    assert requested_length("explain it in 3 sentences") == pytest.approx(75.0)
    assert requested_length("give me five tips") == pytest.approx(150.0)
    assert requested_length("what is the capital of france?") == 0.0


def test_task_cues() -> None:
    assert cue("What is the capital of France?", "q_start") == 1.0
    assert cue("Write a story about a cat", "longform") == 1.0
    assert cue("Write a python function that sorts", "code") == 1.0
    assert cue("List ten ideas for a party", "list") == 1.0
    assert cue("Answer yes or no: is water wet", "brief") == 1.0
    assert cue("Solve 3 + 4 * x = 10", "math") == 1.0
    assert cue("Write a story about a cat", "code") == 0.0
    assert cue("Line one\nline two\nline three", "n_lines") == 2.0
    assert cue("Why? How?", "n_question_marks") == 2.0
    assert cue("Write a 200 word essay", "log_requested_len") == pytest.approx(np.log1p(280.0))


def test_text_and_token_id_paths_agree(fz: Featurizer) -> None:
    texts = ["Write a short story about a dragon.", "List five uses of baking soda", "Why is the sky blue?"]
    X_text, _ = fz.from_texts(texts)
    X_ids = fz.transform([[1, *ids] for ids in fz.tokenize(texts)])  # the scheduler's ids carry a BOS
    assert np.allclose(X_text, X_ids)


def test_hashed_ngrams_are_deterministic_and_sized(fz: Featurizer) -> None:
    X1 = fz.transform([[1, 2, 3, 4]])
    X2 = fz.transform([[1, 2, 3, 4], [5, 6]])
    assert X1.shape == (1, len(DENSE_NAMES) + 64)
    assert np.array_equal(X1[0], X2[0])
    assert X1[0, len(DENSE_NAMES) :].sum() > 0


def test_long_prompt_costs_a_window(fz: Featurizer) -> None:
    ids = list(np.random.default_rng(0).integers(3, 32000, size=100_000))
    X = fz.transform([ids])
    assert X[0, 0] == pytest.approx(np.log1p(100_000))


@pytest.mark.parametrize("bad", [[], [-1, 5], [5, 32000]])
def test_bad_token_ids_raise_feature_error(fz: Featurizer, bad: list[int]) -> None:
    with pytest.raises(FeatureError):
        fz.transform([bad])


def test_empty_text_raises(fz: Featurizer) -> None:
    with pytest.raises(FeatureError, match="empty prompt"):
        fz.from_texts(["  "])


def test_other_feature_version_is_refused() -> None:
    d = FeatureSpec().to_json()
    assert FeatureSpec.from_json(d).version == FEATURE_VERSION
    with pytest.raises(FeatureVersionError, match="retrain"):
        FeatureSpec.from_json({**d, "version": FEATURE_VERSION + 1})


@settings(max_examples=30, deadline=None)
@given(st.text(min_size=1, max_size=300).filter(lambda s: s.strip()))
def test_any_text_gives_finite_features(text: str) -> None:
    fz = Featurizer(FeatureSpec(n_hash=64))
    X, plen = fz.from_texts([text])
    assert np.isfinite(X).all() and plen[0] >= 1
