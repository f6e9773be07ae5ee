"""Admission pushes clients back on a commit backlog, before the request timer is in sight."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from common.crypto import SigningKey
from node.chain.ledger import Account
from node.chain.mempool import Mempool
from node.chain.tx import decode_verified, make_transfer, tx_hash_of
from node.errors import MEMPOOL_FULL, TX_DUPLICATE, TX_INVALID, VigilError
from node.host import admission as adm
from node.host.admission import Admission

CHAIN = "vigil-local"
KEYS = [SigningKey(bytes([k + 1]) * 32) for k in range(3)]


class _Gossip:
    """A ``TxGossip`` that records what it is asked to forward."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self.out: list[bytes] = []

    def forward(self, raws: list[bytes]) -> None:
        self.out.extend(raws)


def _admission(backlog: int) -> tuple[Admission, list[float]]:
    mempool = Mempool(CHAIN, 100_000, 1 << 30, lambda a: Account(10**12, 0))
    a = Admission(mempool, _Gossip(), lambda h: False, lambda txs: None, print, None)
    clock = [100.0]
    a.clock = lambda: clock[0]
    # A backlog of old txs from other senders (admitted 5 s ago).
    filler = SigningKey(b"\x55" * 32)
    for n in range(backlog):
        tx = make_transfer(filler, CHAIN, b"\x01" * 20, 1, 1, n)
        mempool.add(tx, tx.hash, 95.0)
    return a, clock


def _commit(a: Admission, clock: list[float], txs: int, dt_s: float) -> None:
    clock[0] += dt_s
    a.on_committed(txs)


def test_backlog_allowance_follows_the_commit_rate() -> None:
    a, clock = _admission(0)
    assert a.backlog_max() == adm.BACKLOG_TXS_MIN
    _commit(a, clock, 0, 0.0)
    for _ in range(80):
        _commit(a, clock, 500, 0.1)  # 5000 tx/s for 8 s
    assert 0.9 * 5000 * adm.BACKLOG_S <= a.backlog_max() <= 5000 * adm.BACKLOG_S


async def _submit(a: Admission, raws: list[bytes], origin: int | None = None) -> list[Any]:
    """One batch through admission, as ``submit`` and ``run`` take it (without their queue):
    a client's tx first meets the back-pressure at the door (``_refusal``)."""
    loop = asyncio.get_running_loop()
    refused: dict[int, VigilError] = {}
    items: list[adm._Item] = []
    for n, r in enumerate(raws):
        refusal = a._refusal(r) if origin is None else None
        if refusal is not None:
            refused[n] = VigilError(MEMPOOL_FULL, refusal)
            continue
        future = loop.create_future() if origin is None else None
        items.append(adm._Item(r, tx_hash_of(r), origin, future, a.clock()))
    await a._admit(items)
    answers = iter(items)
    out: list[Any] = []
    for n in range(len(raws)):
        if n in refused:
            out.append(refused[n])
            continue
        it = next(answers)
        if it.future is not None:
            exc = it.future.exception()
            out.append(exc if exc is not None else it.future.result())
    return out


async def test_new_client_work_refused_with_retryable_error_when_backlogged() -> None:
    a, _ = _admission(adm.BACKLOG_TXS_MIN)
    tx = make_transfer(KEYS[0], CHAIN, b"\x02" * 20, 1, 1, 0)
    [answer] = await _submit(a, [tx.encode()])
    assert isinstance(answer, VigilError)
    assert answer.code == MEMPOOL_FULL


async def test_gap_filler_and_gossip_pass_when_backlogged() -> None:
    a, _ = _admission(adm.BACKLOG_TXS_MIN)
    later = make_transfer(KEYS[1], CHAIN, b"\x02" * 20, 1, 1, 1)
    a.mempool.add(later, later.hash, 99.0)  # parked behind nonce 0
    first = make_transfer(KEYS[1], CHAIN, b"\x02" * 20, 1, 1, 0)
    [answer] = await _submit(a, [first.encode()])
    assert answer["status"] == "pending"
    gossiped = make_transfer(KEYS[2], CHAIN, b"\x02" * 20, 1, 1, 0)
    await _submit(a, [gossiped.encode()], origin=1)
    assert gossiped.hash in a.mempool


async def test_no_push_back_when_the_backlog_is_young() -> None:
    a, clock = _admission(adm.BACKLOG_TXS_MIN)
    clock[0] = 95.5  # the backlog has waited 0.5 s only: the chain may still absorb it
    tx = make_transfer(KEYS[0], CHAIN, b"\x02" * 20, 1, 1, 0)
    [answer] = await _submit(a, [tx.encode()])
    assert answer["status"] == "pending"


def test_backlog_ms_zero_turns_it_off() -> None:
    a, _ = _admission(adm.BACKLOG_TXS_MIN * 2)
    a.backlog_s = 0
    assert not a._pushed_back()
    with pytest.raises(AssertionError):
        assert a._pushed_back()


async def test_gossip_refused_by_a_full_mempool_is_not_marked_seen() -> None:
    """Txs of one gossip batch pass the mempool check together, then fill its last slot: the
    ones refused must stay unseen, or the peer's regossip (node/host/txflow.py) of the same
    tx would be dropped here for good and the tx never proposed by this node."""
    mempool = Mempool(CHAIN, 1, 1 << 30, lambda a: Account(10**12, 0))
    gossip = _Gossip()
    a = Admission(mempool, gossip, lambda h: False, lambda txs: None, print, None)
    txs = [make_transfer(KEYS[k], CHAIN, b"\x02" * 20, 1, 1, 0) for k in range(3)]
    await _submit(a, [tx.encode() for tx in txs], origin=1)
    assert [tx.hash in mempool for tx in txs] == [True, False, False]
    assert gossip.seen == {txs[0].hash}
    mempool.remove(txs[0].hash)
    await _submit(a, [txs[1].encode()], origin=1)  # the regossiped copy gets its chance
    assert txs[1].hash in mempool
    assert txs[1].hash in gossip.seen


async def test_txs_waiting_behind_a_hold_neither_age_nor_fill_the_backlog() -> None:
    """Warm-cluster bench (stop 11): thousands of txs waiting behind held ones stay for the
    hold's TTL; counted as backlog they pushed every client back for the whole next run."""
    a, clock = _admission(0)
    held_sender = SigningKey(b"\x66" * 32)
    for nonce in range(1, 2 * adm.BACKLOG_TXS_MIN):  # nonce 0 is held: all of these wait
        tx = make_transfer(held_sender, CHAIN, b"\x01" * 20, 1, 1, nonce)
        a.mempool.add(tx, tx.hash, 50.0)
    assert a.mempool.backlog(100.0) == (0.0, 2 * adm.BACKLOG_TXS_MIN - 1)
    filler = SigningKey(b"\x77" * 32)  # a few runnable txs, 5 s old: slow, but no backlog
    for nonce in range(10):
        t = make_transfer(filler, CHAIN, b"\x01" * 20, 1, 1, nonce)
        a.mempool.add(t, t.hash, 95.0)
    assert a.mempool.backlog(100.0) == (5.0, 2 * adm.BACKLOG_TXS_MIN - 1)
    tx = make_transfer(KEYS[0], CHAIN, b"\x02" * 20, 1, 1, 0)
    [answer] = await _submit(a, [tx.encode()])
    assert answer["status"] == "pending"
    for nonce in range(10, adm.BACKLOG_TXS_MIN):  # now a real backlog of runnable txs
        t = make_transfer(filler, CHAIN, b"\x01" * 20, 1, 1, nonce)
        a.mempool.add(t, t.hash, 95.0)
    clock[0] += 1.0  # past the refresh interval
    late = make_transfer(KEYS[1], CHAIN, b"\x02" * 20, 1, 1, 0)
    [refused] = await _submit(a, [late.encode()])
    assert isinstance(refused, VigilError)
    assert refused.code == MEMPOOL_FULL


async def test_clients_pushed_back_while_admission_itself_is_behind() -> None:
    """No commit backlog, but the admission queue's oldest item waited past QUEUE_WAIT_MAX_S:
    clients are refused (retryable) instead of waiting there for their calls to time out."""
    a, clock = _admission(0)
    assert not a._pushed_back()
    txs = [make_transfer(KEYS[2], CHAIN, b"\x02" * 20, 1, 1, n) for n in range(3)]
    a.gossiped([tx.encode() for tx in txs], origin=1)  # queued at 100.0
    clock[0] += adm.QUEUE_WAIT_MAX_S / 2
    assert not a._pushed_back()  # young yet
    clock[0] += adm.QUEUE_WAIT_MAX_S / 2 + 0.1
    # Read live, before any batch starts: a burst that lands while a long batch is being
    # admitted is pushed back while that batch still runs.
    assert a.queue_wait_s(clock[0]) == pytest.approx(adm.QUEUE_WAIT_MAX_S + 0.1)
    assert a._pushed_back()
    runner = asyncio.create_task(a.run())
    async with asyncio.timeout(10):
        while len(a.mempool) < 3:
            await asyncio.sleep(0.01)
    runner.cancel()
    assert not a._pushed_back()  # the queue is empty now: nothing to wait behind
    a.gossiped([make_transfer(KEYS[1], CHAIN, b"\x02" * 20, 1, 1, 0).encode()], origin=1)
    assert not a._pushed_back()  # queued just now
    clock[0] += adm.QUEUE_WAIT_MAX_S + 0.1
    assert a._pushed_back()


async def test_a_client_tx_let_in_is_admitted_even_if_pressure_starts_while_it_waits() -> None:
    """Back-pressure is decided at the door. A client's tx already queued when the backlog
    grows is admitted: refused after its wait and its signature check, it cost all of that for
    nothing and came back as a retry. Under overload (5,000 wallets) every node refused its
    clients' whole batches that way, no tx reached any mempool for seconds, and the backups'
    request timers ran out on a primary with nothing to propose."""
    a, clock = _admission(2 * adm.BACKLOG_TXS_MIN)  # old enough (admitted at 95.0) to refuse
    clock[0] = 95.5  # ... but young at the door
    tx = make_transfer(KEYS[0], CHAIN, b"\x02" * 20, 1, 1, 0)
    submitting = asyncio.create_task(a.submit(tx.encode()))
    await asyncio.sleep(0)  # let in: queued
    assert a.arriving(tx.hash)
    clock[0] = 100.0  # the backlog is now old: the door is shut
    late = make_transfer(KEYS[1], CHAIN, b"\x02" * 20, 1, 1, 0)
    with pytest.raises(VigilError) as refused:
        await a.submit(late.encode())
    assert refused.value.code == MEMPOOL_FULL
    runner = asyncio.create_task(a.run())
    try:
        async with asyncio.timeout(10):
            answer = await submitting
    finally:
        runner.cancel()
    assert answer["status"] == "pending"
    assert tx.hash in a.mempool


async def test_clients_pushed_back_for_a_while_after_the_event_loop_ran_late() -> None:
    """No backlog and no queue, but the loop ran LAG_MAX_S late (out of CPU): clients are
    refused (retryable) for LAG_HOLD_S; a small lag changes nothing; gossip is never refused."""
    a, clock = _admission(0)
    a.on_loop_lag(adm.LAG_MAX_S / 2)
    assert not a._pushed_back()
    a.on_loop_lag(adm.LAG_MAX_S + 0.05)
    assert a._pushed_back()
    tx = make_transfer(KEYS[0], CHAIN, b"\x02" * 20, 1, 1, 0)
    [refused] = await _submit(a, [tx.encode()])
    assert isinstance(refused, VigilError)
    assert refused.code == MEMPOOL_FULL
    [gossiped] = [make_transfer(KEYS[1], CHAIN, b"\x02" * 20, 1, 1, 0)]
    await _submit(a, [gossiped.encode()], origin=1)
    assert gossiped.hash in a.mempool
    clock[0] += adm.LAG_HOLD_S
    assert not a._pushed_back()
    [answer] = await _submit(a, [tx.encode()])
    assert answer["status"] == "pending"


async def test_a_tx_committed_while_its_signature_is_checked_is_a_duplicate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backup's validation can take a tx from this queue, and its block can commit while
    admission checks the tx's signature: the client must hear ``tx_duplicate`` (its tx is in),
    not ``tx_nonce`` (the account's nonce has moved past it), which wallets took for a
    rejection."""
    committed: set[bytes] = set()
    nonces = {"n": 0}
    mempool = Mempool(CHAIN, 100, 1 << 30, lambda a: Account(10**12, nonces["n"]))
    a = Admission(mempool, _Gossip(), committed.__contains__, lambda txs: None, print, None)
    tx = make_transfer(KEYS[0], CHAIN, b"\x02" * 20, 1, 1, 0)

    def checked_meanwhile(raws: list[bytes]) -> list[Any]:
        committed.add(tx.hash)  # its block is applied while the check runs
        nonces["n"] = 1
        return decode_verified(raws)

    monkeypatch.setattr("node.host.admission.decode_verified", checked_meanwhile)
    [answer] = await _submit(a, [tx.encode()])
    assert isinstance(answer, VigilError)
    assert answer.code == TX_DUPLICATE
    assert tx.hash not in mempool


async def _submit_all(a: Admission, raws: list[bytes]) -> list[Any]:
    """Client calls the way a JSON-RPC batch makes them (node/api/rpc.py gathers one task per
    call), with the admission task running."""
    runner = asyncio.create_task(a.run())
    try:
        async with asyncio.timeout(10):
            return list(await asyncio.gather(*(a.submit(r) for r in raws), return_exceptions=True))
    finally:
        runner.cancel()


async def test_under_pressure_a_client_tx_behind_a_nonce_gap_is_refused() -> None:
    """Stop 13, 1,500 tx/s offered: a sender's nonce n was pushed back while n + 1 got in,
    parked, and expired (nonce_gap) before n made it; every later tx of the sender then parked
    and expired in turn. For PRESSURE_S after a push-back, parking is refused (retryable)."""
    a, clock = _admission(adm.BACKLOG_TXS_MIN)
    key = KEYS[0]
    n0, n1, n2 = (make_transfer(key, CHAIN, b"\x02" * 20, 1, 1, n) for n in range(3))
    # No pressure yet: a later nonce may park (its predecessor may be on its way by gossip).
    clock[0] = 95.5  # the backlog is young: no push-back
    [parked] = await _submit_all(a, [n1.encode()])
    assert parked["status"] == "pending"
    assert a.mempool.would_park(n1)
    assert a.mempool.would_park(n2)  # behind n0, the first nonce neither used nor pending
    assert not a.mempool.would_park(n0)
    a.mempool.remove(n1.hash)
    clock[0] = 100.0  # the backlog is old now: clients are pushed back
    [refused] = await _submit_all(a, [n0.encode()])
    assert isinstance(refused, VigilError)
    assert refused.code == MEMPOOL_FULL
    assert refused.data == {"retry_after_ms": round(adm.BACKLOG_S * 1000)}  # how long to wait
    # The backlog clears, but for PRESSURE_S a tx that would wait behind n0 is refused.
    for entry in a.mempool.entries(adm.BACKLOG_TXS_MIN):
        a.mempool.remove(entry.hash)
    assert not a._pushed_back()
    [gap] = await _submit_all(a, [n1.encode()])
    assert isinstance(gap, VigilError)
    assert gap.code == MEMPOOL_FULL
    assert "missing nonce" in gap.message
    assert gap.data == {"retry_after_ms": round(adm.BACKLOG_S * 1000)}
    assert n1.hash not in a.mempool
    assert "missing nonce" in (a._refusal(n1.encode()) or "")  # before its signature check
    [garbage] = await _submit_all(a, [b"\xc1"])  # says no sender: the normal path answers
    assert isinstance(garbage, VigilError)
    assert garbage.code == TX_INVALID
    gossiped = make_transfer(KEYS[1], CHAIN, b"\x02" * 20, 1, 1, 5)  # a peer's parked tx
    await _submit(a, [gossiped.encode()], origin=2)
    assert gossiped.hash in a.mempool
    # n0, n1, n2 in one JSON-RPC batch: each enters after the one before it, none parks.
    answers = await _submit_all(a, [n0.encode(), n1.encode(), n2.encode()])
    assert [r["status"] for r in answers] == ["pending", "pending", "pending"]
    # Once the pressure is PRESSURE_S old, a client's tx may park again.
    clock[0] += adm.PRESSURE_S
    late = make_transfer(key, CHAIN, b"\x02" * 20, 1, 1, 4)
    [ok] = await _submit_all(a, [late.encode()])
    assert ok["status"] == "pending"


async def test_a_refusal_through_the_queue_is_not_a_reference_cycle() -> None:
    """The refusal's traceback holds ``submit``'s frame: the future in it (which holds the
    refusal) made each refusal a cycle that only the collector's full pass freed; under load
    a node kept thousands of them (tracebacks, frames, futures) between those passes."""
    a, _ = _admission(0)
    [refused] = await _submit_all(a, [b"\xc1"])
    assert isinstance(refused, VigilError)
    assert refused.code == TX_INVALID
    frames = []
    tb = refused.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    assert any(f.f_code.co_name == "submit" for f in frames)
    held = [
        name
        for f in frames
        for name, value in f.f_locals.items()
        if isinstance(value, asyncio.Future)
    ]
    assert held == []


@pytest.mark.skipif(sys.platform != "linux", reason="a niceness per thread is Linux's")
def test_signature_check_threads_run_at_a_lower_priority_than_the_loop() -> None:
    """Under overload the cores go first to the loops that run PBFT's rounds: admission's
    signature-check threads are niced (node/host/runtime.py's pool), the caller is not."""
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with ThreadPoolExecutor(1, initializer=adm.lower_thread_priority) as pool:
        niceness = pool.submit(
            lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        ).result()
    assert niceness == min(19, before + adm.VERIFY_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
