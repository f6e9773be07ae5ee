"""Population stability index (ml/drift.py): the maths on hand-made bins."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml import drift


def test_same_distribution_has_zero_psi() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(5000, 3))
    ref = drift.reference(X)
    assert np.allclose(drift.psi(ref, X), 0.0)


def test_psi_matches_the_formula_on_a_two_valued_column() -> None:
    # Training: half 0, half 1 -> one interior edge; recent: 90% at 1.
    X = np.array([[0.0]] * 50 + [[1.0]] * 50)
    ref = drift.reference(X)
    assert len(ref.edges[0]) >= 1
    recent = np.array([[0.0]] * 10 + [[1.0]] * 90)
    p, q = np.array([0.5, 0.5]), np.array([0.1, 0.9])
    expected = float(np.sum((q - p) * np.log(q / p)))
    assert drift.psi(ref, recent)[0] == pytest.approx(expected)
    assert expected == pytest.approx(0.4 * math.log(9))


def test_empty_bins_are_floored_so_psi_stays_finite_and_large() -> None:
    rng = np.random.default_rng(2)
    ref = drift.reference(rng.uniform(0, 1, size=(1000, 1)))
    far = np.full((200, 1), 10.0)  # every recent value in the top bin
    value = drift.psi(ref, far)[0]
    assert np.isfinite(value)
    assert value > 0.25  # "a real shift"


def test_shift_grows_with_distance() -> None:
    rng = np.random.default_rng(3)
    ref = drift.reference(rng.normal(size=(4000, 1)))
    small = drift.psi(ref, rng.normal(0.2, 1.0, size=(4000, 1)))[0]
    large = drift.psi(ref, rng.normal(1.0, 1.0, size=(4000, 1)))[0]
    assert 0.0 < small < 0.1 < large


def test_no_recent_rows_and_bad_shapes() -> None:
    ref = drift.reference(np.arange(20.0).reshape(10, 2))
    assert drift.psi(ref, np.zeros((0, 2))).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="columns"):
        drift.psi(ref, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="non-empty"):
        drift.reference(np.zeros((0, 2)))
