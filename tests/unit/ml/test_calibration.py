"""ml/calibration.py: scores beyond the training range, and the tail threshold."""

from __future__ import annotations

import numpy as np
import pytest

from ml.calibration import (
    SPREAD_MIN,
    Ranges,
    extrapolated_path_lengths,
    extrapolated_scores,
    tail_threshold,
)
from ml.iforest import IsolationForest, average_path_length


def test_isolation_odds_inside_above_and_floor() -> None:
    X = np.array([[0.0, 5.0, 1.0], [4.0, 5.0, 3.0]])
    r = Ranges.of(X, [True, True, False])
    odds = r.isolation_odds(np.array([[2.0, 5.0, 9.0], [8.0, 5.0, 0.0], [4.0, 7.0, 0.0]]))
    assert odds[0].tolist() == [0.0, 0.0, 0.0]  # inside; third column does not extrapolate
    assert odds[1, 0] == pytest.approx(0.5)  # 4 beyond a range of 4: r = 1
    assert odds[2, 1] == pytest.approx((2.0 / SPREAD_MIN) / (1.0 + 2.0 / SPREAD_MIN))  # constant
    assert r.rows == 2
    with pytest.raises(ValueError, match="one flag per column"):
        Ranges.of(X, [True])


def test_extrapolated_path_lengths_are_monotone_and_bounded() -> None:
    h = np.full(5, 6.0)
    q = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    out = extrapolated_path_lengths(h, q)
    assert out[0] == 6.0
    assert out[-1] == pytest.approx(1.0)
    assert np.all(np.diff(out) < 0)
    assert np.all(out <= h)


def test_rows_without_odds_keep_their_path_length_exactly() -> None:
    # The all-inside batch (ordinary traffic) skips the formula: the same values, in a new array.
    h = np.array([6.25, 3.0, 11.5])
    for q in (np.zeros(3), np.array([0.0, 0.2, 0.0])):
        out = extrapolated_path_lengths(h, q)
        assert out is not h
        assert out[0] == 6.25
        assert out[2] == 11.5
        assert (out[1] == 3.0) == (q[1] == 0.0)
    forest = IsolationForest(10, 64, seed=1).fit(np.arange(200.0).reshape(100, 2))
    assert forest.c_psi == float(average_path_length(64))
    assert IsolationForest(10, 64, seed=1).c_psi == 0.0


def test_extrapolated_scores_match_inside_and_grow_outside() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 2))
    forest = IsolationForest(50, 128, seed=3).fit(X)
    r = Ranges.of(X, [True, False])
    inside = X[:20]
    assert np.array_equal(
        extrapolated_scores(forest, inside, r.isolation_odds(inside)), forest.score(inside)
    )
    far = np.array([[x, 0.0] for x in (4.0, 8.0, 16.0, 1e6)])
    s = extrapolated_scores(forest, far, r.isolation_odds(far))
    assert np.all(np.diff(s) > 0)
    assert s[0] >= forest.score(far[:1])[0]
    assert np.all((s > 0) & (s <= 1))
    with pytest.raises(ValueError, match="shape"):
        extrapolated_scores(forest, far, np.zeros((1, 2)))


def test_tail_threshold_ties_small_and_large_windows() -> None:
    c = float(average_path_length(256))
    # Every score tied: the threshold is that score, so a strict ">" holds none of them.
    assert tail_threshold(np.full(5000, 0.6), 0.002, c) == pytest.approx(0.6)
    # 100 rows cannot show a 1-in-500 score: extrapolated beyond the sample's max.
    rng = np.random.default_rng(2)
    small = rng.uniform(0.4, 0.6, size=100)
    assert tail_threshold(small, 0.002, c) > small.max()
    # Ties at the top of a small window still leave a margin above them.
    assert tail_threshold(np.full(100, 0.6), 0.002, c) > 0.6
    # Large enough (n * contamination >= 10): the empirical quantile.
    big = rng.uniform(0.4, 0.6, size=20_000)
    t = tail_threshold(big, 0.002, c)
    assert np.mean(big > t) == pytest.approx(0.002, abs=0.0006)
    with pytest.raises(ValueError, match="contamination"):
        tail_threshold(big, 0.0, c)
    with pytest.raises(ValueError, match="scores"):
        tail_threshold(np.array([]), 0.1, c)
