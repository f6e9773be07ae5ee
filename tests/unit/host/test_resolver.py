"""In-flight bookkeeping of proposals across commits and view changes (node/host/resolver.py).

Real ``Mempool`` and ``TxResolver``, and the real ``perform`` / ``Node`` methods the driver runs,
over a small fake node. Each test is one cause found for issue 11: a valid proposal refused as
``replay``, or an accepted tx that no primary would ever propose again (stranded).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from types import SimpleNamespace
from typing import Any

from common.codec import sha256
from common.crypto import SigningKey
from consensus.api import NULL_DIGEST, ConsensusConfig, Reproposed, ViewChanged
from node.chain.block import Proposal
from node.chain.ledger import Account
from node.chain.mempool import Mempool
from node.chain.tx import Transaction, make_transfer
from node.host.driver import perform
from node.host.resolver import TxResolver
from node.host.runtime import Node

CHAIN = "vigil"
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
USER = SigningKey(b"\x09" * 32)


def _tx(nonce: int) -> Transaction:
    return make_transfer(USER, CHAIN, b"\x01" * 20, 1, 1, nonce)


class FakeChain:
    def __init__(self) -> None:
        self.height = 0
        self.committed: dict[bytes, int] = {}
        self.headers: dict[int, Any] = {}

    def is_committed(self, tx_hash: bytes) -> bool:
        return tx_hash in self.committed

    def commit(self, seq: int, payload: bytes, txs: list[Transaction]) -> None:
        self.height = seq
        self.headers[seq] = SimpleNamespace(payload_digest=sha256(payload))
        for tx in txs:
            self.committed[tx.hash] = seq

    def header(self, height: int) -> Any:
        return self.headers.get(height)

    def read_account(self, address: bytes) -> Account:
        nonce = sum(1 for _ in self.committed)
        return Account(10**9, nonce)

    store = SimpleNamespace(meta_put=lambda k, v: None, meta_get=lambda k: None)


class FakeP2P:
    """Serves ``get_txs`` from ``txs``; ``on_request`` runs first (to commit meanwhile, ...)."""

    def __init__(self, txs: dict[bytes, Transaction]) -> None:
        self.txs = txs
        self.on_request = lambda: None
        self.sent: list[tuple[int, dict[str, Any]]] = []

    def peers(self) -> list[int]:
        return [0, 1, 2, 3]

    async def request(self, peer: int, kind: str, body: dict[str, Any], timeout_s: float) -> Any:
        self.on_request()
        return {"txs": [self.txs[h].encode() for h in body["hashes"] if h in self.txs]}

    def send(self, to: int, msg: dict[str, Any]) -> bool:
        self.sent.append((to, msg))
        return True


class FakeNode:
    """The parts of ``Node`` the driver, resolver and admission callbacks touch."""

    readmit = Node.readmit
    _on_admitted = Node._on_admitted

    def __init__(self, index: int, peers_txs: dict[bytes, Transaction] | None = None) -> None:
        self.index = index
        self.ccfg = ConsensusConfig(tuple(k.public_key for k in KEYS), index, b"\x00" * 32)
        self.cfg = SimpleNamespace(block_txs_max=100)
        self.genesis = SimpleNamespace(chain_id=CHAIN)
        self.chain = FakeChain()
        self.mempool = Mempool(CHAIN, 1000, 10**7, self.chain.read_account)
        self.p2p = FakeP2P(peers_txs or {})
        self.log_pool = None  # the default executor
        self.txs = TxResolver(self, 1.0)  # type: ignore[arg-type]
        self.proposals: deque[tuple[int, int]] = deque()
        self.metrics = SimpleNamespace(
            view_changes_total=SimpleNamespace(inc=lambda: None),
            set_view=lambda view, is_primary: None,
            set_mempool=lambda txs, size_bytes: None,
        )
        self.gossip = SimpleNamespace(seen=set())
        self.screening = SimpleNamespace(known=lambda h: False)
        self.subscribers: list[Any] = []
        self._propose_wake = asyncio.Event()

    def chain_height(self) -> int:
        return self.chain.height

    def _update_pending(self) -> None:
        pass


def _admit(node: FakeNode, tx: Transaction) -> None:
    """What admission does with a gossiped tx it accepts (node/host/admission.py)."""
    node.mempool.add(tx, tx.hash, 0.0)
    node._on_admitted([tx])


async def test_a_seq_committed_while_its_txs_were_fetched_is_not_a_replay(caplog) -> None:
    """Issue 11 #2, "replay at seq 10 in view 0 with no fault": a backup fetches a proposal's
    txs from the primary; meanwhile 2f+1 others commit that seq and this node executes it. The
    txs are then "already committed" and the valid proposal was logged as invalid (replay).
    """
    tx = _tx(0)
    node = FakeNode(2, {tx.hash: tx})
    payload = Proposal(10, 0, 1000, (tx.hash,)).encode()
    node.chain.height = 9
    node.p2p.on_request = lambda: node.chain.commit(10, payload, [tx])
    with caplog.at_level(logging.WARNING):
        valid = await node.txs.validate(0, 10, sha256(payload), payload)
    assert valid  # the very payload this node executed at seq 10
    assert "proposal_invalid" not in caplog.text
    assert node.txs.uncommitted_hashes() == set()  # nothing left in flight for a done seq


async def test_a_real_replay_is_still_refused(caplog) -> None:
    tx = _tx(0)
    node = FakeNode(2, {tx.hash: tx})
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
    primary = FakeNode(1)
    old = Proposal(5, 0, 1000, (t.hash,)).encode()
    perform(primary, ViewChanged(1, 1, (Reproposed(5, sha256(old), old),)))  # type: ignore[arg-type]
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
    backup = FakeNode(1, {t.hash: t})
    payload = Proposal(5, 0, 1000, (t.hash,)).encode()
    backup.chain.height = 4
    assert await backup.txs.validate(0, 5, sha256(payload), payload)
    assert t.hash not in backup.mempool  # it reached us inside the proposal only
    perform(backup, ViewChanged(1, 1, (Reproposed(5, NULL_DIGEST, b""),)))  # type: ignore[arg-type]
    assert [tx.hash for tx in backup.mempool.select(100)] == [t.hash]


async def test_a_validation_finishing_after_the_view_change_leaves_nothing_in_flight() -> None:
    """A validation of view 0 that completes after we entered view 1 must not mark its txs in
    flight: no later view change would release them while this node is primary."""
    t = _tx(0)
    node = FakeNode(1, {t.hash: t})
    node.chain.height = 4
    _admit(node, t)
    payload = Proposal(5, 0, 1000, (t.hash,)).encode()
    node.mempool._entries.pop(t.hash)  # force a fetch, during which the view changes
    node.mempool._ready.pop(t.hash)
    node.mempool._by_sender.clear()
    node.p2p.on_request = lambda: perform(node, ViewChanged(1, 1, ()))  # type: ignore[arg-type]
    await node.txs.validate(0, 5, sha256(payload), payload)
    assert node.txs.uncommitted_hashes() == set()


async def test_regossip_sends_the_mempool_to_a_peer_that_reconnects() -> None:
    """Gossip is not relayed: txs admitted while a link was down reach that peer only this way."""
    node = FakeNode(2)
    for n in range(3):
        _admit(node, _tx(n))
    Node._regossip(node, 0)  # type: ignore[arg-type]
    assert [(to, m["t"], len(m["txs"])) for to, m in node.p2p.sent] == [(0, "txs", 3)]
