"""The mempool side of the host: txs admitted, readmitted, waiting behind a held tx, regossiped.

``TxFlow`` owns what happens around the mempool when txs enter or leave it outside a commit:
admission's ``on_admitted`` callback, the screening's ``drop_waiting`` and ``on_unblocked``
hooks (node/host/screening.py), a peer's ``dropped`` list, readmission of the txs of proposals a
view change abandoned, and the mempool sent to a peer that (re)connects.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from node.chain.ledger import Account
from node.chain.mempool import Entry, Mempool
from node.chain.tx import Transaction
from node.detect.quarantine import Held
from node.errors import VigilError
from node.host.metrics import Metrics
from node.host.ports import PeerSender
from node.host.resolver import TxResolver
from node.host.screening import BLOCKER_REASONS
from node.host.signals import PendingFlag, ProposalQueue, Subscribers
from node.net.gossip import SeenCache

log = logging.getLogger(__name__)

REGOSSIP_TXS_MAX = 20_000  # mempool txs sent to a peer that (re)connects
REGOSSIP_BATCH_TXS = 1000
# A tx still waiting in our mempool is sent to every peer again when its age passes 1, 2, 4, 8...
# s (the first before a backup's request timer, 2 s by default, would fire over it); this often
# the ages are looked at.
STALE_EVERY_S = 0.5
# Stale txs sent again per STALE_EVERY_S, oldest first (those most likely lost). Under overload
# thousands of txs a second age past 1, 2, 4 s only because the chain is behind, not because a
# peer lacks them: unbounded, that was ~2,000 txs a second per node to every peer (a 60 s run at
# 1,500 tx/s offered). One skipped now goes at its next doubling.
STALE_TXS_MAX = 250


class ChainState(Protocol):
    """What of node/chain/chain.py ``Chain`` decides whether a tx may enter the mempool."""

    def is_committed(self, tx_hash: bytes) -> bool: ...

    def read_account(self, address: bytes) -> Account | None: ...


class HeldTxs(Protocol):
    """What of node/host/screening.py ``Screening`` the mempool side asks."""

    def known(self, tx_hash: bytes) -> bool: ...

    def blocked_by(self, tx: Transaction) -> bytes | None: ...


class TxFlow:
    def __init__(
        self,
        *,
        mempool: Mempool,
        chain: ChainState,
        txs: TxResolver,
        screening: HeldTxs,
        seen: SeenCache,
        p2p: PeerSender,
        proposals: ProposalQueue,
        pending: PendingFlag,
        subscribers: Subscribers,
        metrics: Metrics,
    ) -> None:
        self.mempool = mempool
        self.chain = chain
        self.txs = txs
        self.screening = screening
        self.seen = seen
        self.p2p = p2p
        self.proposals = proposals
        self.pending = pending
        self.subscribers = subscribers
        self.metrics = metrics

    # --- admission callbacks ----------------------------------------------------------------

    def on_admitted(self, txs: list[Transaction]) -> None:
        # A tx that already sits in an uncommitted proposal is in flight, not proposable: else
        # a primary that learns it by gossip after the NEW-VIEW re-proposed it would propose it
        # a second time, and the backups refuse that block (proposal_invalid reason=replay).
        self.mempool.mark_inflight(self.txs.in_flight(tx.hash for tx in txs))
        self.metrics.set_mempool(txs=len(self.mempool), size_bytes=self.mempool.size_bytes)
        self.proposals.wake()
        self.pending.update()
        if self.subscribers:
            for tx in txs:
                self.subscribers.publish(self.tx_event(tx))

    def tx_event(self, tx: Transaction) -> dict[str, Any]:
        """A pending tx's /ws event: ``pending``, or ``waiting`` behind a held tx."""
        event: dict[str, Any] = {"type": "tx", "hash": "0x" + tx.hash.hex(), "status": "pending"}
        blocker = self.screening.blocked_by(tx)
        if blocker is not None:
            event.update(status="waiting", blocked_by="0x" + blocker.hex())
        return event

    # --- txs waiting behind a held tx (node/host/screening.py) --------------------------------

    def drop_waiting(self, held: Held, reason: str) -> None:
        """A held tx left the quarantine for good: its sender's later txs can never run. Fail
        them here at once, and tell the other validators (a ``txs`` frame's ``dropped``)."""
        sender, nonce = held.tx.sender_address, held.tx.nonce
        self.fail_after(sender, nonce, reason)
        self.p2p.broadcast({"t": "txs", "txs": [], "dropped": [[sender, nonce, reason]]})

    def fail_after(self, sender: bytes, nonce: int, reason: str) -> int:
        dropped = self.mempool.drop_after(sender, nonce)
        for entry in dropped:
            self.txs.dropped(entry.hash, reason)
            self.metrics.count_rejected(reason)
            if self.subscribers:
                self.subscribers.publish(
                    {
                        "type": "tx",
                        "hash": "0x" + entry.hash.hex(),
                        "status": "rejected",
                        "reason": reason,
                    }
                )
        if dropped:
            self.metrics.set_mempool(txs=len(self.mempool), size_bytes=self.mempool.size_bytes)
            log.info(
                "waiting_txs_failed",
                extra={"sender": sender.hex(), "after_nonce": nonce, "txs": len(dropped)},
            )
            self.pending.update()
        return len(dropped)

    def on_peer_dropped(self, items: list[Any]) -> None:
        """A peer's held tx will never commit: drop what waits behind it here too, unless this
        node has that nonce itself (then the later txs can still run)."""
        chain = self.chain
        for item in items[:1000]:
            if not (
                isinstance(item, list)
                and len(item) == 3
                and isinstance(item[0], bytes)
                and isinstance(item[1], int)
                and isinstance(item[2], str)
                and item[2] in BLOCKER_REASONS.values()
            ):
                continue
            sender, nonce, reason = item
            account = chain.read_account(sender)
            if (account is not None and account.nonce > nonce) or self.mempool.has_nonce(
                sender, nonce
            ):
                continue
            self.fail_after(sender, nonce, reason)

    def on_unblocked(self, held: Held) -> None:
        """A released tx entered the mempool: what waited behind it is pending again, here
        and at the peers (which dropped those txs as ``nonce_gap`` if they waited long: the
        screening broadcasts the released tx itself)."""
        later = self.mempool.later(held.tx.sender_address, held.tx.nonce)
        if later:
            self._send_txs(later[:REGOSSIP_TXS_MAX])
        if self.subscribers:
            for entry in later:
                self.subscribers.publish(self.tx_event(entry.tx))

    # --- peers and view changes ---------------------------------------------------------------

    def regossip(self, peer: int) -> None:
        """Send a (re)connected peer what our mempool holds: gossip is not relayed, so txs
        admitted while the link was down (a partition, a restart) would otherwise reach that
        peer only if we proposed them. A primary lacking them never proposes them, and a
        sender's later txs wait behind the missing nonce everywhere (issue 11, stranded txs).
        Bounded; the peer drops what it has already seen without verifying it again.
        """
        self._send_txs(self.mempool.entries(REGOSSIP_TXS_MAX), peer)

    async def run(self) -> None:
        """Regossip stale txs every ``STALE_EVERY_S`` until cancelled."""
        loop = asyncio.get_running_loop()
        since = loop.time()
        while True:
            await asyncio.sleep(STALE_EVERY_S)
            now = loop.time()
            self.regossip_stale(since, now)
            since = now

    def regossip_stale(self, since_s: float, now_s: float) -> int:
        """Send every peer again the txs that have waited here past 1, 2, 4, 8... s.

        Gossip is sent once and dropped under load (a peer's full admission queue, a full
        mempool), so the primary may lack a tx we hold. It would then never propose it, our
        request timer would expire over it on an idle chain and send us into a view change
        nobody joins, again and again, while the tx and its sender's later ones stay stranded.
        A peer that has the tx drops the copy at the cost of a hash (its seen-cache); the
        doubling ages bound how often one tx is sent again. Returns how many txs went out.
        """
        entries = self.mempool.crossed_ages(since_s, now_s, STALE_TXS_MAX)
        if not entries:
            return 0
        self._send_txs(entries)
        self.metrics.txs_regossiped_total.inc(len(entries))
        log.debug("txs_regossiped", extra={"txs": len(entries)})
        return len(entries)

    def _send_txs(self, entries: list[Entry], peer: int | None = None) -> None:
        """Mempool entries as ``txs`` frames of at most REGOSSIP_BATCH_TXS, to ``peer`` or to
        every peer."""
        raws = [e.tx.encode() for e in entries]
        for i in range(0, len(raws), REGOSSIP_BATCH_TXS):
            frame = {"t": "txs", "txs": raws[i : i + REGOSSIP_BATCH_TXS]}
            if peer is None:
                self.p2p.broadcast(frame)
            else:
                self.p2p.send(peer, frame)

    def readmit(self, txs: list[Transaction]) -> None:
        """Txs of proposals a view change abandoned: back into our mempool if missing.

        Their signatures were checked when they reached us. The mempool's own rules apply (a
        nonce consumed meanwhile, a full mempool): a refused one simply stays out.
        """
        chain = self.chain
        if not txs:
            return
        back: list[Transaction] = []
        now = asyncio.get_running_loop().time()
        for tx in txs:
            h = tx.hash
            if h in self.mempool or chain.is_committed(h) or self.screening.known(h):
                continue
            try:
                self.mempool.add(tx, h, now)
            except VigilError:
                continue
            self.seen.add(h)
            back.append(tx)
        if back:
            log.info("txs_readmitted", extra={"txs": len(back)})
            self.on_admitted(back)
