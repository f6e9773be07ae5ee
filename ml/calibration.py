"""Scoring beyond the training range, and a threshold that holds on small or tied windows.

Two gaps of a plain isolation forest used as an admission filter:

1. **Out of range scores like the edge.** A split is drawn between a node's min and max, so a
   value beyond the training max always follows the max and gets its path length: 10^11 scores
   the same as the largest amount in the window. Were the value in the sample, a split on its
   column at a node spanning ``[a, hi]`` would fall between ``hi`` and ``x`` (isolating it at
   once) with probability ``(x - hi) / (x - a) >= (x - hi) / (x - lo)``. ``isolation_odds``
   gives that per column (``r / (1 + r)`` with ``r`` the distance beyond ``hi`` in units of the
   training range), ``extrapolated_scores`` folds it into the path length as a per-level chance
   of isolation. The result is monotone in how far outside the value is, continuous at the edge,
   and equal to the forest's own score inside the range.
2. **The quantile is the max, and ties sit on it.** With ``n * contamination < 1`` the requested
   quantile lies beyond the sample, and when traffic has few distinct values most scores equal
   it. ``tail_threshold`` extrapolates the quantile with an exponential tail fitted to the most
   anomalous rows (peaks over threshold, as in Siffer et al., KDD 2017), with a floor on the tail
   scale so that tied scores still leave a margin; callers compare with a strict ``>``.

Pure numpy, deterministic: the same window gives the same ranges and threshold on every node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ml.arrays import BoolArray, FloatArray
from ml.iforest import IsolationForest, check_matrix

# Features are log2 ratios and small counts: a column whose training range is narrower than one
# doubling is treated as one doubling wide, so "2 where the window only had 1" is not infinitely
# far.
SPREAD_MIN = 1.0
TAIL_ROWS_MIN = 10  # rows the exponential tail is fitted on, at least
# Floor of the tail scale, in levels of the full forest: with tied scores (scale 0) a tx must
# still isolate this much faster per unit of extrapolation than the tail's edge to be held.
TAIL_SCALE_MIN = 0.25


@dataclass(frozen=True, slots=True)
class Ranges:
    """Per-column training range, and which columns extrapolate above it (``upper``)."""

    low: FloatArray
    high: FloatArray
    upper: BoolArray
    rows: int
    margin: FloatArray

    @classmethod
    def of(
        cls, X: npt.ArrayLike, upper: npt.ArrayLike, margin: npt.ArrayLike | None = None
    ) -> Ranges:
        """Ranges of ``X``; ``margin`` (per column, default 0) is how far above the maximum a
        value may go, in column units, before extrapolation starts."""
        data = check_matrix(X)
        mask = np.asarray(upper, dtype=np.bool_)
        if mask.shape != (data.shape[1],):
            raise ValueError(f"upper must have one flag per column ({data.shape[1]})")
        slack = np.zeros(data.shape[1]) if margin is None else np.asarray(margin, dtype=np.float64)
        if slack.shape != (data.shape[1],) or not np.all(np.isfinite(slack)) or np.any(slack < 0):
            raise ValueError(f"margin must be one finite value >= 0 per column ({data.shape[1]})")
        return cls(data.min(axis=0), data.max(axis=0), mask, data.shape[0], slack)

    def isolation_odds(self, X: npt.ArrayLike) -> FloatArray:
        """Per row and column: the chance a split on that column isolates the row at once.

        0 inside the range and for columns that do not extrapolate; ``r / (1 + r)`` above it,
        with ``r = (x - high - margin) / max(high - low, SPREAD_MIN)``.
        """
        data = check_matrix(X, self.low.size)
        beyond = np.maximum(data - self.high - self.margin, 0.0) * self.upper
        spread = np.maximum(self.high - self.low, SPREAD_MIN)
        ratio = beyond / spread
        odds: FloatArray = ratio / (1.0 + ratio)
        return odds


def extrapolated_path_lengths(h: FloatArray, level_odds: FloatArray) -> FloatArray:
    """E[h'] when every level of the path isolates the row with probability ``level_odds``.

    Deeper nodes span less of the column, so their odds only grow: a constant per-level chance
    ``q`` is a lower bound on isolation, giving ``sum_{i < h} (1 - q)^i = (1 - (1 - q)^h) / q``
    (``h`` where ``q`` is 0; 1 where ``q`` is 1). Monotone decreasing in ``q``, equal to ``h``
    at ``q = 0``.
    """
    q = np.clip(level_odds, 0.0, 1.0)
    if not q.any():  # no row has an out-of-range column (ordinary traffic): h, as below
        return h.copy()
    safe = np.where(q > 0.0, q, 1.0)
    shortened = (1.0 - np.power(1.0 - q, h)) / safe
    out: FloatArray = np.where(q > 0.0, np.minimum(shortened, h), h)
    return out


def extrapolated_scores(
    forest: IsolationForest,
    X: npt.ArrayLike,
    odds: FloatArray,
    *,
    lengths: FloatArray | None = None,
) -> FloatArray:
    """The forest's score with out-of-range columns isolating early.

    ``odds`` is ``Ranges.isolation_odds`` over the forest's own columns. Each level draws a
    column uniformly, so the per-level chance is the mean of the columns' odds. ``lengths``,
    if given, is ``forest.path_lengths(X)`` already computed (e.g. remembered by the caller).
    """
    data = check_matrix(X, forest.n_features)
    if odds.shape != data.shape:
        raise ValueError("odds must have the shape of X")
    if lengths is None:
        h = forest.path_lengths(data)
    elif lengths.shape != (data.shape[0],):
        raise ValueError("lengths must have one path length per row of X")
    else:
        h = lengths
    c = forest.c_psi
    if c <= 0.0:
        return forest.score(data)
    # sum / count is what ``mean`` computes, without its per-call set-up (bit for bit the same).
    level_odds = odds.sum(axis=1) / odds.shape[1]
    scores: FloatArray = np.exp2(-extrapolated_path_lengths(h, level_odds) / c)
    return scores


def tail_threshold(scores: npt.ArrayLike, contamination: float, c_psi: float) -> float:
    """The score that ordinary rows exceed with probability ``contamination``; compare with ``>``.

    Works in depth ``d = -c_psi * log2(s)`` (path-length levels; low = anomalous). With
    ``k = max(TAIL_ROWS_MIN, ceil(n * contamination))`` rows in the tail, ``u`` the next depth
    and ``beta`` the mean excess of the tail over ``u`` (at least ``TAIL_SCALE_MIN``), the
    threshold depth is ``u - beta * ln(k / (n * contamination))``: the empirical quantile when the
    window is large enough, an exponential-tail extrapolation beyond the sample when it is not.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0.0):
        raise ValueError("scores must be a non-empty array of positive, finite numbers")
    if not 0.0 < contamination < 1.0:
        raise ValueError("contamination must be in (0, 1)")
    if c_psi <= 0.0:
        return float(s.max())  # psi = 1: every score is 0.5 and nothing stands out
    depth = np.sort(-c_psi * np.log2(np.minimum(s, 1.0)))
    n = depth.size
    target = n * contamination
    k = min(n - 1, max(TAIL_ROWS_MIN, math.ceil(target)))
    if k < 1:
        return float(s.max())
    u = float(depth[k])
    beta = max(float(np.mean(u - depth[:k])), TAIL_SCALE_MIN)
    stretch = math.log(k / target) if k > target else 0.0
    cut = u - beta * stretch
    return float(min(1.0, 2.0 ** (-max(cut, 0.0) / c_psi)))
