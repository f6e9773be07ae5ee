"""The validator process: wires P2P, admission, the PBFT core, the chain, catch-up and the servers.

``Node`` holds the node's parts and state, opens them, starts the tasks and shuts them down in
order; the tasks live in their own modules. One task owns the ``Replica`` and is fed by a
bounded queue (node/host/driver.py, with the ticker, proposer and status tasks that feed it).
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
from collections import deque
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import web

from common.codec import sha256
from consensus.api import Commit, ConsensusConfig, Event, Fetched, FetchedEntry, Received
from consensus.replica import Replica
from node import VERSION
from node.chain.chain import Chain
from node.chain.genesis import Genesis
from node.chain.mempool import Mempool
from node.chain.tx import Transaction
from node.errors import VigilError
from node.host.admission import Admission, Screened
from node.host.committer import HeldCheckpoints, run_committer, wait_head
from node.host.config import NodeConfig, load_validator_key, read_passphrase
from node.host.driver import (
    on_peer_status,
    perform,
    run_proposer,
    run_replica,
    run_status,
    run_ticker,
    status_frame,
    update_pending,
)
from node.host.health import Health
from node.host.metrics import Metrics, serve_metrics, watch_loop_lag
from node.host.resolver import TxResolver
from node.host.screening import BLOCKER_REASONS, Screening
from node.host.signguard import GuardError, SignGuard
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
REGOSSIP_TXS_MAX = 20_000  # mempool txs sent to a peer that (re)connects
REGOSSIP_BATCH_TXS = 1000


class NodeError(Exception):
    """The node cannot start with this configuration (key not in genesis, ...)."""


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
        )
        self.store: Store | None = None
        self.sign_guard: SignGuard | None = None
        self.chain: Chain | None = None
        self.replica: Replica | None = None
        self.inbox: asyncio.Queue[Event] = asyncio.Queue(maxsize=INBOX_MAX)
        self.commits: asyncio.Queue[Commit] = asyncio.Queue()
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
        self._nudge_until_s = 0.0  # keep "pending" up until then to make a stale view time out
        self._nudge_view = -1
        self.subscribers: list[Any] = []
        self.proposals: deque[tuple[int, int]] = deque()
        # Validations in progress: a strong reference, so a running check is never collected.
        self.validations: set[asyncio.Task[None]] = set()
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
        fresh = not self.cfg.db_path.exists()
        try:
            self.sign_guard = await asyncio.to_thread(
                SignGuard.open, self.cfg.guard_path, self.key.public_key, fresh=fresh
            )
        except GuardError as exc:
            raise NodeError(str(exc)) from None
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
        # The detector and its quarantine (node/host/screening.py): an admission policy only.
        self.screening = screening = Screening(
            self.cfg.detector, self.store, self.metrics, persist=self._write_pool.submit
        )
        await asyncio.to_thread(
            screening.start, chain, [address for address, _ in self.genesis.balances]
        )
        self.admission = Admission(
            self.mempool,
            self.gossip,
            # Not "known to the resolver": a tx we saw only inside a proposal must still enter
            # our mempool when its gossip arrives, or nobody here could propose it again if
            # that proposal is abandoned by a view change (issue 11, stranded txs).
            lambda h: chain.is_committed(h) or screening.known(h),
            self._on_admitted,
            self._on_quarantined,
            self.metrics,
        )
        self.admission.backlog_s = self.cfg.mempool_backlog_ms / 1000
        self.admission.screen = screening.screen
        screening.bind(self.admission, self.p2p.broadcast)
        screening.drop_waiting = self._drop_waiting
        screening.on_unblocked = self._on_unblocked
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
        from node.api.rpc import make_rpc_app, start_rpc_server
        from node.host.service_impl import NodeServiceImpl

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
            site = web.TCPSite(
                p2p_runner,
                self.cfg.p2p_host,
                self.cfg.p2p_port,
                ssl_context=self.p2p.tls.server if self.p2p.tls is not None else None,
            )
            await _listen("p2p", self.cfg.p2p_host, self.cfg.p2p_port, site.start())
            self.service = NodeServiceImpl(self)
            rpc_app = make_rpc_app(
                self.service,
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
                (run_replica(self), "replica"),
                (run_ticker(self), "ticker"),
                (run_committer(self), "committer"),
                (run_proposer(self), "proposer"),
                (run_status(self), "status"),
                (self.admission.run(), "admission"),
                (self.gossip.run(), "gossip"),
                (self.catchup.run(), "catchup"),
                (watch_loop_lag(self.metrics), "looplag"),
                (self.screening.run(), "screening"),
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

    # --- the core (node/host/driver.py) ------------------------------------------------------------
    # Methods as well, for the callers that hold a Node: the committer, admission, unit tests.

    def _perform(self, a: Any) -> None:
        perform(self, a)

    def _update_pending(self) -> None:
        update_pending(self)

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
        # A tx that already sits in an uncommitted proposal is in flight, not proposable: else
        # a primary that learns it by gossip after the NEW-VIEW re-proposed it would propose it
        # a second time, and the backups refuse that block (proposal_invalid reason=replay).
        self.mempool.mark_inflight(self.txs.in_flight(tx.hash for tx in txs))
        self.metrics.set_mempool(txs=len(self.mempool), size_bytes=self.mempool.size_bytes)
        self._propose_wake.set()
        self._update_pending()
        if self.subscribers:
            for tx in txs:
                self._publish(self._tx_event(tx))

    def _tx_event(self, tx: Transaction) -> dict[str, Any]:
        """A pending tx's /ws event: ``pending``, or ``waiting`` behind a held tx."""
        event: dict[str, Any] = {"type": "tx", "hash": "0x" + tx.hash.hex(), "status": "pending"}
        blocker = self.screening.blocked_by(tx)
        if blocker is not None:
            event.update(status="waiting", blocked_by="0x" + blocker.hex())
        return event

    # --- txs waiting behind a held tx (node/host/screening.py) --------------------------------

    def _drop_waiting(self, held: Any, reason: str) -> None:
        """A held tx left the quarantine for good: its sender's later txs can never run. Fail
        them here at once, and tell the other validators (a ``txs`` frame's ``dropped``)."""
        sender, nonce = held.tx.sender_address, held.tx.nonce
        self._fail_after(sender, nonce, reason)
        self.p2p.broadcast({"t": "txs", "txs": [], "dropped": [[sender, nonce, reason]]})

    def _fail_after(self, sender: bytes, nonce: int, reason: str) -> int:
        dropped = self.mempool.drop_after(sender, nonce)
        for entry in dropped:
            self.txs.dropped(entry.hash, reason)
            self.metrics.txs_rejected_total.labels(reason=reason).inc()
            if self.subscribers:
                self._publish(
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
            self._update_pending()
        return len(dropped)

    def _on_peer_dropped(self, items: list[Any]) -> None:
        """A peer's held tx will never commit: drop what waits behind it here too, unless this
        node has that nonce itself (then the later txs can still run)."""
        chain = self.chain
        if chain is None:
            return
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
            self._fail_after(sender, nonce, reason)

    def _on_unblocked(self, held: Any) -> None:
        """A released tx entered the mempool: what waited behind it is pending again."""
        if self.subscribers:
            for entry in self.mempool.later(held.tx.sender_address, held.tx.nonce):
                self._publish(self._tx_event(entry.tx))

    def _on_quarantined(self, tx: Transaction, verdict: Screened) -> None:
        """The screen held ``tx`` back: it waits in the persisted quarantine (node/detect/quarantine.py)."""
        self.screening.hold(tx, verdict)

    # --- P2P callbacks ----------------------------------------------------------------------

    async def _on_frame(self, sender: int, frame: dict[str, Any]) -> None:
        kind = frame["t"]
        if kind == "c":
            await self.inbox.put(Received(sender, frame["d"]))
        elif kind == "txs":
            if frame.get("released") is True:  # released by a peer's operator: not screened
                self.screening.on_peer_release(frame["txs"])
            dropped = frame.get("dropped")
            if isinstance(dropped, list):  # a peer's held tx left its quarantine for good
                self._on_peer_dropped(dropped)
            if frame["txs"]:
                self.admission.gossiped(frame["txs"], sender)
        elif kind == "status":
            on_peer_status(self, sender, frame["height"], frame["view"])

    async def _on_request(self, sender: int, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind == "get_txs":
            return await self.txs.serve_get_txs(body)
        if kind == "get_blocks":
            return await self.txs.serve_get_blocks(body)
        return {"error": "unknown_request"}

    def _on_peer(self, peer: int, up: bool) -> None:
        if up:
            self.p2p.send(peer, status_frame(self))
            self._regossip(peer)
        else:
            self.catchup.peer_heights.pop(peer, None)
            self.watch.forget(peer)

    def _regossip(self, peer: int) -> None:
        """Send a (re)connected peer what our mempool holds: gossip is not relayed, so txs
        admitted while the link was down (a partition, a restart) would otherwise reach that
        peer only if we proposed them. A primary lacking them never proposes them, and a
        sender's later txs wait behind the missing nonce everywhere (issue 11, stranded txs).
        Bounded; the peer drops what it has already seen without verifying it again.
        """
        raws = [e.tx.encode() for e in self.mempool.entries(REGOSSIP_TXS_MAX)]
        for i in range(0, len(raws), REGOSSIP_BATCH_TXS):
            self.p2p.send(peer, {"t": "txs", "txs": raws[i : i + REGOSSIP_BATCH_TXS]})

    def readmit(self, txs: list[Transaction]) -> None:
        """Txs of proposals a view change abandoned: back into our mempool if missing.

        Their signatures were checked when they reached us. The mempool's own rules apply (a
        nonce consumed meanwhile, a full mempool): a refused one simply stays out.
        """
        chain = self.chain
        assert chain is not None
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
            self.gossip.seen.add(h)
            back.append(tx)
        if back:
            log.info("txs_readmitted", extra={"txs": len(back)})
            self._on_admitted(back)

    # --- health -----------------------------------------------------------------------------

    def is_ready(self) -> bool:
        """Whether this node can take part in a quorum now (node/host/health.py)."""
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        return self.health.not_ready_reason(
            peers=len(self.p2p.peers()),
            syncing=self.catchup.syncing,
            lag=self.watch.last,
            now_s=time.monotonic(),
        )


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
