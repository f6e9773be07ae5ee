"""The node's LevelDB: a key-prefixed layout and one atomic WriteBatch per committed block.

Knows keys and bytes, not blocks (node/ encodes). Layout (docs/storage.md has the table):

    b"V"                      format version (b"1")
    b"h"                      head: height (8 bytes big-endian) || block hash (32)
    b"i"                      set once the genesis state was written (initialize)
    b"b" + height(8)          encoded block
    b"c" + height(8)          encoded commit certificate
    b"H" + block hash         height(8)
    b"t" + tx hash            height(8) || index(4)
    b"r" + tx hash            encoded receipt
    b"a" + address            encoded account
    b"n" + digest             anchor record (first anchoring tx)
    b"l" + key                consensus log (``Persist`` records)
    b"m" + key                node metadata (also the ``extra`` of commit_block)
    b"q" + tx hash            quarantine entries

Heights are big-endian so LevelDB's byte order is height order and range reads are one iterator.
Crash safety comes from LevelDB itself: a WriteBatch is applied atomically from its log record,
so a reopen sees either the whole block (with its head) or none of it.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence

import plyvel

FORMAT_VERSION = b"1"
BLOOM_BITS_PER_KEY = 10  # LevelDB filter policy of every table written (see Store.__init__)
# LevelDB's memtable (default 4 MiB): how much is written before a table file is made and later
# merged down the levels. The keys of the tx index and receipts are hashes, so every new table
# overlaps the whole next level, and each merge rewrites (and snappy-compresses) all of it again.
# Replaying 611,000 committed txs of a bench: 8.8-9.7 s of CPU at 4 MiB, 4.5 s at 16 MiB, the
# database the same size (snappy took ~6% of a validator's CPU at max rate, by `perf`). Costs up
# to twice this in memory (the memtable and the one being flushed) and a longer log to replay
# after a crash.
WRITE_BUFFER_BYTES = 16 << 20
_VERSION = b"V"
_HEAD = b"h"
_INIT = b"i"
_BLOCK = b"b"
_CERT = b"c"
_BLOCK_HASH = b"H"
_TX = b"t"
_RECEIPT = b"r"
_ACCOUNT = b"a"
_ANCHOR = b"n"
_LOG = b"l"
_META = b"m"
_QUARANTINE = b"q"
_EMPTY: Mapping[bytes, bytes | None] = {}


class StorageError(Exception):
    """The database cannot be used; the message names the directory and the cause."""


def _why(exc: BaseException) -> str:
    """plyvel puts LevelDB's status message in args[0] as bytes."""
    arg = exc.args[0] if exc.args else exc
    return arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)


def _height_key(prefix: bytes, height: int) -> bytes:
    return prefix + struct.pack(">Q", height)


class Store:
    """One LevelDB directory. Methods are safe to call from worker threads (plyvel is)."""

    def __init__(self, path: str, sync: bool = True) -> None:
        self.path = os.fspath(path)
        self.sync = sync
        self._lock = threading.Lock()  # serialises commit_block's read-check-write of the head
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot create directory: {exc.strerror}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StorageError(f"{self.path}: directory is not writable")
        try:
            # A Bloom filter per table (10 bits a key, ~1% false positives): most lookups on
            # the hot path are misses (is this tx already committed? asked per admitted and per
            # validated tx), and a miss then skips a block read per level: 18 -> 9 us a miss
            # on a 150,000-tx store here. Tables written before keep working without one.
            self._db = plyvel.DB(
                self.path,
                create_if_missing=True,
                paranoid_checks=True,
                bloom_filter_bits=BLOOM_BITS_PER_KEY,
                write_buffer_size=WRITE_BUFFER_BYTES,
            )
        except plyvel.CorruptionError as exc:
            raise StorageError(f"{self.path}: database is corrupt: {_why(exc)}") from None
        except plyvel.IOError as exc:
            msg = _why(exc)
            if "lock" in msg.lower():
                raise StorageError(
                    f"{self.path}: database is locked by another process (is a node running?)"
                ) from None
            raise StorageError(f"{self.path}: cannot open database: {msg}") from None
        except plyvel.Error as exc:
            raise StorageError(f"{self.path}: cannot open database: {_why(exc)}") from None
        version = self._db.get(_VERSION)
        if version is None:
            if any(True for _ in self._db.iterator(include_value=False)):
                self._db.close()
                raise StorageError(f"{self.path}: not a Vigil database (no format version)")
            self._db.put(_VERSION, FORMAT_VERSION, sync=True)
        elif version != FORMAT_VERSION:
            self._db.close()
            raise StorageError(f"{self.path}: unsupported format version {version!r}")

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()

    @property
    def closed(self) -> bool:
        return bool(self._db.closed)

    def _get(self, key: bytes) -> bytes | None:
        try:
            value: bytes | None = self._db.get(key)
        except plyvel.CorruptionError as exc:
            raise StorageError(f"{self.path}: database is corrupt: {_why(exc)}") from None
        except RuntimeError as exc:  # plyvel: "Database is closed"
            raise StorageError(f"{self.path}: {exc}") from None
        return value

    # --- chain ---------------------------------------------------------------------------------

    def head(self) -> tuple[int, bytes] | None:
        """(height, block hash) of the last committed block, or None for an empty chain."""
        raw = self._get(_HEAD)
        if raw is None:
            return None
        return struct.unpack(">Q", raw[:8])[0], raw[8:]

    def get_block(self, height: int) -> bytes | None:
        return self._get(_height_key(_BLOCK, height))

    def get_certificate(self, height: int) -> bytes | None:
        return self._get(_height_key(_CERT, height))

    def height_of(self, block_hash: bytes) -> int | None:
        raw = self._get(_BLOCK_HASH + block_hash)
        return None if raw is None else int(struct.unpack(">Q", raw)[0])

    def get_tx_location(self, tx_hash: bytes) -> tuple[int, int] | None:
        """(height, index) of a committed transaction."""
        raw = self._get(_TX + tx_hash)
        if raw is None:
            return None
        height, index = struct.unpack(">QI", raw)
        return int(height), int(index)

    def get_receipt(self, tx_hash: bytes) -> bytes | None:
        return self._get(_RECEIPT + tx_hash)

    def get_account(self, address: bytes) -> bytes | None:
        return self._get(_ACCOUNT + address)

    def get_anchor(self, digest: bytes) -> bytes | None:
        return self._get(_ANCHOR + digest)

    def initialize(self, accounts: Mapping[bytes, bytes], extra: Mapping[bytes, bytes]) -> bool:
        """Write the genesis state (accounts plus metadata) once, atomically, before block 1.

        Returns False (writing nothing) when the store was already initialised, so a restart
        may call it unconditionally. The marker is the ``extra`` keys plus an internal flag.
        """
        with self._lock:
            if self._get(_INIT) is not None:
                return False
            if self.head() is not None:
                raise StorageError(f"{self.path}: has blocks but was never initialised")
            try:
                with self._db.write_batch(transaction=True, sync=True) as wb:
                    for address, account in accounts.items():
                        wb.put(_ACCOUNT + address, account)
                    for key, value in extra.items():
                        wb.put(_META + key, value)
                    wb.put(_INIT, b"1")
            except plyvel.Error as exc:
                raise StorageError(f"{self.path}: write failed: {_why(exc)}") from None
            return True

    @property
    def initialized(self) -> bool:
        return self._get(_INIT) is not None

    def commit_block(
        self,
        height: int,
        block_hash: bytes,
        block: bytes,
        certificate: bytes,
        txs: Sequence[tuple[bytes, bytes]],
        accounts: Mapping[bytes, bytes],
        anchors: Mapping[bytes, bytes],
        extra: Mapping[bytes, bytes | None] = _EMPTY,
    ) -> None:
        """Write one committed block and everything it changed in ONE atomic batch, head last.

        ``txs`` are (tx hash, encoded receipt) in block order (index = position). ``extra``
        keys land in the metadata namespace (None deletes). Refuses height != head + 1.
        """
        with self._lock:
            head = self.head()
            expected = 1 if head is None else head[0] + 1
            if height != expected:
                raise StorageError(
                    f"{self.path}: commit of height {height} but the next height is {expected}"
                )
            try:
                with self._db.write_batch(transaction=True, sync=self.sync) as wb:
                    wb.put(_height_key(_BLOCK, height), block)
                    wb.put(_height_key(_CERT, height), certificate)
                    wb.put(_BLOCK_HASH + block_hash, struct.pack(">Q", height))
                    for index, (tx_hash, receipt) in enumerate(txs):
                        wb.put(_TX + tx_hash, struct.pack(">QI", height, index))
                        wb.put(_RECEIPT + tx_hash, receipt)
                    for address, account in accounts.items():
                        wb.put(_ACCOUNT + address, account)
                    for digest, record in anchors.items():
                        wb.put(_ANCHOR + digest, record)
                    for key, value in extra.items():
                        if value is None:
                            wb.delete(_META + key)
                        else:
                            wb.put(_META + key, value)
                    wb.put(_HEAD, struct.pack(">Q", height) + block_hash)
            except plyvel.Error as exc:
                raise StorageError(f"{self.path}: write failed: {_why(exc)}") from None

    def blocks(self, from_height: int, to_height: int) -> Iterator[tuple[int, bytes, bytes]]:
        """(height, block, certificate) for committed heights in [from_height, to_height]."""
        if to_height < from_height:
            return
        start = _height_key(_BLOCK, max(from_height, 0))
        stop = _height_key(_BLOCK, to_height + 1)
        with self._db.snapshot() as snapshot:
            for key, block in snapshot.iterator(start=start, stop=stop):
                height = struct.unpack(">Q", key[1:])[0]
                cert = snapshot.get(_height_key(_CERT, height))
                if cert is None:  # cannot happen: both are written in one batch
                    raise StorageError(f"{self.path}: block {height} has no certificate")
                yield height, block, cert

    def accounts(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (address, encoded account); for checks and tests."""
        for key, value in self._db.iterator(prefix=_ACCOUNT):
            yield key[1:], value

    # --- consensus log, metadata, quarantine ---------------------------------------------------

    def log_write(
        self,
        records: Sequence[tuple[bytes, bytes | None]],
        meta: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """Apply consensus-log records (None deletes) and ``meta`` puts atomically and durably,
        in one synced batch."""
        try:
            with self._db.write_batch(transaction=True, sync=True) as wb:
                for key, value in records:
                    if value is None:
                        wb.delete(_LOG + key)
                    else:
                        wb.put(_LOG + key, value)
                for key, data in meta:
                    wb.put(_META + key, data)
        except plyvel.Error as exc:
            raise StorageError(f"{self.path}: write failed: {_why(exc)}") from None

    def log_items(self) -> list[tuple[bytes, bytes]]:
        return [(k[1:], v) for k, v in self._db.iterator(prefix=_LOG)]

    def meta_get(self, key: bytes) -> bytes | None:
        return self._get(_META + key)

    def meta_put(self, key: bytes, value: bytes) -> None:
        self._db.put(_META + key, value, sync=self.sync)

    def quarantine_put(self, tx_hash: bytes, value: bytes) -> None:
        self._db.put(_QUARANTINE + tx_hash, value, sync=self.sync)

    def quarantine_delete(self, tx_hash: bytes) -> None:
        self._db.delete(_QUARANTINE + tx_hash, sync=self.sync)

    def quarantine_items(self) -> list[tuple[bytes, bytes]]:
        return [(k[1:], v) for k, v in self._db.iterator(prefix=_QUARANTINE)]

    def snapshot_to(self, dest: str, batch_keys: int = 10_000) -> int:
        """Copy one consistent LevelDB snapshot into a new database at ``dest``; returns keys.

        Safe while the node runs: readers and writers go on, the snapshot sees one instant.
        """
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        try:
            out = plyvel.DB(dest, create_if_missing=True, error_if_exists=True)
        except plyvel.Error as exc:
            raise StorageError(f"{dest}: cannot create the backup: {_why(exc)}") from None
        count = 0
        try:
            snap = self._db.snapshot()
            try:
                wb = out.write_batch()
                for key, value in snap.iterator():
                    wb.put(key, value)
                    count += 1
                    if count % batch_keys == 0:
                        wb.write()
                        wb = out.write_batch()
                wb.write()
            finally:
                snap.close()
        finally:
            out.close()
        return count

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
