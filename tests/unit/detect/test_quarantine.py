"""The persisted quarantine: hold, release, reject, TTL expiry, bounds, restart (real LevelDB)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from common.crypto import SigningKey
from node.chain.tx import make_transfer
from node.detect.quarantine import EXPIRED, FULL, REJECTED, Held, Quarantine, Rejected
from storage.db import Store

KEY = SigningKey(hashlib.sha256(b"quarantine-test").digest())


def held(n: int, since_ms: int, score: float = 0.8123456) -> Held:
    tx = make_transfer(KEY, "vigil-test", b"\x07" * 20, 10**9 + n, 1, n)
    return Held(tx, score, 0.7, (f"amount is {n}x the sender's median", "first transfer"), since_ms)


def test_ttl_expiry_and_restart_persistence(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    store = Store(path)
    q = Quarantine(store, ttl_ms=1_000)
    a, b, c = held(0, 10_000), held(1, 10_500), held(2, 10_900)
    for h in (a, b, c):
        q.hold(h, h.since_ms)
    q.reject(b.hash, 10_950)
    assert len(q) == 2
    assert q.known(b.hash)
    assert q.known(a.hash)

    # TTL: a (held since 10_000) expires at 11_000; c (since 10_900) does not yet.
    assert q.expire(10_999) == []
    gone = q.expire(11_000)
    assert [r.held.hash for r in gone] == [a.hash]
    assert gone[0].reason == EXPIRED
    assert q.get(a.hash) is None
    assert q.get(c.hash) == c
    store.close()

    # Restart: held and rejected entries come back from LevelDB, with scores and reasons.
    store = Store(path)
    q2 = Quarantine(store, ttl_ms=1_000)
    assert q2.load(now_ms=11_100) == 1
    back = q2.get(c.hash)
    assert back is not None
    assert back.tx.encode() == c.tx.encode()
    assert back.score == pytest.approx(0.812346, abs=1e-6)
    assert back.threshold == pytest.approx(0.7)
    assert back.reasons == c.reasons
    assert back.since_ms == 10_900
    ra, rb = q2.rejected(a.hash), q2.rejected(b.hash)
    assert isinstance(ra, Rejected)
    assert isinstance(rb, Rejected)
    assert (ra.reason, rb.reason) == (EXPIRED, REJECTED)
    assert ra.held.tx.encode() == a.tx.encode()

    # The TTL keeps running across the restart: c expires at 11_900 on load.
    store.close()
    store = Store(path)
    q3 = Quarantine(store, ttl_ms=1_000)
    assert q3.load(now_ms=11_900) == 0
    rc = q3.rejected(c.hash)
    assert rc is not None
    assert rc.reason == EXPIRED
    store.close()


def test_release_forget_and_bounds(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "db"))
    reasons: list[str] = []
    q = Quarantine(store, txs_max=2, rejected_max=2, on_rejected=lambda r: reasons.append(r.reason))
    hs = [held(n, 1_000 + n) for n in range(5)]
    q.hold(hs[0], 1_000)
    q.hold(hs[1], 1_001)
    q.hold(hs[2], 1_002)  # full: the oldest leaves as rejected
    assert [h.hash for h in q.held()] == [hs[1].hash, hs[2].hash]
    r0 = q.rejected(hs[0].hash)
    assert r0 is not None
    assert r0.reason == FULL
    assert q.release(hs[1].hash) == hs[1]
    with pytest.raises(KeyError):
        q.release(hs[1].hash)
    with pytest.raises(KeyError):
        q.reject(hs[1].hash, 2_000)
    assert q.forget([hs[2].hash, hs[3].hash]) == 1  # committed elsewhere
    assert len(q) == 0
    for h in hs[3:]:
        q.hold(h, h.since_ms)
        q.reject(h.hash, 3_000)
    # rejected_max = 2: the oldest rejected record is dropped, in memory and on disk.
    assert q.rejected(hs[0].hash) is None
    assert q.rejected_count == 2
    assert reasons == [FULL, REJECTED, REJECTED]
    stored = {k for k, _ in store.quarantine_items()}
    assert stored == {hs[3].hash, hs[4].hash}
    store.close()


def test_bad_records_are_dropped_on_load(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "db"))
    good = held(1, 5_000)
    q = Quarantine(store)
    q.hold(good, 5_000)
    store.quarantine_put(b"\x01" * 32, b"garbage")
    store.quarantine_put(b"\x02" * 32, Quarantine.__module__.encode())
    q2 = Quarantine(store)
    assert q2.load(5_001) == 1
    assert [k for k, _ in store.quarantine_items()] == [good.hash]
    store.close()


def test_config_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="positive"):
        Quarantine(None, ttl_ms=0)


def held_from(key: SigningKey, nonce: int, since_ms: int) -> Held:
    tx = make_transfer(key, "vigil-test", b"\x07" * 20, 10**9, 1, nonce)
    return Held(tx, 0.9, 0.7, ("amount is 1000x the sender's median",), since_ms)


def test_one_senders_flood_evicts_its_own_oldest_never_others() -> None:
    flooder = SigningKey(hashlib.sha256(b"flooder").digest())
    others = [SigningKey(hashlib.sha256(b"other-%d" % i).digest()) for i in range(3)]
    evicted: list[Rejected] = []
    q = Quarantine(None, txs_max=10, sender_txs_max=4, on_rejected=evicted.append)
    mine = [held_from(k, 0, 100 + i) for i, k in enumerate(others)]
    for h in mine:
        q.hold(h, h.since_ms)
    flood = [held_from(flooder, n, 1_000 + n) for n in range(50)]
    for h in flood:
        q.hold(h, h.since_ms)
    # The others' holds (the oldest of all) are untouched; the flooder keeps its newest 4.
    assert all(h.hash in q for h in mine)
    assert [h.hash for h in q.held() if h.sender == flood[0].sender] == [h.hash for h in flood[-4:]]
    assert len(evicted) == 46
    assert {r.reason for r in evicted} == {FULL}
    assert [r.held.hash for r in evicted] == [h.hash for h in flood[:46]]  # oldest first


def test_count_bound_evicts_from_the_sender_holding_most_then_the_oldest() -> None:
    keys = [SigningKey(hashlib.sha256(b"count-%d" % i).digest()) for i in range(6)]
    q = Quarantine(None, txs_max=4)
    a0, a1 = held_from(keys[0], 0, 10), held_from(keys[0], 1, 11)
    b0, c0 = held_from(keys[1], 0, 5), held_from(keys[2], 0, 12)
    for h in (b0, a0, a1, c0):
        q.hold(h, h.since_ms)
    d0 = held_from(keys[3], 0, 20)
    q.hold(d0, 20)  # full: keys[0] holds the most, its oldest (a0) leaves
    assert a0.hash not in q
    assert all(h.hash in q for h in (b0, a1, c0, d0))
    e0 = held_from(keys[4], 0, 30)
    q.hold(e0, 30)  # nobody holds more than one: the oldest of all (b0) leaves
    assert b0.hash not in q
    assert len(q) == 4


def test_byte_bound_is_kept() -> None:
    keys = [SigningKey(hashlib.sha256(b"bytes-%d" % i).digest()) for i in range(8)]
    one = held_from(keys[0], 0, 0).stored_bytes()
    q = Quarantine(None, bytes_max=3 * one + one // 2)
    hs = [held_from(k, 0, i) for i, k in enumerate(keys)]
    for h in hs:
        q.hold(h, h.since_ms)
        assert q.size_bytes <= q.bytes_max
    assert len(q) == 3
    assert [h.hash for h in q.held()] == [h.hash for h in hs[-3:]]  # the oldest went first
    assert q.size_bytes == sum(h.stored_bytes() for h in hs[-3:])
