"""The commit path of a validator: execute committed payloads in seq order and write each block.

Functions over the running ``node.host.runtime.Node`` (apart to keep each module small): the task takes
the core's ``Commit`` actions in order, resolves the txs, builds, executes and writes the block
in the single write thread (node/chain/chain.py), then updates the mempool, detector, metrics and
subscribers on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from consensus.api import Applied, Commit

if TYPE_CHECKING:
    from node.host.runtime import Node

log = logging.getLogger("node.host.runtime")  # operators grep block_committed there


HELD_CHECKPOINTS_MAX = 64


class HeldCheckpoints:
    """Our CHECKPOINT votes, held until the block of their seq is durably written here.

    The core votes a checkpoint when it commits a seq, before the host executed it, and a stable
    checkpoint lets every replica delete its log records up to that seq. If 2f+1 replicas GC'd
    records of a block none of them had written yet, a crash of all of them would lose that block
    (nobody could serve it to catch-up). Holding the vote until our block is written means a
    stable checkpoint always has 2f+1 replicas (f+1 honest) that store every block up to it.
    """

    def __init__(self) -> None:
        self._held: list[tuple[int, bytes]] = []

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, seq: int, data: bytes) -> None:
        self._held.append((seq, data))
        if len(self._held) > HELD_CHECKPOINTS_MAX:  # bounded; the core re-votes on its timers
            del self._held[0]

    def due(self, height: int) -> list[bytes]:
        """The held votes whose seq is at or below ``height``, in order; they are released."""
        out = [data for seq, data in self._held if seq <= height]
        self._held = [(seq, data) for seq, data in self._held if seq > height]
        return out


async def run_committer(node: Node) -> None:
    """The committer task: apply the core's ``Commit`` actions one by one, in order."""
    assert node.chain is not None
    loop = asyncio.get_running_loop()
    while True:
        c = await node.commits.get()
        if c.seq <= node.chain.height:
            continue  # already applied (replayed from the log or by catch-up)
        started = time.monotonic()
        txs = await node.txs.for_commit(c.seq, c.digest, c.payload)
        applied = await loop.run_in_executor(
            node._write_pool,
            node.chain.apply_commit,
            c,
            txs,
        )
        node.metrics.storage_write_seconds.observe(applied.write_s)
        after_commit(node, applied, c, time.monotonic() - started)
        # The block is durable: the core may now vote the checkpoint of this seq (issue 12).
        await node.inbox.put(Applied(applied.block.height))


def after_commit(node: Node, applied: Any, c: Commit, took_s: float) -> None:
    block, execution = applied.block, applied.execution
    hashes = [tx.hash for tx in block.txs]
    if node.txs.committed(c.seq, c.digest):
        # Our proposal for this seq lost to another payload: its txs are proposable again.
        node.mempool.set_inflight(node.txs.uncommitted_hashes())
    now = asyncio.get_running_loop().time()
    committed, dropped = node.mempool.on_committed(hashes, [tx.sender_address for tx in block.txs])
    node.admission.on_committed(len(hashes))
    node.metrics.set_mempool(txs=len(node.mempool), size_bytes=node.mempool.size_bytes)
    for entry in committed:
        node.metrics.tx_commit_latency_seconds.observe(max(0.0, now - entry.first_seen_s))
    for entry, reason in dropped:
        node.txs.dropped(entry.hash, reason)
        node.metrics.txs_rejected_total.labels(reason=reason).inc()
    for r in execution.receipts:
        if not r.ok:
            node.metrics.txs_rejected_total.labels(reason=r.reason).inc()
    try:
        node.screening.on_block_committed(block, execution.receipts)
    except Exception:  # the admission policy must never stop commits
        log.exception("detector_update_failed")
    node.metrics.observe_committed(
        height=block.height, view=c.view, txs=execution.executed, block_seconds=took_s
    )
    log.info(
        "block_committed",
        extra={
            "height": block.height,
            "txs": len(block.txs),
            "view": c.view,
            "ms": round(took_s * 1000, 1),
        },
    )
    for data in node.held_checkpoints.due(block.height):
        node.p2p.broadcast({"t": "c", "d": data})
    node._head_changed.set()
    node._head_changed = asyncio.Event()
    node._propose_wake.set()
    node._update_pending()
    if node.subscribers:
        node._publish({"type": "block", **block.header.to_json(c.view), "txs": len(block.txs)})
        for r in execution.receipts:
            node._publish({"type": "tx", "hash": "0x" + r.tx_hash.hex(), "status": r.status})


async def wait_head(node: Node, seq: int, timeout_s: float) -> bool:
    try:
        async with asyncio.timeout(timeout_s):
            while node.chain_height() < seq:
                await node._head_changed.wait()
    except TimeoutError:
        return False
    return True
