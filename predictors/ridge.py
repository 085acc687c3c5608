"""A linear text score on hashed n-grams: ridge regression of log output length (CacheOPT C1, stacked into the
booster as one feature).

Why: the 16k hashed uni/bi/trigram columns carry most of the instruction's length signal ("write a story",
"classify the sentiment", "give me a recipe"), but ~500 training instructions are far too few for trees to use 16k
sparse columns. A ridge uses all of them with one shrinkage knob. It is fitted in its dual form
(``w = X^T (X X^T + lambda I)^-1 (y - mean)``: an ``n x n`` solve, n = training instructions), on the mean log
length of each instruction over every answer set (several models' answers average out one model's whims).

Stacking without leakage: the booster is trained on *out-of-fold* scores (each training instruction scored by a
ridge that never saw it, folds by instruction), and served with the ridge fitted on all training instructions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from predictors.features import NGrams

RIDGE_FILE = "ridge.npy"


@dataclass
class HashedRidge:
    weights: np.ndarray  # (n_hash,) float32
    intercept: float

    @classmethod
    def fit(cls, X: NGrams, target: np.ndarray, n_hash: int, lam: float = 0.3) -> HashedRidge:
        A = X.dense(n_hash).astype(np.float64)
        mu = float(np.mean(target))
        dual = np.linalg.solve(A @ A.T + lam * np.eye(A.shape[0]), np.asarray(target, np.float64) - mu)
        return cls((A.T @ dual).astype(np.float32), mu)

    def score(self, X: NGrams) -> np.ndarray:
        return X.dot(self.weights.astype(np.float64)) + self.intercept

    @staticmethod
    def out_of_fold(X: NGrams, target: np.ndarray, n_hash: int, lam: float = 0.3, folds: int = 5,
                    seed: int = 0) -> np.ndarray:  # fmt: skip
        """Each row scored by a ridge fitted on the other folds (rows are instructions, so folds are too)."""
        A = X.dense(n_hash).astype(np.float64)
        fold = np.random.default_rng(seed).integers(0, folds, A.shape[0])
        out = np.zeros(A.shape[0])
        for k in range(folds):
            tr, te = fold != k, fold == k
            if not te.any():
                continue
            mu = float(np.mean(target[tr]))
            dual = np.linalg.solve(A[tr] @ A[tr].T + lam * np.eye(int(tr.sum())), target[tr] - mu)
            out[te] = A[te] @ (A[tr].T @ dual) + mu
        return out

    def save(self, out: Path) -> None:
        np.save(out / RIDGE_FILE, np.concatenate([[self.intercept], self.weights]).astype(np.float32))

    @classmethod
    def load(cls, path: Path) -> HashedRidge:
        a = np.load(path / RIDGE_FILE)
        return cls(a[1:].astype(np.float32), float(a[0]))
