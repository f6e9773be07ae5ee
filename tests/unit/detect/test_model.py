"""The detector's model: a paced fit (node/host/fitting.py ``Pacer``) is the same model."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ml.features import N_FEATURES
from node.detect.model import PACE_ROWS, TrainedModel, no_pause, train_model


def _fit(X: np.ndarray, pause: Callable[[], None] = no_pause) -> TrainedModel:
    return train_model(
        X, 7, n_trees=100, sample_size=256, contamination=0.01, score_floor=0.6, pause=pause
    )


def _window(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.lognormal(size=(rows, N_FEATURES))
    X[:, 2] = np.round(X[:, 2], 1)  # repeated values, as real columns have
    return X


def _same(a: TrainedModel, b: TrainedModel) -> None:
    assert a.threshold == b.threshold
    assert a.rows == b.rows
    assert np.array_equal(a.baseline, b.baseline)
    probe = _window(300, 99)
    assert np.array_equal(a.score(probe), b.score(probe))
    assert [(cols, exp) for cols, _, exp in a.subspaces] == [
        (cols, exp) for cols, _, exp in b.subspaces
    ]


@pytest.mark.parametrize("rows", [60, PACE_ROWS, PACE_ROWS * 3 + 7, 5000])
def test_a_paused_fit_is_the_same_model_in_short_steps(rows: int) -> None:
    X = _window(rows, rows)
    calls = 0

    def pause() -> None:
        nonlocal calls
        calls += 1

    plain = _fit(X)
    paced = _fit(X, pause)
    _same(plain, paced)
    # A pause first, after every level of the five forests (9 at psi = 256: the root's and eight
    # below) and after every chunk of the window's six scorings, never one for a whole window.
    levels = 5 * (int(np.ceil(np.log2(min(256, rows)))) + 1)
    chunks = max(1, rows // PACE_ROWS)
    assert calls >= 1 + levels + 6 * chunks
