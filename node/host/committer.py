"""The commit path of a validator: execute committed payloads in seq order and write each block.

The committer task takes the core's ``Commit`` actions in order from a bounded queue (a full one
makes the driver wait), resolves the txs, builds, executes and writes the block (node/chain/
chain.py) through the block writer (node/host/syncwrite.py: on the loop for a block of at most
LIGHT_TXS_MAX txs on a lightly loaded chain while its syncs are fast, else in the single write
thread), then updates the mempool, detector, metrics and subscribers on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from consensus.api import Applied, Commit
from node.chain.block import Block
from node.chain.chain import Applied as AppliedBlock
from node.chain.chain import Chain
from node.chain.ledger import Receipt
from node.chain.mempool import Mempool
from node.host.metrics import Metrics
from node.host.resolver import TxResolver
from node.host.signals import Head, Inbox, PendingFlag, ProposalQueue, Subscribers
from node.host.syncwrite import LIGHT_TXS_MAX, LightLoad, SyncWriter

log = logging.getLogger(__name__)


class Detector(Protocol):
    """The admission policy's hook on each block (node/host/screening.py ``Screening``)."""

    def on_block_committed(self, block: Block, receipts: Sequence[Receipt]) -> None: ...


class Committer:
    def __init__(
        self,
        *,
        commits: asyncio.Queue[Commit],
        chain: Chain,
        writer: SyncWriter,
        load: LightLoad,
        txs: TxResolver,
        mempool: Mempool,
        detector: Detector,
        inbox: Inbox,
        head: Head,
        proposals: ProposalQueue,
        pending: PendingFlag,
        subscribers: Subscribers,
        metrics: Metrics,
        commit_rate: Callable[[int], None],
    ) -> None:
        self.commits = commits
        self.chain = chain
        self.writer = writer  # the block's synced write (and the quarantine's, in order)
        self.load = load  # told each block's size: whether synced writes may run on the loop
        self.txs = txs
        self.mempool = mempool
        self.detector = detector
        self.inbox = inbox
        self.head = head
        self.proposals = proposals
        self.pending = pending
        self.subscribers = subscribers
        self.metrics = metrics
        self.commit_rate = commit_rate  # told each block's tx count (admission back-pressure)

    async def run(self) -> None:
        """The committer task: apply the core's ``Commit`` actions one by one, in order."""
        while True:
            c = await self.commits.get()
            if c.seq <= self.chain.height:
                continue  # already applied (replayed from the log or by catch-up)
            started = time.monotonic()
            txs = await self.txs.for_commit(c.seq, c.digest, c.payload)
            resolved_s = time.monotonic() - started
            # A block of more txs is applied in the write thread: its Python holds the GIL
            # there too, but its LevelDB write and sync let the loop run meanwhile.
            self.load.note_block(len(txs))
            applied = await self.writer.run(
                functools.partial(self.chain.apply_commit, c, txs), len(txs) <= LIGHT_TXS_MAX
            )
            self.metrics.storage_write_seconds.observe(applied.write_s)
            # Core contract (docs/consensus.md): the block is durable, the core may vote CHECKPOINT.
            # Never wait on a full inbox here (the driver may be waiting on the commit queue):
            # the driver also feeds Applied from the durable head at every round.
            with contextlib.suppress(asyncio.QueueFull):
                self.inbox.put_nowait(Applied(c.seq))
            self.after_commit(applied, c, time.monotonic() - started, resolved_s)

    def after_commit(
        self, applied: AppliedBlock, c: Commit, took_s: float, resolved_s: float
    ) -> None:
        block, execution = applied.block, applied.execution
        hashes = [tx.hash for tx in block.txs]
        if self.txs.committed(c.seq, c.digest):
            # Our proposal for this seq lost to another payload: its txs are proposable again.
            self.mempool.set_inflight(self.txs.uncommitted_hashes())
        now = asyncio.get_running_loop().time()
        committed, dropped = self.mempool.on_committed(
            hashes, [tx.sender_address for tx in block.txs]
        )
        self.commit_rate(len(hashes))  # admission's back-pressure follows the commit rate
        self.metrics.set_mempool(txs=len(self.mempool), size_bytes=self.mempool.size_bytes)
        for entry in committed:
            self.metrics.tx_commit_latency_seconds.observe(max(0.0, now - entry.first_seen_s))
        for entry, reason in dropped:
            self.txs.dropped(entry.hash, reason)
            self.metrics.count_rejected(reason)
        for r in execution.receipts:
            if not r.ok:
                self.metrics.count_rejected(r.reason)
        try:
            self.detector.on_block_committed(block, execution.receipts)
        except Exception:  # the admission policy must never stop commits
            log.exception("detector_update_failed")
        self.metrics.observe_committed(
            height=block.height, view=c.view, txs=execution.executed, block_seconds=took_s
        )
        log.info(
            "block_committed",
            extra={
                "height": block.height,
                "txs": len(block.txs),
                "view": c.view,
                "ms": round(took_s * 1000, 1),
                # Where a slow commit's time went: finding its txs (fetched from peers when
                # missing) and the LevelDB write with its fsync.
                "resolve_ms": round(resolved_s * 1000, 1),
                "write_ms": round(applied.write_s * 1000, 1),
            },
        )
        self.head.advanced()
        self.proposals.wake()
        self.pending.update()
        if self.subscribers:
            self.subscribers.publish(
                {"type": "block", **block.header.to_json(c.view), "txs": len(block.txs)}
            )
            for r in execution.receipts:
                self.subscribers.publish(
                    {"type": "tx", "hash": "0x" + r.tx_hash.hex(), "status": r.status}
                )
