"""Hostile input against the RPC edge: huge bodies, slow and many connections, garbage.

Each test checks the answer values and that an honest client is still served afterwards (and
while the abuse is going on). Latencies are printed (``pytest -s``), never asserted.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from node import errors
from node.api.rpc import make_rpc_app
from tests.unit.api.test_rpc_fake import FakeService, signed_transfer

STATUS_REQ = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "node_status"}).encode()


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    app = make_rpc_app(FakeService(), admin_token="t", body_bytes_max=1_000_000)
    srv = TestServer(app, host="127.0.0.1")
    async with srv:
        yield srv


async def _status_ok(srv: TestServer) -> float:
    """One honest request; returns its latency in ms after checking the answer."""
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            srv.make_url("/"), data=STATUS_REQ, headers={"Content-Type": "application/json"}
        ) as r,
    ):
        body = await r.json()
    assert body["result"]["height"] == 7
    return (time.perf_counter() - started) * 1000


async def _raw_exchange(srv: TestServer, head: bytes, body_chunks: list[bytes]) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        writer.write(head)
        for chunk in body_chunks:
            if reader.at_eof():
                break
            writer.write(chunk)
            try:
                await writer.drain()
            except ConnectionError:
                break  # the server refused the rest: fine, read its answer
        async with asyncio.timeout(30):
            return await reader.read(65536)
    finally:
        writer.close()


def _status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def test_10mb_body_with_content_length_is_refused_unread(server: TestServer) -> None:
    head = (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000\r\n\r\n"
    )
    started = time.perf_counter()
    # Only 64 KiB of the announced 10 MB is ever sent: the answer must not wait for the rest.
    resp = await _raw_exchange(server, head, [b" " * 65536])
    ms = (time.perf_counter() - started) * 1000
    assert _status_of(resp) == 413
    assert b'"code":-32600' in resp
    print(json.dumps({"test": "10mb_content_length", "answer_ms": round(ms, 1)}))
    await _status_ok(server)


async def test_10mb_chunked_body_is_cut_at_the_limit(server: TestServer) -> None:
    head = (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n" % 65536 + b"[" * 0 + b" " * 65536 + b"\r\n"
    resp = await _raw_exchange(server, head, [chunk] * 160)  # 10 MiB
    assert _status_of(resp) == 413
    await _status_ok(server)


async def test_10mb_body_through_a_client(server: TestServer) -> None:
    data = io.BytesIO(b" " * 10_000_000)
    async with aiohttp.ClientSession() as s:
        try:
            async with s.post(
                server.make_url("/"), data=data, headers={"Content-Type": "application/json"}
            ) as r:
                status = r.status
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            status = 413  # server closed mid-upload after answering; also a refusal
    assert status == 413
    await _status_ok(server)


async def test_garbage_and_deep_nesting_keep_the_server_healthy(server: TestServer) -> None:
    bad = [
        b"\x00" * 1000,
        b"[" * 500_000,
        b'{"jsonrpc":"2.0","id":1,"method":"tx_submit","params":["0xzz"]}',
        b'{"jsonrpc":"2.0","id":1,"method":"tx_submit","params":["0x' + b"00" * 300 + b'"]}',
        b'{"jsonrpc":"2.0","id":1,"method":"tx_get","params":[' + b"9" * 5000 + b"]}",
    ]
    codes = []
    async with aiohttp.ClientSession() as s:
        for raw in bad:
            async with s.post(
                server.make_url("/"), data=raw, headers={"Content-Type": "application/json"}
            ) as r:
                assert r.status == 200
                codes.append((await r.json())["error"]["code"])
    assert codes == [
        errors.PARSE_ERROR,
        errors.PARSE_ERROR,
        errors.INVALID_PARAMS,
        errors.TX_INVALID,
        errors.PARSE_ERROR,
    ]
    await _status_ok(server)


async def test_bad_signature_batch(server: TestServer) -> None:
    batch = []
    for nonce in range(50):
        raw = bytearray(signed_transfer(nonce).encode())
        raw[-5] ^= 0xFF
        batch.append(
            {"jsonrpc": "2.0", "id": nonce, "method": "tx_submit", "params": ["0x" + raw.hex()]}
        )
    async with aiohttp.ClientSession() as s, s.post(server.make_url("/"), json=batch) as r:
        body = await r.json()
    assert len(body) == 50
    assert {item["error"]["code"] for item in body} == {errors.TX_INVALID}
    await _status_ok(server)


async def test_200_concurrent_connections(server: TestServer) -> None:
    # 200 slow clients that never finish their headers, plus 200 honest clients at once.
    slow = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(200)]
    for _, writer in slow:
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: applic")
    try:
        latencies = await asyncio.gather(*(_status_ok(server) for _ in range(200)))
    finally:
        for _, writer in slow:
            writer.close()
    assert len(latencies) == 200
    latencies.sort()
    print(
        json.dumps(
            {
                "test": "200_concurrent",
                "slow_connections": 200,
                "honest_requests": 200,
                "p50_ms": round(latencies[100], 1),
                "max_ms": round(latencies[-1], 1),
            }
        )
    )
    await _status_ok(server)


async def test_request_limit_answers_overloaded() -> None:
    svc = FakeService()
    svc.slow_s = 0.5
    app = make_rpc_app(svc, admin_token=None, connections_max=3, request_timeout_s=5)
    req = {"jsonrpc": "2.0", "id": 1, "method": "detector_status"}
    async with TestServer(app, host="127.0.0.1") as srv:

        async def one() -> tuple[int, int | None]:
            async with aiohttp.ClientSession() as s, s.post(srv.make_url("/"), json=req) as r:
                body = await r.json()
                return r.status, body.get("error", {}).get("code")

        results = await asyncio.gather(*(one() for _ in range(10)))
        svc.slow_s = 0.0
        assert await one() == (200, None)
    assert results.count((200, None)) >= 3
    assert (503, errors.OVERLOADED) in results
    assert all(r in ((200, None), (503, errors.OVERLOADED)) for r in results)
