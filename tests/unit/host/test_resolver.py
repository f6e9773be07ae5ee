"""In-flight bookkeeping of proposals across commits and view changes (node/host/resolver.py).

Real ``Mempool``, ``TxResolver``, ``TxFlow`` and the driver's ``Actions``, over typed fakes
(tests/unit/host/fakes.py). Each test is one cause found for issue 11: a valid proposal refused as
``replay``, or an accepted tx that no primary would ever propose again (stranded).
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from common.codec import sha256
from common.crypto import SigningKey
from consensus.api import NULL_DIGEST, Commit, Event, Reproposed, ViewChanged
from node.chain.block import Proposal
from node.chain.tx import Transaction, decode_verified, make_transfer, tx_hash_of
from node.host.admission import Admission
from node.host.driver import Actions
from node.host.metrics import Metrics
from node.host.signals import PendingFlag, ProposalQueue, Subscribers
from node.host.txflow import STALE_TXS_MAX, TxFlow
from node.net.gossip import SeenCache
from tests.unit.host.fakes import (
    CHAIN,
    FakeCatchUp,
    FakeChain,
    FakeP2P,
    FakeScreening,
    mempool_of,
    resolver,
)

USER = SigningKey(b"\x09" * 32)


def _tx(nonce: int) -> Transaction:
    return make_transfer(USER, CHAIN, b"\x01" * 20, 1, 1, nonce)


class Host:
    """The real resolver, mempool side and action performer of one node, over typed fakes."""

    def __init__(self, index: int, peers_txs: dict[bytes, Transaction] | None = None) -> None:
        self.chain = FakeChain()
        self.mempool = mempool_of(self.chain)
        self.p2p = FakeP2P(peers_txs)
        self.txs = resolver(self.chain, self.p2p, self.mempool, index)
        self.inbox: asyncio.Queue[Event] = asyncio.Queue()
        proposals = ProposalQueue()
        metrics = Metrics()
        self.flow = TxFlow(
            mempool=self.mempool,
            chain=self.chain,
            txs=self.txs,
            screening=FakeScreening(),
            seen=SeenCache(100),
            p2p=self.p2p,
            proposals=proposals,
            pending=PendingFlag(self.mempool.has_runnable, self.inbox),
            subscribers=Subscribers(),
            metrics=metrics,
        )
        self.actions = Actions(
            index=index,
            p2p=self.p2p,
            commits=asyncio.Queue[Commit](maxsize=10),
            proposals=proposals,
            inbox=self.inbox,
            txs=self.txs,
            flow=self.flow,
            mempool=self.mempool,
            catchup=FakeCatchUp(),
            metrics=metrics,
        )


def _admit(node: Host, tx: Transaction) -> None:
    """What admission does with a gossiped tx it accepts (node/host/admission.py)."""
    node.mempool.add(tx, tx.hash, 0.0)
    node.flow.on_admitted([tx])


async def test_a_seq_committed_while_its_txs_were_fetched_is_not_a_replay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 11 #2, "replay at seq 10 in view 0 with no fault": a backup fetches a proposal's
    txs from the primary; meanwhile 2f+1 others commit that seq and this node executes it. The
    txs are then "already committed" and the valid proposal was logged as invalid (replay).
    """
    tx = _tx(0)
    node = Host(2, {tx.hash: tx})
    payload = Proposal(10, 0, 1000, (tx.hash,)).encode()
    node.chain.height = 9
    node.p2p.on_request = lambda: node.chain.commit(10, payload, [tx])
    with caplog.at_level(logging.WARNING):
        valid = await node.txs.validate(0, 10, sha256(payload), payload)
    assert valid  # the very payload this node executed at seq 10
    assert "proposal_invalid" not in caplog.text
    assert node.txs.uncommitted_hashes() == set()  # nothing left in flight for a done seq


class _NoGossip:
    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    def forward(self, raws: list[bytes]) -> None:
        pass


async def test_a_tx_still_queued_for_admission_is_taken_from_the_queue_not_fetched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its gossip came ahead of the PRE-PREPARE but waits in this backup's admission queue
    (thousands of txs deep under overload): the backup checks it from the queue at once,
    instead of waiting for its admission (seconds, up to the PBFT request timer) or asking the
    primary for it. A tx that is nowhere here is still fetched. Admission later admits the
    queued tx without checking its signature a second time."""
    here, elsewhere = _tx(0), _tx(1)
    node = Host(2, {here.hash: here, elsewhere.hash: elsewhere})
    admission = Admission(node.mempool, _NoGossip(), lambda h: False, _nothing, _nothing, None)
    node.txs.arrivals = admission
    admission.verified = node.txs.verified
    admission.gossiped([here.encode()], origin=0)  # queued; admission.run not started yet
    assert admission.arriving(here.hash)
    assert not admission.arriving(elsewhere.hash)
    payload = Proposal(1, 0, 1000, (here.hash, elsewhere.hash)).encode()
    assert await asyncio.wait_for(node.txs.validate(0, 1, sha256(payload), payload), 1.0)
    assert node.p2p.requested == [elsewhere.hash]  # only the one no admission here knew of
    assert node.txs.verified(here.hash) == here

    checked: list[bytes] = []
    real = decode_verified

    def counting(raws: list[bytes]) -> list[Transaction | str]:
        checked.extend(raws)
        return real(raws)

    monkeypatch.setattr("node.host.admission.decode_verified", counting)
    admitting = asyncio.create_task(admission.run())
    try:
        for _ in range(100):
            if here.hash in node.mempool:
                break
            await asyncio.sleep(0.01)
    finally:
        admitting.cancel()
    assert here.hash in node.mempool  # it still enters the mempool (view changes, issue 11)
    assert checked == []  # its signature was checked once, by the validation
    assert not admission.arriving(here.hash)


async def test_a_tx_in_the_batch_being_admitted_is_waited_for_not_checked_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At max rate a third of a proposal's txs are in the batch the backup's admission is
    checking (their gossip came just ahead): the backup waits for that batch (``settled``)
    instead of checking their signatures a second time."""
    txs = [_tx(n) for n in range(3)]  # more than INLINE_VERIFY_MAX: checked in a thread
    node = Host(2)
    admission = Admission(node.mempool, _NoGossip(), lambda h: False, _nothing, _nothing, None)
    node.txs.arrivals = admission
    admission.verified = node.txs.verified
    checked: list[int] = []

    def slow(raws: list[bytes]) -> list[Transaction | str]:
        checked.append(len(raws))
        time.sleep(0.2)  # in the worker thread: the batch stays in progress a while
        return decode_verified(raws)

    monkeypatch.setattr("node.host.admission.decode_verified", slow)
    admission.gossiped([tx.encode() for tx in txs], origin=0)
    admitting = asyncio.create_task(admission.run())
    try:
        await asyncio.sleep(0.05)  # the batch of three is being checked
        payload = Proposal(1, 0, 1000, (txs[0].hash,)).encode()
        assert await asyncio.wait_for(node.txs.validate(0, 1, sha256(payload), payload), 2.0)
    finally:
        admitting.cancel()
    assert checked == [3]  # admission's check only
    assert node.p2p.requested == []


async def test_a_queued_tx_that_fails_its_check_is_not_used() -> None:
    """The queue holds unchecked bytes: one whose signature does not verify is not taken
    from there; the proposal then lacks it (the primary has no valid copy either)."""
    good = _tx(0)
    bad = good.encode()[:-1] + bytes([good.encode()[-1] ^ 1])  # the signature's last byte
    node = Host(2)
    admission = Admission(node.mempool, _NoGossip(), lambda h: False, _nothing, _nothing, None)
    node.txs.arrivals = admission
    admission.gossiped([bad], origin=0)
    bad_hash = tx_hash_of(bad)
    assert admission.queued([bad_hash]) == {bad_hash: bad}
    payload = Proposal(1, 0, 1000, (bad_hash,)).encode()
    assert not await node.txs.validate(0, 1, sha256(payload), payload)
    assert set(node.p2p.requested) == {bad_hash}  # asked the peers, who had no valid copy
    assert node.txs.verified(bad_hash) is None


async def test_txs_of_a_fetched_block_serve_its_commit_but_no_lookup_by_hash() -> None:
    """Catch-up hands over a block's txs before the core has checked its certificate, and
    nobody checked their signatures: a faulty peer could answer with a made-up certificate
    over a tx with a bad signature. Such a body serves the commit of its digest (the core
    emits that Commit only for a certificate it checked), never a lookup by hash: admission
    would otherwise skip the tx's signature check (``verified``), and a backup would take it
    for a proposal."""
    good = _tx(0)
    raw = good.encode()
    forged = Transaction.decode(raw[:-1] + bytes([raw[-1] ^ 1]))  # decodes; does not verify
    assert not forged.verify_signature()
    node = Host(2)
    payload = Proposal(5, 0, 1000, (forged.hash,)).encode()
    digest = sha256(payload)
    node.chain.height = 4
    node.txs.add_fetched({digest: (forged,)}, {digest: 5})
    assert node.txs.verified(forged.hash) is None
    assert node.txs.lookup(forged.hash) is None
    assert await node.txs.for_commit(5, digest, payload) == (forged,)
    # A body checked here (a validated proposal) serves lookups; a later fetched copy of the
    # same digest does not undo that.
    node2 = Host(2, {good.hash: good})
    payload2 = Proposal(6, 0, 1000, (good.hash,)).encode()
    node2.chain.height = 5
    assert await node2.txs.validate(0, 6, sha256(payload2), payload2)
    node2.txs.add_fetched({sha256(payload2): (good,)}, {sha256(payload2): 6})
    assert node2.txs.verified(good.hash) == good


def _nothing(*args: object) -> None:
    pass


async def test_a_real_replay_is_still_refused(caplog: pytest.LogCaptureFixture) -> None:
    tx = _tx(0)
    node = Host(2, {tx.hash: tx})
    node.chain.commit(9, b"seq 9", [tx])  # tx committed at seq 9; proposed again at seq 10
    payload = Proposal(10, 0, 1000, (tx.hash,)).encode()
    with caplog.at_level(logging.WARNING):
        assert not await node.txs.validate(0, 10, sha256(payload), payload)
    assert "proposal_invalid" in caplog.text


async def test_new_primary_does_not_repropose_a_tx_the_new_view_already_carries() -> None:
    """Issue 11 #2, "replay right after view changes": the NEW-VIEW re-proposes seq 5 with tx
    T, which the new primary (node 1) had never seen. T's gossip arrives after the view change;
    it went to the ready queue, the primary proposed T again at seq 6, and every backup holding
    the NEW-VIEW's record refused that block as a replay.
    """
    t, other = _tx(0), _tx(1)
    primary = Host(1)
    old = Proposal(5, 0, 1000, (t.hash,)).encode()
    await primary.actions.perform(ViewChanged(1, 1, (Reproposed(5, sha256(old), old),)))
    _admit(primary, t)  # gossip of T arrives after the view change
    _admit(primary, other)
    picked = primary.mempool.select(100)
    assert t.hash not in {tx.hash for tx in picked}


async def test_abandoned_proposal_txs_become_proposable_by_the_new_primary() -> None:
    """Issue 11 #3 (stranded txs): node 1 validated the old primary's seq 5, fetching tx T
    from it (the PRE-PREPARE beat T's gossip). T's gossip, arriving next, was refused as
    "known". The view change null-fills seq 5 and node 1 is the new primary: T was nowhere in
    its mempool, so it was never proposed, and stayed pending on every node that had it.
    """
    t = _tx(0)
    backup = Host(1, {t.hash: t})
    payload = Proposal(5, 0, 1000, (t.hash,)).encode()
    backup.chain.height = 4
    assert await backup.txs.validate(0, 5, sha256(payload), payload)
    assert t.hash not in backup.mempool  # it reached us inside the proposal only
    await backup.actions.perform(ViewChanged(1, 1, (Reproposed(5, NULL_DIGEST, b""),)))
    assert [tx.hash for tx in backup.mempool.select(100)] == [t.hash]


async def test_a_validation_finishing_after_the_view_change_leaves_nothing_in_flight() -> None:
    """A validation of view 0 that completes after we entered view 1 must not mark its txs in
    flight: no later view change would release them while this node is primary."""
    t = _tx(0)
    node = Host(1, {t.hash: t})
    node.chain.height = 4
    _admit(node, t)
    payload = Proposal(5, 0, 1000, (t.hash,)).encode()
    node.mempool._entries.pop(t.hash)  # force a fetch, during which the view changes
    node.mempool._ready.pop(t.hash)
    node.mempool._by_sender.clear()
    node.p2p.on_request = lambda: node.actions.perform(ViewChanged(1, 1, ()))
    await node.txs.validate(0, 5, sha256(payload), payload)
    assert node.txs.uncommitted_hashes() == set()


async def test_regossip_sends_the_mempool_to_a_peer_that_reconnects() -> None:
    """Gossip is not relayed: txs admitted while a link was down reach that peer only this way."""
    node = Host(2)
    for n in range(3):
        _admit(node, _tx(n))
    node.flow.regossip(0)
    assert [(to, m["t"], len(m["txs"])) for to, m in node.p2p.sent] == [(0, "txs", 3)]


async def test_stale_txs_go_to_every_peer_again_at_doubling_ages() -> None:
    """A tx the primary never got (gossip dropped under load) would wait here for ever and
    arm our request timer on an idle chain: it is sent again at 1, 2, 4... s of age, and
    a tx already in a proposal is not."""
    node = Host(2)
    txs = [_tx(n) for n in range(3)]
    for tx in txs:
        _admit(node, tx)  # first seen at 0.0
    node.mempool.mark_inflight([txs[0].hash])

    def sent(since: float, now: float) -> list[int]:
        node.p2p.broadcasts.clear()
        count = node.flow.regossip_stale(since, now)
        got = [len(m["txs"]) for m in node.p2p.broadcasts if m["t"] == "txs"]
        assert sum(got) == count
        return got

    assert sent(0.4, 0.9) == []  # younger than a second
    assert sent(0.9, 1.4) == [2]  # crossed 1 s: the two not in flight
    assert node.p2p.broadcasts[0]["txs"] == [txs[1].encode(), txs[2].encode()]
    assert sent(1.4, 1.9) == []
    assert sent(1.9, 2.4) == [2]  # crossed 2 s
    assert sent(2.4, 3.9) == []
    assert sent(3.9, 4.4) == [2]  # crossed 4 s
    node.mempool.remove(txs[2].hash)  # (removing nonce 1 would park nonce 2 behind a gap)
    assert sent(7.9, 8.4) == [1]
    assert sent(8.4, 15.9) == []
    assert sent(15.9, 16.4) == [1]
    assert sent(16.4, 64.2) == [1]  # one send per call however many ages it passed
    assert sent(64.2, 127.9) == []
    assert sent(127.9, 128.3) == [1]  # for as long as it waits


async def test_a_release_sends_the_txs_waiting_behind_it_to_every_peer() -> None:
    """Peers dropped the later txs of a held sender after the nonce-gap timeout (they do not
    know of the hold); when the operator releases it, the entry node sends those again."""
    from node.detect.quarantine import Held

    node = Host(2)
    held, later = _tx(0), [_tx(1), _tx(2)]
    for tx in later:
        _admit(node, tx)
    node.p2p.broadcasts.clear()
    node.mempool.add(held, held.hash, 0.0)  # what admit_released does
    node.flow.on_unblocked(Held(held, 0.9, 0.5, ("why",), 0))
    assert node.p2p.broadcasts == [{"t": "txs", "txs": [tx.encode() for tx in later]}]


def test_view_change_releases_stale_inflight_records_but_keeps_new_view_ones() -> None:
    """Root cause of a stall: an old view's proposal kept its txs in flight forever."""
    from common.codec import sha256
    from consensus.api import Reproposed
    from node.chain.block import Proposal
    from tests.unit.chain.test_mempool import _pool, _tx
    from tests.unit.host.fakes import FakeChain, resolver

    pool = _pool()
    r = resolver(FakeChain(height=1), mempool=pool)
    stale, kept = _tx(1, 0), _tx(2, 0)
    pool.add(stale, stale.hash, 0.0)
    r._record(2, b"a" * 32, (stale,), 0)  # our proposal in view 0 that nobody prepared
    assert pool.select(10) == []  # its txs are in flight in the mempool
    assert r.uncommitted_hashes() == {stale.hash}
    payload = Proposal(3, 1, 0, (kept.hash,)).encode()
    r.on_view_change(1, [Reproposed(1, b"b" * 32, b"x"), Reproposed(3, sha256(payload), payload)])
    assert r.uncommitted_hashes() == {kept.hash}  # seq 1 is committed already: ignored
    assert r.known(stale.hash)  # bodies stay: an old payload may still commit


async def test_stale_regossip_is_bounded_oldest_first() -> None:
    """Under overload every tx ages past 1 s because the chain is behind: at most
    STALE_TXS_MAX go out per call, the oldest, the rest at their next doubling."""
    node = Host(2)
    txs = [_tx(n) for n in range(STALE_TXS_MAX + 5)]
    for tx in txs:
        _admit(node, tx)
    count = node.flow.regossip_stale(0.9, 1.4)
    assert count == STALE_TXS_MAX
    sent = [raw for m in node.p2p.broadcasts if m["t"] == "txs" for raw in m["txs"]]
    assert sent == [tx.encode() for tx in txs[:STALE_TXS_MAX]]


async def test_txs_behind_a_nonce_gap_are_not_sent_again() -> None:
    """A parked tx cannot be proposed before its gap fills; sent again, it bounced between
    nodes, expiring as nonce_gap and coming back to be verified and parked again."""
    node = Host(2)
    later = [_tx(1), _tx(2)]
    for tx in later:
        _admit(node, tx)
    assert node.flow.regossip_stale(0.9, 1.4) == 0  # nonce 0 is missing here
    _admit(node, _tx(0))  # the gap fills: all three can run, and go at their next doubling
    assert node.flow.regossip_stale(1.9, 2.4) == 3
