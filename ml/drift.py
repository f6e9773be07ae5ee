"""Population stability index: how far recent feature values moved from the training window.

Per column, the training values are cut into up to ``BINS`` bins at their quantiles (fewer when
the column has few distinct values, e.g. a 0/1 flag); the PSI of recent values is
``sum((q - p) * ln(q / p))`` over the bins, with ``p`` the training share and ``q`` the recent
share (both floored at ``SHARE_MIN`` so that an empty bin counts but stays finite). Common reading:
below 0.1 stable, 0.1-0.25 moderate, above 0.25 a real shift.

Pure numpy, deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ml.arrays import FloatArray

BINS = 10
SHARE_MIN = 1e-4


@dataclass(frozen=True, slots=True)
class Reference:
    """Per column: interior bin edges and the training share of each bin."""

    edges: tuple[FloatArray, ...]
    shares: tuple[FloatArray, ...]


def _shares(column: FloatArray, edges: FloatArray) -> FloatArray:
    counts = np.bincount(np.searchsorted(edges, column, side="right"), minlength=edges.size + 1)
    shares: FloatArray = np.maximum(counts / max(1, column.size), SHARE_MIN)
    return shares


def reference(X: npt.ArrayLike) -> Reference:
    """Bins and shares of the training window ``X`` (rows x columns)."""
    data = np.asarray(X, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] == 0:
        raise ValueError("X must be a non-empty 2-D array")
    edges = []
    shares = []
    for j in range(data.shape[1]):
        col = data[:, j]
        cuts = np.unique(np.quantile(col, np.linspace(0, 1, BINS + 1)[1:-1]))
        edges.append(cuts)
        shares.append(_shares(col, cuts))
    return Reference(tuple(edges), tuple(shares))


def psi(ref: Reference, recent: npt.ArrayLike) -> FloatArray:
    """PSI per column of ``recent`` (rows x columns) against the training reference."""
    data = np.asarray(recent, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != len(ref.edges):
        raise ValueError(f"recent must have {len(ref.edges)} columns")
    out = np.zeros(data.shape[1])
    if data.shape[0] == 0:
        return out
    for j, (edges, p) in enumerate(zip(ref.edges, ref.shares, strict=True)):
        q = _shares(data[:, j], edges)
        out[j] = float(np.sum((q - p) * np.log(q / p)))
    return out
