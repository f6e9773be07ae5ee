"""The validator process: wires P2P, admission, the PBFT core, the chain, catch-up and the servers.

One task owns the ``Replica`` and is fed by a bounded queue; ``step`` is never re-entered. It
drains what is queued, steps each event, then performs the collected actions in order with one
twist that keeps the rule "a Persist is durable before any later send": all Persist records of
the round are written in one durable batch first, then sends and the rest follow in order.
Slow work runs elsewhere so the core keeps moving: validation of proposals (which may fetch
missing txs from the primary) in its own tasks, execution and storage of committed blocks in the
committer task and a worker thread, catch-up in its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import time
from collections import deque
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import web

from common.codec import CodecError, sha256
from consensus import messages as cmsg
from consensus.api import (
    Broadcast,
    Commit,
    ConsensusConfig,
    Dropped,
    Event,
    FetchBlocks,
    Fetched,
    FetchedEntry,
    Pending,
    Persist,
    Propose,
    Received,
    RequestProposal,
    Send,
    SetTimer,
    Tick,
    Validate,
    Verdict,
    ViewChanged,
)
from consensus.replica import Replica
from node.admission import Admission, Screened
from node.catchup import CatchUp
from node.chain import Chain
from node.committer import HeldCheckpoints, run_committer, wait_head
from node.config import NodeConfig, load_validator_key
from node.genesis import Genesis
from node.gossip import Gossip
from node.mempool import Mempool
from node.metrics import Metrics, serve_metrics, watch_loop_lag
from node.p2p import P2P
from node.peer_wire import consensus_kind
from node.peerwatch import PeerWatch
from node.resolver import TxResolver
from node.screening import Screening
from node.tx import Transaction
from storage.db import Store

log = logging.getLogger(__name__)

_T = TypeVar("_T")
INBOX_MAX = 10_000
ROUND_EVENTS_MAX = 256
STATUS_EVERY_S = 1.0
VERSION = "0.1.0"


class NodeError(Exception):
    """The node cannot start with this configuration (key not in genesis, ...)."""


class Node:
    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.genesis = Genesis.load(cfg.genesis_file)
        self.key = load_validator_key(cfg.key_file)
        n = len(self.genesis.validators)
        if not 0 <= cfg.index < n:
            raise NodeError(f"node.index: {cfg.index} is not a validator index (0..{n - 1})")
        if self.genesis.validators[cfg.index].public_key != self.key.public_key:
            raise NodeError("node.key_file: key is not validator node.index's key in genesis")
        self.index = cfg.index
        self.metrics = Metrics()
        self.metrics.set_info(node_id=self.index, chain_id=self.genesis.chain_id, version=VERSION)
        self.ccfg = ConsensusConfig(
            validators=self.genesis.validator_keys(),
            index=self.index,
            seed=self.key.seed,
            chain_id=self.genesis.chain_id,
            checkpoint_interval=cfg.checkpoint_interval,
            pipeline_depth=cfg.pipeline_depth,
            log_window=cfg.log_window,
            request_timeout_ms=cfg.request_timeout_ms,
            view_change_timeout_ms=cfg.view_change_timeout_ms,
        )
        self.store: Store | None = None
        self.chain: Chain | None = None
        self.replica: Replica | None = None
        self.inbox: asyncio.Queue[Event] = asyncio.Queue(maxsize=INBOX_MAX)
        self.commits: asyncio.Queue[Commit] = asyncio.Queue()
        self.p2p = P2P(
            index=self.index,
            key=self.key,
            validators=self.ccfg.validators,
            urls=tuple(v.p2p_url for v in self.genesis.validators),
            chain_id=self.genesis.chain_id,
            genesis_hash=self.genesis.hash,
            on_frame=self._on_frame,
            on_request=self._on_request,
            on_peer=self._on_peer,
            metrics=self.metrics,
            msg_bytes_max=cfg.p2p_msg_bytes_max,
            send_queue_max=cfg.p2p_send_queue_max,
            reconnect_min_ms=cfg.p2p_reconnect_min_ms,
            reconnect_max_ms=cfg.p2p_reconnect_max_ms,
            handshake_timeout_ms=cfg.p2p_handshake_timeout_ms,
        )
        self.gossip = Gossip(self.p2p, n)
        self.watch = PeerWatch(self.ccfg.f)
        self._nudge_until_s = 0.0  # keep "pending" up until then to make a stale view time out
        self._nudge_view = -1
        self.subscribers: list[Any] = []
        self.proposals: deque[tuple[int, int]] = deque()
        self.held_checkpoints = HeldCheckpoints()
        self._propose_wake = asyncio.Event()
        self._head_changed = asyncio.Event()
        self._pending = False
        self._started = time.monotonic()
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="commit")
        self.log_pool = ThreadPoolExecutor(1, thread_name_prefix="clog")
        # Set in run() once the store is open.
        self.mempool: Mempool
        self.admission: Admission
        self.txs: TxResolver
        self.catchup: CatchUp
        self.screening: Screening

    # --- clocks -----------------------------------------------------------------------------

    @staticmethod
    def now_ms() -> int:
        return int(time.monotonic() * 1000)

    # --- lifecycle --------------------------------------------------------------------------

    async def _open(self) -> None:
        self.store = await asyncio.to_thread(Store, str(self.cfg.db_path))
        self.chain = chain = Chain(self.store, self.genesis)
        await asyncio.to_thread(chain.load)
        records = await asyncio.to_thread(self.store.log_items)
        self.replica = Replica(
            self.ccfg,
            random.Random(os.urandom(16)),
            records=records,
            committed_seq=self.chain.height,
            now_ms=self.now_ms(),
        )
        self.mempool = Mempool(
            self.genesis.chain_id,
            self.cfg.mempool_txs_max,
            self.cfg.mempool_bytes_max,
            self.chain.read_account,
        )
        # The detector and its quarantine (node/screening.py): an admission policy only.
        self.screening = screening = Screening(
            self.cfg.detector, self.store, self.metrics, persist=self._write_pool.submit
        )
        await asyncio.to_thread(
            screening.start, chain, [address for address, _ in self.genesis.balances]
        )
        self.admission = Admission(
            self.mempool,
            self.gossip,
            lambda h: self.txs.known(h) or chain.is_committed(h) or screening.known(h),
            self._on_admitted,
            self._on_quarantined,
            self.metrics,
        )
        self.admission.screen = screening.screen
        screening.bind(self.admission, self.p2p.broadcast)
        self.txs = TxResolver(self, self.cfg.p2p_request_timeout_ms / 1000)
        self.catchup = CatchUp(
            self.p2p,
            lambda: self.chain.height if self.chain else 0,
            self._deliver_fetched,
            self.wait_head,
            self.cfg.catchup_batch_blocks,
            self.cfg.p2p_request_timeout_ms / 1000,
            self.metrics,
            f=self.ccfg.f,
        )
        self.metrics.chain_height.set(self.chain.height)
        self.metrics.set_view(
            self.replica.view, is_primary=self.ccfg.primary(self.replica.view) == self.index
        )
        self.metrics.set_mempool(txs=0, size_bytes=0)
        log.info(
            "node_started",
            extra={"index": self.index, "height": self.chain.height, "view": self.replica.view},
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down gracefully.

        A listener that cannot bind raises NodeError naming its config key; whatever was opened
        before it (the database, other listeners) is closed first.
        """
        from node.rpc import make_rpc_app, start_rpc_server
        from node.service_impl import NodeServiceImpl

        tasks: list[asyncio.Task[Any]] = []
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self._close_storage)
            await self._open()
            p2p_app = web.Application(client_max_size=self.cfg.p2p_msg_bytes_max)
            p2p_app.add_routes(self.p2p.routes())
            p2p_runner = web.AppRunner(
                p2p_app, access_log=None, handle_signals=False, shutdown_timeout=0.5
            )
            await p2p_runner.setup()
            stack.push_async_callback(_cleanup, p2p_runner, 2)
            stack.push_async_callback(self.p2p.close)
            site = web.TCPSite(p2p_runner, self.cfg.p2p_host, self.cfg.p2p_port)
            await _listen("p2p", self.cfg.p2p_host, self.cfg.p2p_port, site.start())
            self.service = NodeServiceImpl(self)
            rpc_app = make_rpc_app(
                self.service,
                admin_token=self.cfg.admin_token or None,
                body_bytes_max=self.cfg.rpc_body_bytes_max,
                batch_max=self.cfg.rpc_batch_max,
                metrics=self.metrics,
            )
            host, port = self.cfg.metrics_host, self.cfg.metrics_port
            await _listen(
                "metrics",
                host,
                port,
                stack.enter_async_context(serve_metrics(self.metrics, host, port)),
            )
            host, port = self.cfg.rpc_host, self.cfg.rpc_port
            rpc_runner = await _listen("rpc", host, port, start_rpc_server(rpc_app, host, port))
            stack.push_async_callback(_cancel_all, tasks)
            stack.push_async_callback(_cleanup, rpc_runner, 3)  # first: stop taking requests
            self.p2p.start()
            for coro, name in (
                (self._replica_loop(), "replica"),
                (self._ticker(), "ticker"),
                (run_committer(self), "committer"),
                (self._proposer(), "proposer"),
                (self._status_loop(), "status"),
                (self.admission.run(), "admission"),
                (self.gossip.run(), "gossip"),
                (self.catchup.run(), "catchup"),
                (watch_loop_lag(self.metrics), "looplag"),
            ):
                task = asyncio.create_task(coro, name=name)
                task.add_done_callback(self._task_done)
                tasks.append(task)
            log.info("node_serving", extra={"rpc_port": self.cfg.rpc_port})
            await stop.wait()
            log.info("node_stopping")
        log.info("node_stopped")

    async def _close_storage(self) -> None:
        """Finish the writes in progress and the reads in worker threads, then close LevelDB.

        Never close LevelDB under a thread still using it: cancelled tasks leave their
        ``to_thread`` work running (block reads for a peer, catch-up checks).
        """
        await asyncio.to_thread(self._write_pool.shutdown, True)
        await asyncio.to_thread(self.log_pool.shutdown, True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await asyncio.get_running_loop().shutdown_default_executor()
        if self.store is not None:
            self.store.close()

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("task_failed", extra={"task": task.get_name()}, exc_info=task.exception())
            # A dead core task leaves a zombie validator: better to stop loudly.
            os._exit(70)

    # --- the core ---------------------------------------------------------------------------

    async def _replica_loop(self) -> None:
        assert self.replica is not None
        assert self.store is not None
        loop = asyncio.get_running_loop()
        while True:
            events = [await self.inbox.get()]
            while len(events) < ROUND_EVENTS_MAX and not self.inbox.empty():
                events.append(self.inbox.get_nowait())
            actions = []
            for ev in events:
                actions.extend(self.replica.step(ev))
            records = [r for a in actions if isinstance(a, Persist) for r in a.records]
            if records:
                with self.metrics.time_storage_write():
                    await loop.run_in_executor(self.log_pool, self.store.log_write, records)
            for a in actions:
                if isinstance(a, ViewChanged):
                    entries = new_view_entries(a.view, events, actions, self.ccfg.payload_bytes_max)
                    self.txs.on_view_change(a.view, entries)
                self._perform(a)

    def _perform(self, a: Any) -> None:
        match a:
            case Persist():
                pass  # written above, before any send of this round
            case Send(to, data):
                self.p2p.send(to, {"t": "c", "d": data})
            case Broadcast(data):
                seq = checkpoint_seq(data, self.ccfg.payload_bytes_max)
                if seq is not None and seq > self.chain_height():
                    self.held_checkpoints.hold(seq, data)  # sent once the block is written
                else:
                    self.p2p.broadcast({"t": "c", "d": data})
            case Commit():
                self.commits.put_nowait(a)
            case SetTimer():
                pass  # the ticker wakes the core every tick_ms, finer than any timer we use
            case RequestProposal(view, seq):
                self.proposals.append((view, seq))
                self._propose_wake.set()
            case Validate():
                task = asyncio.create_task(self._validate(a))
                task.add_done_callback(_log_failure)
            case FetchBlocks(_, to_seq, peers):
                self.catchup.want(to_seq, peers)
            case ViewChanged(view, primary):
                log.warning("view_change", extra={"view": view, "primary": primary})
                self.metrics.view_changes_total.inc()
                self.metrics.set_view(view, is_primary=primary == self.index)
                self.proposals.clear()
                self.mempool.set_inflight(self.txs.uncommitted_hashes())
            case Dropped(reason):
                self.metrics.consensus_dropped_total.labels(reason=reason).inc()

    async def _ticker(self) -> None:
        tick_s = self.cfg.tick_ms / 1000
        while True:
            await asyncio.sleep(tick_s)
            self._update_pending()
            with contextlib.suppress(asyncio.QueueFull):
                self.inbox.put_nowait(Tick(self.now_ms()))

    def _update_pending(self) -> None:
        """Tell the core when the mempool starts or stops holding txs not yet in a proposal.

        While a view nudge is on (see ``_check_peers``) we claim work, so the core's request
        timer runs and a replica stuck in an old view sends a VIEW-CHANGE.
        """
        pending = self.mempool.has_runnable() or self._nudging()
        if pending != self._pending:
            try:
                self.inbox.put_nowait(Pending(pending))
            except asyncio.QueueFull:
                return  # the ticker tries again
            self._pending = pending

    def _nudging(self) -> bool:
        # Only until the core leaves the stale view: claiming work after that would make it time
        # out again and run ahead of the others into a view nobody else is in.
        view = self.replica.view if self.replica is not None else 0
        return view == self._nudge_view and time.monotonic() < self._nudge_until_s

    async def _validate(self, a: Validate) -> None:
        assert self.replica is not None
        valid = await self.txs.validate(a.view, a.seq, a.digest, a.payload)
        await self.inbox.put(Verdict(a.view, a.seq, a.digest, valid))

    async def _proposer(self) -> None:
        assert self.replica is not None
        last_s = 0.0
        while True:
            await self._propose_wake.wait()
            self._propose_wake.clear()
            while self.proposals:
                view, seq = self.proposals[0]
                if view != self.replica.view or seq <= self.chain_height():
                    self.proposals.popleft()
                    continue
                if not self.mempool.has_ready():
                    break  # woken again by admission
                if self.watch.higher_view(view):
                    break  # f+1 peers moved on: a proposal in our stale view only strands txs
                wait_s = last_s + self.cfg.block_interval_ms / 1000 - time.monotonic()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                    continue  # state may have changed while we slept
                txs = self.mempool.select(self.cfg.block_txs_max)
                if not txs:
                    break
                self.proposals.popleft()
                payload = await self.txs.proposal(view, seq, txs, int(time.time() * 1000))
                last_s = time.monotonic()
                await self.inbox.put(Propose(view, seq, payload))

    def chain_height(self) -> int:
        return self.chain.height if self.chain is not None else 0

    async def wait_head(self, seq: int, timeout_s: float) -> bool:
        """Wait until the chain reaches ``seq``; False on timeout (catch-up uses it)."""
        return await wait_head(self, seq, timeout_s)

    async def _deliver_fetched(
        self, entries: list[FetchedEntry], txs: dict[bytes, tuple[Transaction, ...]]
    ) -> None:
        seqs = {sha256(e.payload): e.seq for e in entries if e.payload}
        self.txs.add_fetched(txs, seqs)
        await self.inbox.put(Fetched(tuple(entries)))

    # --- events for subscribers ---------------------------------------------------------------

    def _publish(self, event: dict[str, Any]) -> None:
        for cb in list(self.subscribers):
            try:
                cb(event)
            except Exception:  # a subscriber's bug must not stop commits
                log.exception("subscriber_failed")

    # --- admission callbacks ----------------------------------------------------------------

    def _on_admitted(self, txs: list[Transaction]) -> None:
        self.metrics.set_mempool(txs=len(self.mempool), size_bytes=self.mempool.bytes)
        self._propose_wake.set()
        self._update_pending()
        if self.subscribers:
            for tx in txs:
                self._publish({"type": "tx", "hash": "0x" + tx.hash.hex(), "status": "pending"})

    def _on_quarantined(self, tx: Transaction, verdict: Screened) -> None:
        """The screen held ``tx`` back: it waits in the persisted quarantine (node/quarantine.py)."""
        self.screening.hold(tx, verdict)

    # --- P2P callbacks ----------------------------------------------------------------------

    async def _on_frame(self, sender: int, frame: dict[str, Any]) -> None:
        kind = frame["t"]
        if kind == "c":
            await self.inbox.put(Received(sender, frame["d"]))
        elif kind == "txs":
            if frame.get("released") is True:  # released by a peer's operator: not screened
                self.screening.on_peer_release(frame["txs"])
            self.admission.gossiped(frame["txs"], sender)
        elif kind == "status":
            self.watch.on_status(sender, frame["height"], frame["view"])
            self.catchup.on_status(sender, frame["height"], slack=2 * self.cfg.pipeline_depth)

    async def _on_request(self, sender: int, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind == "get_txs":
            return await self.txs.serve_get_txs(body)
        if kind == "get_blocks":
            return await self.txs.serve_get_blocks(body)
        return {"error": "unknown_request"}

    def _on_peer(self, peer: int, up: bool) -> None:
        if up:
            self.p2p.send(peer, self._status_frame())
        else:
            self.catchup.peer_heights.pop(peer, None)
            self.watch.forget(peer)

    def _status_frame(self) -> dict[str, Any]:
        view = self.replica.view if self.replica is not None else 0
        return {"t": "status", "height": self.chain_height(), "view": view}

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            self.p2p.broadcast(self._status_frame())
            self._check_peers()
            self.metrics.set_mempool(txs=len(self.mempool), size_bytes=self.mempool.bytes)
            self.metrics.ready.set(1 if self.is_ready() else 0)

    def _check_peers(self) -> None:
        """Close gaps the core cannot see on an idle cluster (node/peerwatch.py)."""
        assert self.replica is not None
        lag = self.watch.check(self.chain_height(), self.replica.view)
        if lag.fetch_to:
            log.info("behind_peers", extra={"height": self.chain_height(), "to": lag.fetch_to})
            self.catchup.want(lag.fetch_to, lag.fetch_from)
        now = time.monotonic()
        timeout_s = self.cfg.request_timeout_ms / 1000
        if lag.view_behind and not self._nudging():
            # Held until the core leaves this view (bounded, in case progress keeps resetting
            # its request timer); then the next check decides again.
            log.warning("view_behind_peers", extra={"view": self.replica.view})
            self._nudge_until_s = now + 10 * timeout_s
            self._nudge_view = self.replica.view
            self._update_pending()

    # --- health -----------------------------------------------------------------------------

    def is_ready(self) -> bool:
        """A quorum of peers, not catching up, not behind the peers' height or view."""
        quorum_peers = self.ccfg.quorum - 1
        return (
            len(self.p2p.peers()) >= quorum_peers
            and not self.catchup.syncing
            and not self.watch.last.behind
        )


def new_view_entries(
    view: int, events: list[Event], actions: list[Any], payload_bytes_max: int
) -> list[tuple[int, bytes, bytes]]:
    """The PRE-PREPAREs ``(seq, digest, payload)`` of the NEW-VIEW that made us enter ``view``.

    The core accepts them without a ``Validate``, so the host learns them here: from the round's
    received messages, or our own broadcast when we are the new primary. Only rounds that change
    the view pay for this decoding. A hint for the in-flight bookkeeping, not a safety input.
    """
    candidates = [e.data for e in events if isinstance(e, Received)]
    candidates += [a.data for a in actions if isinstance(a, Broadcast)]
    for data in candidates:
        if consensus_kind(data) != "newview":
            continue
        try:
            nv = cmsg.decode(data, payload_bytes_max, len(data))
        except CodecError:
            continue
        if isinstance(nv, cmsg.NewView) and nv.view == view:
            return [(pp.seq, pp.digest, pp.payload) for pp in nv.pre_prepares]
    return []


def checkpoint_seq(data: bytes, payload_bytes_max: int) -> int | None:
    """The seq of an encoded CHECKPOINT of ours, None for any other message."""
    if consensus_kind(data) != "checkpoint":
        return None
    try:
        msg = cmsg.decode(data, payload_bytes_max, len(data))
    except CodecError:
        return None
    return msg.seq if isinstance(msg, cmsg.Checkpoint) else None


async def _listen(what: str, host: str, port: int, start: Awaitable[_T]) -> _T:
    """Await a listener's start; a bind failure becomes a NodeError naming the config key."""
    try:
        return await start
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            why = "address already in use"
        raise NodeError(f"{what}.port: cannot listen on {host}:{port}: {why}") from None


async def _cleanup(runner: web.AppRunner, timeout_s: float) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout_s):
            await runner.cleanup()


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task_failed", extra={"task": task.get_name()}, exc_info=task.exception())
