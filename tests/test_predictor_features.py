"""Features of the length predictor (C1): token counts, cues, language, hashed n-grams, text/ids agreement, bad
input."""

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
    F, _ = Featurizer(FeatureSpec(n_hash=8)).from_texts([text])
    return float(F.dense[0, DENSE_NAMES.index(name)])


def test_token_count_is_the_mistral_tokenizer(fz: Featurizer) -> None:
    F, plen = fz.from_texts(["Hello world", "Write a short story about a dragon."])
    assert plen.tolist() == [len(fz.sp.encode("Hello world")), len(fz.sp.encode("Write a short story about a dragon."))]
    assert F.dense[:, 0] == pytest.approx(np.log1p(plen))
    assert fz.vocab == 32000 and F.dense.shape == (2, len(DENSE_NAMES))


def test_requested_length_cues() -> None:
    assert requested_length("write a 200 word essay") == pytest.approx(280.0)
    assert requested_length("explain it in 3 sentences") == pytest.approx(75.0)
    assert requested_length("give me five tips") == pytest.approx(150.0)
    assert requested_length("suggest twenty names for a cat") == pytest.approx(80.0)
    assert requested_length("what is the capital of france?") == 0.0


def test_task_cues() -> None:
    assert cue("What is the capital of France?", "q_start") == 1.0
    assert cue("Write a story about a cat", "longform") == 1.0
    assert cue("Write a python function that sorts", "code") == 1.0
    assert cue("List ten ideas for a party", "list") == 1.0
    assert cue("Answer yes or no: is water wet", "brief") == 1.0
    assert cue("Solve 3 + 4 * x = 10", "math") == 1.0
    assert cue("Return the answer as a json object", "format") == 1.0
    assert cue("Suggest a name for my bakery", "short_form") == 1.0
    assert cue("Give a detailed plan", "detail") == 1.0
    assert cue("Summarize the following text", "given") == 1.0
    assert cue("Write a story about a cat", "code") == 0.0
    assert cue("Line one\nline two\nline three", "n_lines") == 2.0
    assert cue("Why? How?", "n_question_marks") == 2.0
    assert cue("Write a 200 word essay", "log_requested_len") == pytest.approx(np.log1p(280.0))


def test_cues_at_the_start_are_counted_apart() -> None:
    assert cue("Write a poem. " + "The weather is nice today. " * 5, "head_longform") == 1.0
    assert cue("The weather is nice today. " * 5 + "Write a poem.", "head_longform") == 0.0
    assert cue("The weather is nice today. " * 5 + "Write a poem.", "longform") == 1.0


def test_input_after_the_last_newline_and_language(fz: Featurizer) -> None:
    ask = "Rewrite this paragraph:\n\n"
    F, _ = fz.from_texts([ask + "short", ask + "a much longer paragraph with many more words in it " * 4])
    tail = DENSE_NAMES.index("log_tail_tokens")
    assert F.dense[1, tail] > F.dense[0, tail] > 0
    assert cue("Écris un poème sur la mer, s'il te plaît", "non_ascii_share") > 0.0
    assert cue("日本語で答えてください", "non_ascii_share") > 0.5
    assert cue("Write a poem about the sea", "non_ascii_share") == 0.0


def test_text_and_token_id_paths_agree(fz: Featurizer) -> None:
    texts = ["Write a short story about a dragon.", "List five uses of baking soda", "Why is the sky blue?"]
    F_text, _ = fz.from_texts(texts)
    F_ids = fz.transform([[1, *ids] for ids in fz.tokenize(texts)])  # the scheduler's ids carry a BOS
    assert np.allclose(F_text.dense, F_ids.dense)
    assert np.allclose(F_text.ngrams.dense(64), F_ids.ngrams.dense(64))


def test_hashed_ngrams_are_deterministic_normalised_and_row_independent(fz: Featurizer) -> None:
    one = fz.transform([[1, 2, 3, 4]]).ngrams.dense(64)
    two = fz.transform([[1, 2, 3, 4], [5, 6]]).ngrams.dense(64)
    assert np.array_equal(one[0], two[0])
    assert np.linalg.norm(two, axis=1) == pytest.approx([1.0, 1.0])
    w = np.random.default_rng(0).normal(size=64)
    assert fz.transform([[1, 2, 3, 4], [5, 6]]).ngrams.dot(w) == pytest.approx(two @ w)


def test_features_take_selects_rows_in_order(fz: Featurizer) -> None:
    F = fz.transform([[5, 6, 7], [8, 9], [10, 11, 12, 13]])
    sub = F.take(np.array([2, 0, 2]))
    assert np.array_equal(sub.dense, F.dense[[2, 0, 2]])
    assert np.array_equal(sub.ngrams.dense(64), F.ngrams.dense(64)[[2, 0, 2]])


def test_long_prompt_costs_a_window(fz: Featurizer) -> None:
    ids = list(np.random.default_rng(0).integers(3, 32000, size=100_000))
    F = fz.transform([ids])
    assert F.dense[0, 0] == pytest.approx(np.log1p(100_000))


@pytest.mark.parametrize("bad", [[], [-1, 5], [5, 32000], [3.5, 4], ["a"], [[1, 2]], [2**70]])
def test_bad_token_ids_raise_feature_error(fz: Featurizer, bad: list) -> None:
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
    F, plen = fz.from_texts([text])
    assert np.isfinite(F.dense).all() and np.isfinite(F.ngrams.val).all() and plen[0] >= 1
