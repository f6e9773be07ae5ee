"""The online transaction anomaly detector: history from committed blocks, training, scoring.

An admission policy, never a validity rule: it only decides whether a tx waits in the quarantine.
Training rows come from committed blocks alone (history as of each tx's position in the chain,
block timestamps), so every honest node holds the same window at a height and, with the seed
derived from that height, trains the same model. Scoring also sees the node's recently admitted
txs (a short-lived overlay), so a burst is visible before it commits.

The runtime drives it::

    detector.observe_block(block, receipts_ok)           # after each commit, on the loop
    if detector.needs_training(height):
        X, seed = detector.train_snapshot()
        model = await loop.run_in_executor(None, detector.fit, X, seed)
        detector.install_model(model, height)
    verdicts = detector.score_batch(txs, now_ms)          # micro-batch on admission
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ml.calibration import Ranges, extrapolated_scores, tail_threshold
from ml.features import (
    FANOUT_WINDOW_MS,
    INDEX,
    N_FEATURES,
    RATE_WINDOW_MS,
    ChainHistory,
    ReceiverHistory,
    SenderHistory,
    TxFacts,
    featurize,
    reasons,
)
from ml.iforest import IsolationForest, average_path_length

FloatArray = npt.NDArray[np.float64]
SEED_DOMAIN = b"vigil/detector/seed/v1"
SENDER_AMOUNTS_MAX = 32  # the sender's median is over its last this-many transfers
SENDER_EVENTS_MAX = 64  # timestamps/receivers kept per sender for rate and fan-out
SENDER_RECEIVERS_MAX = 256  # receivers a sender has paid, most recent kept
CHAIN_RECENT_MAX = 2048  # transfers behind the chain's median amount and fee
PENDING_SENDERS_MAX = 10_000
BASELINE_ROWS = 256
# Subspaces with a forest of their own: sizes, and the shape of a burst to fresh addresses.
SUBSPACES: tuple[tuple[int, ...], ...] = tuple(
    tuple(INDEX[name] for name in names)
    for names in (
        ("log_amount",),
        ("amount_vs_sender",),
        ("rate_recent", "fanout_recent", "receiver_novelty"),
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
    INDEX[name] for name in ("log_amount", "amount_vs_sender", "fee_vs_typical", "fanout_recent")
)
AMOUNT_COLUMNS = ("log_amount", "amount_vs_sender", "fee_vs_typical")
AMOUNT_MARGIN = 1.0  # log2 units: extrapolation starts at twice the window's largest value

RECENT_SCORES_MAX = 2048


class TxLike(Protocol):
    """What the detector reads from a node.tx.Transaction."""

    @property
    def kind(self) -> str: ...
    @property
    def nonce(self) -> int: ...
    @property
    def fee(self) -> int: ...
    @property
    def to(self) -> bytes: ...
    @property
    def amount(self) -> int: ...
    @property
    def hash(self) -> bytes: ...
    @property
    def sender_address(self) -> bytes: ...


class HeaderLike(Protocol):
    @property
    def height(self) -> int: ...
    @property
    def timestamp_ms(self) -> int: ...


class BlockLike(Protocol):
    @property
    def header(self) -> HeaderLike: ...
    @property
    def txs(self) -> Sequence[TxLike]: ...


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """The ``[detector]`` config table; see docs/detector.md for how to tune each key."""

    enabled: bool = True  # False: score nothing, quarantine nothing
    window_txs: int = 5000  # committed txs in the training window
    retrain_every_blocks: int = 50  # train at heights that are multiples of this
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

    def all_reasons(self) -> tuple[str, ...]:
        """The reasons, computing deferred ones now."""
        return self.later() if self.later is not None and not self.reasons else self.reasons


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

    def score(self, X: FloatArray) -> FloatArray:
        return self.score_detail(X)[0]

    def score_detail(self, X: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Scores, and per row and column the chance an out-of-range value isolates at once."""
        if self.ranges is None:
            odds = np.zeros(X.shape)
            s = self.forest.score(X)
        else:
            odds = self.ranges.isolation_odds(X)
            s = extrapolated_scores(self.forest, X, odds)
        for columns, forest, exponent in self.subspaces:
            cols = list(columns)
            if self.ranges is None:
                sub = forest.score(X[:, cols])
            else:
                sub = extrapolated_scores(forest, X[:, cols], odds[:, cols])
            s = np.maximum(s, sub**exponent)
        return s, odds


def training_seed(height: int) -> int:
    """The model seed at a height: the same on every honest node."""
    digest = hashlib.sha256(SEED_DOMAIN + height.to_bytes(8, "big")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _median(values: deque[int]) -> float | None:
    return float(statistics.median(values)) if values else None


class _Account:
    __slots__ = ("amounts", "events", "last_ms", "next_nonce", "receivers", "tx_count")

    def __init__(self) -> None:
        self.tx_count = 0
        self.amounts: deque[int] = deque(maxlen=SENDER_AMOUNTS_MAX)
        self.events: deque[tuple[int, bytes]] = deque(maxlen=SENDER_EVENTS_MAX)
        self.receivers: OrderedDict[bytes, None] = OrderedDict()
        self.last_ms: int | None = None
        self.next_nonce = 0


@dataclass(frozen=True, slots=True)
class _Pending:
    tx_hash: bytes
    timestamp_ms: int
    receiver: bytes
    nonce: int


def _lru_touch(table: OrderedDict[bytes, Any], key: bytes, value: Any, cap: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > cap:
        table.popitem(last=False)


class Detector:
    """Bounded-memory history, the training window, the current model and recent verdicts."""

    def __init__(self, cfg: DetectorConfig | None = None) -> None:
        self.cfg = cfg or DetectorConfig()
        self._accounts: OrderedDict[bytes, _Account] = OrderedDict()
        self._addresses: OrderedDict[bytes, None] = OrderedDict()
        self._pending: OrderedDict[bytes, deque[_Pending]] = OrderedDict()
        self._chain_amounts: deque[int] = deque(maxlen=CHAIN_RECENT_MAX)
        self._chain_fees: deque[int] = deque(maxlen=CHAIN_RECENT_MAX)
        self._chain_gaps_ms: deque[int] = deque(maxlen=CHAIN_RECENT_MAX)
        self._chain = ChainHistory()
        self._window: deque[FloatArray] = deque(maxlen=self.cfg.window_txs)
        self._committed_txs = 0
        self._height = 0
        self._model: TrainedModel | None = None
        self._model_version = 0
        self._trained_at = -1
        self._requested_at = -1
        self._requested_rows = 0
        self._scores: deque[float] = deque(maxlen=RECENT_SCORES_MAX)
        self._quarantined: deque[bool] = deque(maxlen=RECENT_SCORES_MAX)

    # --- history ----------------------------------------------------------------------------

    def note_addresses(self, addresses: Sequence[bytes]) -> None:
        """Addresses known before any block (genesis accounts) are not "never seen"."""
        for a in addresses:
            _lru_touch(self._addresses, a, None, self.cfg.addresses_max)

    def observe_block(self, block: BlockLike, receipts_ok: Sequence[bool] | None = None) -> None:
        """Fold a committed block into the history and the training window (executed txs only)."""
        header = block.header
        now = header.timestamp_ms
        self._height = max(self._height, header.height)
        if receipts_ok is not None and len(receipts_ok) != len(block.txs):
            raise ValueError("receipts_ok must have one entry per tx in the block")
        for i, tx in enumerate(block.txs):
            sender = tx.sender_address
            self._forget_pending(sender, tx.hash)
            if receipts_ok is not None and not receipts_ok[i]:
                continue  # skipped by execution: no state change, not ordinary traffic either
            acct = self._accounts.get(sender)
            facts, sh, rh = self._view(tx, acct, (), now)
            self._window.append(featurize(facts, sh, rh, self._chain))
            self._apply(tx, sender, acct, now)
        if block.txs:
            gap_ms = _median(self._chain_gaps_ms)
            self._chain = ChainHistory(
                median_amount=_median(self._chain_amounts),
                median_fee=_median(self._chain_fees),
                median_gap_s=None if gap_ms is None else gap_ms / 1000,
            )

    def _apply(self, tx: TxLike, sender: bytes, acct: _Account | None, now: int) -> None:
        if acct is None:
            acct = _Account()
        _lru_touch(self._accounts, sender, acct, self.cfg.accounts_max)
        _lru_touch(self._addresses, sender, None, self.cfg.addresses_max)
        acct.tx_count += 1
        if acct.last_ms is not None:
            self._chain_gaps_ms.append(now - acct.last_ms)
        acct.last_ms = now
        acct.next_nonce = max(acct.next_nonce, tx.nonce + 1)
        self._chain_fees.append(tx.fee)
        self._committed_txs += 1
        if tx.kind == "transfer":
            acct.amounts.append(tx.amount)
            acct.events.append((now, tx.to))
            _lru_touch(acct.receivers, tx.to, None, SENDER_RECEIVERS_MAX)
            _lru_touch(self._addresses, tx.to, None, self.cfg.addresses_max)
            self._chain_amounts.append(tx.amount)
        else:
            acct.events.append((now, b""))

    def _forget_pending(self, sender: bytes, tx_hash: bytes) -> None:
        queue = self._pending.get(sender)
        if queue is None:
            return
        kept = [p for p in queue if p.tx_hash != tx_hash]
        if len(kept) != len(queue):
            queue.clear()
            queue.extend(kept)
        if not queue:
            del self._pending[sender]

    def _view(
        self, tx: TxLike, acct: _Account | None, pending: Sequence[_Pending], now: int
    ) -> tuple[TxFacts, SenderHistory, ReceiverHistory]:
        """The tx and its summaries as seen at ``now`` (committed history plus ``pending``)."""
        is_anchor = tx.kind != "transfer"
        facts = TxFacts(tx.amount, tx.fee, is_anchor, now, tx.nonce)
        events: list[tuple[int, bytes]] = list(acct.events) if acct is not None else []
        events.extend((p.timestamp_ms, p.receiver) for p in pending)
        horizon = now - max(RATE_WINDOW_MS, FANOUT_WINDOW_MS)
        recent = [(t, r) for t, r in events if t >= horizon]
        fanout_from = now - FANOUT_WINDOW_MS
        distinct = {r for t, r in recent if r and t >= fanout_from}
        last = max((t for t, _ in events), default=None)
        next_nonce = acct.next_nonce if acct is not None else 0
        for p in pending:
            next_nonce = max(next_nonce, p.nonce + 1)
        sender = SenderHistory(
            tx_count=acct.tx_count if acct is not None else 0,
            median_amount=float(statistics.median(acct.amounts))
            if acct is not None and acct.amounts
            else None,
            last_timestamp_ms=last,
            recent_timestamps_ms=tuple(sorted(t for t, _ in recent)),
            recent_receivers=len(distinct - {tx.to}) if not is_anchor else len(distinct),
            next_nonce=next_nonce,
        )
        if is_anchor:
            receiver = ReceiverHistory()
        else:
            to = tx.to
            paid = (acct is not None and to in acct.receivers) or any(
                p.receiver == to for p in pending
            )
            receiver = ReceiverHistory(
                seen_on_chain=paid or to in self._addresses, paid_by_sender=paid
            )
        return facts, sender, receiver

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
        return self._model is None or short or height % self.cfg.retrain_every_blocks == 0

    def _rows_for_warm(self) -> int:
        return min(self.cfg.warmup_txs, self.cfg.window_txs)

    def train_snapshot(self) -> tuple[FloatArray, int]:
        """The training window as a matrix, and the seed of the last observed height."""
        self._requested_at = self._height
        self._requested_rows = len(self._window)
        return np.vstack(list(self._window)), training_seed(self._height)

    def fit(self, X: FloatArray, seed: int) -> TrainedModel:
        """Pure and thread-safe (touches no detector state): run it in an executor."""
        forest = IsolationForest(self.cfg.n_trees, self.cfg.sample_size, seed).fit(X)
        return self._finish(forest, X, seed)

    def _finish(self, forest: IsolationForest, X: FloatArray, seed: int) -> TrainedModel:
        # Masking: with ~8 informative columns a tx extreme in just one of them (a 1000x amount)
        # is isolated only in the trees that happen to split on that column early, so its score
        # sits among ordinary rows' tails. A small forest per key subspace catches it. Each
        # forest is aligned on the full forest's scale at an equal share of the contamination.
        alpha = self.cfg.contamination
        level = 1.0 - alpha / (1 + len(SUBSPACES))
        reference = float(np.quantile(forest.score(X), level, method="higher"))
        subspaces = []
        for i, cols in enumerate(SUBSPACES):
            sub = IsolationForest(SUBSPACE_TREES, self.cfg.sample_size, seed + 1 + i)
            sub.fit(X[:, list(cols)])
            own = float(np.quantile(sub.score(X[:, list(cols)]), level, method="higher"))
            exponent = math.log(reference) / math.log(own) if 0.0 < own < 1.0 else 1.0
            subspaces.append((cols, sub, exponent))
        upper = np.zeros(X.shape[1], dtype=np.bool_)
        upper[list(EXTRAPOLATED)] = True
        # Amounts and fees extrapolate only past twice the window's largest (one doubling in
        # log2 units): a payment a little larger than anything seen is growth, not an outlier,
        # and without the slack a small window would hold every such tx. Fan-out has none: a
        # burst to new addresses must stand out from its first few transfers.
        margin = np.zeros(X.shape[1])
        margin[[INDEX[name] for name in AMOUNT_COLUMNS]] = AMOUNT_MARGIN
        ranges = Ranges.of(X, upper, margin)
        sample = X[np.linspace(0, len(X) - 1, min(len(X), BASELINE_ROWS)).astype(np.intp)]
        baseline = forest.explain(sample).mean(axis=0)
        model = TrainedModel(forest, 1.0, baseline, len(X), tuple(subspaces), ranges)
        # Training rows are inside the range by definition: their scores are the plain forests'.
        # The threshold is the combined score's tail quantile, extrapolated where the window is
        # too small for it (ml/calibration.py); contamination 0 holds nothing.
        if alpha > 0.0:
            c_psi = float(average_path_length(forest.psi))
            cut = tail_threshold(model.score(X), alpha, c_psi)
            model = replace(model, threshold=max(cut, self.cfg.score_floor))
        return model

    def install_model(self, model: TrainedModel | IsolationForest, height: int) -> None:
        """Use ``model`` from now on. A bare forest gets its threshold from the current window."""
        if isinstance(model, IsolationForest):
            model = self._finish(model, np.vstack(list(self._window)), model.seed)
        if model.forest.n_features != N_FEATURES:
            raise ValueError(f"model has {model.forest.n_features} features, need {N_FEATURES}")
        self._model = model
        self._model_version += 1
        self._trained_at = height

    # --- scoring ----------------------------------------------------------------------------

    @property
    def warm(self) -> bool:
        """Quarantine is allowed: a model trained on at least ``warmup_txs`` rows (or a full
        window) exists, and at least ``warmup_txs`` committed txs stand behind it."""
        model = self._model
        return (
            model is not None
            and model.rows >= self._rows_for_warm()
            and self._committed_txs >= self.cfg.warmup_txs
        )

    def score_batch(self, txs: Sequence[TxLike], now_ms: int) -> list[Verdict]:
        """Verdicts for a micro-batch, in order; each tx also joins the sender's pending history."""
        if not txs:
            return []
        rows: list[FloatArray] = []
        context: list[tuple[TxFacts, SenderHistory]] = []
        for tx in txs:
            sender = tx.sender_address
            pending = self._pending_of(sender, now_ms)
            facts, sh, rh = self._view(tx, self._accounts.get(sender), pending, now_ms)
            rows.append(featurize(facts, sh, rh, self._chain))
            context.append((facts, sh))
            tx_hash = tx.hash
            if all(p.tx_hash != tx_hash for p in pending):  # a re-delivered tx counts once
                pending.append(
                    _Pending(tx_hash, now_ms, b"" if facts.is_anchor else tx.to, tx.nonce)
                )
        model = self._model
        if model is None or not self.cfg.enabled:
            return [Verdict(0.0, 1.0, False, ()) for _ in txs]
        X = np.vstack(rows)
        scores, odds = model.score_detail(X)
        high = model.ranges.high if model.ranges is not None else None
        warm = self.warm
        # Strict: a tx that merely ties the tail of ordinary traffic (few distinct values, so
        # many rows share one score) is not held.
        held = (scores > model.threshold) & warm
        held_rows = np.flatnonzero(held)
        excess_held = (
            model.forest.explain(X[held_rows]) - model.baseline if held_rows.size else None
        )
        out: list[Verdict] = []
        for i, (facts, sh) in enumerate(context):
            score = float(scores[i])
            quarantine = bool(held[i])

            def why(i: int = i, facts: TxFacts = facts, sh: SenderHistory = sh) -> tuple[str, ...]:
                row = X[i : i + 1]
                if excess_held is not None and held[i]:
                    excess = excess_held[int(np.searchsorted(held_rows, i))]
                else:
                    excess = (model.forest.explain(row) - model.baseline)[0]
                found = reasons(
                    X[i],
                    excess,
                    facts,
                    sh,
                    self.cfg.reasons_max,
                    odds=odds[i],
                    high=high,
                    window_rows=model.rows,
                )
                return tuple(found)

            out.append(
                Verdict(
                    score,
                    model.threshold,
                    quarantine,
                    why() if quarantine else (),
                    self._model_version,
                    later=None if quarantine else why,
                )
            )
            self._scores.append(score)
            self._quarantined.append(quarantine)
        return out

    def _pending_of(self, sender: bytes, now_ms: int) -> deque[_Pending]:
        queue = self._pending.get(sender)
        if queue is None:
            queue = deque(maxlen=SENDER_EVENTS_MAX)
        while queue and queue[0].timestamp_ms < now_ms - self.cfg.pending_ttl_ms:
            queue.popleft()
        _lru_touch(self._pending, sender, queue, PENDING_SENDERS_MAX)
        return queue

    def status(self) -> dict[str, Any]:
        """For ``detector_status`` and the metrics."""
        model = self._model
        scores = np.array(self._scores) if self._scores else None
        quantiles = (
            {f"p{q}": float(np.quantile(scores, q / 100.0)) for q in (50, 90, 99)}
            if scores is not None
            else {"p50": None, "p90": None, "p99": None}
        )
        flags = self._quarantined
        return {
            "enabled": self.cfg.enabled,
            "model_version": self._model_version,
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
            "committed_txs_seen": self._committed_txs,
            "warmup_txs": self.cfg.warmup_txs,
        }
