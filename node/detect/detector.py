"""The online transaction anomaly detector: history from committed blocks, training, scoring.

An admission policy, never a validity rule: it only decides whether a tx waits in the quarantine.
Training rows come from committed blocks alone (history as of each tx's position in the chain,
block timestamps), so every honest node holds the same window at a height and, with the seed
derived from that height, trains the same model. Scoring also sees the node's recently admitted
txs (a short-lived overlay), so a burst is visible before it commits.

This module is the facade: the history and raw rows live in node/detect/history.py, the forests,
calibration and model scores in node/detect/model.py; their public names are re-exported here.

The runtime drives it::

    detector.observe_block(block, receipts_ok)           # after each commit, on the loop
    if detector.needs_training(height):
        X, seed = detector.train_snapshot()
        model = await loop.run_in_executor(None, detector.fit, X, seed)
        detector.install_model(model, height)
    verdicts = detector.score_batch(txs, now_ms)          # micro-batch on admission
"""

from __future__ import annotations

import functools
import hashlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from common import codec
from ml import drift
from ml.arrays import FloatArray, IntArray
from ml.features import FEATURE_NAMES, N_FEATURES, ChainHistory, feature_rows, reasons
from ml.iforest import IsolationForest
from node.detect.history import (
    CHAIN_RECENT_MAX,
    PENDING_SENDERS_MAX,
    SENDER_AMOUNTS_MAX,
    SENDER_EVENTS_MAX,
    SENDER_RECEIVERS_MAX,
    BlockLike,
    HeaderLike,
    RawRow,
    TxContext,
    TxHistory,
    TxLike,
)
from node.detect.model import (
    AMOUNT_COLUMNS,
    AMOUNT_MARGIN,
    BASELINE_ROWS,
    EXTRAPOLATED,
    MEMO_ROWS_MAX,
    SUBSPACE_TREES,
    SUBSPACES,
    TrainedModel,
    calibrate,
    no_pause,
    train_model,
)

__all__ = [
    "AMOUNT_COLUMNS",
    "AMOUNT_MARGIN",
    "BASELINE_ROWS",
    "CHAIN_RECENT_MAX",
    "EXTRAPOLATED",
    "MEMO_ROWS_MAX",
    "PENDING_SENDERS_MAX",
    "RECENT_SCORES_MAX",
    "SEED_DOMAIN",
    "SENDER_AMOUNTS_MAX",
    "SENDER_EVENTS_MAX",
    "SENDER_RECEIVERS_MAX",
    "SUBSPACES",
    "SUBSPACE_TREES",
    "BlockLike",
    "Detector",
    "DetectorConfig",
    "FloatArray",
    "HeaderLike",
    "IntArray",
    "RawRow",
    "TrainedModel",
    "TxLike",
    "Verdict",
    "WindowSpec",
    "model_id_of",
    "training_seed",
]

SEED_DOMAIN = b"vigil/detector/seed/v1"
MODEL_ID_DOMAIN = "vigil/detector/model/v2"  # v2: new-payee feature, gaps floored at blocks
RECENT_SCORES_MAX = 2048
# Deferred (peers') txs kept for score_later; past this the oldest go unscored.
LATER_MAX = 8192
RETRAIN_SLOW_FACTOR = 8  # see DetectorConfig.retrain_min_rows
RECENT_ROWS_MAX = 2048  # scored feature rows kept for the drift check
# Models whose txs' deferred reasons can still be phrased (tx_get): an older model is let go, and
# its txs answer REASONS_GONE. Without this a cache of verdicts (node/host/screening.py keeps
# ANOMALY_MAX of them) kept alive every model that scored one: ~4.6 MB each, a dozen or more.
MODELS_KEPT = 3
REASONS_GONE = ("reasons no longer kept: a newer model has replaced the one that scored this tx",)
RATE_AT = TxContext._fields.index("rate_timestamps_ms")
_MAY_BE_ZERO = frozenset({"retrain_slot_ms"})
# Keys that say when a model is trained, not what it is: left out of its id (model_id_of), so
# that adding one (retrain_slot_ms) names no existing model anew.
_SCHEDULE_ONLY = frozenset({"retrain_slot_ms"})
_QUANTILES = (0.5, 0.9, 0.99)  # of the recent scores, as p50, p90, p99 (status)


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """The ``[detector]`` config table; see docs/detector.md for how to tune each key."""

    enabled: bool = True  # False: score nothing, quarantine nothing
    window_txs: int = 5000  # committed txs in the training window
    retrain_every_blocks: int = 50  # train at heights that are multiples of this
    # ... that follow at least this many committed rows (else at multiples of
    # RETRAIN_SLOW_FACTOR x retrain_every_blocks, with any new row)
    retrain_min_rows: int = 1000
    # ... and at most once per slot of chain time: block timestamp // this (0 = no slots). Under
    # a heavy load every multiple has its rows, and refitting every few seconds a window that
    # turned over in four costs every node CPU the txs need
    retrain_slot_ms: int = 15_000
    min_train_txs: int = 100  # no model before this many committed txs
    warmup_txs: int = 200  # no quarantine before this many committed txs
    contamination: float = 0.002  # share of ordinary committed traffic above the threshold
    score_floor: float = 0.5  # the threshold never goes below this score (0.5: an average row)
    n_trees: int = 100
    sample_size: int = 256
    accounts_max: int = 50_000  # senders whose history is kept (least recent evicted)
    addresses_max: int = 200_000  # addresses remembered as "seen on chain"
    pending_ttl_ms: int = 300_000  # admitted-but-uncommitted txs count as history this long
    reasons_max: int = 3

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "enabled":
                if not isinstance(value, bool):
                    raise ValueError("detector.enabled: expected true or false")
            elif f.name in ("contamination", "score_floor"):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"detector.{f.name}: expected a number")
                if not 0.0 <= float(value) < 1.0:
                    raise ValueError(f"detector.{f.name}: expected a number in [0, 1)")
            elif f.name in _MAY_BE_ZERO:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"detector.{f.name}: expected a non-negative integer")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"detector.{f.name}: expected a positive integer")

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> DetectorConfig:
        """From the node config's ``[detector]`` table; unknown keys are errors naming the key."""
        known = {f.name for f in fields(cls)}
        for key in table:
            if key not in known:
                raise ValueError(f"detector.{key}: unknown key")
        return cls(**dict(table))


@dataclass(frozen=True, slots=True)
class Verdict:
    """The detector's word on one tx. ``model_version == 0``: no model yet, score means nothing."""

    score: float
    threshold: float
    quarantine: bool
    reasons: tuple[str, ...]
    model_version: int = 0
    # Reasons of a tx that is not held are worked out only if someone asks (tx_get): they cost
    # about as much as the scoring itself, and almost nobody reads them for ordinary traffic.
    later: Callable[[], tuple[str, ...]] | None = field(default=None, compare=False, repr=False)
    # For an audit of a hold (quarantine=True only): the model's id, the exact feature vector
    # and the TxContext fields its reasons were phrased from.
    model_id: bytes = field(default=b"", compare=False, repr=False)
    features: tuple[float, ...] = field(default=(), compare=False, repr=False)
    context: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    def all_reasons(self) -> tuple[str, ...]:
        """The reasons, computing deferred ones now."""
        return self.later() if self.later is not None and not self.reasons else self.reasons


_SET_VERDICT = tuple(
    getattr(Verdict, name).__set__
    for name in ("score", "threshold", "quarantine", "reasons", "model_version", "later")
)
_SET_AUDIT = tuple(getattr(Verdict, name).__set__ for name in ("model_id", "features", "context"))
_UNSCORED = Verdict(0.0, 1.0, False, ())  # no model, or scored later (score_later)


def _verdict(
    score: float,
    threshold: float,
    quarantine: bool,
    reasons: tuple[str, ...],
    model_version: int,
    later: Callable[[], tuple[str, ...]] | None,
) -> Verdict:
    """``Verdict(...)`` at half the cost: every node makes one per tx (at admission, or later
    for a peer's), and a frozen dataclass's ``__init__`` goes through ``object.__setattr__``
    once per field. Unrolled: a loop over the audit fields cost as much as the rest."""
    v: Verdict = object.__new__(Verdict)
    set_score, set_threshold, set_quarantine, set_reasons, set_version, set_later = _SET_VERDICT
    set_model_id, set_features, set_context = _SET_AUDIT
    set_score(v, score)
    set_threshold(v, threshold)
    set_quarantine(v, quarantine)
    set_reasons(v, reasons)
    set_version(v, model_version)
    set_later(v, later)
    set_model_id(v, b"")
    set_features(v, ())
    set_context(v, ())
    return v


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Which committed rows a model was trained on, so that anyone can rebuild it from the chain.

    The history is folded from ``history_from`` (the first block this detector observed) up to
    ``last_height``; the window is the last ``rows`` rows of that replay (``first_height`` is
    where they start, for people). With the config and the seed this fixes the model exactly.
    """

    history_from: int
    first_height: int
    last_height: int
    rows: int
    seed: int

    def to_json(self) -> dict[str, int]:
        return {
            "history_from": self.history_from,
            "first_height": self.first_height,
            "last_height": self.last_height,
            "rows": self.rows,
            "seed": self.seed,
        }


def model_id_of(spec: WindowSpec, cfg: DetectorConfig) -> bytes:
    """SHA-256 of (training window heights, detector config, seed): the model's name."""
    config = {
        f.name: repr(getattr(cfg, f.name)) for f in fields(cfg) if f.name not in _SCHEDULE_ONLY
    }
    return codec.sha256(
        codec.encode({"domain": MODEL_ID_DOMAIN, "window": spec.to_json(), "config": config})
    )


def training_seed(height: int) -> int:
    """The model seed at a height: the same on every honest node."""
    digest = hashlib.sha256(SEED_DOMAIN + height.to_bytes(8, "big")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class Detector:
    """The training window, the current model and recent verdicts, over a ``TxHistory``."""

    def __init__(self, cfg: DetectorConfig | None = None) -> None:
        self.cfg = cfg or DetectorConfig()
        self._history = TxHistory(
            self.cfg.accounts_max, self.cfg.addresses_max, self.cfg.pending_ttl_ms
        )
        self._window: deque[FloatArray] = deque(maxlen=self.cfg.window_txs)
        self._window_heights: deque[int] = deque(maxlen=self.cfg.window_txs)
        self._history_from: int | None = None
        self._snapshot: WindowSpec | None = None
        self.spec: WindowSpec | None = None  # of the model in use
        self.model_id = b""
        self._height = 0
        self._kept: deque[_ModelRef] = deque()  # the last MODELS_KEPT models, newest last
        self._model_version = 0
        self._trained_at = -1
        self._requested_at = -1
        self._requested_rows = 0
        # The schedule, from the chain alone (``_schedule``): the last multiple of the period
        # that called for a retrain, and the slot of chain time it fell in.
        self._due_height = -1
        self._due_slot: int | None = None
        self._reference: drift.Reference | None = None  # of the model's training window
        self._recent = np.zeros((RECENT_ROWS_MAX, N_FEATURES))  # a ring of scored rows
        self._recent_n = 0  # rows ever written to the ring
        self._scores: deque[float] = deque(maxlen=RECENT_SCORES_MAX)
        self._quarantined: deque[bool] = deque(maxlen=RECENT_SCORES_MAX)
        # Admitted peers' txs waiting for score_later: (tx, raw row, context) as admitted.
        self._later: list[tuple[TxLike, RawRow, tuple[Any, ...]]] = []
        self.later_dropped = 0  # deferred txs never scored (LATER_MAX exceeded)

    # --- history ----------------------------------------------------------------------------
    def note_addresses(self, addresses: Sequence[bytes]) -> None:
        """Addresses known before any block (genesis accounts) are not "never seen"."""
        self._history.note_addresses(addresses)

    def observe_block(self, block: BlockLike, receipts_ok: Sequence[bool] | None = None) -> None:
        """Fold a committed block into the history and the training window (executed txs only)."""
        height = block.header.height
        if self._history_from is None:
            self._history_from = height
        newest = height > self._height
        self._height = max(self._height, height)
        rows = self._history.observe_block(block, receipts_ok)
        if rows is not None:
            self._window.extend(rows)
            self._window_heights.extend([height] * len(rows))
        if newest and height % self.cfg.retrain_every_blocks == 0:
            self._schedule(height, block.header.timestamp_ms)

    @property
    def _model(self) -> TrainedModel | None:
        """The model in use: the newest one kept."""
        return self._kept[-1].model if self._kept else None

    # --- training ---------------------------------------------------------------------------

    def needs_training(self, height: int) -> bool:
        """Train at multiples of ``retrain_every_blocks`` (all nodes alike), or now if no model."""
        if not self.cfg.enabled or len(self._window) < self.cfg.min_train_txs:
            return False
        if height <= self._requested_at:
            return False
        # A first model may come from fewer rows than the warm-up asks for (scores and reasons
        # early); the model that may quarantine is trained as soon as the window has them.
        short = self._requested_rows < self._rows_for_warm() <= len(self._window)
        if self._model is None or short:
            return True
        return height == self._due_height

    def _schedule(self, height: int, time_ms: int) -> None:
        """At a multiple of the period, as its block is observed: whether it calls for a retrain.

        It needs enough rows committed since the previous multiple: refitting a window that
        barely moved (an idle chain whose heartbeat makes empty blocks; a light load's blocks of
        a few txs) would only churn models, at ~0.15-1 s of CPU each. With few rows it waits for
        a slower multiple, and then needs only one row committed since the last training. And
        it is the first such multiple in its slot of chain time (block timestamp //
        ``retrain_slot_ms``): under a heavy load every multiple has its rows. Decided from the
        chain as each block is observed, whether or not the host then trains (a node still
        fitting skips one; a restarted node replays its window here), so nodes that saw the
        same blocks are due at the same heights. A slot differing from the last due one is new,
        whichever way a block's clock went: a block dated far ahead cannot stall the schedule.
        """
        every = self.cfg.retrain_every_blocks
        need = min(self.cfg.retrain_min_rows, self.cfg.window_txs)
        if self._rows_above(height - every) < need:
            slow = every * RETRAIN_SLOW_FACTOR
            if height % slow or self._rows_above(self._requested_at) == 0:
                return
        slot_ms = self.cfg.retrain_slot_ms
        slot = time_ms // slot_ms if slot_ms else None
        if slot is not None and slot == self._due_slot:
            return
        self._due_height, self._due_slot = height, slot

    def _rows_above(self, height: int) -> int:
        """Rows of the window committed above ``height`` (the window is in height order)."""
        n = 0
        for h in reversed(self._window_heights):
            if h <= height:
                break
            n += 1
        return n

    def _rows_for_warm(self) -> int:
        return min(self.cfg.warmup_txs, self.cfg.window_txs)

    def train_snapshot(self) -> tuple[FloatArray, int]:
        """The training window as a matrix, and the seed of the last observed height."""
        self._requested_at = self._height
        self._requested_rows = len(self._window)
        seed = training_seed(self._height)
        self._snapshot = WindowSpec(
            self._history_from or 0,
            self._window_heights[0],
            self._height,
            len(self._window),
            seed,
        )
        return np.vstack(list(self._window)), seed

    def window_rows(self) -> FloatArray:
        """The training window as it stands (for an audit rebuild)."""
        return np.vstack(list(self._window))

    def fit(self, X: FloatArray, seed: int) -> TrainedModel:
        """Pure and thread-safe (touches no detector state): run it in an executor."""
        return self.fit_function()(X, seed)

    def fit_function(
        self, pause: Callable[[], None] = no_pause
    ) -> Callable[[FloatArray, int], TrainedModel]:
        """``fit`` as a picklable function of (X, seed), for an executor in another process;
        ``pause`` (picklable too) is called between its steps (``train_model``)."""
        cfg = self.cfg
        return functools.partial(
            train_model,
            n_trees=cfg.n_trees,
            sample_size=cfg.sample_size,
            contamination=cfg.contamination,
            score_floor=cfg.score_floor,
            pause=pause,
        )

    def install_model(self, model: TrainedModel | IsolationForest, height: int) -> None:
        """Use ``model`` from now on. A bare forest gets its threshold from the current window."""
        if isinstance(model, IsolationForest):
            cfg = self.cfg
            model = calibrate(
                model,
                np.vstack(list(self._window)),
                model.seed,
                sample_size=cfg.sample_size,
                contamination=cfg.contamination,
                score_floor=cfg.score_floor,
            )
        if model.forest.n_features != N_FEATURES:
            raise ValueError(f"model has {model.forest.n_features} features, need {N_FEATURES}")
        if len(self._kept) == MODELS_KEPT:
            self._kept.popleft().model = None
        self._kept.append(_ModelRef(model))
        self._model_version += 1
        self._trained_at = height
        snap = self._snapshot
        self.spec = snap if snap is not None and snap.rows == model.rows else None
        rows = np.vstack(list(self._window)[-model.rows :])
        self._reference = drift.reference(rows)
        self.model_id = model_id_of(self.spec, self.cfg) if self.spec is not None else b""

    # --- scoring ----------------------------------------------------------------------------

    @property
    def warm(self) -> bool:
        """Quarantine is allowed: a model trained on at least ``warmup_txs`` rows (or a full
        window) exists, and at least ``warmup_txs`` committed txs stand behind it."""
        model = self._model
        return (
            model is not None
            and model.rows >= self._rows_for_warm()
            and self._history.committed_txs >= self.cfg.warmup_txs
        )

    def score_batch(
        self, txs: Sequence[TxLike], now_ms: int, later: Sequence[bool] | None = None
    ) -> list[Verdict]:
        """Verdicts for a micro-batch, in order; each tx also joins the sender's pending history.

        Txs flagged in ``later`` join the history now but are scored at the next
        ``score_later`` (their verdict here is the model-less one, ``model_version`` 0): a
        node holds only its own clients' txs, so a peer's tx is scored for the record (tx_get,
        the score metrics, drift) and can wait for a bigger, cheaper batch.
        """
        if not txs:
            return []
        model = self._model
        scoring = model is not None and self.cfg.enabled
        raws, contexts = self._history.admit(txs, now_ms, rows=scoring)
        if model is None or not scoring:
            return [_UNSCORED for _ in txs]
        if later is None or not any(later):
            return self._score_rows(model, txs, raws, contexts, self._history.scoring_chain(now_ms))
        now_txs: list[TxLike] = []
        now_raws: list[RawRow] = []
        now_contexts: list[tuple[Any, ...]] = []
        for tx, raw, context, defer in zip(txs, raws, contexts, later, strict=True):
            if defer:
                self._later.append((tx, raw, context))
            else:
                now_txs.append(tx)
                now_raws.append(raw)
                now_contexts.append(context)
        if len(self._later) > LATER_MAX:  # never scored: the record is best effort
            dropped = len(self._later) - LATER_MAX
            del self._later[:dropped]
            self.later_dropped += dropped
        scored = iter(
            self._score_rows(
                model, now_txs, now_raws, now_contexts, self._history.scoring_chain(now_ms)
            )
            if now_txs
            else ()
        )
        return [_UNSCORED if defer else next(scored) for defer in later]

    @property
    def later_count(self) -> int:
        """Txs admitted to the history and waiting for ``score_later``."""
        return len(self._later)

    def score_later(self, now_ms: int) -> list[tuple[TxLike, Verdict]]:
        """Score the txs ``score_batch`` deferred, in one batch (their rows as admitted)."""
        pending, self._later = self._later, []
        model = self._model
        if not pending or model is None or not self.cfg.enabled:
            return []
        txs = [tx for tx, _, _ in pending]
        verdicts = self._score_rows(
            model,
            txs,
            [raw for _, raw, _ in pending],
            [context for _, _, context in pending],
            self._history.scoring_chain(now_ms),
        )
        return list(zip(txs, verdicts, strict=True))

    def _score_rows(
        self,
        model: TrainedModel,
        txs: Sequence[TxLike],
        raws: Sequence[RawRow],
        contexts: list[tuple[Any, ...]],
        chain: ChainHistory,
    ) -> list[Verdict]:
        X = feature_rows(raws, chain)
        self._remember_rows(X)
        scores, odds = model.score_detail(X)
        # Strict: a tx that merely ties the tail of ordinary traffic (few distinct values, so
        # many rows share one score) is not held.
        held = (scores > model.threshold) & self.warm
        batch = _Scored(self._kept[-1], X, odds, contexts, held, self.cfg.reasons_max)
        version = self._model_version
        threshold = model.threshold
        out: list[Verdict] = []
        why = batch.reasons
        audit = _SET_AUDIT
        for i, (score, quarantine) in enumerate(zip(scores.tolist(), held.tolist(), strict=True)):
            if quarantine:
                v = _verdict(score, threshold, True, why(i), version, None)
                for setter, value in zip(
                    audit, (self.model_id, tuple(X[i].tolist()), contexts[i]), strict=True
                ):
                    setter(v, value)
                out.append(v)
            else:
                contexts[i] = _pack_context(contexts[i])
                out.append(
                    _verdict(score, threshold, False, (), version, functools.partial(why, i))
                )
        self._scores.extend(scores.tolist())
        self._quarantined.extend(held.tolist())
        return out

    def _remember_rows(self, X: FloatArray) -> None:
        n = min(len(X), RECENT_ROWS_MAX)
        at = self._recent_n % RECENT_ROWS_MAX
        first = min(n, RECENT_ROWS_MAX - at)
        self._recent[at : at + first] = X[len(X) - n : len(X) - n + first]
        if first < n:
            self._recent[: n - first] = X[len(X) - n + first :]
        self._recent_n += n

    def drift(self) -> dict[str, float] | None:
        """PSI per feature: the model's training window against the last scored rows."""
        if self._reference is None or self._recent_n == 0:
            return None
        recent = self._recent[: min(self._recent_n, RECENT_ROWS_MAX)]
        values = drift.psi(self._reference, recent)
        return {name: round(float(v), 4) for name, v in zip(FEATURE_NAMES, values, strict=True)}

    @property
    def model_age_blocks(self) -> int | None:
        """Blocks observed since the model in use was trained; None without a model."""
        return self._height - self._trained_at if self._model is not None else None

    def score_quantiles(self) -> dict[str, float | None]:
        """p50, p90 and p99 of the recent scores (None before any): one pass, not one each."""
        quantiles: dict[str, float | None] = {"p50": None, "p90": None, "p99": None}
        if self._scores:
            values = np.quantile(np.fromiter(self._scores, float), _QUANTILES).tolist()
            quantiles = dict(zip(quantiles, values, strict=True))
        return quantiles

    def status(self) -> dict[str, Any]:
        """For ``detector_status`` and the metrics."""
        model = self._model
        quantiles = self.score_quantiles()
        flags = self._quarantined
        return {
            "enabled": self.cfg.enabled,
            "model_version": self._model_version,
            "model_id": "0x" + self.model_id.hex() if self.model_id else None,
            "training_window": self.spec.to_json() if self.spec is not None else None,
            "model_age_blocks": self.model_age_blocks,
            "trained_at_height": self._trained_at if model is not None else None,
            "trained_rows": model.rows if model is not None else 0,
            "window_size": len(self._window),
            "window_txs_max": self.cfg.window_txs,
            "threshold": model.threshold if model is not None else None,
            "contamination": self.cfg.contamination,
            "score_quantiles": quantiles,
            "scored_recent": len(flags),
            "quarantine_rate": (sum(flags) / len(flags)) if flags else 0.0,
            "warm": self.warm,
            "committed_txs_seen": self._history.committed_txs,
            "warmup_txs": self.cfg.warmup_txs,
        }


class _ModelRef:
    """The detector's hold on a model for the txs it scored: ``model`` is None once MODELS_KEPT
    newer models came (the detector lets it go; ``_Scored.reasons`` then says so)."""

    __slots__ = ("model",)

    def __init__(self, model: TrainedModel) -> None:
        self.model: TrainedModel | None = model


class _Rate(NamedTuple):
    """TxContext.rate_timestamps_ms as the deferred reasons keep it: how many, the earliest."""

    events: int
    earliest_ms: int


def _pack_context(context: tuple[Any, ...]) -> tuple[Any, ...]:
    """A TxContext kept for reasons phrased later, with its rate timestamps (up to
    SENDER_EVENTS_MAX of them: ~0.5 KB a tx, over ANOMALY_MAX verdicts) cut to what the phrase
    reads, how many fall in the rate window and the earliest (TxHistory keeps only those)."""
    stamps = context[RATE_AT]
    if len(stamps) < 2:
        return context
    return (*context[:RATE_AT], _Rate(len(stamps), stamps[0]), *context[RATE_AT + 1 :])


def _unpack_context(context: tuple[Any, ...]) -> TxContext:
    """The TxContext again: a packed rate as that many copies of the earliest timestamp (the
    phrase's count and earliest are the same)."""
    stamps = context[RATE_AT]
    if isinstance(stamps, _Rate):
        rebuilt = (stamps.earliest_ms,) * stamps.events
        context = (*context[:RATE_AT], rebuilt, *context[RATE_AT + 1 :])
    return TxContext._make(context)


class _Scored:
    """One scored micro-batch: reasons of its txs, the held ones' computed together."""

    __slots__ = ("X", "contexts", "excess_held", "held_rows", "high", "limit", "model", "odds")

    def __init__(
        self,
        model: _ModelRef,
        X: FloatArray,
        odds: FloatArray,
        contexts: list[tuple[Any, ...]],
        held: npt.NDArray[np.bool_],
        limit: int,
    ) -> None:
        self.model, self.X, self.odds, self.contexts, self.limit = model, X, odds, contexts, limit
        scorer = model.model
        assert scorer is not None
        self.high = scorer.ranges.high if scorer.ranges is not None else None
        self.held_rows = np.flatnonzero(held)
        self.excess_held = scorer.contributions(X[self.held_rows]) if self.held_rows.size else None

    def reasons(self, i: int) -> tuple[str, ...]:
        model = self.model.model
        if model is None:
            return REASONS_GONE
        at = int(np.searchsorted(self.held_rows, i))
        if self.excess_held is not None and at < self.held_rows.size and self.held_rows[at] == i:
            excess = self.excess_held[at]
        else:
            excess = model.contributions(self.X[i : i + 1])[0]
        context = _unpack_context(self.contexts[i])
        found = reasons(
            self.X[i],
            excess,
            context.facts(),
            context.sender(),
            self.limit,
            odds=self.odds[i],
            high=self.high,
            window_rows=model.rows,
        )
        return tuple(found)
