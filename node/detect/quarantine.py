"""The quarantine: transactions the detector held back, waiting for an operator.

A held tx is not in the mempool, so it is neither gossiped nor proposed. The operator releases it
(into the mempool) or rejects it (recorded as ``rejected`` with the reason
``quarantine_rejected``); after ``ttl_ms`` without a decision it expires as rejected with the
reason ``quarantine_expired``. Both the held entries and a bounded record of rejected ones live
in LevelDB under the quarantine prefix (``Store.quarantine_put/delete/items``), one key per tx
hash, so a restart keeps them and ``tx_get`` still answers ``rejected`` with the reason.

Memory is authoritative and answers at once; writes go through ``persist`` (the runtime passes
its single commit-writer thread, so writes keep their order and never block the loop). A crash
in the millisecond between the two loses at most that last change, like the mempool it replaces.
Times are wall-clock milliseconds because a TTL must survive a restart.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from common import codec
from common.codec import CodecError
from node.chain.tx import TX_BYTES_MAX, Transaction

log = logging.getLogger(__name__)

TTL_MS = 24 * 3600 * 1000
TXS_MAX = 10_000
REJECTED_MAX = 10_000
REASONS_MAX = 8
SCORE_SCALE = 1_000_000  # the codec has no floats: scores are stored in millionths

EXPIRED = "quarantine_expired"
REJECTED = "quarantine_rejected"
FULL = "quarantine_full"

_RECORD = codec.struct(
    {
        "state": codec.one_of("held", "rejected"),
        "tx": codec.raw(max_size=TX_BYTES_MAX),
        "score": codec.uint(SCORE_SCALE),
        "threshold": codec.uint(SCORE_SCALE),
        "reasons": codec.list_of(codec.text(256), REASONS_MAX),
        "at_ms": codec.uint(),
        "reason": codec.text(64),
    }
)

Persist = Callable[[Callable[[], None]], object]


def _inline(write: Callable[[], None]) -> None:
    write()


def _ppm(x: float) -> int:
    return max(0, min(SCORE_SCALE, round(x * SCORE_SCALE)))


class StoreLike(Protocol):
    """What the quarantine needs of storage.db.Store (a typing aid only)."""

    def quarantine_put(self, tx_hash: bytes, value: bytes) -> None: ...
    def quarantine_delete(self, tx_hash: bytes) -> None: ...
    def quarantine_items(self) -> list[tuple[bytes, bytes]]: ...


@dataclass(frozen=True, slots=True)
class Held:
    """A quarantined tx with the verdict that put it there; ``since_ms`` is wall clock."""

    tx: Transaction
    score: float
    threshold: float
    reasons: tuple[str, ...]
    since_ms: int

    @property
    def hash(self) -> bytes:
        return self.tx.hash

    def anomaly(self) -> dict[str, Any]:
        return {"score": self.score, "threshold": self.threshold, "reasons": list(self.reasons)}


@dataclass(frozen=True, slots=True)
class Rejected:
    """What stays of a tx that left the quarantine without entering the mempool."""

    held: Held
    reason: str
    at_ms: int


def encode_record(held: Held, state: str, reason: str = "", at_ms: int | None = None) -> bytes:
    return codec.encode(
        {
            "state": state,
            "tx": held.tx.encode(),
            "score": _ppm(held.score),
            "threshold": _ppm(held.threshold),
            "reasons": [r[:256] for r in held.reasons[:REASONS_MAX]],
            "at_ms": held.since_ms if at_ms is None else at_ms,
            "reason": reason,
        }
    )


def decode_record(tx_hash: bytes, value: bytes) -> Held | Rejected:
    """One stored record; raises CodecError when it is not ours or does not match its key."""
    m = codec.decode_struct(value, _RECORD, 2 * TX_BYTES_MAX + 4096)
    tx = Transaction.decode(m["tx"])
    if tx.hash != tx_hash:
        raise CodecError("quarantine record: tx does not match its key")
    held = Held(
        tx,
        m["score"] / SCORE_SCALE,
        m["threshold"] / SCORE_SCALE,
        tuple(m["reasons"]),
        m["at_ms"],
    )
    if m["state"] == "held":
        return held
    return Rejected(held, m["reason"], m["at_ms"])


class Quarantine:
    """Held txs (oldest first) and a bounded record of rejected ones, mirrored in LevelDB."""

    def __init__(
        self,
        store: StoreLike | None,
        *,
        ttl_ms: int = TTL_MS,
        txs_max: int = TXS_MAX,
        rejected_max: int = REJECTED_MAX,
        persist: Persist | None = None,
        on_rejected: Callable[[str], None] | None = None,
    ) -> None:
        if ttl_ms < 1 or txs_max < 1 or rejected_max < 1:
            raise ValueError("quarantine: ttl_ms, txs_max and rejected_max must be positive")
        self._store = store
        self.ttl_ms = ttl_ms
        self.txs_max = txs_max
        self.rejected_max = rejected_max
        self._persist = persist or _inline
        self._on_rejected = on_rejected
        self._held: OrderedDict[bytes, Held] = OrderedDict()
        self._rejected: OrderedDict[bytes, Rejected] = OrderedDict()

    # --- persistence --------------------------------------------------------------------------

    def load(self, now_ms: int) -> int:
        """Read the stored records (blocking: call it in a thread at start-up); returns held."""
        if self._store is None:
            return 0
        held: list[Held] = []
        rejected: list[Rejected] = []
        for key, value in self._store.quarantine_items():
            try:
                rec = decode_record(key, value)
            except CodecError as exc:
                log.warning("quarantine_record_bad", extra={"reason": exc.reason})
                self._store.quarantine_delete(key)
                continue
            if isinstance(rec, Held):
                held.append(rec)
            else:
                rejected.append(rec)
        for r in sorted(rejected, key=lambda r: r.at_ms):
            self._rejected[r.held.hash] = r
        for h in sorted(held, key=lambda h: h.since_ms):
            self._held[h.hash] = h
        self._trim_rejected()
        self.expire(now_ms)
        while len(self._held) > self.txs_max:
            self._to_rejected(next(iter(self._held)), FULL, now_ms)
        return len(self._held)

    def _write(self, tx_hash: bytes, value: bytes | None) -> None:
        store = self._store
        if store is None:
            return

        def write() -> None:
            try:
                if value is None:
                    store.quarantine_delete(tx_hash)
                else:
                    store.quarantine_put(tx_hash, value)
            except Exception:  # a failed write must not stop admission; memory stays right
                log.exception("quarantine_write_failed")

        try:
            self._persist(write)
        except RuntimeError:  # the writer is shut down: the node is stopping
            log.warning("quarantine_write_skipped")

    # --- queries ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, tx_hash: object) -> bool:
        return tx_hash in self._held

    def get(self, tx_hash: bytes) -> Held | None:
        return self._held.get(tx_hash)

    def rejected(self, tx_hash: bytes) -> Rejected | None:
        return self._rejected.get(tx_hash)

    def known(self, tx_hash: bytes) -> bool:
        """Held or rejected here: a resubmission is a duplicate, not a new tx."""
        return tx_hash in self._held or tx_hash in self._rejected

    def held(self, limit: int | None = None) -> Iterator[Held]:
        """Held txs, oldest first."""
        for n, h in enumerate(self._held.values()):
            if limit is not None and n >= limit:
                return
            yield h

    @property
    def rejected_count(self) -> int:
        return len(self._rejected)

    # --- changes ------------------------------------------------------------------------------

    def hold(self, held: Held, now_ms: int) -> None:
        """Quarantine a tx; when full, the oldest held tx leaves as rejected (``quarantine_full``)."""
        h = held.hash
        if h in self._held:
            return
        self._rejected.pop(h, None)
        while len(self._held) >= self.txs_max:
            self._to_rejected(next(iter(self._held)), FULL, now_ms)
        self._held[h] = held
        self._write(h, encode_record(held, "held"))

    def release(self, tx_hash: bytes) -> Held:
        """Take a tx out for the mempool; KeyError when it is not held."""
        held = self._held.pop(tx_hash)
        self._write(tx_hash, None)
        return held

    def reject(self, tx_hash: bytes, now_ms: int, reason: str = REJECTED) -> Rejected:
        """Drop a held tx for good, recorded as rejected; KeyError when it is not held."""
        if tx_hash not in self._held:
            raise KeyError(tx_hash)
        return self._to_rejected(tx_hash, reason, now_ms)

    def expire(self, now_ms: int) -> list[Rejected]:
        """Held txs older than the TTL become rejected (``quarantine_expired``)."""
        out: list[Rejected] = []
        horizon = now_ms - self.ttl_ms
        while self._held:
            h, held = next(iter(self._held.items()))
            if held.since_ms > horizon:
                break
            out.append(self._to_rejected(h, EXPIRED, now_ms))
        return out

    def forget(self, tx_hashes: Iterator[bytes] | list[bytes] | tuple[bytes, ...]) -> int:
        """Committed txs leave the quarantine (another primary proposed them); returns how many."""
        n = 0
        for h in tx_hashes:
            if self._held.pop(h, None) is not None:
                self._write(h, None)
                n += 1
        return n

    def _to_rejected(self, tx_hash: bytes, reason: str, now_ms: int) -> Rejected:
        held = self._held.pop(tx_hash)
        rec = Rejected(held, reason, now_ms)
        self._rejected[tx_hash] = rec
        self._write(tx_hash, encode_record(held, "rejected", reason, now_ms))
        self._trim_rejected()
        log.info("quarantine_rejected", extra={"tx": tx_hash.hex(), "reason": reason})
        if self._on_rejected is not None:
            self._on_rejected(reason)
        return rec

    def _trim_rejected(self) -> None:
        while len(self._rejected) > self.rejected_max:
            h, _ = self._rejected.popitem(last=False)
            self._write(h, None)
