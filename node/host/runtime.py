"""The validator process: wires P2P, admission, the PBFT core, the chain, catch-up and the servers.

``Node`` is wiring only: it builds the parts (``Opened`` once the store is open), starts the tasks
and shuts them down in order; each task lives in its own module and gets the narrow parts it
uses, never the node. One task owns the ``Replica`` and is fed by a bounded queue
(node/host/driver.py, with the ticker, proposer and status tasks that feed it).
Slow work runs elsewhere so the core keeps moving: validation of proposals (which may fetch
missing txs from the primary) in its own tasks, execution and storage of committed blocks in the
committer task and a worker thread (node/host/committer.py), catch-up in its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import ssl
import time
from collections.abc import Awaitable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from common.codec import sha256
from consensus.api import (
    Commit,
    ConsensusConfig,
    Event,
    Fetched,
    FetchedEntry,
)
from consensus.replica import Replica
from node import VERSION
from node.chain.chain import Chain
from node.chain.genesis import Genesis
from node.chain.mempool import Mempool
from node.chain.tx import Transaction
from node.host.admission import Admission, lower_thread_priority
from node.host.committer import Committer
from node.host.config import NodeConfig, load_validator_key, read_passphrase
from node.host.driver import Actions, Driver, Proposer, Status, run_ticker
from node.host.health import Health
from node.host.inbound import PeerInbound
from node.host.metrics import Metrics, serve_metrics, watch_loop_lag
from node.host.resolver import ResolverConfig, TxResolver
from node.host.screening import Screening, training_pool
from node.host.service_impl import NodeServiceImpl
from node.host.signals import Head, PendingFlag, ProposalBodies, ProposalQueue, Subscribers
from node.host.signguard import GuardError, SignGuard
from node.host.syncwrite import LightLoad, SyncWriter
from node.host.txflow import TxFlow
from node.net.address import PeerAddress
from node.net.catchup import CatchUp
from node.net.gossip import Gossip
from node.net.p2p import P2P
from node.net.peerwatch import PeerWatch
from node.net.tls import P2PTls, TlsError, p2p_tls, server_context
from storage.db import Store

log = logging.getLogger(__name__)

_T = TypeVar("_T")
INBOX_MAX = 10_000


def commits_max(cfg: NodeConfig) -> int:
    """Bound of the commit queue: above what the core can commit ahead of ``Applied`` (a log
    window, checkpoints wait for ``Applied``) plus a catch-up batch; when full the driver waits."""
    return 2 * (cfg.log_window + cfg.catchup_batch_blocks)


class NodeError(Exception):
    """The node cannot start with this configuration (key not in genesis, ...)."""


@dataclass(frozen=True, slots=True)
class Opened:
    """The parts that exist once the store is open (``Node._open``), each built once."""

    store: Store
    chain: Chain
    replica: Replica
    mempool: Mempool
    flow: TxFlow
    screening: Screening
    txs: TxResolver
    admission: Admission
    catchup: CatchUp
    inbound: PeerInbound
    driver: Driver
    committer: Committer
    proposer: Proposer
    status: Status
    pending: PendingFlag
    service: NodeServiceImpl


class Node:
    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.genesis = Genesis.load(cfg.genesis_file)
        self.key = load_validator_key(cfg.key_file, read_passphrase(cfg))
        self.index = validator_index(self.genesis, self.key.public_key, cfg.index)
        n = len(self.genesis.validators)
        peers = peer_map(self.genesis, cfg.p2p_peers, self.index)
        tls: P2PTls | None = None
        if cfg.p2p_insecure:
            log.warning(
                "p2p_insecure",
                extra={"why": "p2p.insecure = true: validator links are plain ws://, unencrypted"},
            )
        else:
            assert cfg.p2p_tls_cert is not None
            assert cfg.p2p_tls_key is not None
            try:
                tls = p2p_tls(cfg.p2p_tls_cert, cfg.p2p_tls_key)
            except TlsError as exc:
                raise NodeError(str(exc)) from None
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
            empty_interval_ms=cfg.block_empty_interval_ms,
        )
        self.inbox: asyncio.Queue[Event] = asyncio.Queue(maxsize=INBOX_MAX)
        self.commits: asyncio.Queue[Commit] = asyncio.Queue(maxsize=commits_max(cfg))
        self.p2p = P2P(
            index=self.index,
            key=self.key,
            validators=self.ccfg.validators,
            peers=peers,
            tls=tls,
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
        self.health = Health(self.ccfg.quorum - 1)
        self.subscribers = Subscribers()
        self.proposals = ProposalQueue()
        # The synced writes (node/host/syncwrite.py): blocks and quarantine records, and the
        # consensus log with the double-sign guard; each has its own thread for what is not
        # written inline.
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="commit")
        self.log_pool = ThreadPoolExecutor(1, thread_name_prefix="clog")
        self._load = LightLoad()
        self._block_writer = SyncWriter(self._write_pool, self._load)
        self._log_writer = SyncWriter(self.log_pool, self._load)
        # Admission's signature checks, at a lower priority than the loop (node/host/admission.py)
        self._verify_pool = ThreadPoolExecutor(
            2, thread_name_prefix="admit-verify", initializer=lower_thread_priority
        )
        self._train_pool: ProcessPoolExecutor | None = (
            None  # detector fits (node/host/screening.py)
        )
        # Set once by run(): the store as soon as it is open (closed last, even when a later
        # step of the start fails), and the opened parts before P2P can call back.
        self._store: Store | None = None
        self._parts: Opened | None = None

    # --- clocks -----------------------------------------------------------------------------

    @staticmethod
    def now_ms() -> int:
        return int(time.monotonic() * 1000)

    # --- lifecycle --------------------------------------------------------------------------

    async def _open(self) -> Opened:
        """Open the guard and the store, then build every part that reads them."""
        cfg, metrics, p2p, inbox = self.cfg, self.metrics, self.p2p, self.inbox
        fresh = not cfg.db_path.exists()
        try:
            sign_guard = await asyncio.to_thread(
                SignGuard.open, cfg.guard_path, self.key.public_key, fresh=fresh
            )
        except GuardError as exc:
            raise NodeError(str(exc)) from None
        store = await asyncio.to_thread(Store, str(cfg.db_path))
        self._store = store
        chain = Chain(store, self.genesis)
        await asyncio.to_thread(chain.load)
        records = await asyncio.to_thread(store.log_items)
        replica = Replica(
            self.ccfg,
            random.Random(os.urandom(16)),
            records=records,
            committed_seq=chain.height,
            now_ms=self.now_ms(),
        )
        mempool = Mempool(
            self.genesis.chain_id,
            cfg.mempool_txs_max,
            cfg.mempool_bytes_max,
            chain.read_account,
        )
        # The detector and its quarantine (node/host/screening.py): an admission policy only.
        self._train_pool = training_pool()
        screening = Screening(
            cfg.detector,
            store,
            metrics,
            persist=self._block_writer.submit,
            train_pool=self._train_pool,
        )
        await asyncio.to_thread(
            screening.start, chain, [address for address, _ in self.genesis.balances]
        )
        head = Head(lambda: chain.height)
        pending = PendingFlag(mempool.has_runnable, inbox)
        bodies = ProposalBodies()  # the resolver adds, the driver writes
        txs = TxResolver(
            ResolverConfig(
                index=self.index,
                chain_id=self.genesis.chain_id,
                primary=self.ccfg.primary,
                block_txs_max=cfg.block_txs_max,
                catchup_batch_blocks=cfg.catchup_batch_blocks,
                msg_bytes_max=cfg.p2p_msg_bytes_max,
                timeout_s=cfg.p2p_request_timeout_ms / 1000,
            ),
            mempool,
            chain,
            p2p,
            bodies,
        )
        flow = TxFlow(
            mempool=mempool,
            chain=chain,
            txs=txs,
            screening=screening,
            seen=self.gossip.seen,
            p2p=p2p,
            proposals=self.proposals,
            pending=pending,
            subscribers=self.subscribers,
            metrics=metrics,
        )
        admission = Admission(
            mempool,
            self.gossip,
            # Not "known to the resolver": a tx we saw only inside a proposal must still enter
            # our mempool when its gossip arrives, or nobody here could propose it again if
            # that proposal is abandoned by a view change (issue 11, stranded txs).
            lambda h: chain.is_committed(h) or screening.known(h),
            flow.on_admitted,
            # The screen held a tx back: it waits in the persisted quarantine
            # (node/detect/quarantine.py).
            screening.hold,
            metrics,
        )
        admission.backlog_s = cfg.mempool_backlog_ms / 1000
        txs.arrivals = admission
        admission.verified = txs.verified
        admission.verify_pool = self._verify_pool
        admission.screen = screening.screen
        screening.bind(admission, p2p.broadcast)
        screening.drop_waiting = flow.drop_waiting
        screening.on_unblocked = flow.on_unblocked

        async def deliver_fetched(
            entries: list[FetchedEntry], fetched: dict[bytes, tuple[Transaction, ...]]
        ) -> None:
            seqs = {sha256(e.payload): e.seq for e in entries if e.payload}
            txs.add_fetched(fetched, seqs)
            await inbox.put(Fetched(tuple(entries)))

        catchup = CatchUp(
            p2p,
            head.height,
            deliver_fetched,
            head.wait,
            cfg.catchup_batch_blocks,
            cfg.p2p_request_timeout_ms / 1000,
            metrics,
            f=self.ccfg.f,
        )

        def not_ready_reason() -> str | None:
            """Why this node cannot take part in a quorum now (node/host/health.py)."""
            return self.health.not_ready_reason(
                peers=len(p2p.peers()),
                syncing=catchup.syncing,
                lag=self.watch.last,
                now_s=time.monotonic(),
            )

        actions = Actions(
            index=self.index,
            p2p=p2p,
            commits=self.commits,
            proposals=self.proposals,
            inbox=inbox,
            txs=txs,
            flow=flow,
            mempool=mempool,
            catchup=catchup,
            metrics=metrics,
        )
        status = Status(
            replica=replica,
            head=head,
            p2p=p2p,
            watch=self.watch,
            catchup=catchup,
            mempool=mempool,
            txs=txs,
            health=self.health,
            not_ready_reason=not_ready_reason,
            metrics=metrics,
            holds_sender=screening.holds_sender,
            forget=self.gossip.seen.discard,
        )
        opened = Opened(
            store=store,
            chain=chain,
            replica=replica,
            mempool=mempool,
            flow=flow,
            screening=screening,
            txs=txs,
            admission=admission,
            catchup=catchup,
            inbound=PeerInbound(
                inbox=inbox,
                admission=admission,
                screening=screening,
                flow=flow,
                txs=txs,
                watch=self.watch,
                catchup=catchup,
                status=status,
                p2p=p2p,
                pipeline_depth=cfg.pipeline_depth,
            ),
            driver=Driver(
                replica=replica,
                inbox=inbox,
                log=store,
                log_writer=self._log_writer,
                sign_guard=sign_guard,
                index=self.index,
                payload_bytes_max=self.ccfg.payload_bytes_max,
                actions=actions,
                health=self.health,
                metrics=metrics,
                durable_height=lambda: chain.height,
                bodies=bodies,
                now_ms=self.now_ms,
            ),
            committer=Committer(
                commits=self.commits,
                chain=chain,
                writer=self._block_writer,
                load=self._load,
                txs=txs,
                mempool=mempool,
                detector=screening,
                inbox=inbox,
                head=head,
                proposals=self.proposals,
                pending=pending,
                subscribers=self.subscribers,
                metrics=metrics,
                commit_rate=admission.on_committed,
            ),
            proposer=Proposer(
                replica=replica,
                proposals=self.proposals,
                mempool=mempool,
                watch=self.watch,
                head=head,
                txs=txs,
                inbox=inbox,
                block_interval_ms=cfg.block_interval_ms,
                block_interval_max_ms=cfg.block_interval_max_ms,
                block_txs_max=cfg.block_txs_max,
                flush_gossip=self.gossip.flush,
            ),
            status=status,
            pending=pending,
            service=NodeServiceImpl(
                genesis=self.genesis,
                index=self.index,
                ccfg=self.ccfg,
                chain=chain,
                store=store,
                data_dir=cfg.data_dir,
                replica=replica,
                p2p=p2p,
                catchup=catchup,
                watch=self.watch,
                mempool=mempool,
                screening=screening,
                admission=admission,
                txs=txs,
                subscribers=self.subscribers,
                not_ready_reason=not_ready_reason,
            ),
        )
        metrics.chain_height.set(chain.height)
        metrics.set_view(replica.view, is_primary=self.ccfg.primary(replica.view) == self.index)
        metrics.set_mempool(txs=0, size_bytes=0)
        log.info(
            "node_started",
            extra={
                "index": self.index,
                "height": chain.height,
                "view": replica.view,
                # The loop really running (node.event_loop): "uvloop" or "asyncio".
                "event_loop": type(asyncio.get_running_loop()).__module__.partition(".")[0],
            },
        )
        return opened

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down gracefully.

        A listener that cannot bind raises NodeError naming its config key; whatever was opened
        before it (the database, other listeners) is closed first.
        """
        from node.api.rpc import make_rpc_app, start_rpc_server

        tasks: list[asyncio.Task[Any]] = []
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self._close_storage)
            self._parts = parts = await self._open()
            p2p_app = web.Application(client_max_size=self.cfg.p2p_msg_bytes_max)
            p2p_app.add_routes(self.p2p.routes())
            p2p_runner = web.AppRunner(
                p2p_app, access_log=None, handle_signals=False, shutdown_timeout=0.5
            )
            await p2p_runner.setup()
            stack.push_async_callback(_cleanup, p2p_runner, 2)
            stack.push_async_callback(self.p2p.close)
            site = web.TCPSite(
                p2p_runner,
                self.cfg.p2p_host,
                self.cfg.p2p_port,
                ssl_context=self.p2p.tls.server if self.p2p.tls is not None else None,
            )
            await _listen("p2p", self.cfg.p2p_host, self.cfg.p2p_port, site.start())
            rpc_app = make_rpc_app(
                parts.service,
                admin_token=self.cfg.admin_token or None,
                body_bytes_max=self.cfg.rpc_body_bytes_max,
                batch_max=self.cfg.rpc_batch_max,
                metrics=self.metrics,
                cors_origins=self.cfg.rpc_cors_origins,
            )
            host, port = self.cfg.metrics_host, self.cfg.metrics_port
            await _listen(
                "metrics",
                host,
                port,
                stack.enter_async_context(
                    serve_metrics(self.metrics, host, port, self._https("metrics"))
                ),
            )
            host, port = self.cfg.rpc_host, self.cfg.rpc_port
            rpc_runner = await _listen(
                "rpc",
                host,
                port,
                start_rpc_server(rpc_app, host, port, ssl_context=self._https("rpc")),
            )
            stack.push_async_callback(_cancel_all, tasks)
            stack.push_async_callback(_cleanup, rpc_runner, 3)  # first: stop taking requests
            self.p2p.start()
            for coro, name in (
                (parts.driver.run(), "replica"),
                (run_ticker(self.cfg.tick_ms, parts.pending, self.inbox, self.now_ms), "ticker"),
                (parts.committer.run(), "committer"),
                (parts.proposer.run(), "proposer"),
                (parts.flow.run(), "txflow"),
                (parts.status.run(), "status"),
                (parts.admission.run(), "admission"),
                (self.gossip.run(), "gossip"),
                (parts.catchup.run(), "catchup"),
                (watch_loop_lag(self.metrics, on_lag=parts.admission.on_loop_lag), "looplag"),
                (parts.screening.run(), "screening"),
            ):
                task = asyncio.create_task(coro, name=name)
                task.add_done_callback(self._task_done)
                tasks.append(task)
            log.info("node_serving", extra={"rpc_port": self.cfg.rpc_port})
            await stop.wait()
            log.info("node_stopping")
        log.info("node_stopped")

    def _https(self, section: str) -> ssl.SSLContext | None:
        """The TLS context for the RPC or metrics listener, when its cert and key are set."""
        cert = getattr(self.cfg, f"{section}_tls_cert")
        key = getattr(self.cfg, f"{section}_tls_key")
        if cert is None or key is None:
            return None
        try:
            return server_context(cert, key, f"{section}.tls_cert")
        except TlsError as exc:
            raise NodeError(str(exc)) from None

    async def _close_storage(self) -> None:
        """Finish the writes in progress and the reads in worker threads, then close LevelDB.

        Never close LevelDB under a thread still using it: cancelled tasks leave their
        ``to_thread`` work running (block reads for a peer, catch-up checks).
        """
        if self._train_pool is not None:
            self._train_pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._write_pool.shutdown, True)
        await asyncio.to_thread(self.log_pool.shutdown, True)
        await asyncio.to_thread(self._verify_pool.shutdown, True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await asyncio.get_running_loop().shutdown_default_executor()
        if self._store is not None:
            self._store.close()

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("task_failed", extra={"task": task.get_name()}, exc_info=task.exception())
            # A dead core task leaves a zombie validator: better to stop loudly.
            os._exit(70)

    # --- P2P callbacks: routed to the opened parts (node/host/inbound.py) ----------------------

    def _inbound(self) -> PeerInbound:
        assert self._parts is not None, "P2P starts after the store is open"
        return self._parts.inbound

    async def _on_frame(self, sender: int, frame: dict[str, Any]) -> None:
        await self._inbound().on_frame(sender, frame)

    async def _on_request(self, sender: int, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._inbound().on_request(sender, kind, body)

    def _on_peer(self, peer: int, up: bool) -> None:
        self._inbound().on_peer(peer, up)


def validator_index(genesis: Genesis, public_key: bytes, index: int | None) -> int:
    """Our index in genesis, found by our key; ``node.index``, when set, must agree."""
    keys = genesis.validator_keys()
    n = len(keys)
    if public_key not in keys:
        raise NodeError(
            "node.key_file: this key (0x"
            + public_key.hex()
            + ") is not a validator in the genesis file (wrong key, or wrong genesis)"
        )
    found = keys.index(public_key)
    if index is not None and index != found:
        if not 0 <= index < n:
            raise NodeError(f"node.index: {index} is not a validator index (0..{n - 1})")
        raise NodeError(
            f"node.index: {index} disagrees with genesis, where this key is validator {found}"
        )
    return found


def peer_map(genesis: Genesis, peers: tuple[PeerAddress, ...], me: int) -> dict[int, PeerAddress]:
    """Validator index -> where to dial it, from ``p2p.peers``; unknown keys are refused."""
    keys = genesis.validator_keys()
    out: dict[int, PeerAddress] = {}
    for k, p in enumerate(peers):
        if p.public_key not in keys:
            raise NodeError(f"p2p.peers[{k}]: {p} names a key that is not a validator in genesis")
        j = keys.index(p.public_key)
        if j != me:  # our own line may be listed too (every host can share one list)
            out[j] = p
    missing = [j for j in range(len(keys)) if j != me and j not in out]
    if missing:
        log.warning("p2p_peers_missing", extra={"validators": missing})
    return out


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
