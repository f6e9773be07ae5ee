"""Authenticated validator-to-validator links over websockets (``/p2p`` on the P2P port).

Each validator dials the other genesis validators at the addresses in its config
(``p2p.peers``, resolved again on every dial) and accepts their dials. Links are TLS (``wss://``)
unless ``p2p.insecure`` is set. The handshake proves possession of both validator keys over fresh
32-byte challenges, bound to the chain id, the genesis hash, both indices and the TLS session
(the acceptor's certificate fingerprint as each side saw it, node/net/tls.py), so a recorded
handshake cannot be replayed, and a relay terminating TLS in the middle cannot complete it::

    dialer -> hello{chain_id, genesis, index, challenge_d, tls}
    acceptor -> hello_ack{index, challenge_a, sig_a(challenge_d, binding), tls}
    dialer -> auth{sig_d(challenge_a, binding)}
    acceptor -> ok

One connection per pair survives: when two exist, the one dialed by the lower index wins on
both sides. Lost links are redialed with exponential back-off and jitter. Frames over the size
limit or that do not decode end the connection and are counted; the node keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from common.crypto import SigningKey
from node.net.address import PeerAddress
from node.net.peer import PeerConn, WebSocket
from node.net.tls import P2PTls, TlsError, check_validity, client_context, fingerprint
from node.net.wire import (
    CHALLENGE_BYTES,
    BadFrame,
    check_challenge,
    decode_frame,
    encode_frame,
    frame_label,
    sign_challenge,
)

log = logging.getLogger(__name__)

OnFrame = Callable[[int, dict[str, Any]], Awaitable[None]]
OnRequest = Callable[[int, str, dict[str, Any]], Awaitable[dict[str, Any]]]
OnPeer = Callable[[int, bool], None]
HEARTBEAT_S = 5.0
# Requests one peer may have us working on at once; more are answered "busy" without work, so a
# flood of block-range requests cannot pile up reads and answers without bound.
REQUESTS_INFLIGHT_MAX = 8
QUEUE_BYTES_MIN = 64 * 1024 * 1024
ACCEPT_WARN_EVERY_S = 60.0


# Dial refusals in words, for the one log line an operator reads (the reason is the metric label).
_DIAL_WHY = {
    "dial_certificate_not_bound_to_key": "the certificate we were shown is not the one the"
    " peer's genesis key signed for this session (a relay in the middle, or not the validator)",
    "dial_peer_certificate_expired": "the peer's TLS certificate is expired or not yet valid",
    "dial_tls_mismatch": "the peer runs with the other p2p.insecure setting (downgrade refused)",
    "dial_tls_missing": "no TLS session on a TLS link",
    "dial_expected_hello_ack": "the peer answered as another validator or not at all",
    "dial_not_accepted": "the peer did not accept our key",
}


class PeerError(Exception):
    """A request to a peer failed: not connected, disconnected or timed out."""


class HandshakeError(Exception):
    """The handshake failed; ``reason`` is the metric label (``str(exc)``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class P2P:
    def __init__(
        self,
        *,
        index: int,
        key: SigningKey,
        validators: tuple[bytes, ...],
        peers: dict[int, PeerAddress],
        tls: P2PTls | None,
        chain_id: str,
        genesis_hash: bytes,
        on_frame: OnFrame,
        on_request: OnRequest,
        on_peer: OnPeer,
        metrics: Any,
        msg_bytes_max: int,
        send_queue_max: int,
        reconnect_min_ms: int,
        reconnect_max_ms: int,
        handshake_timeout_ms: int,
    ) -> None:
        self.index = index
        self._key = key
        self.validators = validators
        self.addresses = dict(peers)
        self.tls = tls
        self._binding = tls.binding if tls is not None else b""
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash
        self._on_frame = on_frame
        self._on_request = on_request
        self._on_peer = on_peer
        self._metrics = metrics
        self._msg_max = msg_bytes_max
        self._queue_max = send_queue_max
        # Frames are up to msg_bytes_max each, so a count limit alone could hold gigabytes.
        self._queue_bytes = max(QUEUE_BYTES_MIN, 4 * msg_bytes_max)
        self._backoff = (reconnect_min_ms / 1000, reconnect_max_ms / 1000)
        self._hs_timeout = handshake_timeout_ms / 1000
        self._conns: dict[int, PeerConn] = {}
        self._changed = {i: asyncio.Event() for i in range(len(validators))}
        # request id -> (peer asked, future): only that peer's answer resolves it
        self._pending: dict[int, tuple[int, asyncio.Future[dict[str, Any]]]] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._rng = random.Random(os.urandom(8))
        self._closing = False
        self._dial_reported: dict[int, str] = {}  # peer -> dial refusal last logged as warning
        self._accept_reported: dict[str, float] = {}  # reason -> loop time of its last warning

    # --- public ---------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/p2p", self._accept)]

    def start(self) -> None:
        # No DNS cache: a peer's name is resolved again on every dial, so a moved validator is
        # found as soon as its name points to the new address.
        connector = aiohttp.TCPConnector(
            use_dns_cache=False, ssl=self.tls.client if self.tls is not None else False
        )
        self._session = aiohttp.ClientSession(connector=connector)
        for j in range(len(self.validators)):
            if j != self.index and j in self.addresses:
                self._spawn(self._dial_loop(j), f"p2p-dial-{j}")

    async def close(self) -> None:
        self._closing = True
        for t in list(self._tasks):
            t.cancel()
        # In parallel: each close may wait up to its timeout for a slow peer.
        await asyncio.gather(*(c.close() for c in list(self._conns.values())))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        for _, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(PeerError("closing"))

    def peers(self) -> list[int]:
        return sorted(self._conns)

    def send(self, to: int, msg: dict[str, Any]) -> bool:
        conn = self._conns.get(to)
        if conn is None:
            return False
        frame = encode_frame(msg)
        ok = conn.enqueue(frame)
        self._sent(ok, frame_label(msg), len(frame))
        return ok

    def broadcast(self, msg: dict[str, Any]) -> None:
        frame = encode_frame(msg)
        label = frame_label(msg)
        for conn in list(self._conns.values()):
            self._sent(conn.enqueue(frame), label, len(frame))

    async def request(
        self, to: int, kind: str, body: dict[str, Any], timeout_s: float
    ) -> dict[str, Any]:
        """Ask peer ``to`` and wait for its answer; PeerError when it cannot be had in time."""
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (to, fut)
        try:
            if not self.send(to, {"t": "req", "id": rid, "kind": kind, "body": body}):
                raise PeerError(f"peer {to} not connected")
            async with asyncio.timeout(timeout_s):
                return await fut
        except TimeoutError:
            raise PeerError(f"peer {to} did not answer {kind} in time") from None
        finally:
            self._pending.pop(rid, None)

    # --- connections ----------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("p2p_task_failed", exc_info=task.exception())

    def _count(self, direction: str, kind: str, size: int) -> None:
        with contextlib.suppress(Exception):
            self._metrics.count_frame(direction, kind, size)

    def _sent(self, ok: bool, kind: str, size: int) -> None:
        if ok:
            self._count("out", kind, size)
        else:
            with contextlib.suppress(Exception):
                self._metrics.count_dropped_frame(kind)

    def _count_reject(self, reason: str) -> None:
        with contextlib.suppress(Exception):
            self._metrics.p2p_rejected_total.labels(reason=reason).inc()

    def _reject(self, reason: str, peer: int | None = None) -> None:
        self._count_reject(reason)
        log.warning("peer_misbehaving", extra={"peer": peer, "reason": reason})

    def _accept_failed(self, reason: str, remote: str | None) -> None:
        """A refused inbound handshake: counted always, one warning per reason a minute (a
        stranger redialing cannot flood the log), the rest at debug."""
        self._count_reject(reason)
        now = asyncio.get_running_loop().time()
        fields = {"peer": None, "remote": remote, "reason": reason}
        if now - self._accept_reported.get(reason, -ACCEPT_WARN_EVERY_S) < ACCEPT_WARN_EVERY_S:
            log.debug("peer_misbehaving", extra=fields)
            return
        self._accept_reported[reason] = now
        log.warning("peer_misbehaving", extra=fields)

    def _dial_failed(self, j: int, reason: str, detail: str) -> None:
        """A dial to peer j refused for ``reason``: counted every time, logged as one warning
        line (with the address and the cause in words) until the reason changes or a link is
        made, so a misconfigured peer does not flood the log at every redial."""
        with contextlib.suppress(Exception):
            self._metrics.p2p_rejected_total.labels(reason=reason).inc()
        fields = {"peer": j, "address": str(self.addresses[j]), "reason": reason, "why": detail}
        if self._dial_reported.get(j) == reason:
            log.debug("peer_misbehaving", extra=fields)
            return
        self._dial_reported[j] = reason
        log.warning("peer_misbehaving", extra=fields)

    async def _speaks_tls(self, j: int) -> bool:
        """Whether peer j completes a TLS handshake (asked after a plain dial was cut off)."""
        addr = self.addresses[j]
        try:
            async with asyncio.timeout(self._hs_timeout):
                _, writer = await asyncio.open_connection(
                    addr.host.strip("[]"), addr.port, ssl=client_context()
                )
        except (OSError, TimeoutError, ssl.SSLError):
            return False
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        return True

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=self._msg_max, heartbeat=HEARTBEAT_S)
        await ws.prepare(request)
        try:
            async with asyncio.timeout(self._hs_timeout):
                peer = await self._handshake_accept(ws)
        except (HandshakeError, BadFrame, TimeoutError) as exc:
            reason = getattr(exc, "reason", "timeout")
            if reason == "closed":
                # The dialer hung up mid-handshake (it refused us, or a relay did): its side
                # logs why; here it is only counted.
                self._count_reject("handshake_aborted")
            else:
                self._accept_failed(f"handshake_{reason}", request.remote)
            await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION)
            return ws
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            # The stranger went away mid-handshake (send on a closing socket): nothing to serve.
            self._reject("handshake_aborted")
            await ws.close()
            return ws
        if peer is None:
            await ws.close()
            return ws
        await self._serve(peer)
        return ws

    async def _recv(self, ws: WebSocket) -> dict[str, Any]:
        msg = await ws.receive()
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            raise HandshakeError("closed")  # e.g. the other side kept a duplicate connection
        if msg.type != WSMsgType.BINARY:
            raise BadFrame("not_binary")
        return decode_frame(msg.data, self._msg_max)

    async def _handshake_accept(self, ws: web.WebSocketResponse) -> PeerConn | None:
        hello = await self._recv(ws)
        if hello["t"] != "hello":
            raise HandshakeError("expected_hello")
        if hello["tls"] != (self.tls is not None):
            raise HandshakeError("tls_mismatch")  # e.g. a downgrade to plain ws:// attempted
        j = hello["index"]
        if hello["chain_id"] != self.chain_id or hello["genesis"] != self.genesis_hash:
            raise HandshakeError("wrong_chain")
        if not 0 <= j < len(self.validators) or j == self.index:
            raise HandshakeError("unknown_validator")
        if len(hello["challenge"]) != CHALLENGE_BYTES:
            raise HandshakeError("bad_challenge")
        mine = os.urandom(CHALLENGE_BYTES)
        binding = self._binding
        sig = sign_challenge(
            self._key, self.chain_id, self.genesis_hash, hello["challenge"], self.index, j, binding
        )
        await ws.send_bytes(
            encode_frame(
                {
                    "t": "hello_ack",
                    "index": self.index,
                    "challenge": mine,
                    "sig": sig,
                    "tls": self.tls is not None,
                }
            )
        )
        auth = await self._recv(ws)
        if auth["t"] != "auth" or not check_challenge(
            self.validators[j],
            self.chain_id,
            self.genesis_hash,
            mine,
            j,
            self.index,
            auth["sig"],
            binding,
        ):
            # A valid key over another certificate: a relay terminated TLS in the middle.
            raise HandshakeError("bad_signature_or_binding")
        conn = PeerConn(j, ws, dialer=j, queue_max=self._queue_max, bytes_max=self._queue_bytes)
        if not self._register(conn):
            return None
        await ws.send_bytes(encode_frame({"t": "ok"}))
        return conn

    def _dial_binding(self, ws: aiohttp.ClientWebSocketResponse) -> bytes:
        """The fingerprint of the certificate the acceptor showed us (checked in date)."""
        if self.tls is None:
            return b""
        sslobj = ws.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der:
            raise HandshakeError("tls_missing")
        try:
            check_validity(der, "peer")
        except TlsError:
            raise HandshakeError("peer_certificate_expired") from None
        return fingerprint(der)

    async def _handshake_dial(self, ws: aiohttp.ClientWebSocketResponse, j: int) -> PeerConn | None:
        binding = self._dial_binding(ws)
        mine = os.urandom(CHALLENGE_BYTES)
        await ws.send_bytes(
            encode_frame(
                {
                    "t": "hello",
                    "chain_id": self.chain_id,
                    "genesis": self.genesis_hash,
                    "index": self.index,
                    "challenge": mine,
                    "tls": self.tls is not None,
                }
            )
        )
        ack = await self._recv(ws)
        if ack["t"] != "hello_ack" or ack["index"] != j:
            raise HandshakeError("expected_hello_ack")
        if ack["tls"] != (self.tls is not None):
            raise HandshakeError("tls_mismatch")
        if len(ack["challenge"]) != CHALLENGE_BYTES or not check_challenge(
            self.validators[j],
            self.chain_id,
            self.genesis_hash,
            mine,
            j,
            self.index,
            ack["sig"],
            binding,
        ):
            # Not its key, or its key over another certificate than the one we were shown.
            raise HandshakeError("certificate_not_bound_to_key")
        sig = sign_challenge(
            self._key, self.chain_id, self.genesis_hash, ack["challenge"], self.index, j, binding
        )
        await ws.send_bytes(encode_frame({"t": "auth", "sig": sig}))
        ok = await self._recv(ws)
        if ok["t"] != "ok":
            raise HandshakeError("not_accepted")
        conn = PeerConn(
            j, ws, dialer=self.index, queue_max=self._queue_max, bytes_max=self._queue_bytes
        )
        return conn if self._register(conn) else None

    def _register(self, conn: PeerConn) -> bool:
        """Install a new connection unless a preferred one to the same peer already exists."""
        j = conn.index
        low = min(j, self.index)
        old = self._conns.get(j)
        if old is not None and not old.closed.is_set():
            if old.dialer == low and conn.dialer != low:
                return False  # keep the connection dialed by the lower index
            self._spawn(old.close(), f"p2p-close-{j}")
        if self._closing:
            return False
        self._conns[j] = conn
        conn.start_writer()
        self._changed[j].set()
        self._peers_gauge()
        log.info("peer_connected", extra={"peer": j, "dialer": conn.dialer})
        self._on_peer(j, True)
        return True

    def _peers_gauge(self) -> None:
        with contextlib.suppress(Exception):
            self._metrics.p2p_peers.set(len(self._conns))

    async def _serve(self, conn: PeerConn) -> None:
        """Read frames until the socket ends or the peer misbehaves."""
        ws = conn.ws
        try:
            while not conn.closed.is_set():
                msg = await ws.receive()
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                    break
                if msg.type == WSMsgType.ERROR:
                    self._reject("socket_error", conn.index)
                    break
                try:
                    if msg.type != WSMsgType.BINARY:
                        raise BadFrame("not_binary")
                    frame = decode_frame(msg.data, self._msg_max)
                except BadFrame as exc:
                    self._reject(exc.reason, conn.index)
                    break
                kind = frame["t"]
                self._count("in", frame_label(frame), len(msg.data))
                if kind == "resp":
                    asked, fut = self._pending.get(frame["id"], (None, None))
                    if fut is not None and asked == conn.index and not fut.done():
                        fut.set_result(frame["body"])
                elif kind == "req":
                    self._take_request(conn, frame)
                elif kind in ("hello", "hello_ack", "auth", "ok"):
                    continue  # handshake frames after the handshake: nothing to do
                else:
                    try:
                        await self._on_frame(conn.index, frame)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - a peer's frame never kills the link task
                        log.info(
                            "peer_frame_failed", extra={"peer": conn.index, "error": repr(exc)}
                        )
                        self._reject("bad_content", conn.index)
                        break
        finally:
            await conn.close()
            if self._conns.get(conn.index) is conn:
                del self._conns[conn.index]
                self._changed[conn.index].set()
                self._peers_gauge()
                log.info("peer_disconnected", extra={"peer": conn.index})
                self._on_peer(conn.index, False)

    def _take_request(self, conn: PeerConn, frame: dict[str, Any]) -> None:
        if conn.requests_inflight >= REQUESTS_INFLIGHT_MAX:
            with contextlib.suppress(Exception):
                self._metrics.p2p_rejected_total.labels(reason="request_busy").inc()
            out = encode_frame({"t": "resp", "id": frame["id"], "body": {"error": "busy"}})
            self._sent(conn.enqueue(out), "resp", len(out))
            return
        conn.requests_inflight += 1
        self._spawn(self._answer(conn, frame), "p2p-answer")

    async def _answer(self, conn: PeerConn, frame: dict[str, Any]) -> None:
        try:
            body = await self._on_request(conn.index, frame["kind"], frame["body"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad request is answered, never fatal
            log.info("p2p_request_failed", extra={"peer": conn.index, "error": repr(exc)})
            body = {"error": type(exc).__name__}
        finally:
            conn.requests_inflight -= 1
        out = encode_frame({"t": "resp", "id": frame["id"], "body": body})
        self._sent(conn.enqueue(out), "resp", len(out))

    async def _dial_loop(self, j: int) -> None:
        delay = self._backoff[0]
        url = self.addresses[j].url(self.tls is not None)
        assert self._session is not None
        while not self._closing:
            conn = self._conns.get(j)
            if conn is not None and not conn.closed.is_set():
                self._changed[j].clear()
                await self._changed[j].wait()
                delay = self._backoff[0]
                continue
            conn = None
            try:
                async with asyncio.timeout(self._hs_timeout):
                    ws = await self._session.ws_connect(
                        url, max_msg_size=self._msg_max, heartbeat=HEARTBEAT_S
                    )
                    try:
                        conn = await self._handshake_dial(ws, j)
                    finally:
                        if conn is None:
                            await ws.close()
            except asyncio.CancelledError:
                raise
            except HandshakeError as exc:
                if str(exc) != "closed":
                    reason = f"dial_{exc}"
                    self._dial_failed(j, reason, _DIAL_WHY.get(reason, "handshake refused"))
            except BadFrame as exc:
                self._dial_failed(j, f"dial_{exc.reason}", "the peer sent a malformed frame")
            except aiohttp.ClientSSLError as exc:
                why = f"TLS handshake failed ({exc.__class__.__name__}): does the peer run with"
                self._dial_failed(j, "dial_tls_failed", f"{why} p2p.insecure = true?")
            except aiohttp.ServerDisconnectedError:
                # A TLS listener drops a plain HTTP request without a word: ask it in TLS.
                if self.tls is None and await self._speaks_tls(j):
                    why = (
                        "the peer requires TLS but p2p.insecure = true here: refusing to downgrade"
                    )
                    self._dial_failed(j, "dial_peer_requires_tls", why)
            except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError):
                pass  # peer down, or its socket closed mid-handshake: retry after the back-off
            if conn is not None:
                delay = self._backoff[0]
                self._dial_reported.pop(j, None)
                await self._serve(conn)
                continue
            # Jitter spreads reconnect storms after a peer restarts.
            await asyncio.sleep(delay * (0.5 + self._rng.random()))
            delay = min(delay * 2, self._backoff[1])
