"""storage.Store: layout round trips, atomic per-block commits, range reads, clear open errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from storage import StorageError, Store

ROOT = Path(__file__).resolve().parents[3]


def _h(i: int, tag: bytes = b"h") -> bytes:
    return (tag * 32)[:28] + i.to_bytes(4, "big")


def _commit(store: Store, height: int, ntx: int = 2) -> None:
    store.commit_block(
        height,
        _h(height, b"B"),
        b"block%d" % height,
        b"cert%d" % height,
        [(_h(height * 10 + i, b"T"), b"receipt%d.%d" % (height, i)) for i in range(ntx)],
        {b"A" * 16 + height.to_bytes(4, "big"): b"acct%d" % height},
        {_h(height, b"D"): b"anchor%d" % height},
        {b"last_view": b"%d" % height},
    )


def test_empty_store(tmp_path: Path) -> None:
    with Store(str(tmp_path / "db")) as s:
        assert s.head() is None
        assert s.get_block(1) is None
        assert s.get_certificate(1) is None
        assert s.height_of(b"x" * 32) is None
        assert s.get_tx_location(b"x" * 32) is None
        assert list(s.blocks(0, 10)) == []
        assert s.log_items() == []
        assert s.quarantine_items() == []


def test_commit_and_read_back_after_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    with Store(path) as s:
        for h in (1, 2, 3):
            _commit(s, h)
    with Store(path) as s:
        assert s.head() == (3, _h(3, b"B"))
        assert s.get_block(2) == b"block2"
        assert s.get_certificate(2) == b"cert2"
        assert s.height_of(_h(2, b"B")) == 2
        assert s.get_tx_location(_h(21, b"T")) == (2, 1)
        assert s.get_receipt(_h(21, b"T")) == b"receipt2.1"
        assert s.get_account(b"A" * 16 + (3).to_bytes(4, "big")) == b"acct3"
        assert s.get_anchor(_h(1, b"D")) == b"anchor1"
        assert s.meta_get(b"last_view") == b"3"
        assert list(s.blocks(2, 9)) == [(2, b"block2", b"cert2"), (3, b"block3", b"cert3")]
        assert list(s.blocks(1, 1)) == [(1, b"block1", b"cert1")]
        assert list(s.blocks(3, 2)) == []
        assert dict(s.accounts())[b"A" * 16 + (1).to_bytes(4, "big")] == b"acct1"


def test_commit_refuses_a_gap_or_a_repeat(tmp_path: Path) -> None:
    with Store(str(tmp_path / "db")) as s:
        with pytest.raises(StorageError, match="next height is 1"):
            _commit(s, 2)
        _commit(s, 1)
        with pytest.raises(StorageError, match="next height is 2"):
            _commit(s, 1)
        assert s.head() == (1, _h(1, b"B"))


def test_many_heights_sort_numerically(tmp_path: Path) -> None:
    with Store(str(tmp_path / "db"), sync=False) as s:
        for h in range(1, 300):
            _commit(s, h, ntx=0)
        assert [h for h, _, _ in s.blocks(250, 260)] == list(range(250, 261))
        assert s.head() == (299, _h(299, b"B"))


def test_log_meta_quarantine_namespaces(tmp_path: Path) -> None:
    with Store(str(tmp_path / "db")) as s:
        s.log_write([(b"pp/1", b"a"), (b"pp/2", b"b")])
        s.log_write([(b"pp/1", None), (b"vc/3", b"c")])
        assert s.log_items() == [(b"pp/2", b"b"), (b"vc/3", b"c")]
        s.meta_put(b"k", b"v")
        assert s.meta_get(b"k") == b"v"
        s.quarantine_put(b"q" * 32, b"entry")
        s.quarantine_put(b"r" * 32, b"entry2")
        s.quarantine_delete(b"q" * 32)
        assert s.quarantine_items() == [(b"r" * 32, b"entry2")]
        # namespaces do not leak into each other
        assert s.get_block(0) is None
        assert s.meta_get(b"pp/2") is None


def test_extra_none_deletes_meta(tmp_path: Path) -> None:
    with Store(str(tmp_path / "db")) as s:
        s.meta_put(b"gone", b"1")
        s.commit_block(1, b"B" * 32, b"b", b"c", [], {}, {}, {b"gone": None, b"kept": b"2"})
        assert s.meta_get(b"gone") is None
        assert s.meta_get(b"kept") == b"2"


def test_locked_by_another_process_names_the_directory(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    Store(path).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, plyvel; db = plyvel.DB(sys.argv[1]); print('open', flush=True); "
            "sys.stdin.read()",
            path,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"open"
        with pytest.raises(StorageError, match="locked by another process") as err:
            Store(path)
        assert path in str(err.value)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        assert holder.stdout is not None
        holder.stdout.close()
    Store(path).close()  # released


def test_unusable_directory_names_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    path = str(blocker / "db")
    with pytest.raises(StorageError, match="cannot create directory") as err:
        Store(path)
    assert path in str(err.value)


def test_corrupt_database_names_it(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with Store(str(path)) as s:
        _commit(s, 1)
    (path / "CURRENT").write_text("MANIFEST-999999\n")
    with pytest.raises(StorageError) as err:
        Store(str(path))
    assert str(path) in str(err.value)


def test_foreign_leveldb_is_refused(tmp_path: Path) -> None:
    import plyvel

    path = str(tmp_path / "db")
    db = plyvel.DB(path, create_if_missing=True)
    db.put(b"other", b"data")
    db.close()
    with pytest.raises(StorageError, match="not a Vigil database"):
        Store(path)


def test_initialize_once(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    with Store(path) as s:
        assert not s.initialized
        assert s.initialize({b"a" * 20: b"acct"}, {b"genesis": b"g" * 32})
        assert not s.initialize({b"a" * 20: b"other"}, {b"genesis": b"x"})
        assert s.get_account(b"a" * 20) == b"acct"
    with Store(path) as s:
        assert s.initialized
        assert s.meta_get(b"genesis") == b"g" * 32


def test_tables_with_and_without_bloom_filters_read_alike(tmp_path: Path) -> None:
    # A data directory written before the filter policy (no filter blocks) opens and answers the
    # same, and tables written with filters still open without them (a downgrade).
    import plyvel

    from storage.db import BLOOM_BITS_PER_KEY

    path = str(tmp_path / "db")
    with Store(path) as s:
        for height in range(1, 41):
            _commit(s, height)
    for bits in (0, BLOOM_BITS_PER_KEY, 0):  # every table rewritten without, with, without
        db = plyvel.DB(path, bloom_filter_bits=bits)
        db.compact_range()
        db.close()
        with Store(path) as s:
            top = s.head()
            assert top is not None
            for height in (1, 17, 40, top[0]):
                assert s.get_tx_location(_h(height * 10 + 1, b"T")) == (height, 1)
            assert s.get_tx_location(_h(999, b"T")) is None
            _commit(s, top[0] + 1)
    with Store(path) as s:
        assert s.head() == (43, _h(43, b"B"))


def test_writes_up_to_the_write_buffer_make_no_table_file(tmp_path: Path) -> None:
    # 12 MiB of writes stay in LevelDB's memtable and its log (WRITE_BUFFER_BYTES, 16 MiB): no
    # table file is made (and later merged and compressed again) for them. At LevelDB's default
    # (4 MiB) the same writes made tables. After a reopen everything reads back.
    import os

    path = tmp_path / "db"
    value = os.urandom(64 * 1024)  # incompressible, as hashes and signatures are
    count = (12 << 20) // len(value)
    with Store(str(path), sync=False) as s:
        for i in range(count):
            s.meta_put(i.to_bytes(4, "big"), value)
        assert not list(path.glob("*.ldb"))
    with Store(str(path)) as s:
        assert s.meta_get((count - 1).to_bytes(4, "big")) == value


@pytest.mark.parametrize("compress_state", [True, False])
def test_state_tables_are_compressed_unless_told_not_to(
    tmp_path: Path, compress_state: bool
) -> None:
    # scripts/bench_storage measures what snappy costs: with compress_state=False the state's
    # tables are written as they are. 2 MiB of repetitive metadata, turned into a table when the
    # store reopens (LevelDB writes the recovered log out): ~2 MiB without, a fraction with.
    path = tmp_path / "db"
    value = b"vigil" * 200
    with Store(str(path), sync=False, compress_state=compress_state) as s:
        for i in range(2048):
            s.meta_put(i.to_bytes(4, "big"), value)
    with Store(str(path), compress_state=compress_state) as s:
        assert s.meta_get((2047).to_bytes(4, "big")) == value
    tables = sum(f.stat().st_size for f in path.glob("*.ldb"))
    if compress_state:
        assert 0 < tables < (1 << 20) // 4
    else:
        assert tables > 2_000_000
    with Store(str(path), compress_state=not compress_state) as s:  # either reads the other's
        assert s.meta_get((0).to_bytes(4, "big")) == value


def _raw_keys(path: Path, prefix: bytes) -> list[bytes]:
    import plyvel

    db = plyvel.DB(str(path))
    try:
        return list(db.iterator(prefix=prefix, include_value=False))
    finally:
        db.close()


def test_blocks_live_in_their_own_leveldb(tmp_path: Path) -> None:
    # Blocks and certificates go to blocks/ (storage/db.py BLOCKS_DIR): in the state's keyspace,
    # among hash-keyed entries, LevelDB rewrote them at every merge.
    path = tmp_path / "db"
    with Store(str(path)) as s:
        for h in (1, 2):
            _commit(s, h)
    assert _raw_keys(path, b"b") == []
    assert _raw_keys(path, b"c") == []
    assert _raw_keys(path, b"H") == [b"H" + _h(1, b"B"), b"H" + _h(2, b"B")]
    # Height first: a block and its certificate sort together, and new heights after old ones.
    assert _raw_keys(path / "blocks", b"") == [
        h.to_bytes(8, "big") + kind for h in (1, 2) for kind in (b"b", b"c")
    ]


def _three_blocks_and_an_orphan(path: Path) -> None:
    """Heights 1-3 committed, and block 4 with its certificate in blocks/ only: what a crash
    between commit_block's two writes leaves (without the head and the state that go with it)."""
    import plyvel

    with Store(str(path)) as s:
        for h in (1, 2, 3):
            _commit(s, h)
    orphan = plyvel.DB(str(path / "blocks"))
    orphan.put((4).to_bytes(8, "big") + b"b", b"orphan4")
    orphan.put((4).to_bytes(8, "big") + b"c", b"orphancert4")
    orphan.close()


def test_a_block_above_the_head_is_never_read_and_is_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "db"
    _three_blocks_and_an_orphan(path)
    with Store(str(path)) as s:
        assert s.head() == (3, _h(3, b"B"))
        assert s.get_block(4) is None
        assert s.get_certificate(4) is None
        assert [h for h, _, _ in s.blocks(1, 10)] == [1, 2, 3]
        _commit(s, 4)
        assert s.get_block(4) == b"block4"
        assert s.get_certificate(4) == b"cert4"
        assert list(s.blocks(4, 4)) == [(4, b"block4", b"cert4")]


def _format_1(path: Path, heights: int) -> None:
    """A store as format 1 wrote it: blocks and certificates among the state's keys."""
    import plyvel

    db = plyvel.DB(str(path), create_if_missing=True)
    db.put(b"V", b"1")
    for h in range(1, heights + 1):
        db.put(b"b" + h.to_bytes(8, "big"), b"block%d" % h)
        db.put(b"c" + h.to_bytes(8, "big"), b"cert%d" % h)
        db.put(b"H" + _h(h, b"B"), h.to_bytes(8, "big"))
    db.put(b"h", heights.to_bytes(8, "big") + _h(heights, b"B"))
    db.close()


@pytest.mark.parametrize("copied_before", [0, 1700])
def test_a_format_1_store_moves_its_blocks_on_open(tmp_path: Path, copied_before: int) -> None:
    # copied_before: a previous open copied that many blocks into blocks/ and was killed before
    # the batch that deletes the originals and sets the version (MIGRATE_BATCH_KEYS is 1,000).
    import plyvel

    path = tmp_path / "db"
    _format_1(path, 2500)
    if copied_before:
        part = plyvel.DB(str(path / "blocks"), create_if_missing=True)
        for h in range(1, copied_before + 1):
            part.put(h.to_bytes(8, "big") + b"b", b"block%d" % h)
        part.close()
    with Store(str(path)) as s:
        assert s.head() == (2500, _h(2500, b"B"))
        assert s.get_block(1) == b"block1"
        assert s.get_certificate(2500) == b"cert2500"
        assert [h for h, _, _ in s.blocks(1, 3000)] == list(range(1, 2501))
        assert s.height_of(_h(7, b"B")) == 7
        _commit(s, 2501)
    assert _raw_keys(path, b"b") == []
    assert _raw_keys(path, b"c") == []
    db = plyvel.DB(str(path))
    assert db.get(b"V") == b"2"
    db.close()
    with Store(str(path)) as s:
        assert list(s.blocks(2499, 2501)) == [
            (2499, b"block2499", b"cert2499"),
            (2500, b"block2500", b"cert2500"),
            (2501, b"block2501", b"cert2501"),
        ]


def test_an_unknown_format_version_is_refused(tmp_path: Path) -> None:
    import plyvel

    path = tmp_path / "db"
    db = plyvel.DB(str(path), create_if_missing=True)
    db.put(b"V", b"9")
    db.close()
    with pytest.raises(StorageError, match="unsupported format version"):
        Store(str(path))
    assert not (path / "blocks").exists()


def test_a_snapshot_copies_blocks_up_to_its_head(tmp_path: Path) -> None:
    path = tmp_path / "db"
    _three_blocks_and_an_orphan(path)
    with Store(str(path)) as s:
        keys = s.snapshot_to(str(tmp_path / "copy"))
    with Store(str(tmp_path / "copy")) as c:
        assert c.head() == (3, _h(3, b"B"))
        assert list(c.blocks(1, 9)) == [(h, b"block%d" % h, b"cert%d" % h) for h in (1, 2, 3)]
        assert c.get_receipt(_h(31, b"T")) == b"receipt3.1"
    assert _raw_keys(tmp_path / "copy" / "blocks", b"") == [
        h.to_bytes(8, "big") + kind for h in (1, 2, 3) for kind in (b"b", b"c")
    ]
    # V, h, per block: H, 2 t, 2 r, 1 a, 1 n (the meta key is overwritten), then b and c.
    assert keys == 2 + 3 * 7 + 1 + 3 * 2


def test_tables_of_new_blocks_are_never_merged(tmp_path: Path) -> None:
    # ~25 MiB of blocks fill blocks/'s 4 MiB memtable six times. Keyed height first, each table
    # overlaps none before it and LevelDB places it without a merge (its LOG says "Compacting"
    # for a merge); keyed kind first (b"b" + height, b"c" + height) the tables overlapped and
    # were merged as soon as four of them waited in level 0.
    import os

    path = tmp_path / "db"
    block = os.urandom(64 * 1024)  # incompressible, as signed txs are
    with Store(str(path), sync=False) as s:
        for height in range(1, 401):
            s.commit_block(height, _h(height, b"B"), block, b"cert", [], {}, {})
        assert s.get_block(1) == block
    log = (path / "blocks" / "LOG").read_text()
    assert "Level-0 table" in log  # the memtable was written out
    assert "Compacting" not in log
    with Store(str(path)) as s:
        assert [h for h, _, _ in s.blocks(395, 500)] == [395, 396, 397, 398, 399, 400]


def test_a_directory_without_its_blocks_is_refused(tmp_path: Path) -> None:
    # A copy of the data directory that left out blocks/ would serve a chain without blocks.
    import shutil

    path = tmp_path / "db"
    with Store(str(path)) as s:
        _commit(s, 1)
    shutil.rmtree(path / "blocks")
    with pytest.raises(StorageError, match="head block 1 is missing from blocks/") as err:
        Store(str(path))
    assert str(path) in str(err.value)
