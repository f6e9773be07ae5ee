"""The proposer and the heartbeat (node/host/driver.py ``Proposer``, ``[block] empty_interval_ms``).

An ordinary ``RequestProposal`` waits for ready txs; a heartbeat one is answered at once with what
the mempool has, possibly nothing: a block of zero txs that a backup's resolver finds valid.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from common.codec import sha256
from consensus.api import Event, Propose, RequestProposal
from node.chain.block import Proposal
from node.host.config import NodeConfig
from node.host.driver import Pace, Proposer
from node.host.signals import Head, ProposalQueue
from node.net.peerwatch import PeerWatch
from tests.unit.host.fakes import FakeChain, FakeP2P, mempool_of, resolver
from tests.unit.host.test_resolver import _tx


class View:
    view = 0


class Primary:
    """Node 0's proposer, its queue fed the way ``Actions.perform`` feeds it."""

    def __init__(self, block_interval_ms: int = 0, block_interval_max_ms: int = 0) -> None:
        self.chain = FakeChain()
        self.mempool = mempool_of(self.chain)
        self.txs = resolver(self.chain, FakeP2P(), self.mempool, 0)
        self.inbox: asyncio.Queue[Event] = asyncio.Queue()
        self.proposals = ProposalQueue()
        # Each gossip flush, as the number of Proposes already on their way to the core.
        self.flushed_ahead_of: list[int] = []
        self.watch = PeerWatch(1)
        for peer in (1, 2):  # 2f peers connected and heard from: a quorum listens
            self.watch.on_status(peer, 0, 0)
        self.head = Head(lambda: self.chain.height)
        self.proposer = Proposer(
            replica=View(),
            proposals=self.proposals,
            mempool=self.mempool,
            watch=self.watch,
            head=self.head,
            txs=self.txs,
            inbox=self.inbox,
            block_interval_ms=block_interval_ms,
            block_interval_max_ms=block_interval_max_ms,
            block_txs_max=100,
            flush_gossip=lambda: self.flushed_ahead_of.append(self.inbox.qsize()),
        )

    def ask(self, r: RequestProposal) -> None:
        self.proposals.request(r.view, r.seq, r.heartbeat)

    async def answer(self, timeout_s: float = 1.0) -> Propose | None:
        try:
            event = await asyncio.wait_for(self.inbox.get(), timeout_s)
        except TimeoutError:
            return None
        assert isinstance(event, Propose)
        return event


@pytest.fixture
async def primary() -> AsyncIterator[Primary]:
    p = Primary()
    task = asyncio.create_task(p.proposer.run())
    yield p
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_an_ordinary_request_waits_for_txs(primary: Primary) -> None:
    primary.ask(RequestProposal(0, 1))
    assert await primary.answer(0.2) is None
    assert primary.proposals.requests  # still waiting, not dropped


async def test_a_heartbeat_is_answered_with_an_empty_block_a_backup_accepts(
    primary: Primary,
) -> None:
    primary.ask(RequestProposal(0, 1))
    assert await primary.answer(0.2) is None
    primary.ask(RequestProposal(0, 1, heartbeat=True))  # the same request, now a heartbeat
    answer = await primary.answer()
    assert answer is not None
    assert (answer.view, answer.seq) == (0, 1)
    proposal = Proposal.decode(answer.payload)
    assert (proposal.height, proposal.proposer, proposal.tx_hashes) == (1, 0, ())
    assert not primary.proposals.requests  # answered once, not queued twice
    assert not primary.proposals.heartbeats
    backup = resolver(FakeChain(), FakeP2P(), mempool_of(FakeChain()), 1)
    assert await backup.validate(0, 1, sha256(answer.payload), answer.payload)
    assert await primary.txs.for_commit(1, sha256(answer.payload), answer.payload) == ()


async def test_a_heartbeat_repeating_a_request_just_filled_is_not_answered_twice(
    primary: Primary,
) -> None:
    """The core repeats a request as a heartbeat while our Propose is on its way: one answer."""
    tx = _tx(0)
    primary.mempool.add(tx, tx.hash, 0.0)
    primary.ask(RequestProposal(0, 1))
    assert await primary.answer() is not None
    primary.ask(RequestProposal(0, 1, heartbeat=True))
    assert await primary.answer(0.2) is None
    assert not primary.proposals.requests
    primary.ask(RequestProposal(0, 2, heartbeat=True))  # the next seq is answered as usual
    answer = await primary.answer()
    assert answer is not None
    assert answer.seq == 2


async def test_gossip_waiting_for_a_fuller_frame_leaves_ahead_of_the_proposal(
    primary: Primary,
) -> None:
    """The txs a proposal names leave for the peers before its PRE-PREPARE (one ordered link
    a peer), so backups need not fetch them from the primary."""
    tx = _tx(0)
    primary.mempool.add(tx, tx.hash, 0.0)
    primary.ask(RequestProposal(0, 1))
    assert await primary.answer() is not None
    assert primary.flushed_ahead_of == [0]  # once, before the Propose was queued
    primary.ask(RequestProposal(0, 2))
    assert await primary.answer(0.2) is None  # nothing to propose: nothing flushed
    assert primary.flushed_ahead_of == [0]


async def test_a_heartbeat_carries_the_txs_that_are_ready(primary: Primary) -> None:
    tx = _tx(0)
    primary.mempool.add(tx, tx.hash, 0.0)
    primary.ask(RequestProposal(0, 1, heartbeat=True))
    answer = await primary.answer()
    assert answer is not None
    assert Proposal.decode(answer.payload).tx_hashes == (tx.hash,)


async def test_back_to_back_proposals_wait_out_the_default_block_interval() -> None:
    """``[block] interval_ms`` (25 by default): a primary that just proposed waits that long
    before the next proposal, so txs arriving meanwhile share a block. At 100 tx/s each block
    cost every validator ~8 ms of CPU whatever its size; one per tx or two kept four
    validators on two cores busy and doubled the latency (docs/performance.md, stop 13)."""
    interval_ms = NodeConfig.__dataclass_fields__["block_interval_ms"].default
    assert interval_ms == 25
    p = Primary(block_interval_ms=interval_ms)
    task = asyncio.create_task(p.proposer.run())
    try:
        loop = asyncio.get_running_loop()
        first = _tx(0)
        p.mempool.add(first, first.hash, 0.0)
        p.ask(RequestProposal(0, 1))
        assert await p.answer() is not None
        proposed_s = loop.time()
        later = [_tx(1), _tx(2)]
        p.ask(RequestProposal(0, 2))
        for tx in later:
            p.mempool.add(tx, tx.hash, 0.0)
            p.proposals.wake()
        answer = await p.answer()
        assert answer is not None
        assert loop.time() - proposed_s >= 0.9 * interval_ms / 1000
        assert Proposal.decode(answer.payload).tx_hashes == tuple(tx.hash for tx in later)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _rounds(pace: Pace, round_s: float, count: int, first_seq: int = 1) -> None:
    """``count`` own proposals, each committed ``round_s`` after it left."""
    at = 0.0
    for seq in range(first_seq, first_seq + count):
        pace.proposed(seq, at)
        pace.committed(seq, at + round_s)
        at += 1.0


def test_the_pace_stretches_to_the_round_time_while_blocks_are_small() -> None:
    """Rounds slower than ``interval_ms``: the next proposal waits about a round (at most
    ``interval_max_ms``), so the txs of a lightly loaded chain share fewer, fuller blocks."""
    pace = Pace(25, 100)
    assert pace.interval_s(1) == 0.025  # no round seen yet: the floor
    _rounds(pace, 0.060, 40)
    assert pace.interval_s(10) == pytest.approx(0.060, abs=1e-6)
    _rounds(pace, 0.400, 40, first_seq=41)
    assert pace.interval_s(10) == 0.100  # capped
    assert pace.interval_s(Pace.STRETCH_TXS_MAX - 1) == 0.100
    # A big block's worth waiting: the floor, whatever the rounds take (the pipeline is needed).
    assert pace.interval_s(Pace.STRETCH_TXS_MAX) == 0.025
    _rounds(pace, 0.005, 40, first_seq=81)  # rounds faster than the floor: the floor
    assert pace.interval_s(10) == 0.025


def test_the_pace_never_stretches_when_the_ceiling_is_not_above_the_floor() -> None:
    for ceiling_ms in (0, 25):
        pace = Pace(25, ceiling_ms)
        _rounds(pace, 0.5, 20)
        assert pace.interval_s(1) == 0.025


def test_the_pace_times_only_proposals_the_chain_reached_and_forgets_abandoned_ones() -> None:
    pace = Pace(25, 100)
    pace.proposed(1, 0.0)
    pace.proposed(2, 0.01)
    pace.committed(1, 0.09)  # seq 2 not reached: not a sample yet
    assert pace.round_s == pytest.approx(0.025 + Pace.WEIGHT * (0.09 - 0.025))
    before = pace.round_s
    pace.committed(1, 5.0)  # the same height again: nothing new
    assert pace.round_s == before
    # A view change abandons proposals that never commit: the record stays bounded.
    for seq in range(3, 3 + 10 * Pace.TRACKED_MAX):
        pace.proposed(seq, 1.0)
    pace.committed(0, 2.0)
    assert pace.round_s == before
    pace.committed(10**9, 1.0 + before)  # the survivors: round times of ``before`` each
    assert pace.round_s == pytest.approx(before)


async def test_a_primary_whose_blocks_commit_slowly_leaves_more_time_between_them() -> None:
    """Through the proposer: once its rounds took ~80 ms, two small proposals in a row leave
    ~80 ms apart, not at the 25 ms floor."""
    p = Primary(block_interval_ms=25, block_interval_max_ms=100)
    task = asyncio.create_task(p.proposer.run())
    loop = asyncio.get_running_loop()
    try:
        rounds = 12
        for seq in range(1, rounds + 1):
            tx = _tx(seq - 1)
            p.mempool.add(tx, tx.hash, 0.0)
            p.ask(RequestProposal(0, seq))
            answer = await p.answer()
            assert answer is not None
            assert answer.seq == seq
            await asyncio.sleep(0.08)  # the round
            p.chain.commit(seq, answer.payload, [tx])
            p.mempool.on_committed([tx.hash], [tx.sender_address])
            p.head.advanced()
        first, second = _tx(rounds), _tx(rounds + 1)
        p.mempool.add(first, first.hash, 0.0)
        p.ask(RequestProposal(0, rounds + 1))
        assert await p.answer() is not None
        proposed_s = loop.time()
        interval_s = p.proposer.pace.interval_s(1)
        assert 0.07 < interval_s <= 0.1
        p.mempool.add(second, second.hash, 0.0)
        p.ask(RequestProposal(0, rounds + 2))  # pipelined: the first is still in flight
        answer = await p.answer()
        assert answer is not None
        assert loop.time() - proposed_s >= 0.9 * interval_s
        assert Proposal.decode(answer.payload).tx_hashes == (second.hash,)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_no_proposal_leaves_before_a_quorum_of_peers_can_hear_it(primary: Primary) -> None:
    """A primary up before its peers does not send its first heartbeat into the void: the
    request waits until 2f peers have told their status, then is answered."""
    primary.watch.forget(2)  # one peer of the two needed has gone
    primary.ask(RequestProposal(0, 1, heartbeat=True))
    assert await primary.answer(0.2) is None
    assert primary.proposals.requests  # kept, not dropped
    primary.watch.on_status(3, 0, 0)
    primary.ask(RequestProposal(0, 1, heartbeat=True))  # the core repeats it every interval
    answer = await primary.answer()
    assert answer is not None
    assert (answer.view, answer.seq) == (0, 1)
