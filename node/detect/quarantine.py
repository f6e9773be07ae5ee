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
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from common import codec
from common.codec import CodecError
from ml.features import N_FEATURES
from node.chain.tx import TX_BYTES_MAX, Transaction
from node.detect.detector import WindowSpec

log = logging.getLogger(__name__)

TTL_MS = 24 * 3600 * 1000
TXS_MAX = 10_000
BYTES_MAX = 32 * 1024 * 1024  # held txs' stored records, at most
SENDER_TXS_MAX = 100  # held txs of one sender, at most: its flood evicts its own, not others'
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
# Since the audit (model id, exact features and score): old records lack "audit" and still load.
_RECORD_AUDITED = codec.struct(
    {
        "state": codec.one_of("held", "rejected"),
        "tx": codec.raw(max_size=TX_BYTES_MAX),
        "score": codec.uint(SCORE_SCALE),
        "threshold": codec.uint(SCORE_SCALE),
        "reasons": codec.list_of(codec.text(256), REASONS_MAX),
        "at_ms": codec.uint(),
        "reason": codec.text(64),
        "audit": codec.raw(max_size=4096),
    }
)
_AUDIT = codec.struct(
    {
        "model_id": codec.raw(32),
        "window": codec.list_of(codec.uint(), 5),
        "features": codec.raw(max_size=8 * 64),  # IEEE doubles, one per feature
        "score": codec.raw(8),
        "threshold": codec.raw(8),
        "context": codec.raw(max_size=2048),
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

    # The audit trail (empty for a hold without a model id, e.g. records from before it).
    model_id: bytes = b""
    window: WindowSpec | None = None
    features: tuple[float, ...] = ()
    context: tuple[Any, ...] = ()

    @property
    def sender(self) -> bytes:
        return self.tx.sender_address

    def anomaly(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "score": self.score,
            "threshold": self.threshold,
            "reasons": list(self.reasons),
        }
        if self.model_id:
            out["model_id"] = "0x" + self.model_id.hex()
        return out

    def stored_bytes(self) -> int:
        """About what its record takes (for the byte bound)."""
        return self.tx.size_bytes + 256 + sum(len(r) for r in self.reasons) + 8 * N_FEATURES


@dataclass(frozen=True, slots=True)
class Rejected:
    """What stays of a tx that left the quarantine without entering the mempool."""

    held: Held
    reason: str
    at_ms: int


def _f64(x: float) -> bytes:
    return struct.pack("<d", x)


def _encode_context(context: tuple[Any, ...]) -> bytes:
    # TxContext: ints, a bool, a float-or-None median, a tuple of ints. Floats as IEEE bytes.
    return codec.encode(
        [
            _f64(v) if isinstance(v, float) else list(v) if isinstance(v, tuple) else v
            for v in context
        ]
    )


def _decode_context(raw: bytes) -> tuple[Any, ...]:
    items = codec.decode(raw)
    # 11 fields before the new-payees count was added, 12 since.
    if not isinstance(items, list) or len(items) not in (11, 12):
        raise CodecError("quarantine record: bad audit context")
    out: list[Any] = []
    for i, v in enumerate(items):
        if i == 6 and isinstance(v, bytes):  # median_amount
            out.append(struct.unpack("<d", v)[0])
        elif isinstance(v, list):
            out.append(tuple(int(t) for t in v))
        else:
            out.append(v)
    return tuple(out)


def _encode_audit(held: Held) -> bytes:
    w = held.window
    assert w is not None
    return codec.encode(
        {
            "model_id": held.model_id,
            "window": [w.history_from, w.first_height, w.last_height, w.rows, w.seed],
            "features": struct.pack(f"<{len(held.features)}d", *held.features),
            "score": _f64(held.score),
            "threshold": _f64(held.threshold),
            "context": _encode_context(held.context),
        }
    )


def encode_record(held: Held, state: str, reason: str = "", at_ms: int | None = None) -> bytes:
    record: dict[str, Any] = {
        "state": state,
        "tx": held.tx.encode(),
        "score": _ppm(held.score),
        "threshold": _ppm(held.threshold),
        "reasons": [r[:256] for r in held.reasons[:REASONS_MAX]],
        "at_ms": held.since_ms if at_ms is None else at_ms,
        "reason": reason,
    }
    if held.model_id and held.window is not None and len(held.features) == N_FEATURES:
        record["audit"] = _encode_audit(held)
    return codec.encode(record)


def decode_record(tx_hash: bytes, value: bytes) -> Held | Rejected:
    """One stored record; raises CodecError when it is not ours or does not match its key."""
    limit = 2 * TX_BYTES_MAX + 8192
    try:
        m = codec.decode_struct(value, _RECORD_AUDITED, limit)
    except CodecError:
        m = codec.decode_struct(value, _RECORD, limit)
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
    if "audit" in m:
        a = codec.decode_struct(m["audit"], _AUDIT, 8192)
        if len(a["window"]) != 5:
            raise CodecError("quarantine record: bad audit window")
        held = Held(
            tx,
            struct.unpack("<d", a["score"])[0],
            struct.unpack("<d", a["threshold"])[0],
            held.reasons,
            held.since_ms,
            a["model_id"],
            WindowSpec(*a["window"]),
            tuple(struct.unpack(f"<{len(a['features']) // 8}d", a["features"])),
            _decode_context(a["context"]),
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
        bytes_max: int = BYTES_MAX,
        sender_txs_max: int = SENDER_TXS_MAX,
        persist: Persist | None = None,
        on_rejected: Callable[[Rejected], None] | None = None,
    ) -> None:
        if min(ttl_ms, txs_max, rejected_max, bytes_max, sender_txs_max) < 1:
            raise ValueError(
                "quarantine: ttl_ms, txs_max, rejected_max, bytes_max and sender_txs_max"
                " must be positive"
            )
        self._store = store
        self.ttl_ms = ttl_ms
        self.txs_max = txs_max
        self.rejected_max = rejected_max
        self.bytes_max = bytes_max
        self.sender_txs_max = sender_txs_max
        self._persist = persist or _inline
        self._on_rejected = on_rejected
        self._held: OrderedDict[bytes, Held] = OrderedDict()
        self._rejected: OrderedDict[bytes, Rejected] = OrderedDict()
        self._by_sender: dict[bytes, dict[bytes, int]] = {}  # sender -> held hash -> nonce
        self._bytes = 0

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
            self._put(h)
        self._trim_rejected()
        self.expire(now_ms)
        while len(self._held) > self.txs_max or self._bytes > self.bytes_max:
            self._to_rejected(self._victim(), FULL, now_ms)
        return len(self._held)

    def _put(self, held: Held) -> None:
        self._held[held.hash] = held
        self._by_sender.setdefault(held.sender, {})[held.hash] = held.tx.nonce
        self._bytes += held.stored_bytes()

    def _pop(self, tx_hash: bytes) -> Held | None:
        held = self._held.pop(tx_hash, None)
        if held is None:
            return None
        mine = self._by_sender.get(held.sender)
        if mine is not None:
            mine.pop(tx_hash, None)
            if not mine:
                del self._by_sender[held.sender]
        self._bytes -= held.stored_bytes()
        return held

    def _victim(self) -> bytes:
        """The held tx to evict when full: the oldest of the sender holding the most, so that
        one sender's flood evicts its own txs, not others'; with no such sender, the oldest."""
        if self._by_sender:
            _, mine = max(self._by_sender.items(), key=lambda kv: len(kv[1]))
            if len(mine) > 1:
                return next(h for h in self._held if h in mine)
        return next(iter(self._held))

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

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def holds(self, sender: bytes) -> bool:
        """Whether a tx of ``sender`` is held."""
        return bool(self._by_sender.get(sender))

    def blocker(self, sender: bytes, nonce: int) -> Held | None:
        """The sender's held tx with the lowest nonce below ``nonce``: what a later tx waits on."""
        mine = self._by_sender.get(sender)
        if not mine:
            return None
        best: tuple[int, bytes] | None = None
        for h, n in mine.items():
            if n < nonce and (best is None or n < best[0]):
                best = (n, h)
        return self._held[best[1]] if best is not None else None

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
        """Quarantine a tx; when full, the oldest held tx leaves as rejected
        (``quarantine_full``).
        """
        h = held.hash
        if h in self._held:
            return
        self._rejected.pop(h, None)
        mine = self._by_sender.get(held.sender)
        while mine and len(mine) >= self.sender_txs_max:
            self._to_rejected(next(x for x in self._held if x in mine), FULL, now_ms)
        size = held.stored_bytes()
        while self._held and (
            len(self._held) >= self.txs_max or self._bytes + size > self.bytes_max
        ):
            self._to_rejected(self._victim(), FULL, now_ms)
        self._put(held)
        if self._store is not None:
            self._write(h, encode_record(held, "held"))

    def release(self, tx_hash: bytes) -> Held:
        """Take a tx out for the mempool; KeyError when it is not held."""
        held = self._pop(tx_hash)
        if held is None:
            raise KeyError(tx_hash)
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
            if self._pop(h) is not None:
                self._write(h, None)
                n += 1
        return n

    def _to_rejected(self, tx_hash: bytes, reason: str, now_ms: int) -> Rejected:
        held = self._pop(tx_hash)
        if held is None:
            raise KeyError(tx_hash)
        rec = Rejected(held, reason, now_ms)
        self._rejected[tx_hash] = rec
        if self._store is not None:
            self._write(tx_hash, encode_record(held, "rejected", reason, now_ms))
        self._trim_rejected()
        log.info("quarantine_rejected", extra={"tx": tx_hash.hex(), "reason": reason})
        if self._on_rejected is not None:
            self._on_rejected(rec)
        return rec

    def _trim_rejected(self) -> None:
        while len(self._rejected) > self.rejected_max:
            h, _ = self._rejected.popitem(last=False)
            self._write(h, None)
