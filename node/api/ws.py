"""WebSocket subscriptions at ``/ws``: new blocks and a transaction's status changes.

Each connection has one bounded outgoing queue. Events are pushed into it from the service's
callback without waiting; when it is full the subscriber cannot keep up, and it is closed with
close code 1008 and a reason instead of letting memory grow (a stalled reader would otherwise
pin every event forever). Messages are JSON-RPC 2.0 (see docs/rpc.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from node.api import ethjson
from node.api.eth import ETH_METHODS, LogFilter
from node.api.params import HASH_BYTES, bind_params, hex_bytes, parse_json, response
from node.api.service import Event, NodeService
from node.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    OVERLOADED,
    PARSE_ERROR,
    VigilError,
)

log = logging.getLogger(__name__)

CLOSE_SLOW_CONSUMER = WSCloseCode.POLICY_VIOLATION  # 1008
_parse_hash = hex_bytes(HASH_BYTES)


@dataclass(frozen=True, slots=True)
class WsConfig:
    queue_max: int = 256  # outgoing messages per connection before it counts as too slow
    msg_bytes_max: int = 64 * 1024  # incoming message size limit
    subscriptions_max: int = 64  # per connection
    connections_max: int = 256
    close_timeout_s: float = 2.0
    heartbeat_s: float = 30.0
    lookup_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Subscription:
    topic: str  # "blocks" or "tx"; eth_subscribe's "newHeads" or "logs"
    tx_hash: str | None  # lower-case 0x hex for topic "tx"
    log_filter: LogFilter | None = None  # for "logs"


ETH_TOPICS = ("newHeads", "logs")


class _Connection:
    """One websocket client: its subscriptions, its bounded queue and its writer."""

    def __init__(self, ws: web.WebSocketResponse, hub: WsHub) -> None:
        self.ws = ws
        self.hub = hub
        self.cfg = hub.cfg
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=self.cfg.queue_max)
        self.subs: dict[str, Subscription] = {}
        self.next_id = 1
        self.closing: asyncio.Task[None] | None = None
        # Heights of committed blocks for eth_subscribe subscribers, read off the loop in order.
        self.eth_heights: asyncio.Queue[int] = asyncio.Queue(maxsize=self.cfg.queue_max)

    # --- outgoing ---

    def push(self, text: str) -> None:
        if self.closing is not None:
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.too_slow()

    def too_slow(self) -> None:
        if self.closing is None:
            reason = f"subscriber too slow: {self.cfg.queue_max} messages queued"
            log.info("ws_slow_consumer_closed", extra={"queue_max": self.cfg.queue_max})
            self.closing = asyncio.get_running_loop().create_task(
                self.close(CLOSE_SLOW_CONSUMER, reason)
            )

    def on_event(self, event: Event) -> None:
        """Service callback: runs on the loop and must not block."""
        kind = event.get("type")
        height = event.get("height")
        if kind == "block" and isinstance(height, int) and self._has_eth_subs():
            try:
                self.eth_heights.put_nowait(height)
            except asyncio.QueueFull:
                self.too_slow()
        for sub_id, sub in self.subs.items():
            if (kind == "block" and sub.topic == "blocks") or (
                kind == "tx"
                and sub.topic == "tx"
                and str(event.get("hash", "")).lower() == sub.tx_hash
            ):
                self.push(_notification(sub_id, event))

    def _has_eth_subs(self) -> bool:
        return any(sub.topic in ETH_TOPICS for sub in self.subs.values())

    async def eth_feed_loop(self) -> None:
        """newHeads and logs notifications, one committed block at a time, in height order."""
        backend = getattr(self.hub.service, "eth", None)
        while True:
            height = await self.eth_heights.get()
            if backend is None or not self._has_eth_subs():
                continue
            view = await backend.block(height)
            if view is None:
                continue
            logs = ethjson.block_logs(view.block, view.receipts)
            head: dict[str, Any] | None = None
            for sub_id, sub in list(self.subs.items()):
                if sub.topic == "newHeads":
                    if head is None:
                        chain = 0  # newHeads carries no transactions: the chain id is unused
                        head = ethjson.block_object(
                            view.block, view.receipts, view.miner, chain, False
                        )
                        head.pop("transactions", None)
                        head.pop("uncles", None)
                    self.push(_eth_notification(sub_id, head))
                elif sub.topic == "logs" and sub.log_filter is not None:
                    for entry in logs:
                        if sub.log_filter.matches(entry):
                            self.push(_eth_notification(sub_id, entry))

    async def write_loop(self) -> None:
        while True:
            text = await self.queue.get()
            await self.ws.send_str(text)

    async def close(self, code: int, reason: str) -> None:
        try:
            async with asyncio.timeout(self.cfg.close_timeout_s):
                await self.ws.close(code=code, message=reason.encode()[:120])
        except TimeoutError:
            # A peer that reads nothing cannot take a close frame either: drop the socket.
            transport = self.hub.transports.get(id(self.ws))
            if transport is not None:
                transport.abort()

    # --- incoming ---

    async def handle_text(self, data: str) -> None:
        try:
            req = parse_json(data.encode())
        except ValueError:
            self.push(response(None, error={"code": PARSE_ERROR, "message": "parse error"}))
            return
        if not isinstance(req, dict) or req.get("jsonrpc") != "2.0":
            err = {"code": INVALID_REQUEST, "message": "expected a JSON-RPC 2.0 request object"}
            self.push(response(None, error=err))
            return
        id_ = req.get("id")
        if isinstance(id_, bool) or not (id_ is None or isinstance(id_, str | int | float)):
            err = {"code": INVALID_REQUEST, "message": "id must be a string, number or null"}
            self.push(response(None, error=err))
            return
        try:
            result = await self._dispatch(req.get("method"), req.get("params"))
        except asyncio.CancelledError:
            raise
        except VigilError as exc:
            if "id" in req:
                self.push(response(id_, error={"code": exc.code, "message": exc.message}))
            return
        except Exception:  # boundary: no stack trace to the client
            log.exception("ws_internal_error")
            if "id" in req:
                self.push(
                    response(id_, error={"code": INTERNAL_ERROR, "message": "internal error"})
                )
            return
        if "id" in req:
            self.push(response(id_, result=result))
        if isinstance(result, str) and self.subs.get(result, None) is not None:
            await self._push_current_status(result)

    async def _dispatch(self, method: Any, params: Any) -> Any:
        if method == "subscribe":
            return self._subscribe(params)
        if method == "unsubscribe":
            return self._unsubscribe(params)
        if method == "eth_subscribe":
            return self._eth_subscribe(params)
        if method == "eth_unsubscribe":
            return self._unsubscribe(params)
        eth = ETH_METHODS.get(method) if isinstance(method, str) else None
        if eth is not None:  # ethers' WebSocketProvider sends every call over the socket
            return await eth.call(self.hub.service, bind_params(eth, params))
        raise VigilError(METHOD_NOT_FOUND, "method not found (use subscribe or unsubscribe)")

    def _eth_subscribe(self, params: Any) -> str:
        if not isinstance(params, list) or not params or params[0] not in ETH_TOPICS:
            raise VigilError(INVALID_PARAMS, 'expected ["newHeads"] or ["logs", filter]')
        if params[0] == "logs":
            obj = params[1] if len(params) > 1 else {}
            if not isinstance(obj, dict):
                raise VigilError(INVALID_PARAMS, "logs: expected a filter object")
            sub = Subscription("logs", None, LogFilter.parse(obj))
        else:
            sub = Subscription("newHeads", None)
        if len(self.subs) >= self.cfg.subscriptions_max:
            raise VigilError(
                OVERLOADED, f"at most {self.cfg.subscriptions_max} subscriptions per connection"
            )
        sub_id = "0x" + secrets.token_hex(16)
        self.subs[sub_id] = sub
        return sub_id

    def _subscribe(self, params: Any) -> str:
        if isinstance(params, list):
            params = dict(zip(("topic", "hash"), params, strict=False))
        if not isinstance(params, dict):
            raise VigilError(INVALID_PARAMS, 'topic: expected "blocks" or "tx"')
        topic = params.get("topic")
        if topic == "blocks":
            sub = Subscription("blocks", None)
        elif topic == "tx":
            sub = Subscription("tx", "0x" + _parse_hash(params.get("hash"), "hash").hex())
        else:
            raise VigilError(INVALID_PARAMS, 'topic: expected "blocks" or "tx"')
        if len(self.subs) >= self.cfg.subscriptions_max:
            raise VigilError(
                OVERLOADED, f"at most {self.cfg.subscriptions_max} subscriptions per connection"
            )
        sub_id = str(self.next_id)
        self.next_id += 1
        self.subs[sub_id] = sub
        return sub_id

    def _unsubscribe(self, params: Any) -> bool:
        if isinstance(params, list) and len(params) == 1:
            sub_id = params[0]
        elif isinstance(params, dict):
            sub_id = params.get("subscription")
        else:
            sub_id = None
        if not isinstance(sub_id, str):
            raise VigilError(INVALID_PARAMS, "subscription: expected a subscription id string")
        return self.subs.pop(sub_id, None) is not None

    async def _push_current_status(self, sub_id: str) -> None:
        """A tx may have changed status before the subscription: send where it stands now."""
        sub = self.subs[sub_id]
        if sub.topic != "tx" or sub.tx_hash is None:
            return
        try:
            async with asyncio.timeout(self.cfg.lookup_timeout_s):
                info = await self.hub.service.tx_get(bytes.fromhex(sub.tx_hash[2:]))
        except (VigilError, TimeoutError):
            return
        event = {"type": "tx", "hash": sub.tx_hash, "status": info.get("status")}
        for key in ("blocked_by", "reason"):
            if info.get(key) is not None:
                event[key] = info[key]
        self.push(_notification(sub_id, event))


def _eth_notification(sub_id: str, result: Any) -> str:
    params = {"subscription": sub_id, "result": result}
    return json.dumps(
        {"jsonrpc": "2.0", "method": "eth_subscription", "params": params}, separators=(",", ":")
    )


def _notification(sub_id: str, event: Event) -> str:
    params = {"subscription": sub_id, "result": event}
    return json.dumps(
        {"jsonrpc": "2.0", "method": "subscription", "params": params}, separators=(",", ":")
    )


class WsHub:
    """Accepts websocket connections for one RPC app and closes them all at shutdown."""

    def __init__(self, service: NodeService, cfg: WsConfig) -> None:
        self.service = service
        self.cfg = cfg
        self.conns: set[_Connection] = set()
        self.transports: dict[int, asyncio.Transport] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if len(self.conns) >= self.cfg.connections_max:
            return web.json_response(
                {"error": {"code": OVERLOADED, "message": "too many websocket connections"}},
                status=503,
            )
        ws = web.WebSocketResponse(
            max_msg_size=self.cfg.msg_bytes_max, heartbeat=self.cfg.heartbeat_s
        )
        await ws.prepare(request)
        conn = _Connection(ws, self)
        self.conns.add(conn)
        if request.transport is not None:
            self.transports[id(ws)] = request.transport
        unsubscribe = self.service.subscribe(conn.on_event)
        writer = asyncio.get_running_loop().create_task(conn.write_loop())
        feeder = asyncio.get_running_loop().create_task(conn.eth_feed_loop())
        try:
            async for msg in ws:
                if conn.closing is not None:
                    break
                if msg.type == WSMsgType.TEXT:
                    await conn.handle_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await conn.close(WSCloseCode.UNSUPPORTED_DATA, "text JSON messages only")
                    break
        finally:
            unsubscribe()
            writer.cancel()
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeder
            if conn.closing is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await conn.closing
            elif not ws.closed:
                await conn.close(WSCloseCode.GOING_AWAY, "server closing")
            self.conns.discard(conn)
            self.transports.pop(id(ws), None)
        return ws

    async def on_shutdown(self, app: web.Application) -> None:
        for conn in list(self.conns):
            if conn.closing is None:
                await conn.close(WSCloseCode.GOING_AWAY, "server shutting down")
