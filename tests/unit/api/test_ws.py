"""WebSocket subscriptions: ordered block events, tx status, bounded queues, slow consumers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from node import errors
from node.api.rpc import make_rpc_app
from node.api.ws import WsConfig
from tests.unit.api.test_rpc_fake import FakeService, signed_transfer


@pytest.fixture
async def env() -> AsyncIterator[tuple[FakeService, TestServer]]:
    svc = FakeService()
    app = make_rpc_app(svc, admin_token=None, ws_config=WsConfig(queue_max=16))
    srv = TestServer(app, host="127.0.0.1")
    async with srv:
        yield svc, srv


async def _rpc(ws: aiohttp.ClientWebSocketResponse, id_: Any, method: str, params: Any) -> Any:
    await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params}))
    return json.loads((await ws.receive(timeout=10)).data)


async def _wait(cond: Any, what: str) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _block(height: int, pad: int = 0) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "block", "height": height, "hash": "0x" + "ab" * 32}
    if pad:
        event["pad"] = "x" * pad
    return event


async def test_ten_block_events_in_order(env: tuple[FakeService, TestServer]) -> None:
    svc, srv = env
    async with aiohttp.ClientSession() as s, s.ws_connect(srv.make_url("/ws")) as ws:
        reply = await _rpc(ws, 1, "subscribe", {"topic": "blocks"})
        sub_id = reply["result"]
        assert reply["id"] == 1
        for h in range(1, 11):
            svc.emit(_block(h))
        got = []
        for _ in range(10):
            msg = json.loads((await ws.receive(timeout=10)).data)
            assert msg["method"] == "subscription"
            assert msg["params"]["subscription"] == sub_id
            got.append(msg["params"]["result"]["height"])
        assert got == list(range(1, 11))
        reply = await _rpc(ws, "u", "unsubscribe", [sub_id])
        assert reply == {"jsonrpc": "2.0", "result": True, "id": "u"}
        svc.emit(_block(11))
        reply = await _rpc(ws, 2, "unsubscribe", {"subscription": sub_id})
        assert reply["result"] is False  # and no block 11 notification arrived before it


async def test_tx_topic_gets_current_status_then_changes(
    env: tuple[FakeService, TestServer],
) -> None:
    svc, srv = env
    tx = signed_transfer()
    await svc.tx_submit(tx.encode())
    h = "0x" + tx.hash.hex()
    other = "0x" + "33" * 32
    async with aiohttp.ClientSession() as s, s.ws_connect(srv.make_url("/ws")) as ws:
        sub_id = (await _rpc(ws, 1, "subscribe", ["tx", h.upper().replace("0X", "0x")]))["result"]
        first = json.loads((await ws.receive(timeout=10)).data)
        assert first["params"] == {
            "subscription": sub_id,
            "result": {"type": "tx", "hash": h, "status": "pending"},
        }
        svc.emit({"type": "tx", "hash": other, "status": "committed"})
        svc.emit(_block(8))
        svc.emit({"type": "tx", "hash": h, "status": "committed", "height": 8})
        msg = json.loads((await ws.receive(timeout=10)).data)
        assert msg["params"]["result"]["status"] == "committed"
        assert msg["params"]["result"]["hash"] == h


async def test_ws_errors(env: tuple[FakeService, TestServer]) -> None:
    _, srv = env
    async with aiohttp.ClientSession() as s, s.ws_connect(srv.make_url("/ws")) as ws:
        for bad in ("{nope", '{"jsonrpc":"2.0","id":1e400,"method":"subscribe","params":{}}'):
            await ws.send_str(bad)
            reply = json.loads((await ws.receive(timeout=10)).data)
            assert reply["error"]["code"] == errors.PARSE_ERROR
        r = await _rpc(ws, 1, "subscribe", {"topic": "mempool"})
        assert r["error"]["code"] == errors.INVALID_PARAMS
        r = await _rpc(ws, 2, "subscribe", {"topic": "tx", "hash": "0x12"})
        assert r["error"]["code"] == errors.INVALID_PARAMS
        assert "hash: expected 0x-prefixed hex of 32 bytes" in r["error"]["message"]
        r = await _rpc(ws, 3, "tx_get", [])
        assert r["error"]["code"] == errors.METHOD_NOT_FOUND
        await ws.send_bytes(b"\x00\x01")
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.UNSUPPORTED_DATA


async def test_subscription_limit() -> None:
    app = make_rpc_app(FakeService(), admin_token=None, ws_config=WsConfig(subscriptions_max=2))
    async with (
        TestServer(app, host="127.0.0.1") as srv,
        aiohttp.ClientSession() as s,
        s.ws_connect(srv.make_url("/ws")) as ws,
    ):
        assert "result" in await _rpc(ws, 1, "subscribe", ["blocks"])
        assert "result" in await _rpc(ws, 2, "subscribe", ["blocks"])
        r = await _rpc(ws, 3, "subscribe", ["blocks"])
        assert r["error"]["code"] == errors.OVERLOADED


async def test_burst_beyond_the_queue_closes_with_a_reason(
    env: tuple[FakeService, TestServer],
) -> None:
    svc, srv = env
    async with aiohttp.ClientSession() as s, s.ws_connect(srv.make_url("/ws")) as ws:
        await _rpc(ws, 1, "subscribe", {"topic": "blocks"})
        for h in range(
            100
        ):  # no await in between: the writer cannot drain, the queue (16) overflows
            svc.emit(_block(h))
        seen = []
        while True:
            msg = await ws.receive(timeout=10)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            seen.append(json.loads(msg.data)["params"]["result"]["height"])
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == 1008
        assert msg.extra == "subscriber too slow: 16 messages queued"
        assert seen == list(range(len(seen)))
        assert len(seen) <= 16
    await _wait(lambda: not svc.callbacks, "unsubscribe of the closed subscriber")


async def _raw_ws_subscriber(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A websocket client on a tiny receive buffer that subscribes and then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    payload = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": ["blocks"]})
    mask = os.urandom(4)
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(payload.encode()))
    writer.write(struct.pack("!BB", 0x81, 0x80 | len(data)) + mask + data)
    await writer.drain()
    return reader, writer


async def test_stalled_subscriber_is_dropped_while_another_keeps_receiving() -> None:
    svc = FakeService()
    app = make_rpc_app(svc, admin_token=None, ws_config=WsConfig(queue_max=32, close_timeout_s=0.5))
    async with TestServer(app, host="127.0.0.1") as srv:
        assert srv.port is not None
        _, stalled = await _raw_ws_subscriber(srv.port)
        async with aiohttp.ClientSession() as s, s.ws_connect(srv.make_url("/ws")) as ws:
            await _rpc(ws, 1, "subscribe", ["blocks"])
            await _wait(lambda: len(svc.callbacks) == 2, "both subscribers")
            # 64 KiB events: a few hundred fill any socket buffer of the stalled reader.
            received = []
            height = 0
            while len(svc.callbacks) == 2 and height < 3000:
                height += 1
                svc.emit(_block(height, pad=65536))
                msg = json.loads((await ws.receive(timeout=10)).data)
                received.append(msg["params"]["result"]["height"])
            assert len(svc.callbacks) == 1, "the stalled subscriber was never dropped"
            for _ in range(5):  # the live one keeps receiving afterwards
                height += 1
                svc.emit(_block(height))
                msg = json.loads((await ws.receive(timeout=10)).data)
                received.append(msg["params"]["result"]["height"])
            assert received == list(range(1, height + 1))
            print(json.dumps({"test": "stalled_subscriber", "events_until_dropped": height - 5}))
        stalled.close()
