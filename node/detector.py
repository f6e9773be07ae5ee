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

import functools
import hashlib
import math
import statistics
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from ml.calibration import Ranges, extrapolated_scores, tail_threshold
from ml.features import (
    FANOUT_WINDOW_MS,
    INDEX,
    N_FEATURES,
    RATE_WINDOW_MS,
    ChainHistory,
    SenderHistory,
    TxFacts,
    feature_rows,
    reasons,
)
from ml.iforest import IsolationForest, average_path_length

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
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
MEMO_ROWS_MAX = 4096
_EMPTY: set[bytes] = (
    set()
)  # shared "no recent receivers"; never added to  # distinct subspace rows whose path lengths a model remembers


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
    # Path lengths of distinct rows already seen, per multi-column subspace: a cache (scoring
    # runs on the event loop only), so the model is still a value.
    memo: dict[int, dict[tuple[float, ...], float]] = field(
        default_factory=dict, compare=False, repr=False
    )

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
                memo.clear()
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


_SET_VERDICT = tuple(
    getattr(Verdict, name).__set__
    for name in ("score", "threshold", "quarantine", "reasons", "model_version", "later")
)


def _verdict(
    score: float,
    threshold: float,
    quarantine: bool,
    reasons: tuple[str, ...],
    model_version: int,
    later: Callable[[], tuple[str, ...]] | None,
) -> Verdict:
    """``Verdict(...)`` at half the cost: the admission path makes one per tx, and a frozen
    dataclass's ``__init__`` goes through ``object.__setattr__`` once per field."""
    v: Verdict = object.__new__(Verdict)
    set_score, set_threshold, set_quarantine, set_reasons, set_version, set_later = _SET_VERDICT
    set_score(v, score)
    set_threshold(v, threshold)
    set_quarantine(v, quarantine)
    set_reasons(v, reasons)
    set_version(v, model_version)
    set_later(v, later)
    return v


def training_seed(height: int) -> int:
    """The model seed at a height: the same on every honest node."""
    digest = hashlib.sha256(SEED_DOMAIN + height.to_bytes(8, "big")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _median(values: deque[int]) -> float | None:
    return float(statistics.median(values)) if values else None


class _Account:
    __slots__ = (
        "amounts",
        "events",
        "last_ms",
        "median",
        "next_nonce",
        "ordered",
        "receivers",
        "tx_count",
    )

    def __init__(self) -> None:
        self.tx_count = 0
        self.amounts: deque[int] = deque(maxlen=SENDER_AMOUNTS_MAX)
        self.median = math.nan  # of ``amounts``, kept on commit so scoring need not sort
        self.events: deque[tuple[int, bytes]] = deque(maxlen=SENDER_EVENTS_MAX)
        # Event times never went down (block times normally do not): the recent events are
        # then a suffix of ``events`` and scoring stops at the first older one.
        self.ordered = True
        self.receivers: OrderedDict[bytes, None] = OrderedDict()
        self.last_ms: int | None = None
        self.next_nonce = 0

    def add_event(self, timestamp_ms: int, receiver: bytes) -> None:
        if self.events and timestamp_ms < self.events[-1][0]:
            self.ordered = False
        self.events.append((timestamp_ms, receiver))


class _Pending(NamedTuple):
    """A tx admitted here and not yet committed (a tuple: made once per scored tx)."""

    tx_hash: bytes
    timestamp_ms: int
    receiver: bytes
    nonce: int


class _Context(NamedTuple):
    """What a tx's reasons need besides its features, captured when it was scored."""

    amount: int
    fee: int
    is_anchor: bool
    timestamp_ms: int
    nonce: int
    tx_count: int
    median_amount: float | None
    last_timestamp_ms: int | None
    rate_timestamps_ms: tuple[int, ...]  # sorted; every event at or after now - RATE_WINDOW_MS
    recent_receivers: int
    next_nonce: int

    def facts(self) -> TxFacts:
        return TxFacts(self.amount, self.fee, self.is_anchor, self.timestamp_ms, self.nonce)

    def sender(self) -> SenderHistory:
        return SenderHistory(
            self.tx_count,
            self.median_amount,
            self.last_timestamp_ms,
            self.rate_timestamps_ms,
            self.recent_receivers,
            self.next_nonce,
        )


RawRow = tuple[float, float, float, float, float, float, float, float, float]


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
        raws: list[RawRow] = []
        for i, tx in enumerate(block.txs):
            sender = tx.sender_address
            self._forget_pending(sender, tx.hash)
            if receipts_ok is not None and not receipts_ok[i]:
                continue  # skipped by execution: no state change, not ordinary traffic either
            acct = self._accounts.get(sender)
            raws.append(self._raw(tx, acct, (), now)[0])
            self._apply(tx, sender, acct, now)
        if raws:
            # Every row of a block sees the chain summary as of the block before it.
            self._window.extend(feature_rows(raws, self._chain))
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
            acct.median = float(statistics.median(acct.amounts))
            acct.add_event(now, tx.to)
            _lru_touch(acct.receivers, tx.to, None, SENDER_RECEIVERS_MAX)
            _lru_touch(self._addresses, tx.to, None, self.cfg.addresses_max)
            self._chain_amounts.append(tx.amount)
        else:
            acct.add_event(now, b"")

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

    def _raw(
        self, tx: TxLike, acct: _Account | None, pending: Sequence[_Pending], now: int
    ) -> tuple[RawRow, tuple[Any, ...]]:
        """The tx's ml.features.RAW_COLUMNS as seen at ``now`` (committed history plus
        ``pending``), and the fields of its ``_Context`` (a plain tuple: cheaper to make, and
        most are never read). Called once per scored tx, so it touches only the sender's recent
        events and copies nothing."""
        is_anchor = tx.kind != "transfer"
        to = b"" if is_anchor else tx.to
        rate_from = now - RATE_WINDOW_MS
        fanout_from = now - FANOUT_WINDOW_MS
        horizon = min(rate_from, fanout_from)
        last: int | None = None
        rate_ts: list[int] = []  # at or after rate_from, for the reasons
        recent = 0  # in [rate_from, now], for the feature
        distinct: set[bytes] = _EMPTY
        if acct is not None and acct.events:
            events = acct.events
            if acct.ordered:
                last = events[-1][0]
                scan: Any = reversed(events) if last >= horizon else ()
            else:
                last = max(t for t, _ in events)
                scan = events
            for t, r in scan:
                if t < horizon:
                    if acct.ordered:
                        break
                    continue
                if r and t >= fanout_from:
                    if distinct is _EMPTY:
                        distinct = set()
                    distinct.add(r)
                if t >= rate_from:
                    rate_ts.append(t)
                    recent += t <= now
        next_nonce = acct.next_nonce if acct is not None else 0
        paid = acct is not None and not is_anchor and to in acct.receivers
        for p in pending:
            t = p.timestamp_ms
            last = t if last is None else max(last, t)
            next_nonce = max(next_nonce, p.nonce + 1)
            if p.receiver == to and not is_anchor:
                paid = True
            if t >= horizon:
                if p.receiver and t >= fanout_from:
                    if distinct is _EMPTY:
                        distinct = set()
                    distinct.add(p.receiver)
                if t >= rate_from:
                    rate_ts.append(t)
                    recent += t <= now
        if is_anchor:
            novelty = 0.0
            receivers = len(distinct)
            fanout = receivers
        else:
            novelty = 0.0 if paid else 1.0 if to in self._addresses else 2.0
            receivers = len(distinct) - (to in distinct)
            fanout = receivers + (not paid)
        median = acct.median if acct is not None else math.nan
        raw = (
            float(tx.amount),
            median,
            float(tx.fee),
            math.nan if last is None else (now - last) / 1000.0,
            float(recent),
            novelty,
            float(fanout),
            float(tx.nonce - next_nonce),
            1.0 if is_anchor else 0.0,
        )
        context = (
            tx.amount,
            tx.fee,
            is_anchor,
            now,
            tx.nonce,
            acct.tx_count if acct is not None else 0,
            None if math.isnan(median) else median,
            last,
            tuple(sorted(rate_ts)) if rate_ts else (),
            receivers,
            next_nonce,
        )
        return raw, context

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
        model = self._model
        scoring = model is not None and self.cfg.enabled
        raws: list[RawRow] = []
        contexts: list[tuple[Any, ...]] = []
        accounts = self._accounts
        for tx in txs:
            sender = tx.sender_address
            pending = self._pending_of(sender, now_ms)
            if scoring:
                raw, context = self._raw(tx, accounts.get(sender), pending, now_ms)
                raws.append(raw)
                contexts.append(context)
            tx_hash = tx.hash
            # A re-delivered tx counts once.
            if not pending or all(p.tx_hash != tx_hash for p in pending):
                to = b"" if tx.kind != "transfer" else tx.to
                pending.append(_Pending(tx_hash, now_ms, to, tx.nonce))
        if model is None or not scoring:
            return [Verdict(0.0, 1.0, False, ()) for _ in txs]
        X = feature_rows(raws, self._chain)
        scores, odds = model.score_detail(X)
        # Strict: a tx that merely ties the tail of ordinary traffic (few distinct values, so
        # many rows share one score) is not held.
        held = (scores > model.threshold) & self.warm
        batch = _Scored(model, X, odds, contexts, held, self.cfg.reasons_max)
        version = self._model_version
        threshold = model.threshold
        out: list[Verdict] = []
        why = batch.reasons
        for i, (score, quarantine) in enumerate(zip(scores.tolist(), held.tolist(), strict=True)):
            if quarantine:
                out.append(_verdict(score, threshold, True, why(i), version, None))
            else:
                out.append(
                    _verdict(score, threshold, False, (), version, functools.partial(why, i))
                )
        self._scores.extend(scores.tolist())
        self._quarantined.extend(held.tolist())
        return out

    def _pending_of(self, sender: bytes, now_ms: int) -> deque[_Pending]:
        table = self._pending
        queue = table.get(sender)
        if queue is None:
            queue = deque(maxlen=SENDER_EVENTS_MAX)
            table[sender] = queue
            if len(table) > PENDING_SENDERS_MAX:
                table.popitem(last=False)
            return queue
        table.move_to_end(sender)
        expired = now_ms - self.cfg.pending_ttl_ms
        while queue and queue[0].timestamp_ms < expired:
            queue.popleft()
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


class _Scored:
    """One scored micro-batch: reasons of its txs, the held ones' computed together."""

    __slots__ = ("X", "contexts", "excess_held", "held_rows", "high", "limit", "model", "odds")

    def __init__(
        self,
        model: TrainedModel,
        X: FloatArray,
        odds: FloatArray,
        contexts: list[tuple[Any, ...]],
        held: npt.NDArray[np.bool_],
        limit: int,
    ) -> None:
        self.model, self.X, self.odds, self.contexts, self.limit = model, X, odds, contexts, limit
        self.high = model.ranges.high if model.ranges is not None else None
        self.held_rows = np.flatnonzero(held)
        self.excess_held = (
            model.forest.explain(X[self.held_rows]) - model.baseline
            if self.held_rows.size
            else None
        )

    def reasons(self, i: int) -> tuple[str, ...]:
        model = self.model
        at = int(np.searchsorted(self.held_rows, i))
        if self.excess_held is not None and at < self.held_rows.size and self.held_rows[at] == i:
            excess = self.excess_held[at]
        else:
            excess = (model.forest.explain(self.X[i : i + 1]) - model.baseline)[0]
        context = _Context._make(self.contexts[i])
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
