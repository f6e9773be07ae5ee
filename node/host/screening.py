"""The detector wired into the node: admission screening, quarantine, training, operator actions.

``Screening`` owns a ``node.detect.detector.Detector`` and the
``node.detect.quarantine.Quarantine``:

- ``screen(txs)`` is the admission hook (``node.host.admission.Screen``): one micro-batch, one
  vectorized ``score_batch`` call; a tx above the threshold (after warm-up) comes back
  ``quarantined`` and the runtime hands it to ``hold``.
- ``on_block_committed(block, receipts)`` folds every committed block into the detector's history,
  drops committed txs from the quarantine, expires old entries and, when the detector asks for
  it, fits a new model in an executor and installs it on the loop.
- ``release`` / ``reject`` / ``listing`` back the admin RPC methods; ``tx_info``, ``anomaly`` and
  ``status`` back ``tx_get`` and ``detector_status``.

The detector is an admission policy only: nothing here is consulted when validating a block.

A release is told to the other validators (a ``txs`` frame with ``released: true``): they admit
those txs without screening, so a released tx reaches whichever validator is primary. Trusting a
peer validator here adds nothing a byzantine primary could not already do (propose any valid tx).

Config: the ``[detector]`` table goes to ``DetectorConfig`` except the quarantine's own keys
(``quarantine_*``) and the host's (``hold_budget_per_min``, ``drift_warn_psi``,
``hold_rate_warn_per_min``); docs/config.md lists them.

A held sender is never left in the dark: its later nonces wait behind the held tx (``waiting``,
``blocked_by``); a release lets them through in nonce order, and a reject or an expiry fails
them at once, here and, through a ``txs`` frame with a ``dropped`` list, on the other validators.
Every would-be hold passes the hold budget (node/detect/budget.py) first.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor
from typing import Any, Protocol

from common.codec import CodecError
from common.crypto import to_hex
from ml.features import N_FEATURES
from node.chain.ledger import Receipt
from node.chain.tx import Transaction, tx_hash_of
from node.detect import audit
from node.detect import quarantine as qmod
from node.detect.budget import HoldBudget
from node.detect.detector import Detector, DetectorConfig, Verdict
from node.detect.quarantine import Held, Persist, Quarantine, Rejected
from node.errors import INVALID_PARAMS, NOT_FOUND, VigilError
from node.host.admission import Screened
from node.host.fitting import FitStopped, Pacer, fitting_worker

log = logging.getLogger(__name__)

ANOMALY_MAX = 100_000  # tx hash -> verdict, for tx_get's "anomaly" of pending/committed txs
TRUSTED_MAX = 10_000  # hashes released by a peer validator, admitted without screening
REPLAY_BLOCKS_MAX = 5_000  # at start-up, rebuild history from at most this many recent blocks
LIST_MAX = 1_000

QUARANTINE_KEYS = {
    "quarantine_ttl_ms": "ttl_ms",
    "quarantine_txs_max": "txs_max",
    "quarantine_rejected_max": "rejected_max",
    "quarantine_bytes_max": "bytes_max",
    "quarantine_sender_txs_max": "sender_txs_max",
}
# The host's keys of the [detector] table, with their defaults.
HOLD_BUDGET_PER_MIN = 30  # senders newly held a minute, at most (node/detect/budget.py)
DRIFT_WARN_PSI = 0.25  # a feature's PSI above this: warning log "detector_drift_high"
HOLD_RATE_WARN_PER_MIN = 20  # holds in the last minute above this: "detector_hold_rate_high"
WARN_EVERY_MS = 60_000  # each warning at most once a minute
MONITOR_EVERY_MS = 1_000  # gauges and warnings refreshed at most this often
# Peers' txs are never held here, so their scores (tx_get, the score metrics, drift) are worked
# out in batches off the admission path: when this many wait, or every LATER_EVERY_MS. A model
# call costs ~0.4 ms whatever the batch; a row ~20 us (scripts/bench_admission --batch 1 vs 256).
LATER_BATCH = 256
LATER_EVERY_MS = 100

# Reasons a waiting tx fails when the tx it waited on leaves the quarantine for good.
BLOCKER_REASONS = {
    qmod.REJECTED: "blocked_tx_rejected",
    qmod.EXPIRED: "blocked_tx_expired",
    qmod.FULL: "blocked_tx_evicted",
}


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"detector.{key}: expected a positive integer")
    return value


def _positive_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"detector.{key}: expected a positive number")
    return float(value)


def wall_ms() -> int:
    return int(time.time() * 1000)


TRACKER_QUIET = "ignore:resource_tracker:UserWarning"  # see training_pool


class TrainingPool(ProcessPoolExecutor):
    """The fitting process (``training_pool``), which a stop does not wait for: ``shutdown``
    tells a fit in progress to give up at its next pause (node/host/fitting.py ``Pacer``).
    Otherwise the node's exit waits for it, and a paced fit lasts seconds."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._fit_stopping = context.Event()
        super().__init__(
            max_workers=1,
            mp_context=context,
            initializer=fitting_worker,
            initargs=(os.getpid(), self._fit_stopping),
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._fit_stopping.set()
        super().shutdown(wait=wait, cancel_futures=cancel_futures)


def training_pool() -> ProcessPoolExecutor:
    """One worker process for model fits, at a lower CPU priority than the node.

    A fit is ~0.15 s of numpy and Python on an idle core, and every validator trains at the same
    heights. In a thread it held the node's GIL against its event loop for 1-2 s under load
    (the loop waits for the GIL after every syscall), long enough to stall commits towards the
    request timer; in its own process it shares no GIL. Its priority alone did not keep it from
    delaying the validators' loops on a shared machine: it also paces itself to a tenth of a
    core (node/host/fitting.py ``Pacer``). "spawn": the node has threads and an event loop,
    which fork would copy.
    """
    # multiprocessing's resource tracker (a helper process started with the pool, sharing our
    # stderr, i.e. the JSON log) outlives a node killed with SIGKILL, cleans up the pool's
    # semaphores as it should, and says so in a plain-text warning: a line that is not JSON
    # (tests/e2e/test_e2e_observability.py). It takes its warning filters from our -W options,
    # read when it starts.
    if TRACKER_QUIET not in sys.warnoptions:
        sys.warnoptions.append(TRACKER_QUIET)
    # The worker starts at the first fit. Started with the node instead (tried in stop 20), it
    # took the CPU from four validators agreeing on a new cluster's first blocks: a heartbeat
    # chain in the e2e suite changed view. Its initializer (node/host/fitting.py) lowers its
    # priority before numpy loads, so that first start costs the validators little either way.
    return TrainingPool()


def split_config(table: Mapping[str, Any]) -> tuple[DetectorConfig, dict[str, int]]:
    """The ``[detector]`` table: the detector's keys, and the quarantine's (checked here)."""
    rest = dict(table)
    for key in ("hold_budget_per_min", "drift_warn_psi", "hold_rate_warn_per_min"):
        rest.pop(key, None)
    qargs: dict[str, int] = {}
    for key, arg in QUARANTINE_KEYS.items():
        if key in rest:
            qargs[arg] = _positive_int(key, rest.pop(key))
    return DetectorConfig.from_mapping(rest), qargs


class Monitor:
    """The host's detector keys: hold budget and warning levels, checked at startup."""

    def __init__(self, table: Mapping[str, Any]) -> None:
        self.budget_per_min = _positive_int(
            "hold_budget_per_min", table.get("hold_budget_per_min", HOLD_BUDGET_PER_MIN)
        )
        self.drift_warn_psi = _positive_number(
            "drift_warn_psi", table.get("drift_warn_psi", DRIFT_WARN_PSI)
        )
        self.hold_rate_warn_per_min = _positive_int(
            "hold_rate_warn_per_min", table.get("hold_rate_warn_per_min", HOLD_RATE_WARN_PER_MIN)
        )


class Releaser(Protocol):
    """What a release needs from node.admission.Admission."""

    def admit_released(self, tx: Transaction) -> dict[str, Any]: ...


class ChainLike(Protocol):
    @property
    def height(self) -> int: ...
    def get_block(self, height: int) -> Any: ...
    @property
    def store(self) -> Any: ...


class Screening:
    def __init__(
        self,
        table: Mapping[str, Any],
        store: qmod.StoreLike | None,
        metrics: Any,
        *,
        persist: Persist | None = None,
        clock_ms: Callable[[], int] = wall_ms,
        train_pool: Executor | None = None,
    ) -> None:
        cfg, qargs = split_config(table)
        # Where models are fitted: the runtime passes a low-priority process (training_pool);
        # None is the loop's default thread pool (tests).
        self._train_pool = train_pool
        # Set when ``run`` ends (the node is stopping): a fit in a thread of this process gives
        # up at its next pause (node/host/fitting.py ``Pacer``; the fitting process has its own).
        self._fits_stopping = threading.Event()
        self.monitor = Monitor(table)
        self.detector = Detector(cfg)
        self.budget = HoldBudget(self.monitor.budget_per_min)
        self.metrics = metrics
        self.clock_ms = clock_ms
        self.quarantine = Quarantine(store, persist=persist, on_rejected=self._left, **qargs)
        # Set by the runtime: fail the txs waiting behind a held tx that will never commit.
        self.drop_waiting: Callable[[Held, str], None] | None = None
        self.on_unblocked: Callable[[Held], None] | None = None
        self._warned: dict[str, int] = {}
        self._monitored_ms = -MONITOR_EVERY_MS
        self._overflows_seen = 0
        self._anomaly: OrderedDict[bytes, Verdict] = OrderedDict()
        self._trusted: OrderedDict[bytes, None] = OrderedDict()
        self._watched: OrderedDict[bytes, None] = OrderedDict()  # passed over the budget
        self._training: asyncio.Task[None] | None = None
        self._releaser: Releaser | None = None
        self._broadcast: Callable[[dict[str, Any]], Any] | None = None
        self.quarantined_total = 0

    def bind(self, releaser: Releaser, broadcast: Callable[[dict[str, Any]], Any] | None) -> None:
        """Where released txs go (the admission) and how peers hear of a release."""
        self._releaser = releaser
        self._broadcast = broadcast

    # --- start-up (blocking: run in a thread before serving) -----------------------------------

    def start(self, chain: ChainLike, genesis_addresses: Sequence[bytes]) -> int:
        """Load the quarantine and rebuild detector history from recent blocks; returns held."""
        self.detector.note_addresses(genesis_addresses)
        self._chain: ChainLike | None = chain
        self._genesis_addresses = list(genesis_addresses)
        self._replay(chain)
        held = self.quarantine.load(self.clock_ms())
        self._gauge()
        return held

    def _replay(self, chain: ChainLike) -> None:
        height = chain.height
        want = self.detector.cfg.window_txs
        first, count = height + 1, 0
        while first > 1 and count < want and height + 1 - first < REPLAY_BLOCKS_MAX:
            first -= 1
            block = chain.get_block(first)
            count += len(block.txs) if block is not None else 0
        for h in range(first, height + 1):
            block = chain.get_block(h)
            if block is not None:
                self.detector.observe_block(
                    block, [self._receipt_ok(chain, tx) for tx in block.txs]
                )

    @staticmethod
    def _receipt_ok(chain: ChainLike, tx: Transaction) -> bool:
        raw = chain.store.get_receipt(tx.hash)
        try:
            return raw is None or Receipt.decode(raw).ok
        except CodecError:
            return True

    # --- admission ------------------------------------------------------------------------------

    def screen(
        self, txs: Sequence[Transaction], local: Sequence[bool] | None = None
    ) -> list[Screened]:
        """One verdict per tx, same order; the admission hook (node.admission.Screen).

        Only ``local`` txs (from this node's clients; all when None) may be held, and each
        would-be hold passes the hold budget, highest scores first.
        """
        if not txs:
            return []
        if not self.detector.cfg.enabled:
            return [Screened(False, blocked_by=self._blocked_by(tx)) for tx in txs]
        now = self.clock_ms()
        later = None if local is None else [not mine for mine in local]
        verdicts = self.detector.score_batch(txs, now, later)
        hold = [False] * len(txs)
        watch = [False] * len(txs)
        holding: dict[bytes, tuple[int, bytes]] = {}  # held in this batch: sender -> nonce, hash
        wanted = [
            i
            for i, v in enumerate(verdicts)
            if v.quarantine and (local is None or local[i]) and txs[i].hash not in self._trusted
        ]
        for i in sorted(wanted, key=lambda i: -verdicts[i].score):
            tx = txs[i]
            sender = tx.sender_address
            if self.quarantine.blocker(sender, tx.nonce) is not None:
                continue  # an earlier nonce is held: this one waits behind it (``blocked_by``)
            blocked = sender in holding
            if self.budget.decide(sender, verdicts[i].score, now, blocked=blocked):
                hold[i] = True
                known = holding.get(sender)
                if known is None or tx.nonce < known[0]:
                    holding[sender] = (tx.nonce, tx.hash)
            else:
                watch[i] = True
        for i, tx in enumerate(txs):  # one hold per sender: its later nonces wait behind it
            first = holding.get(tx.sender_address)
            if hold[i] and first is not None and first[0] < tx.nonce:
                hold[i] = False
        if any(watch):
            self._metric("detector_budget_overflows_total", lambda m: m.inc(sum(watch)))
            self._warn(
                "detector_hold_budget_exceeded",
                now,
                {"budget_per_min": self.budget.per_min, "overflows": self.budget.overflows},
            )
        out: list[Screened] = []
        for i, (tx, v) in enumerate(zip(txs, verdicts, strict=True)):
            h = tx.hash
            trusted = h in self._trusted
            if trusted:
                del self._trusted[h]
            blocker = holding.get(tx.sender_address)
            blocked_by = (
                blocker[1]
                if blocker is not None and blocker[0] < tx.nonce
                else self._blocked_by(tx)
            )
            if v.model_version == 0:
                out.append(Screened(False, blocked_by=blocked_by))
                continue
            self._remember(h, v)
            if watch[i]:
                self._watched[h] = None
                if len(self._watched) > ANOMALY_MAX:
                    self._watched.popitem(last=False)
            out.append(Screened(hold[i], v.score, v.reasons, watch[i], blocked_by))
        if self.detector.later_count >= LATER_BATCH:
            self.score_later()
        return out

    def _remember(self, tx_hash: bytes, v: Verdict) -> None:
        self._anomaly[tx_hash] = v
        self._anomaly.move_to_end(tx_hash)
        if len(self._anomaly) > ANOMALY_MAX:
            self._anomaly.popitem(last=False)
        self._observe_score(v.score)

    def score_later(self) -> int:
        """Score the peers' txs that ``screen`` deferred; how many were scored."""
        if not self.detector.later_count:
            return 0
        scored = self.detector.score_later(self.clock_ms())
        for tx, v in scored:
            self._remember(tx.hash, v)
        return len(scored)

    def _blocked_by(self, tx: Transaction) -> bytes | None:
        held = self.quarantine.blocker(tx.sender_address, tx.nonce)
        return held.hash if held is not None else None

    def holds_sender(self, sender: bytes) -> bool:
        """Whether a tx of ``sender`` is held here (its later nonces wait behind it)."""
        return self.quarantine.holds(sender)

    def blocked_by(self, tx: Transaction) -> bytes | None:
        """The held tx ``tx`` waits behind (an earlier nonce of its sender), if any."""
        return self._blocked_by(tx)

    __call__ = screen

    def hold(self, tx: Transaction, verdict: Screened) -> None:
        """A tx the screen quarantined (runtime's ``on_quarantined`` callback)."""
        h = tx.hash
        if h in self.quarantine:
            return
        known = self._anomaly.get(h)
        threshold = known.threshold if known is not None else 0.0
        score = verdict.score if verdict.score is not None else 0.0
        now = self.clock_ms()
        audit: tuple[Any, ...] = ()
        if known is not None and known.model_id and known.features:
            audit = (known.model_id, self.detector.spec, known.features, known.context)
        self.quarantine.hold(Held(tx, score, threshold, tuple(verdict.reasons), now, *audit), now)
        self.quarantined_total += 1
        self._metric("txs_quarantined_total", lambda m: m.inc())
        self._gauge()
        log.info(
            "tx_quarantined",
            extra={"tx": h.hex(), "score": round(score, 4), "reasons": list(verdict.reasons)},
        )

    def known(self, tx_hash: bytes) -> bool:
        """Held or rejected here: admission answers a resubmission as a duplicate."""
        return self.quarantine.known(tx_hash)

    # --- commits and training -----------------------------------------------------------------

    def on_block_committed(self, block: Any, receipts: Sequence[Any]) -> None:
        """After each committed block (on the loop, in height order)."""
        txs = block.txs
        ok = [bool(r.ok) for r in receipts] if len(receipts) == len(txs) else None
        self.detector.observe_block(block, ok)
        if txs:
            self.quarantine.forget([tx.hash for tx in txs])
        self.quarantine.expire(self.clock_ms())
        self._gauge()
        self.monitor_tick()
        self._maybe_train(block.header.height)

    def _maybe_train(self, height: int) -> None:
        if self._training is not None or not self.detector.needs_training(height):
            return
        X, seed = self.detector.train_snapshot()
        self._training = asyncio.get_running_loop().create_task(self._train(X, seed, height))
        self._training.add_done_callback(self._trained)

    async def _train(self, X: Any, seed: int, height: int) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        fit = self.detector.fit_function(pause=Pacer(stopping=self._fits_stopping))
        try:
            try:
                model = await loop.run_in_executor(self._train_pool, fit, X, seed)
            except BrokenExecutor:
                # The training process died (killed, out of memory): fit here from now on.
                log.warning("detector_training_process_lost")
                self._train_pool = None
                model = await loop.run_in_executor(None, fit, X, seed)
        except FitStopped:
            return  # the node is stopping
        self.detector.install_model(model, height)
        self._metric("detector_trainings_total", lambda m: m.inc())
        self._metric("detector_threshold", lambda m: m.set(model.threshold))
        self._metric(
            "detector_model_version", lambda m: m.set(self.detector.status()["model_version"])
        )
        log.info(
            "detector_trained",
            extra={
                "height": height,
                "rows": model.rows,
                "threshold": round(model.threshold, 4),
                "ms": round((time.monotonic() - started) * 1000, 1),
            },
        )

    def _trained(self, task: asyncio.Task[None]) -> None:
        self._training = None
        if not task.cancelled() and task.exception() is not None:
            log.error("detector_training_failed", exc_info=task.exception())

    async def wait_trained(self) -> None:
        """For tests: wait for a training in progress."""
        if self._training is not None:
            await asyncio.shield(self._training)

    # --- operator -----------------------------------------------------------------------------

    def listing(self, limit: int | None = None) -> list[dict[str, Any]]:
        if limit is not None and (limit < 0 or limit > LIST_MAX):
            raise VigilError(INVALID_PARAMS, f"limit: expected an integer in 0..{LIST_MAX}")
        self.quarantine.expire(self.clock_ms())
        self._gauge()
        return [listing_row(h) for h in self.quarantine.held(LIST_MAX if limit is None else limit)]

    def _not_held(self, tx_hash: bytes) -> VigilError:
        rec = self.quarantine.rejected(tx_hash)
        if rec is not None:
            return VigilError(NOT_FOUND, f"not in quarantine: already rejected ({rec.reason})")
        return VigilError(NOT_FOUND, "not in quarantine: unknown here, or already released")

    def record(self, tx_hash: bytes) -> Held:
        """A held tx, or the held record of a rejected one (for ``explain``)."""
        held = self.quarantine.get(tx_hash)
        if held is not None:
            return held
        rec = self.quarantine.rejected(tx_hash)
        if rec is not None:
            return rec.held
        raise VigilError(NOT_FOUND, "no quarantine record of this transaction")

    def show(self, tx_hash: bytes) -> dict[str, Any]:
        """One quarantine record, held or rejected, with its audit trail and what waits on it."""
        self.quarantine.expire(self.clock_ms())
        held = self.quarantine.get(tx_hash)
        if held is not None:
            return {**listing_row(held), "state": "held"}
        rec = self.quarantine.rejected(tx_hash)
        if rec is not None:
            return {**listing_row(rec.held), "state": "rejected", "reason": rec.reason}
        raise VigilError(NOT_FOUND, "no quarantine record of this transaction")

    async def explain(self, tx_hash: bytes) -> dict[str, Any]:
        """Rebuild the hold's model from this node's chain (in a worker thread) and score the
        recorded feature vector again: the same model id, score and reasons, or say what differs."""
        held = self.record(tx_hash)
        if self._chain is None:
            raise VigilError(NOT_FOUND, "explain is not available")
        chain, addresses, cfg = self._chain, self._genesis_addresses, self.detector.cfg
        return await asyncio.to_thread(explain_record, chain, addresses, cfg, held)

    def release(self, tx_hash: bytes) -> dict[str, Any]:
        """Into the mempool (raises VigilError, leaving it held, when the mempool refuses it)."""
        self.quarantine.expire(self.clock_ms())
        held = self.quarantine.get(tx_hash)
        if held is None:
            raise self._not_held(tx_hash)
        if self._releaser is None:
            raise VigilError(NOT_FOUND, "release is not available")
        result = self._releaser.admit_released(held.tx)
        self.quarantine.release(tx_hash)
        self._gauge()
        if self.on_unblocked is not None:
            self.on_unblocked(held)
        if self._broadcast is not None:
            self._broadcast({"t": "txs", "txs": [held.tx.encode()], "released": True})
        log.info("quarantine_released", extra={"tx": tx_hash.hex()})
        return result

    def reject(self, tx_hash: bytes) -> dict[str, Any]:
        self.quarantine.expire(self.clock_ms())
        try:
            rec = self.quarantine.reject(tx_hash, self.clock_ms())
        except KeyError:
            raise self._not_held(tx_hash) from None
        self._gauge()
        return {"hash": to_hex(tx_hash), "status": "rejected", "reason": rec.reason}

    def on_peer_release(self, raws: Sequence[Any]) -> None:
        """A peer's operator released these txs: admit them here without screening."""
        for raw in raws:
            if not isinstance(raw, bytes):
                continue
            h = tx_hash_of(raw)
            held = self.quarantine.get(h)
            if held is not None and self._releaser is not None:
                try:
                    self._releaser.admit_released(held.tx)
                except VigilError as exc:
                    log.info("peer_release_refused", extra={"tx": h.hex(), "reason": exc.name})
                    continue
                self.quarantine.release(h)
                continue
            self._trusted[h] = None
            if len(self._trusted) > TRUSTED_MAX:
                self._trusted.popitem(last=False)
        self._gauge()

    # --- queries ------------------------------------------------------------------------------

    def anomaly(self, tx_hash: bytes) -> dict[str, Any] | None:
        """``{score, threshold, reasons}`` of a tx this node scored, if it still remembers it."""
        held = self.quarantine.get(tx_hash)
        if held is not None:
            return held.anomaly()
        v = self._anomaly.get(tx_hash)
        if v is None and self.score_later():
            v = self._anomaly.get(tx_hash)
        if v is None:
            return None
        out: dict[str, Any] = {
            "score": v.score,
            "threshold": v.threshold,
            "reasons": list(v.all_reasons()),
        }
        if tx_hash in self._watched:
            out["watch"] = True
        return out

    def tx_info(self, tx_hash: bytes) -> dict[str, Any] | None:
        """tx_get's answer for a quarantined or quarantine-rejected tx, else None."""
        self.quarantine.expire(self.clock_ms())
        held = self.quarantine.get(tx_hash)
        if held is not None:
            return {
                **held.tx.to_json(),
                "status": "quarantined",
                "height": None,
                "index": None,
                "anomaly": held.anomaly(),
                "quarantined_at_ms": held.since_ms,
            }
        rec = self.quarantine.rejected(tx_hash)
        if rec is not None:
            return {
                **rec.held.tx.to_json(),
                "status": "rejected",
                "reason": rec.reason,
                "height": None,
                "index": None,
                "anomaly": rec.held.anomaly(),
            }
        return None

    def status(self) -> dict[str, Any]:
        out = self.detector.status()
        out.update(
            quarantined=len(self.quarantine),
            quarantined_bytes=self.quarantine.size_bytes,
            quarantined_total=self.quarantined_total,
            rejected_recorded=self.quarantine.rejected_count,
            quarantine_ttl_ms=self.quarantine.ttl_ms,
            training=self._training is not None,
            **self.monitoring(),
        )
        return out

    # --- metrics ------------------------------------------------------------------------------

    def _metric(self, name: str, fn: Callable[[Any], Any]) -> None:
        m = getattr(self.metrics, name, None) if self.metrics is not None else None
        if m is not None:
            fn(m)

    def _set_labelled(self, name: str, label: str, value: float) -> None:
        m = getattr(self.metrics, name, None) if self.metrics is not None else None
        if m is not None:
            m.labels(label).set(value)

    def _gauge(self) -> None:
        self._metric("quarantine_txs", lambda m: m.set(len(self.quarantine)))

    def _observe_score(self, score: float) -> None:
        self._metric("detector_score", lambda m: m.observe(score))

    def _left(self, rec: Rejected) -> None:
        """A held tx left the quarantine for good: count it, and fail what waited behind it."""
        self._metric("txs_rejected_total", lambda m: m.labels(reason=rec.reason).inc())
        if self.drop_waiting is not None:
            try:
                self.drop_waiting(rec.held, BLOCKER_REASONS.get(rec.reason, rec.reason))
            except Exception:  # the quarantine's bookkeeping must not break on a wiring bug
                log.exception("drop_waiting_failed")

    def _warn(self, event: str, now_ms: int, fields: dict[str, Any]) -> None:
        """A warning log line, at most once a minute per kind."""
        if now_ms - self._warned.get(event, -WARN_EVERY_MS) >= WARN_EVERY_MS:
            self._warned[event] = now_ms
            log.warning(event, extra=fields)

    def monitor_tick(self, force: bool = False) -> None:
        """Expire old holds, refresh the monitoring gauges, warn on drift or a high hold rate.

        Cheap enough for every commit; does the work at most once a second."""
        now = self.clock_ms()
        if not force and now - self._monitored_ms < MONITOR_EVERY_MS:
            return
        self._monitored_ms = now
        self.quarantine.expire(now)
        self._gauge()
        if not self.detector.cfg.enabled:
            return
        mon = self.monitoring(now)
        drift = mon["drift_psi"] or {}
        for name, value in drift.items():
            self._set_labelled("detector_drift_psi", name, value)
        high = {k: v for k, v in drift.items() if v > self.monitor.drift_warn_psi}
        if high:
            self._warn(
                "detector_drift_high",
                now,
                {"psi": high, "warn_above": self.monitor.drift_warn_psi},
            )
        holds = mon["holds_last_minute"]
        self._metric("detector_holds_per_minute", lambda m: m.set(holds))
        if holds > self.monitor.hold_rate_warn_per_min:
            self._warn(
                "detector_hold_rate_high",
                now,
                {"holds_last_minute": holds, "warn_above": self.monitor.hold_rate_warn_per_min},
            )
        age = mon["model_age_blocks"]
        if age is not None:
            self._metric("detector_model_age_blocks", lambda m: m.set(age))
        quantiles = self.detector.score_quantiles()
        for q, value in quantiles.items():
            if value is not None:
                self._set_labelled("detector_score_quantile", q, value)

    def monitoring(self, now_ms: int | None = None) -> dict[str, Any]:
        now = self.clock_ms() if now_ms is None else now_ms
        return {
            "drift_psi": self.detector.drift(),
            "drift_warn_psi": self.monitor.drift_warn_psi,
            "holds_last_minute": self.budget.holds_last_minute(now),
            "held_senders_last_minute": self.budget.senders_last_minute(now),
            "hold_rate_warn_per_min": self.monitor.hold_rate_warn_per_min,
            "hold_budget_per_min": self.budget.per_min,
            "budget_overflows": self.budget.overflows,
            "model_age_blocks": self.detector.model_age_blocks,
        }

    async def run(self) -> None:
        """The deferred scores every LATER_EVERY_MS; once a second, TTL expiry (even when no
        block commits) and the monitoring."""
        try:
            while True:
                await asyncio.sleep(LATER_EVERY_MS / 1000)
                try:
                    self.score_later()
                    self.monitor_tick()  # itself at most once per MONITOR_EVERY_MS
                except Exception:  # scoring for the record and monitoring must not stop the node
                    log.exception("detector_monitor_failed")
        finally:
            self._fits_stopping.set()


def listing_row(h: Held) -> dict[str, Any]:
    """A held tx as ``quarantine_list`` shows it (CONTRACT: hash, score, threshold, reasons,
    model_id, ...)."""
    out = {
        **h.tx.to_json(),
        **h.anomaly(),
        "model_id": "0x" + h.model_id.hex() if h.model_id else None,
        "quarantined_at_ms": h.since_ms,
    }
    if h.window is not None:
        out["training_window"] = h.window.to_json()
        out["raw"] = to_hex(h.tx.encode())
        out["audit"] = {
            "score": h.score,
            "features": list(h.features),
            "context": [list(v) if isinstance(v, tuple) else v for v in h.context],
        }
    return out


def held_from_show(tx: Transaction, shown: Mapping[str, Any]) -> Held:
    """The audit part of a ``quarantine_show`` answer as a Held (to explain it elsewhere)."""
    from node.detect.detector import WindowSpec

    a, w = shown["audit"], shown["training_window"]
    return Held(
        tx,
        float(a["score"]),
        float(shown["threshold"]),
        tuple(shown["reasons"]),
        int(shown["quarantined_at_ms"]),
        bytes.fromhex(str(shown["model_id"])[2:]),
        WindowSpec(w["history_from"], w["first_height"], w["last_height"], w["rows"], w["seed"]),
        tuple(float(x) for x in a["features"]),
        tuple(tuple(v) if isinstance(v, list) else v for v in a["context"]),
    )


def explain_record(
    chain: ChainLike, genesis_addresses: Sequence[bytes], cfg: DetectorConfig, held: Held
) -> dict[str, Any]:
    """Blocking: rebuild the model of a hold from ``chain`` and score its features again."""
    if held.window is None or not held.model_id or not held.features:
        raise VigilError(NOT_FOUND, "this hold has no audit record (held before model ids)")
    spec = held.window
    if len(held.features) != N_FEATURES:
        raise VigilError(
            NOT_FOUND,
            f"this hold was scored on {len(held.features)} features by an older detector, this one"
            f" has {N_FEATURES}: its model cannot be rebuilt here",
        )

    def blocks() -> Any:
        for h in range(spec.history_from, spec.last_height + 1):
            block = chain.get_block(h)
            if block is None:
                return
            yield block, [Screening._receipt_ok(chain, tx) for tx in block.txs]

    try:
        model = audit.rebuild(cfg, spec, genesis_addresses, blocks())
    except audit.AuditError as exc:
        raise VigilError(NOT_FOUND, f"cannot rebuild the model: {exc}") from None
    got = audit.explain(model, cfg, spec, held.features, held.context)
    return {
        "hash": to_hex(held.hash),
        "model_id": to_hex(held.model_id),
        "rebuilt_model_id": to_hex(got.model_id),
        "training_window": spec.to_json(),
        "recorded": {
            "score": held.score,
            "threshold": held.threshold,
            "reasons": list(held.reasons),
        },
        "rebuilt": {"score": got.score, "threshold": got.threshold, "reasons": list(got.reasons)},
        "features": got.features,
        "same_model": got.model_id == held.model_id,
        "same_score": got.score == held.score,
        "same_reasons": list(got.reasons) == list(held.reasons),
    }
