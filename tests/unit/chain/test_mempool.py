"""Mempool rules (node/chain/mempool.py): ordering, admission, rechecks, gaps and backlog."""

from __future__ import annotations

import pytest

from common.crypto import SigningKey, address_of
from node.chain.ledger import Account
from node.chain.mempool import Mempool
from node.chain.tx import Transaction, make_transfer
from node.errors import MEMPOOL_FULL, TX_BALANCE, TX_DUPLICATE, TX_NONCE, VigilError

KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(3)]


def _pool(txs_max: int = 100) -> Mempool:
    state = {address_of(k.public_key): Account(100, 0) for k in KEYS}
    return Mempool("c", txs_max, 10**6, state.get)


def _tx(k: int, nonce: int, amount: int = 1) -> Transaction:
    return make_transfer(KEYS[k], "c", address_of(KEYS[2].public_key), amount, 1, nonce)


def test_mempool_orders_nonces_and_fifo_across_senders() -> None:
    pool = _pool()
    for tx in (_tx(0, 1), _tx(1, 0), _tx(0, 0), _tx(1, 1)):
        pool.add(tx, tx.hash, 0.0)
    picked = pool.select(10)
    assert [(t.sender, t.nonce) for t in picked] == [
        (KEYS[0].public_key, 0),
        (KEYS[0].public_key, 1),
        (KEYS[1].public_key, 0),
        (KEYS[1].public_key, 1),
    ]
    assert pool.select(10) == []  # all in flight now


def test_mempool_admission_rules() -> None:
    pool = _pool(txs_max=2)
    tx = _tx(0, 0)
    pool.add(tx, tx.hash, 0.0)
    with pytest.raises(VigilError) as e:
        pool.add(tx, tx.hash, 0.0)
    assert e.value.code == TX_DUPLICATE
    with pytest.raises(VigilError) as e:
        pool.add(_tx(0, 0, amount=2), _tx(0, 0, amount=2).hash, 0.0)
    assert e.value.code == TX_NONCE
    big = _tx(1, 0, amount=100)
    with pytest.raises(VigilError) as e:
        pool.add(big, big.hash, 0.0)
    assert e.value.code == TX_BALANCE
    ok = _tx(1, 0)
    pool.add(ok, ok.hash, 0.0)
    extra = _tx(1, 1)
    with pytest.raises(VigilError) as e:
        pool.add(extra, extra.hash, 0.0)
    assert e.value.code == MEMPOOL_FULL


def test_mempool_recheck_after_commit_drops_stale_nonces() -> None:
    state = {address_of(k.public_key): Account(100, 0) for k in KEYS}
    pool = Mempool("c", 100, 10**6, state.get)
    a, b = _tx(0, 0), _tx(0, 1)
    pool.add(a, a.hash, 0.0)
    pool.add(b, b.hash, 0.0)
    state[address_of(KEYS[0].public_key)] = Account(98, 2)  # both nonces used elsewhere
    committed, dropped = pool.on_committed([a.hash], [address_of(KEYS[0].public_key)])
    assert [e.hash for e in committed] == [a.hash]
    assert [(e.hash, r) for e, r in dropped] == [(b.hash, "bad_nonce")]
    assert len(pool) == 0


def test_nonce_gap_is_not_runnable_work() -> None:
    pool = _pool()
    gapped = _tx(0, 3)
    pool.add(gapped, gapped.hash, 0.0)
    assert pool.has_ready()
    assert not pool.has_runnable()
    first = _tx(1, 0)
    pool.add(first, first.hash, 0.0)
    assert pool.has_runnable()


def test_txs_behind_a_lost_nonce_expire_as_rejected() -> None:
    """Issue 11 #3: a sender's nonce 1 was accepted by a node killed before gossiping it; its
    nonces 2 and 3 waited on every other node forever. They are dropped after the timeout."""
    from node.chain.mempool import NONCE_GAP_TIMEOUT_S

    pool = _pool()
    runnable = _tx(1, 0)
    parked = [_tx(2, 2), _tx(2, 3)]
    pool.add(runnable, runnable.hash, 0.0)
    for tx in parked:
        pool.add(tx, tx.hash, 0.0)
    assert pool.expire_gaps(NONCE_GAP_TIMEOUT_S - 1) == []
    expired = pool.expire_gaps(NONCE_GAP_TIMEOUT_S)
    assert {e.hash for e in expired} == {tx.hash for tx in parked}
    assert runnable.hash in pool  # its own nonce is next: not parked, kept
    assert len(pool) == 1


def test_txs_behind_a_held_tx_wait_for_its_fate_not_the_gap_timeout() -> None:
    """Issue 13: a sender's later txs wait behind its held tx until release, reject or the
    quarantine's TTL; the nonce-gap timeout must not reject them first."""
    from node.chain.mempool import NONCE_GAP_TIMEOUT_S

    pool = _pool()
    waiting = [_tx(0, 1), _tx(0, 2)]  # nonce 0 is held by the detector
    parked = _tx(1, 5)  # a plain gap
    for tx in [*waiting, parked]:
        pool.add(tx, tx.hash, 0.0)
    sender0 = waiting[0].sender_address
    expired = pool.expire_gaps(NONCE_GAP_TIMEOUT_S, keep=lambda s: s == sender0)
    assert [e.hash for e in expired] == [parked.hash]
    assert all(tx.hash in pool for tx in waiting)


def test_backlog_age_counts_runnable_txs_only() -> None:
    """Back-pressure looks at the oldest tx that can commit: old txs parked behind a gap or a
    held tx are not a backlog, and must not push every client back while they wait."""
    pool = _pool()
    old_parked = _tx(0, 3)
    pool.add(old_parked, old_parked.hash, 0.0)
    assert pool.oldest_age_s(10.0) == 10.0
    assert pool.oldest_runnable_age_s(10.0) == 0.0
    runnable = [_tx(1, 0), _tx(1, 1)]
    for n, tx in enumerate(runnable):
        pool.add(tx, tx.hash, 4.0 + n)
    assert pool.oldest_runnable_age_s(10.0) == 6.0
    pool.mark_inflight([runnable[0].hash])  # in a proposal: still waiting to commit
    assert pool.oldest_runnable_age_s(10.0) == 6.0
    filler = [_tx(0, n) for n in range(3)]
    for tx in filler:
        pool.add(tx, tx.hash, 8.0)
    assert pool.oldest_runnable_age_s(10.0) == 10.0  # the gap is filled: it can run now


def test_thousands_of_parked_txs_at_the_front_are_not_runnable_work() -> None:
    """Warm-cluster bench (stop 11): 3,000 txs waiting behind held ones sat at the front of
    the mempool; ``has_runnable`` gave up after 2,000 and assumed work, so every backup's
    request timer fired on an idle chain and the views changed every 2 s for 30 s."""
    keys = [SigningKey(bytes([k + 9]) * 32) for k in range(150)]
    state = {address_of(k.public_key): Account(100, 0) for k in keys}
    pool = Mempool("c", 10_000, 10**8, state.get)
    to = address_of(KEYS[2].public_key)
    for k in keys:  # nonce 0 held elsewhere: nonces 1..20 wait
        for nonce in range(1, 21):
            tx = make_transfer(k, "c", to, 1, 1, nonce)
            pool.add(tx, tx.hash, 0.0)
    assert len(pool) == 3000
    assert not pool.has_runnable()
    runnable = make_transfer(keys[0], "c", to, 1, 1, 0)  # fills its sender's gap
    pool.add(runnable, runnable.hash, 1.0)
    assert pool.has_runnable()
    pool.mark_inflight([runnable.hash])
    assert pool.has_runnable()  # its nonce 1 follows the one in flight
    sender = runnable.sender_address
    pool.mark_inflight(e.hash for e in pool.entries(10_000) if e.sender == sender)
    assert not pool.has_runnable()
