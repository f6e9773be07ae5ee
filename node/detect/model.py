"""The detector's model: isolation forests fitted on the training window, calibrated, scored.

Pure numpy on float rows (no transactions, no history): ``train_model`` runs in an executor, so
it touches nothing shared. The model is a value apart from a cache of path lengths that only the
event loop's scoring fills.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ml.arrays import FloatArray, IntArray
from ml.calibration import Ranges, extrapolated_scores, tail_threshold
from ml.features import INDEX
from ml.iforest import IsolationForest

BASELINE_ROWS = 256
# Subspaces with a forest of their own: sizes, and the shape of a burst to fresh addresses.
SUBSPACES: tuple[tuple[int, ...], ...] = tuple(
    tuple(INDEX[name] for name in names)
    for names in (
        ("log_amount",),
        ("amount_vs_sender",),
        ("rate_vs_network", "new_payees_vs_network", "receiver_novelty"),
        ("new_payees_vs_network",),
    )
)
SUBSPACE_TREES = 50
# Columns where a value above everything in the window is suspicious in itself, so it scores
# beyond the window's edge (ml/calibration.py): how much moves, relative to anything seen and to
# the sender's habit; a fat-fingered fee; and paying more distinct addresses than any sender did
# (a burst, a drain spread over many addresses). Not the rate or receiver novelty: a busier day
# or a new payee legitimately exceeds a window, and holding every tx of a load increase would
# keep the window from ever learning it. Not the gap, the nonce gap (0 on every committed row)
# or the anchor flag either.
EXTRAPOLATED: tuple[int, ...] = tuple(
    INDEX[name]
    for name in (
        "log_amount",
        "amount_vs_sender",
        "fee_vs_typical",
        "fanout_recent",
        "new_payees_vs_network",
    )
)
# Per column, how far above the window's largest value extrapolation starts (log2 units). Absolute
# amounts and fees grow with the economy: 10x. A sender's amount relative to its own median
# already has its own habit divided out, so 2x beyond the largest ratio seen is enough (an
# inflating economy moves a median by far less than 2x in a window).
AMOUNT_MARGINS = {
    "log_amount": math.log2(10.0),
    "amount_vs_sender": 1.0,
    "fee_vs_typical": math.log2(10.0),
}
# Distinct receivers in 10 min: a sender one address above the window's busiest is not yet
# a burst (the new-payee column, without a margin, sees those from their first few).
FANOUT_MARGIN = 1.0
AMOUNT_COLUMNS = tuple(AMOUNT_MARGINS)
# Columns where only "more" is suspicious: a payment or fee far below the usual moves nothing
# (the ledger's rules bound fees). They are floored at the window's median, in the window and in
# scored rows alike, so that 1-unit benchmark transfers after a window of payments in the
# thousands are not isolated at the low edge (issue 13: bench after idle).
ONE_SIDED: tuple[int, ...] = tuple(INDEX[name] for name in AMOUNT_COLUMNS)
AMOUNT_MARGIN = math.log2(10.0)
MEMO_ROWS_MAX = 4096  # distinct subspace rows whose path lengths a model remembers
# A fit's scoring of the window goes in chunks of about this many rows when it is paced (a few
# milliseconds each at 100 trees), with a ``pause`` between them: see ``train_model``.
PACE_ROWS = 256


@dataclass(frozen=True, slots=True)
class TrainedModel:
    """A fitted forest, forests on key subspaces, and their calibration on the training rows.

    Each forest's score is mapped by ``s ** exponent`` (monotone, keeps (0, 1]) so that its own
    training quantile lands on the full forest's; the model score is the highest mapped score.
    Values above the window's range in ``EXTRAPOLATED`` columns isolate early in every forest
    that has the column (``ml/calibration.py``), so they score above the window's edge.
    """

    forest: IsolationForest  # on every feature; also the source of reasons
    threshold: float  # quarantine when the score is strictly above
    baseline: FloatArray  # mean explain() of training rows: the "ordinary" contribution
    rows: int
    subspaces: tuple[tuple[tuple[int, ...], IsolationForest, float], ...] = ()
    ranges: Ranges | None = None  # None: no extrapolation (plain forest scores)
    floors: FloatArray | None = None  # per column, the least value the forests see (ONE_SIDED)
    # Path lengths of distinct rows already seen, per multi-column subspace: a cache (scoring
    # runs on the event loop only), so the model is still a value.
    memo: dict[int, dict[tuple[float, ...], float]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def score(self, X: FloatArray) -> FloatArray:
        return self.score_detail(X)[0]

    def prepare(self, X: FloatArray) -> FloatArray:
        """Feature rows as the forests see them: ONE_SIDED columns floored."""
        if self.floors is None:
            return X
        out: FloatArray = np.maximum(X, self.floors)
        return out

    def contributions(self, X: FloatArray) -> FloatArray:
        """Per row and feature, bits of isolation above the ordinary (``baseline``)."""
        out: FloatArray = self.forest.explain(self.prepare(X)) - self.baseline
        return out

    def score_detail(self, X: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Scores, and per row and column the chance an out-of-range value isolates at once."""
        X = self.prepare(X)
        if self.ranges is None:
            odds = np.zeros(X.shape)
            s = self.forest.score(X)
        else:
            odds = self.ranges.isolation_odds(X)
            s = extrapolated_scores(self.forest, X, odds)
        for k, (columns, forest, exponent) in enumerate(self.subspaces):
            cols = list(columns)
            part, part_odds = X[:, cols], odds[:, cols]
            if self.ranges is None:
                sub = forest.score(part)
            elif len(cols) == 1:  # tabulated by the forest itself: a binary search per row
                sub = extrapolated_scores(forest, part, part_odds)
            else:
                # Rate, fan-out and novelty take few distinct values: each distinct row's path
                # length is computed once and remembered.
                part, first, inverse = _distinct_rows(part)
                lengths = self._remembered_lengths(k, forest, part)
                sub = extrapolated_scores(forest, part, part_odds[first], lengths=lengths)[inverse]
            s = np.maximum(s, sub**exponent)
        return s, odds

    def _remembered_lengths(self, k: int, forest: IsolationForest, rows: FloatArray) -> FloatArray:
        memo = self.memo.setdefault(k, {})
        keys = [tuple(r) for r in rows.tolist()]
        missing = [i for i, key in enumerate(keys) if key not in memo]
        if missing:
            if len(memo) + len(missing) > MEMO_ROWS_MAX:
                memo.clear()  # and every row of this batch is computed again
                missing = list(range(len(keys)))
            for i, h in zip(missing, forest.path_lengths(rows[missing]).tolist(), strict=True):
                memo[keys[i]] = h
        return np.array([memo[key] for key in keys])


def _distinct_rows(rows: FloatArray) -> tuple[FloatArray, IntArray, IntArray]:
    """The distinct rows, the index of one occurrence of each, and each row's distinct index.

    Like ``np.unique(rows, axis=0, ...)`` at a fraction of its cost on small batches.
    """
    order = np.lexsort(rows.T[::-1])
    ordered = rows[order]
    new = np.empty(len(rows), dtype=np.bool_)
    new[:1] = True
    np.any(ordered[1:] != ordered[:-1], axis=1, out=new[1:])
    inverse = np.empty(len(rows), dtype=np.intp)
    inverse[order] = np.cumsum(new) - 1
    return ordered[new], order[new], inverse


def no_pause() -> None:
    return None


def train_model(
    X: FloatArray,
    seed: int,
    *,
    n_trees: int,
    sample_size: int,
    contamination: float,
    score_floor: float,
    pause: Callable[[], None] = no_pause,
) -> TrainedModel:
    """Fit and calibrate a model on the window ``X``. Pure and thread-safe.

    ``pause`` is called first and then after every step of a few milliseconds of CPU (a level
    of a forest, a chunk of the window's rows scored): the fitting process yields the CPU there
    (node/host/fitting.py ``Pacer``). The model is the same with any ``pause``: rows are scored
    independently, and a chunk's rows add up their trees in the same order as the whole's."""
    pause()
    forest = IsolationForest(n_trees, sample_size, seed).fit(
        np.maximum(X, floors_of(X)), pause=pause
    )
    return calibrate(
        forest,
        X,
        seed,
        sample_size=sample_size,
        contamination=contamination,
        score_floor=score_floor,
        pause=pause,
    )


def _by_chunks(
    score: Callable[[FloatArray], FloatArray], X: FloatArray, pause: Callable[[], None]
) -> FloatArray:
    """``score(X)`` computed over chunks of about PACE_ROWS rows, with ``pause()`` after each
    (one chunk, and no extra copy, when nobody pauses)."""
    if pause is no_pause or len(X) <= PACE_ROWS:
        out = score(X)
        pause()
        return out
    parts: list[FloatArray] = []
    for chunk in np.array_split(X, len(X) // PACE_ROWS):
        parts.append(score(chunk))
        pause()
    return np.concatenate(parts)


def floors_of(X: FloatArray) -> FloatArray:
    """Per column the floor of ``TrainedModel.prepare``: the median for ONE_SIDED, else -inf."""
    floors = np.full(X.shape[1], -np.inf)
    cols = list(ONE_SIDED)
    floors[cols] = np.median(X[:, cols], axis=0)
    return floors


def calibrate(
    forest: IsolationForest,
    X: FloatArray,
    seed: int,
    *,
    sample_size: int,
    contamination: float,
    score_floor: float,
    pause: Callable[[], None] = no_pause,
) -> TrainedModel:
    """A model around a forest fitted on ``X``: subspace forests, ranges, baseline, threshold.

    ``X`` is the window as observed; ONE_SIDED columns are floored here (the forest should have
    been fitted on the floored window, as ``train_model`` does)."""
    floors = floors_of(X)
    X = np.maximum(X, floors)
    # Masking: with ~8 informative columns a tx extreme in just one of them (a 1000x amount)
    # is isolated only in the trees that happen to split on that column early, so its score
    # sits among ordinary rows' tails. A small forest per key subspace catches it. Each
    # forest is aligned on the full forest's scale at an equal share of the contamination.
    alpha = contamination
    level = 1.0 - alpha / (1 + len(SUBSPACES))
    reference = float(np.quantile(_by_chunks(forest.score, X, pause), level, method="higher"))
    subspaces = []
    for i, cols in enumerate(SUBSPACES):
        sub = IsolationForest(SUBSPACE_TREES, sample_size, seed + 1 + i)
        part = X[:, list(cols)]
        sub.fit(part, pause=pause)
        own = float(np.quantile(_by_chunks(sub.score, part, pause), level, method="higher"))
        exponent = math.log(reference) / math.log(own) if 0.0 < own < 1.0 else 1.0
        subspaces.append((cols, sub, exponent))
    upper = np.zeros(X.shape[1], dtype=np.bool_)
    upper[list(EXTRAPOLATED)] = True
    # Amounts and fees extrapolate only past AMOUNT_MARGINS above the window's largest (log2
    # units): a payment somewhat larger than anything seen is growth, not an outlier, and a
    # small or degenerate window (all amounts 1 after a benchmark) says little about scale.
    # Fan-out has none: a burst to new addresses must stand out from its first few transfers.
    margin = np.zeros(X.shape[1])
    for name, slack in AMOUNT_MARGINS.items():
        margin[INDEX[name]] = slack
    margin[INDEX["fanout_recent"]] = FANOUT_MARGIN
    ranges = Ranges.of(X, upper, margin)
    sample = X[np.linspace(0, len(X) - 1, min(len(X), BASELINE_ROWS)).astype(np.intp)]
    baseline = forest.explain(sample).mean(axis=0)
    model = TrainedModel(forest, 1.0, baseline, len(X), tuple(subspaces), ranges, floors)
    # Training rows are inside the range by definition: their scores are the plain forests'.
    # The threshold is the combined score's tail quantile, extrapolated where the window is
    # too small for it (ml/calibration.py); contamination 0 holds nothing.
    if alpha > 0.0:
        cut = tail_threshold(_by_chunks(model.score, X, pause), alpha, forest.c_psi)
        model = replace(model, threshold=max(cut, score_floor))
    return model
