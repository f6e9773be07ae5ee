"""The node's LevelDB: a key-prefixed layout and one atomic WriteBatch per committed block.

Knows keys and bytes, not blocks (node/ encodes). Two LevelDB databases: the state at the data
directory, and the chain's blocks and certificates in its ``blocks/`` subdirectory (why: see
``BLOCKS_DIR``). Layout (docs/storage.md has the table):

    b"V"                      format version (b"2")
    b"h"                      head: height (8 bytes big-endian) || block hash (32)
    b"i"                      set once the genesis state was written (initialize)
    b"H" + block hash         height(8)
    b"t" + tx hash            height(8) || index(4)
    b"r" + tx hash            encoded receipt
    b"a" + address            encoded account
    b"n" + digest             anchor record (first anchoring tx)
    b"l" + key                consensus log (``Persist`` records)
    b"m" + key                node metadata (also the ``extra`` of commit_block)
    b"q" + tx hash            quarantine entries
  blocks/:
    height(8) + b"b"          encoded block
    height(8) + b"c"          encoded commit certificate
  (format 1 had b"b" + height and b"c" + height in the state)

Heights are big-endian so LevelDB's byte order is height order and range reads are one iterator.
Crash safety comes from LevelDB itself: a WriteBatch is applied atomically from its log record.
A block and its certificate are written to blocks/ first, then everything the block changed
with the head in one batch; a crash between the two leaves a block above the head, which no read
returns and the next commit of that height overwrites. So a reopen sees either the whole block
(with its head) or none of it.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence

import plyvel

FORMAT_VERSION = b"2"
# Format 1 kept blocks and certificates in the state database; opened, it is moved to format 2.
FORMAT_V1 = b"1"
# The blocks and certificates live in a LevelDB of their own in this subdirectory of the data
# directory. In one keyspace with the tx index and receipts (keyed by hash, so spread over the
# whole key range) every table LevelDB wrote out overlapped every table of the next level, and
# each merge rewrote all the blocks there again: a validator's LevelDB thread spent 5.6% of its
# CPU on that in a 60 s bench at 1,500 tx/s and 6.8% in 5 minutes at 1,000 tx/s, growing with
# the chain. Alone, blocks come in height order and a new table overlaps nothing: LevelDB moves
# it down the levels without rewriting it.
BLOCKS_DIR = "blocks"
BLOCKS_WRITE_BUFFER_BYTES = 4 << 20
MIGRATE_BATCH_KEYS = 1000  # blocks and certificates moved a batch when a format 1 store opens
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
_BLOCK = b"b"  # blocks/: height || b"b" (format 1: b"b" || height in the state)
_CERT = b"c"  # blocks/: height || b"c" (format 1: b"c" || height in the state)
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


def _block_key(height: int, kind: bytes) -> bytes:
    """A key of blocks/: the height first, so that a block and its certificate sort together
    and a table of new heights overlaps no table of older ones (with the kind first, the
    certificates' range spanned every table of blocks, and LevelDB merged them all again)."""
    return struct.pack(">Q", height) + kind


def _open(path: str, bloom_bits: int, write_buffer: int, compress: bool = True) -> plyvel.DB:
    """One LevelDB, its open errors as StorageError naming the directory."""
    try:
        return plyvel.DB(
            path,
            create_if_missing=True,
            paranoid_checks=True,
            bloom_filter_bits=bloom_bits,
            write_buffer_size=write_buffer,
            compression="snappy" if compress else None,
        )
    except plyvel.CorruptionError as exc:
        raise StorageError(f"{path}: database is corrupt: {_why(exc)}") from None
    except plyvel.IOError as exc:
        msg = _why(exc)
        if "lock" in msg.lower():
            raise StorageError(
                f"{path}: database is locked by another process (is a node running?)"
            ) from None
        raise StorageError(f"{path}: cannot open database: {msg}") from None
    except plyvel.Error as exc:
        raise StorageError(f"{path}: cannot open database: {_why(exc)}") from None


def _copy(
    items: Iterator[tuple[bytes, bytes]], out: plyvel.DB, batch_keys: int, sync: bool = False
) -> int:
    """Put every (key, value) into ``out``, ``batch_keys`` a batch; returns how many."""
    count = 0
    wb = out.write_batch(sync=sync)
    for key, value in items:
        wb.put(key, value)
        count += 1
        if count % batch_keys == 0:
            wb.write()
            wb = out.write_batch(sync=sync)
    wb.write()
    return count


class Store:
    """One data directory (two LevelDBs). Methods are safe to call from worker threads (plyvel
    is; ``commit_block`` is serialised)."""

    def __init__(self, path: str, sync: bool = True, compress_state: bool = True) -> None:
        """``compress_state=False`` writes the state's tables without snappy (blocks/ keeps it):
        a measurement switch for ``scripts/bench_storage`` (docs/performance.md, stop 31), not a
        node setting. Tables already written stay readable either way."""
        self.path = os.fspath(path)
        self.sync = sync
        self._lock = threading.Lock()  # serialises commit_block's read-check-write of the head
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot create directory: {exc.strerror}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StorageError(f"{self.path}: directory is not writable")
        # A Bloom filter per table (10 bits a key, ~1% false positives): most lookups on the
        # hot path are misses (is this tx already committed? asked per admitted and per
        # validated tx), and a miss then skips a block read per level: 18 -> 9 us a miss on a
        # 150,000-tx store here. Tables written before keep working without one.
        self._db = _open(self.path, BLOOM_BITS_PER_KEY, WRITE_BUFFER_BYTES, compress_state)
        try:
            version = self._db.get(_VERSION)
            if version is None:
                if any(True for _ in self._db.iterator(include_value=False)):
                    raise StorageError(f"{self.path}: not a Vigil database (no format version)")
            elif version not in (FORMAT_VERSION, FORMAT_V1):
                raise StorageError(f"{self.path}: unsupported format version {version!r}")
            # Blocks are read by height, each lookup a hit: no filter. Their tables are never
            # merged again, so LevelDB's default memtable (4 MiB) will do.
            self._blocks = _open(os.path.join(self.path, BLOCKS_DIR), 0, BLOCKS_WRITE_BUFFER_BYTES)
        except BaseException:
            self._db.close()
            raise
        try:
            if version is None:
                self._db.put(_VERSION, FORMAT_VERSION, sync=True)
            elif version == FORMAT_V1:
                self._migrate_v1()
            head = self.head()
        except BaseException:
            self.close()
            raise
        # The committed height, kept here: blocks/ may hold one block above it after a crash
        # between commit_block's two writes, and no read may return that block.
        self._top = 0 if head is None else head[0]
        if self._top and self.get_block(self._top) is None:
            self.close()
            raise StorageError(
                f"{self.path}: the head block {self._top} is missing from {BLOCKS_DIR}/ (a copy "
                f"of the directory without its {BLOCKS_DIR}/ subdirectory?)"
            )

    def _migrate_v1(self) -> None:
        """Move a format 1 store's blocks and certificates into blocks/, then mark it format 2.

        The copies are synced before the one batch that deletes the originals and sets the
        version, so a crash at any point leaves either format 1 with (some) copies, which the
        next open moves again, or format 2 complete.
        """
        try:
            with self._db.snapshot() as snap:
                for prefix in (_BLOCK, _CERT):
                    moved = (
                        (key[1:] + prefix, value) for key, value in snap.iterator(prefix=prefix)
                    )
                    _copy(moved, self._blocks, MIGRATE_BATCH_KEYS, sync=True)
                with self._db.write_batch(transaction=True, sync=True) as wb:
                    for prefix in (_BLOCK, _CERT):
                        for key in snap.iterator(prefix=prefix, include_value=False):
                            wb.delete(key)
                    wb.put(_VERSION, FORMAT_VERSION)
        except plyvel.Error as exc:
            raise StorageError(
                f"{self.path}: moving blocks to format 2 failed: {_why(exc)}"
            ) from None

    def close(self) -> None:
        for db in (self._db, getattr(self, "_blocks", None)):
            if db is not None and not db.closed:
                db.close()

    @property
    def closed(self) -> bool:
        return bool(self._db.closed)

    def _get(self, key: bytes, db: plyvel.DB | None = None) -> bytes | None:
        try:
            value: bytes | None = (db or self._db).get(key)
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
        if height > self._top:
            return None
        return self._get(_block_key(height, _BLOCK), self._blocks)

    def get_certificate(self, height: int) -> bytes | None:
        if height > self._top:
            return None
        return self._get(_block_key(height, _CERT), self._blocks)

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
        """Write one committed block: the block and its certificate to blocks/, then everything
        it changed in ONE atomic batch with the head (the module docstring: a crash between).

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
                with self._blocks.write_batch(transaction=True, sync=self.sync) as wb:
                    wb.put(_block_key(height, _BLOCK), block)
                    wb.put(_block_key(height, _CERT), certificate)
                with self._db.write_batch(transaction=True, sync=self.sync) as wb:
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
            self._top = height

    def blocks(self, from_height: int, to_height: int) -> Iterator[tuple[int, bytes, bytes]]:
        """(height, block, certificate) for committed heights in [from_height, to_height]."""
        to_height = min(to_height, self._top)
        if to_height < from_height:
            return
        start = struct.pack(">Q", max(from_height, 0))
        stop = struct.pack(">Q", to_height + 1)
        with self._blocks.snapshot() as snapshot:
            block: tuple[int, bytes] | None = None
            for key, value in snapshot.iterator(start=start, stop=stop):
                height = struct.unpack(">Q", key[:8])[0]
                if key[8:] == _BLOCK:
                    block = (height, value)
                    continue
                # cannot happen: both are written in one batch, the block's key sorts first
                if block is None or block[0] != height:
                    raise StorageError(f"{self.path}: certificate {height} has no block")
                yield height, block[1], value
                block = None
            if block is not None:
                raise StorageError(f"{self.path}: block {block[0]} has no certificate")

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
        """Copy one consistent snapshot into a new store at ``dest``; returns the keys copied.

        Safe while the node runs: readers and writers go on. The state is read from one
        LevelDB snapshot, and blocks/ from a later one up to that state's head only.
        """
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        try:
            out = plyvel.DB(dest, create_if_missing=True, error_if_exists=True)
        except plyvel.Error as exc:
            raise StorageError(f"{dest}: cannot create the backup: {_why(exc)}") from None
        try:
            out_blocks = plyvel.DB(os.path.join(dest, BLOCKS_DIR), create_if_missing=True)
        except plyvel.Error as exc:
            out.close()
            raise StorageError(f"{dest}: cannot create the backup: {_why(exc)}") from None
        try:
            with self._db.snapshot() as snap:
                head = snap.get(_HEAD)
                count = _copy(snap.iterator(), out, batch_keys)
            top = 0 if head is None else struct.unpack(">Q", head[:8])[0]
            with self._blocks.snapshot() as snap:
                stop = struct.pack(">Q", top + 1)
                count += _copy(snap.iterator(stop=stop), out_blocks, batch_keys)
        finally:
            out_blocks.close()
            out.close()
        return count

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
