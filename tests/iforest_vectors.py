"""Pins IsolationForest scores and explanations in tests/vectors/iforest_scores.json.

The file was written by the level-per-array implementation before the scoring rewrite of issue
18; tests/test_iforest.py checks every later implementation against it, so a change of layout or
traversal cannot quietly change a score. Regenerate only when the model itself changes on purpose:

    .venv/bin/python -m tests.iforest_vectors
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ml.iforest import IsolationForest

PATH = Path(__file__).resolve().parent / "vectors" / "iforest_scores.json"
TIE_ROWS = 24  # probes that sit exactly on a split threshold of the forest
EXPLAIN_ROWS = 8
BULK_ROWS = 20_000  # scored in one call; every BULK_STRIDE-th path length is pinned, and the mean
BULK_STRIDE = 500


def blob(rng: np.random.Generator) -> np.ndarray:
    inliers = rng.normal(size=(1000, 5))
    outliers = rng.normal(size=(10, 5)) * 0.5 + rng.choice([-6.0, 6.0], size=(10, 5))
    return np.vstack([inliers, outliers])


def one_column(rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([rng.lognormal(3.0, 1.0, 2000), [0.0, 0.0, 5.0]])[:, None]


def two_columns(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(5000, 2)) * [1.0, 1e6]


def ties(rng: np.random.Generator) -> np.ndarray:
    """Rounded values, a constant and a duplicated column: many equal values and constant nodes."""
    x = np.round(rng.normal(size=(800, 6)) * 3)
    return np.hstack([x, np.ones((800, 1)), x[:, :1]])


def small_n(rng: np.random.Generator) -> np.ndarray:
    return rng.standard_t(2, size=(100, 30))


def wide_sparse(rng: np.random.Generator) -> np.ndarray:
    x = np.zeros((400, 300))
    x[:, 7] = rng.normal(size=400)
    x[:, 150:160] = rng.exponential(size=(400, 10))
    x[:3, 7] = 40.0
    return x


def very_wide(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(1000, 1000)).astype(np.float32).astype(np.float64)


def identical(rng: np.random.Generator) -> np.ndarray:
    return np.ones((10, 3))


# name: (training data, n_trees, sample_size, seed)
CASES: dict[str, tuple[Callable[[np.random.Generator], np.ndarray], int, int, int]] = {
    "blob_5": (blob, 100, 256, 3),
    "one_column": (one_column, 50, 256, 4),
    "two_columns": (two_columns, 100, 256, 11),
    "ties_8": (ties, 60, 64, 5),
    "small_n_30": (small_n, 100, 256, 6),
    "wide_sparse_300": (wide_sparse, 20, 256, 2),
    "very_wide_1000": (very_wide, 10, 256, 9),
    "identical": (identical, 5, 256, 0),
    "psi_2": (blob, 7, 2, 1),
    "psi_3": (blob, 7, 3, 1),
}


def training_data(name: str) -> np.ndarray:
    make = CASES[name][0]
    return make(np.random.default_rng(sorted(CASES).index(name)))


def forest(name: str) -> IsolationForest:
    _, trees, sample_size, seed = CASES[name]
    return IsolationForest(trees, sample_size, seed).fit(training_data(name))


def probes(X: np.ndarray, ties: list[list[Any]]) -> np.ndarray:
    """Training rows, rows far outside the training range, and rows on split thresholds."""
    rng = np.random.default_rng(12345)
    n, d = X.shape
    take = X[rng.choice(n, size=min(n, 100), replace=False)]
    spread = X.std(axis=0) + 1.0
    far = X.mean(axis=0) + rng.normal(size=(40, d)) * spread * rng.choice(
        [1.0, 4.0, 100.0], (40, 1)
    )
    on_cut = X[[row for row, _, _ in ties]].copy()
    for i, (_, feature, value) in enumerate(ties):
        on_cut[i, feature] = float.fromhex(value)
    return np.vstack([take, far, on_cut])


def bulk_probe(d: int) -> np.ndarray:
    """Many rows, so that scoring runs over several chunks."""
    return np.random.default_rng(4242).normal(size=(BULK_ROWS, d)) * 2.0


def tie_probes(model: IsolationForest, X: np.ndarray) -> list[list[Any]]:
    """(training row, feature, threshold) triples: a row moved onto one of the forest's cuts."""
    rng = np.random.default_rng(777)
    cuts = [
        (int(f), float(t))
        for feats, thr in zip(model._feature, model._threshold, strict=True)
        for f, t in zip(feats.tolist(), thr.tolist(), strict=True)
        if np.isfinite(t)
    ]
    if not cuts:
        return []
    picks = rng.choice(len(cuts), size=min(TIE_ROWS, len(cuts)), replace=False)
    rows = rng.choice(X.shape[0], size=picks.size)
    return [[int(r), cuts[p][0], cuts[p][1].hex()] for r, p in zip(rows, picks, strict=True)]


def build() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in CASES:
        X = training_data(name)
        model = forest(name)
        on_cut = tie_probes(model, X)
        P = probes(X, on_cut)
        bulk = model.path_lengths(bulk_probe(X.shape[1]))
        flat = model.explain(P[:EXPLAIN_ROWS]).ravel()
        out[name] = {
            "ties": on_cut,
            "path_lengths": [v.hex() for v in model.path_lengths(P).tolist()],
            "scores": [v.hex() for v in model.score(P).tolist()],
            "bulk_path_lengths": [v.hex() for v in bulk[::BULK_STRIDE].tolist()],
            "bulk_mean": float(bulk.mean()).hex(),
            "explain_nonzero": [
                [int(i), float(v).hex()]
                for i, v in zip(np.flatnonzero(flat), flat[flat != 0], strict=True)
            ],
        }
    return out


if __name__ == "__main__":
    cases = build()
    lines = [f" {json.dumps(name)}: {json.dumps(case)}" for name, case in cases.items()]
    PATH.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {PATH}")
