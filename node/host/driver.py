"""The consensus driver: the task that owns the ``Replica``, and the tasks that feed its inbox.

Functions over the running ``node.host.runtime.Node`` (apart to keep each module small, as in
node/host/committer.py). One task owns the replica and is fed by a bounded queue; ``step`` is never
re-entered. It drains what is queued, steps each event, then performs the collected actions in
order with one twist that keeps the rule "a Persist is durable before any later send": all
Persist records of the round are written in one durable batch first, then sends and the rest
follow in order. ``perform`` matches every ``Action`` type (``assert_never``): the core tells the
host everything, including the re-proposed entries of a view change (``ViewChanged.reproposed``;
the host never decodes consensus messages for its own bookkeeping). The feeders: a ticker (time
and the "pending work" flag), the proposer (our proposals when primary), validation tasks
(verdicts on the primary's proposals), the committer (``Applied(seq)`` once a block is durable,
node/host/committer.py) and the status loop and frames (``PeerStatus`` per peer status frame;
gaps the core cannot see on an idle cluster, node/net/peerwatch.py; readiness,
node/host/health.py).

The host holds nothing back and fakes nothing: CHECKPOINT votes wait for ``Applied`` inside the
core, and a replica in a stale or lone view acts on ``PeerStatus`` there (docs/consensus.md, host
contract), where the simulator exercises both rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, assert_never

from consensus.api import (
    Action,
    Broadcast,
    Commit,
    Dropped,
    FetchBlocks,
    PeerStatus,
    Pending,
    Persist,
    Propose,
    RequestProposal,
    Send,
    SetTimer,
    Tick,
    Validate,
    Verdict,
    ViewChanged,
)
from node.host.signguard import guard_round

if TYPE_CHECKING:
    from node.host.runtime import Node

log = logging.getLogger(__name__)

ROUND_EVENTS_MAX = 256
STATUS_EVERY_S = 1.0
STATUS_VALUE_MAX = 2**63 - 1


# --- the core -------------------------------------------------------------------------------


async def run_replica(node: Node) -> None:
    """The task that owns the replica: step a round of queued events, persist, then act."""
    assert node.replica is not None
    assert node.store is not None
    loop = asyncio.get_running_loop()
    while True:
        events = [await node.inbox.get()]
        while len(events) < ROUND_EVENTS_MAX and not node.inbox.empty():
            events.append(node.inbox.get_nowait())
        actions: list[Action] = []
        for ev in events:
            actions.extend(node.replica.step(ev))
        records = [r for a in actions if isinstance(a, Persist) for r in a.records]
        if records:
            with node.metrics.time_storage_write():
                await loop.run_in_executor(node.log_pool, node.store.log_write, records)
        refused = await guard_round(  # node/host/signguard.py: durable before it leaves
            node.sign_guard,
            node.log_pool,
            node.index,
            node.ccfg.payload_bytes_max,
            node.metrics,
            actions,
        )
        for a in actions:
            if refused and id(a) in refused:
                continue  # the double-sign guard holds it back
            perform(node, a)
        node.health.on_round(node.replica.view, node.replica.view_active, time.monotonic())


def perform(node: Node, a: Action) -> None:
    """Carry out one action of the core (its Persist records are already written)."""
    match a:
        case Persist():
            pass  # written above, before any send of this round
        case Send(to, data):
            node.p2p.send(to, {"t": "c", "d": data})
        case Broadcast(data):
            node.p2p.broadcast({"t": "c", "d": data})
        case Commit():
            node.commits.put_nowait(a)
        case SetTimer():
            pass  # the ticker wakes the core every tick_ms, finer than any timer we use
        case RequestProposal(view, seq):
            node.proposals.append((view, seq))
            node._propose_wake.set()
        case Validate():
            task = asyncio.create_task(validate(node, a))
            node.validations.add(task)
            task.add_done_callback(node.validations.discard)
            task.add_done_callback(_log_failure)
        case FetchBlocks(_, to_seq, peers):
            node.catchup.want(to_seq, peers)
        case ViewChanged(view, primary, reproposed):
            log.warning("view_change", extra={"view": view, "primary": primary})
            node.metrics.view_changes_total.inc()
            node.metrics.set_view(view, is_primary=primary == node.index)
            node.proposals.clear()
            # The NEW-VIEW's PRE-PREPAREs stay in flight; proposals of older views that it did
            # not re-propose are abandoned: their txs become proposable again (and re-enter
            # the mempool if they only reached us inside a proposal).
            abandoned = node.txs.on_view_change(view, reproposed)
            node.readmit(abandoned)
            node.mempool.set_inflight(node.txs.uncommitted_hashes())
        case Dropped(reason):
            node.metrics.consensus_dropped_total.labels(reason=reason).inc()
        case _:
            assert_never(a)


# --- feeders --------------------------------------------------------------------------------


async def run_ticker(node: Node) -> None:
    tick_s = node.cfg.tick_ms / 1000
    while True:
        await asyncio.sleep(tick_s)
        update_pending(node)
        with contextlib.suppress(asyncio.QueueFull):
            node.inbox.put_nowait(Tick(node.now_ms()))


def update_pending(node: Node) -> None:
    """Tell the core when the mempool starts or stops holding txs not yet in a proposal."""
    pending = node.mempool.has_runnable()
    if pending != node._pending:
        try:
            node.inbox.put_nowait(Pending(pending))
        except asyncio.QueueFull:
            return  # the ticker tries again
        node._pending = pending


async def validate(node: Node, a: Validate) -> None:
    assert node.replica is not None
    valid = await node.txs.validate(a.view, a.seq, a.digest, a.payload)
    await node.inbox.put(Verdict(a.view, a.seq, a.digest, valid))


async def run_proposer(node: Node) -> None:
    """Fill the core's proposal requests from the mempool, at most one per block interval."""
    assert node.replica is not None
    last_s = 0.0
    while True:
        await node._propose_wake.wait()
        node._propose_wake.clear()
        while node.proposals:
            view, seq = node.proposals[0]
            if view != node.replica.view or seq <= node.chain_height():
                node.proposals.popleft()
                continue
            if not node.mempool.has_ready():
                break  # woken again by admission
            if node.watch.higher_view(view):
                break  # f+1 peers moved on: a proposal in our stale view only strands txs
            wait_s = last_s + node.cfg.block_interval_ms / 1000 - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue  # state may have changed while we slept
            txs = node.mempool.select(node.cfg.block_txs_max)
            if not txs:
                break
            node.proposals.popleft()
            payload = await node.txs.proposal(view, seq, txs, int(time.time() * 1000))
            last_s = time.monotonic()
            await node.inbox.put(Propose(view, seq, payload))


# --- status and idle catch-up ---------------------------------------------------------------


def status_frame(node: Node) -> dict[str, Any]:
    view = node.replica.view if node.replica is not None else 0
    return {"t": "status", "height": node.chain_height(), "view": view}


async def run_status(node: Node) -> None:
    while True:
        await asyncio.sleep(STATUS_EVERY_S)
        node.p2p.broadcast(status_frame(node))
        check_peers(node)
        expire_gaps(node)
        node.metrics.set_mempool(txs=len(node.mempool), size_bytes=node.mempool.size_bytes)
        report_readiness(node)


def expire_gaps(node: Node) -> None:
    """Report txs stuck behind a missing nonce as rejected (``nonce_gap``), never pending forever."""
    expired = node.mempool.expire_gaps(asyncio.get_running_loop().time())
    for entry in expired:
        node.txs.dropped(entry.hash, "nonce_gap")
    if expired:
        node.metrics.txs_rejected_total.labels(reason="nonce_gap").inc(len(expired))
        log.warning("txs_expired", extra={"txs": len(expired), "reason": "nonce_gap"})


def report_readiness(node: Node) -> None:
    """Log readiness changes with their reason (node/host/health.py) and set ``vigil_ready``."""
    reason = node.not_ready_reason()
    if node.health.update(reason):
        assert node.replica is not None
        fields = {"view": node.replica.view, "height": node.chain_height()}
        if reason is None:
            log.info("ready", extra=fields)
        else:
            log.warning("not_ready", extra={**fields, "reason": reason})
    node.metrics.ready.set(1 if reason is None else 0)


def on_peer_status(node: Node, sender: int, height: int, view: int) -> None:
    """A peer's status frame: to the watch, to catch-up, and to the core as ``PeerStatus``."""
    if not (0 <= height <= STATUS_VALUE_MAX and 0 <= view <= STATUS_VALUE_MAX):
        return  # garbage from a peer (wire.py checked only the types)
    node.watch.on_status(sender, height, view)
    node.catchup.on_status(sender, height, slack=2 * node.cfg.pipeline_depth)
    with contextlib.suppress(asyncio.QueueFull):  # a hint: the next frame comes in a second
        node.inbox.put_nowait(PeerStatus(sender, height, view))


def check_peers(node: Node) -> None:
    """Close gaps the core cannot see on an idle cluster (node/net/peerwatch.py)."""
    assert node.replica is not None
    lag = node.watch.check(node.chain_height(), node.replica.view)
    if lag.fetch_to:
        log.info("behind_peers", extra={"height": node.chain_height(), "to": lag.fetch_to})
        node.catchup.want(lag.fetch_to, lag.fetch_from)
    if lag.view_behind:  # the core follows on PeerStatus; this is for the operator
        log.warning("view_behind_peers", extra={"view": node.replica.view})


# --- pure helpers ---------------------------------------------------------------------------


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task_failed", extra={"task": task.get_name()}, exc_info=task.exception())
