"""The detector wired into the node: admission screening, quarantine, training, operator actions.

``Screening`` owns a ``node.detect.detector.Detector`` and the ``node.detect.quarantine.Quarantine``:

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

Config: the ``[detector]`` table goes to ``DetectorConfig`` except the quarantine's own keys,
``quarantine_ttl_ms``, ``quarantine_txs_max`` and ``quarantine_rejected_max``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from common.codec import CodecError
from common.crypto import to_hex
from node.chain.ledger import Receipt
from node.chain.tx import Transaction, tx_hash_of
from node.detect import quarantine as qmod
from node.detect.detector import Detector, DetectorConfig, Verdict
from node.detect.quarantine import Held, Persist, Quarantine
from node.errors import INVALID_PARAMS, NOT_FOUND, VigilError
from node.host.admission import Screened

log = logging.getLogger(__name__)

ANOMALY_MAX = 100_000  # tx hash -> verdict, for tx_get's "anomaly" of pending/committed txs
TRUSTED_MAX = 10_000  # hashes released by a peer validator, admitted without screening
REPLAY_BLOCKS_MAX = 5_000  # at start-up, rebuild history from at most this many recent blocks
LIST_MAX = 1_000

QUARANTINE_KEYS = {
    "quarantine_ttl_ms": "ttl_ms",
    "quarantine_txs_max": "txs_max",
    "quarantine_rejected_max": "rejected_max",
}


def wall_ms() -> int:
    return int(time.time() * 1000)


def split_config(table: Mapping[str, Any]) -> tuple[DetectorConfig, dict[str, int]]:
    """The ``[detector]`` table: the detector's keys, and the quarantine's (checked here)."""
    rest = dict(table)
    qargs: dict[str, int] = {}
    for key, arg in QUARANTINE_KEYS.items():
        if key in rest:
            value = rest.pop(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"detector.{key}: expected a positive integer")
            qargs[arg] = value
    return DetectorConfig.from_mapping(rest), qargs


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
    ) -> None:
        cfg, qargs = split_config(table)
        self.detector = Detector(cfg)
        self.metrics = metrics
        self.clock_ms = clock_ms
        self.quarantine = Quarantine(
            store, persist=persist, on_rejected=self._count_rejected, **qargs
        )
        self._anomaly: OrderedDict[bytes, Verdict] = OrderedDict()
        self._trusted: OrderedDict[bytes, None] = OrderedDict()
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

    def screen(self, txs: Sequence[Transaction]) -> list[Screened]:
        """One verdict per tx, same order; the admission hook (node.admission.Screen)."""
        if not txs or not self.detector.cfg.enabled:
            return [Screened(False) for _ in txs]
        verdicts = self.detector.score_batch(txs, self.clock_ms())
        out: list[Screened] = []
        for tx, v in zip(txs, verdicts, strict=True):
            if v.model_version == 0:
                out.append(Screened(False))
                continue
            h = tx.hash
            self._anomaly[h] = v
            self._anomaly.move_to_end(h)
            if len(self._anomaly) > ANOMALY_MAX:
                self._anomaly.popitem(last=False)
            self._observe_score(v.score)
            trusted = h in self._trusted
            if trusted:
                del self._trusted[h]
            out.append(Screened(v.quarantine and not trusted, v.score, v.reasons))
        return out

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
        self.quarantine.hold(Held(tx, score, threshold, tuple(verdict.reasons), now), now)
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
        model = await loop.run_in_executor(None, self.detector.fit, X, seed)
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
        return [
            {**h.tx.to_json(), **h.anomaly(), "quarantined_at_ms": h.since_ms}
            for h in self.quarantine.held(LIST_MAX if limit is None else limit)
        ]

    def release(self, tx_hash: bytes) -> dict[str, Any]:
        """Into the mempool (raises VigilError, leaving it held, when the mempool refuses it)."""
        self.quarantine.expire(self.clock_ms())
        held = self.quarantine.get(tx_hash)
        if held is None:
            raise VigilError(NOT_FOUND, "not in quarantine")
        if self._releaser is None:
            raise VigilError(NOT_FOUND, "release is not available")
        result = self._releaser.admit_released(held.tx)
        self.quarantine.release(tx_hash)
        self._gauge()
        if self._broadcast is not None:
            self._broadcast({"t": "txs", "txs": [held.tx.encode()], "released": True})
        log.info("quarantine_released", extra={"tx": tx_hash.hex()})
        return result

    def reject(self, tx_hash: bytes) -> dict[str, Any]:
        self.quarantine.expire(self.clock_ms())
        try:
            rec = self.quarantine.reject(tx_hash, self.clock_ms())
        except KeyError:
            raise VigilError(NOT_FOUND, "not in quarantine") from None
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
        if v is None:
            return None
        return {"score": v.score, "threshold": v.threshold, "reasons": list(v.all_reasons())}

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
            quarantined_total=self.quarantined_total,
            rejected_recorded=self.quarantine.rejected_count,
            quarantine_ttl_ms=self.quarantine.ttl_ms,
            training=self._training is not None,
        )
        return out

    # --- metrics ------------------------------------------------------------------------------

    def _metric(self, name: str, fn: Callable[[Any], Any]) -> None:
        m = getattr(self.metrics, name, None) if self.metrics is not None else None
        if m is not None:
            fn(m)

    def _gauge(self) -> None:
        self._metric("quarantine_txs", lambda m: m.set(len(self.quarantine)))

    def _observe_score(self, score: float) -> None:
        self._metric("detector_score", lambda m: m.observe(score))

    def _count_rejected(self, reason: str) -> None:
        self._metric("txs_rejected_total", lambda m: m.labels(reason=reason).inc())
