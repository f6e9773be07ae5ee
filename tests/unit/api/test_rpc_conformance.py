"""JSON-RPC 2.0 conformance of node/api/rpc.py against a fake NodeService over a real socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from node import errors
from node.api.rpc import make_rpc_app
from tests.unit.api.test_rpc_fake import FakeService, signed_transfer

TOKEN = "s3cret-token"


@dataclass
class Rpc:
    svc: FakeService
    url: str
    session: aiohttp.ClientSession
    server: TestServer

    async def post(self, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        async with self.session.post(self.url, data=data, headers=hdrs) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None)

    async def call(self, method: str, params: Any = None, id_: Any = 1, **kw: Any) -> Any:
        req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id_}
        if params is not None:
            req["params"] = params
        status, body = await self.post(req, **kw)
        assert status == 200
        return body


@pytest.fixture
async def rpc() -> AsyncIterator[Rpc]:
    svc = FakeService()
    app = make_rpc_app(svc, admin_token=TOKEN, request_timeout_s=0.5, batch_max=10)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Rpc(svc, str(server.make_url("/")), session, server)
    await server.close()


async def test_ids_are_echoed_exactly(rpc: Rpc) -> None:
    for id_ in ("abc", 0, 42, -7, 1.5, None, "", "x" * 100):
        body = await rpc.call("mempool_status", id_=id_)
        assert body["id"] == id_
        assert type(body["id"]) is type(id_)
        assert body["jsonrpc"] == "2.0"
        assert body["result"] == {"size": 0, "bytes": 0, "quarantined": 0}


async def test_rpc_path_alias(rpc: Rpc) -> None:
    url = str(rpc.server.make_url("/rpc"))
    req = {"jsonrpc": "2.0", "id": 3, "method": "node_status"}
    async with rpc.session.post(url, json=req) as resp:
        body = await resp.json()
    assert body["result"]["chain_id"] == "vigil-test"


async def test_positional_and_named_params(rpc: Rpc) -> None:
    addr = "0x" + "ab" * 20
    named = await rpc.call("account_get", {"address": addr})
    positional = await rpc.call("account_get", [addr])
    assert named["result"] == positional["result"] == {"address": addr, "balance": 1000, "nonce": 0}
    assert (await rpc.call("block_get", ["latest"]))["result"]["height"] == 7
    assert (await rpc.call("block_get", {"height": 3}))["result"]["height"] == 3
    assert (await rpc.call("block_get"))["result"]["height"] == 7


async def test_every_method_answers(rpc: Rpc) -> None:
    tx = signed_transfer()
    h = "0x" + tx.hash.hex()
    sub = await rpc.call("tx_submit", {"tx": "0x" + tx.encode().hex()})
    assert sub["result"] == {"hash": h, "status": "pending"}
    got = await rpc.call("tx_get", [h])
    assert got["result"]["hash"] == h
    assert got["result"]["amount"] == 5
    assert (await rpc.call("tx_proof", [h]))["error"]["code"] == errors.NOT_FOUND
    assert (await rpc.call("anchor_get", ["0x" + "00" * 32]))["error"]["code"] == errors.NOT_FOUND
    assert (await rpc.call("node_status"))["result"]["height"] == 7
    assert (await rpc.call("detector_status"))["result"]["threshold"] == 0.7
    assert (await rpc.call("mempool_status"))["result"]["size"] == 1
    auth = {"headers": {"Authorization": f"Bearer {TOKEN}"}}
    assert len((await rpc.call("quarantine_list", **auth))["result"]) == 1
    assert (await rpc.call("quarantine_release", [h], **auth))["result"]["status"] == "pending"
    assert (await rpc.call("quarantine_reject", [h], **auth))["result"]["status"] == "rejected"


@pytest.mark.parametrize(
    ("request_obj", "code"),
    [
        ({"jsonrpc": "2.0", "id": 1, "method": "no_such_method"}, errors.METHOD_NOT_FOUND),
        ({"jsonrpc": "1.0", "id": 1, "method": "node_status"}, errors.INVALID_REQUEST),
        ({"id": 1, "method": "node_status"}, errors.INVALID_REQUEST),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, errors.INVALID_REQUEST),
        (
            {"jsonrpc": "2.0", "id": 1, "method": "node_status", "params": "x"},
            errors.INVALID_REQUEST,
        ),
        ({"jsonrpc": "2.0", "id": [1], "method": "node_status"}, errors.INVALID_REQUEST),
        ({"jsonrpc": "2.0", "id": True, "method": "node_status"}, errors.INVALID_REQUEST),
        ({"jsonrpc": "2.0", "id": 1, "method": "tx_get", "params": []}, errors.INVALID_PARAMS),
        (
            {"jsonrpc": "2.0", "id": 1, "method": "node_status", "params": [1]},
            errors.INVALID_PARAMS,
        ),
        (
            {"jsonrpc": "2.0", "id": 1, "method": "tx_get", "params": {"hsh": 1}},
            errors.INVALID_PARAMS,
        ),
        ({"jsonrpc": "2.0", "id": 1, "method": "mempool_status", "params": {}}, None),
    ],
)
async def test_invalid_requests(rpc: Rpc, request_obj: dict[str, Any], code: int | None) -> None:
    status, body = await rpc.post(request_obj)
    assert status == 200
    if code is None:
        assert "result" in body
    else:
        assert body["error"]["code"] == code
        assert "result" not in body
        assert "Traceback" not in json.dumps(body)


async def test_id_of_an_invalid_request_is_null_when_unreadable(rpc: Rpc) -> None:
    _, body = await rpc.post({"jsonrpc": "2.0", "id": {"a": 1}, "method": "node_status"})
    assert body["id"] is None
    _, body = await rpc.post({"jsonrpc": "1.0", "id": "keep", "method": "node_status"})
    assert body["id"] == "keep"


@pytest.mark.parametrize(
    ("method", "params", "needle"),
    [
        ("tx_get", ["abcd"], "hash: expected 0x-prefixed hex of 32 bytes, missing 0x prefix"),
        ("tx_get", ["0x" + "ab" * 31], "hash: expected 0x-prefixed hex of 32 bytes, got 31 bytes"),
        ("tx_get", ["0x" + "zz" * 32], "invalid hex digits"),
        ("tx_get", ["0xabc"], "odd number of hex digits"),
        ("tx_get", [12], "got number"),
        ("account_get", ["0x" + "ab" * 32], "address: expected 0x-prefixed hex of 20 bytes"),
        ("anchor_get", {}, "digest: missing"),
        ("block_get", [-1], 'height: expected a non-negative integer or "latest"'),
        ("block_get", ["newest"], "height"),
        ("tx_submit", ["0x"], "tx: expected 0x-prefixed hex of 1..1024 bytes, got 0 bytes"),
        ("tx_submit", ["0x" + "00" * 2000], "got more than 1024 bytes"),
        ("tx_get", {"hash": "0x" + "00" * 32, "extra": 1}, "extra: unknown param of tx_get"),
    ],
)
async def test_invalid_params_name_the_param(
    rpc: Rpc, method: str, params: Any, needle: str
) -> None:
    body = await rpc.call(method, params)
    assert body["error"]["code"] == errors.INVALID_PARAMS
    assert needle in body["error"]["message"]


async def test_quarantine_limit_is_checked(rpc: Rpc) -> None:
    auth = {"headers": {"Authorization": f"Bearer {TOKEN}"}}
    body = await rpc.call("quarantine_list", {"limit": 5000}, **auth)
    assert body["error"]["code"] == errors.INVALID_PARAMS
    assert "limit: expected an integer 0..1000" in body["error"]["message"]
    assert (await rpc.call("quarantine_list", [0], **auth))["result"] == []


async def test_bad_signature_is_an_application_error(rpc: Rpc) -> None:
    tx = signed_transfer()
    raw = bytearray(tx.encode())
    raw[-1] ^= 0x01  # last byte of the signature
    body = await rpc.call("tx_submit", ["0x" + raw.hex()])
    assert body["error"] == {"code": errors.TX_INVALID, "message": "bad signature"}
    body = await rpc.call("tx_submit", ["0x" + "c1" * 40])
    assert body["error"]["code"] == errors.TX_INVALID
    assert rpc.svc.txs == {}


async def test_internal_error_has_no_detail(rpc: Rpc) -> None:
    rpc.svc.crash = True
    body = await rpc.call("mempool_status")
    assert body["error"] == {"code": errors.INTERNAL_ERROR, "message": "internal error"}
    assert "passwd" not in json.dumps(body)
    rpc.svc.crash = False
    assert "result" in await rpc.call("mempool_status")


async def test_timeout(rpc: Rpc) -> None:
    rpc.svc.slow_s = 30.0
    body = await rpc.call("detector_status")
    assert body["error"]["code"] == errors.TIMEOUT
    rpc.svc.slow_s = 0.0
    assert "result" in await rpc.call("detector_status")


async def test_batch_mix(rpc: Rpc) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": "a", "method": "node_status"},
        {"jsonrpc": "2.0", "method": "node_status"},  # notification: no answer
        {"jsonrpc": "2.0", "id": 2, "method": "nope"},
        {"jsonrpc": "2.0", "id": None, "method": "tx_get", "params": ["0x12"]},
        1,
        {"foo": "bar"},
        {"jsonrpc": "2.0", "method": "nope"},  # notification of an unknown method: still silent
    ]
    status, body = await rpc.post(batch)
    assert status == 200
    assert isinstance(body, list)
    assert len(body) == 5
    by_id: dict[Any, list[dict[str, Any]]] = {}
    for item in body:
        by_id.setdefault(item["id"], []).append(item)
    assert by_id["a"][0]["result"]["chain_id"] == "vigil-test"
    assert by_id[2][0]["error"]["code"] == errors.METHOD_NOT_FOUND
    null_codes = sorted(item["error"]["code"] for item in by_id[None])
    assert null_codes == sorted(
        [errors.INVALID_PARAMS, errors.INVALID_REQUEST, errors.INVALID_REQUEST]
    )


async def test_empty_batch_is_one_invalid_request(rpc: Rpc) -> None:
    status, body = await rpc.post([])
    assert status == 200
    assert body == {
        "jsonrpc": "2.0",
        "error": {"code": errors.INVALID_REQUEST, "message": "empty batch"},
        "id": None,
    }


async def test_batch_of_notifications_has_no_body(rpc: Rpc) -> None:
    tx = signed_transfer()
    batch = [
        {"jsonrpc": "2.0", "method": "node_status"},
        {"jsonrpc": "2.0", "method": "tx_submit", "params": ["0x" + tx.encode().hex()]},
    ]
    status, body = await rpc.post(batch)
    assert (status, body) == (204, None)
    assert tx.hash in rpc.svc.txs  # notifications are still executed
    status, body = await rpc.post({"jsonrpc": "2.0", "method": "node_status"})
    assert (status, body) == (204, None)


async def test_batch_limit(rpc: Rpc) -> None:
    batch = [{"jsonrpc": "2.0", "id": i, "method": "node_status"} for i in range(11)]
    _, body = await rpc.post(batch)
    assert body["error"]["code"] == errors.INVALID_REQUEST
    assert "limit of 10" in body["error"]["message"]
    _, body = await rpc.post(batch[:10])
    assert sorted(item["id"] for item in body) == list(range(10))


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"not json",
        b'{"jsonrpc": "2.0", "id": NaN, "method": "x"}',
        b'{"jsonrpc": "2.0", "id": 1e400, "method": "node_status"}',
        b'[{"jsonrpc": "2.0", "id": 1e400, "method": "node_status"},'
        b' {"jsonrpc": "2.0", "id": 2, "method": "node_status"}]',
        b"\xff\xfe",
        b"",
    ],
)
async def test_parse_errors(rpc: Rpc, raw: bytes) -> None:
    status, body = await rpc.post(raw)
    assert status == 200
    assert body["error"]["code"] == errors.PARSE_ERROR
    assert body["id"] is None


async def test_deep_nesting_is_rejected(rpc: Rpc) -> None:
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50 + b"1" + b"}" * 50):
        status, body = await rpc.post(raw)
        assert status == 200
        assert body["error"]["code"] == errors.PARSE_ERROR
        assert "nesting" in body["error"]["message"]
    # brackets inside strings do not count
    _, body = await rpc.post({"jsonrpc": "2.0", "id": "[" * 100, "method": "node_status"})
    assert body["id"] == "[" * 100


async def test_wrong_content_type_and_get(rpc: Rpc) -> None:
    req = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "node_status"})
    async with rpc.session.post(rpc.url, data=req, headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 415
        assert (await r.json())["error"]["code"] == errors.INVALID_REQUEST
    async with rpc.session.get(rpc.url) as r:
        assert r.status == 405
        assert r.headers["Allow"] == "POST"
        assert (await r.json())["error"]["code"] == errors.INVALID_REQUEST
    async with rpc.session.put(rpc.url, data=req) as r:
        assert r.status == 405


async def test_health_and_ready(rpc: Rpc) -> None:
    base = rpc.server.make_url
    async with rpc.session.get(base("/health")) as r:
        assert r.status == 200
        assert await r.json() == {"height": 7, "syncing": False, "peers": 3}
    async with rpc.session.get(base("/ready")) as r:
        assert r.status == 200
    rpc.svc.is_ready = False
    async with rpc.session.get(base("/ready")) as r:
        assert r.status == 503
        assert await r.json() == {"ready": False}


class _Counter:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def observe_rpc(self, method: str, outcome: str, seconds: float | None = None) -> None:
        self.seen.append((method, outcome))


async def test_metrics_labels_are_bounded() -> None:
    metrics = _Counter()
    app = make_rpc_app(FakeService(), admin_token=None, metrics=metrics)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as s:
        for method in ("node_status", "random_name_1", "random_name_2", "quarantine_list"):
            req = {"jsonrpc": "2.0", "id": 1, "method": method}
            async with s.post(server.make_url("/"), json=req) as r:
                await r.read()
    assert metrics.seen == [
        ("node_status", "ok"),
        ("unknown", "invalid"),
        ("unknown", "invalid"),
        ("quarantine_list", "unauthorized"),
    ]


def test_the_depth_limit_is_exact_for_arrays_and_objects() -> None:
    """Counted before parsing, strings cut out by a split when the body has no backslash
    (stop 13: the regular expression cost three times the parse of a batch of 19 calls)."""
    from node.api.params import JSON_DEPTH_MAX, parse_json

    d = JSON_DEPTH_MAX
    assert parse_json(b"[" * d + b"]" * d) is not None
    assert parse_json(b'{"a":' * d + b"1" + b"}" * d) is not None
    for deep in (b"[" * (d + 1) + b"]" * (d + 1), b'{"a":' * (d + 1) + b"1" + b"}" * (d + 1)):
        with pytest.raises(ValueError, match="nesting"):
            parse_json(deep)
    mixed = b"[" + b",".join([b'{"p":[1,"[[[["]}'] * 40) + b"]"  # many brackets, depth 3
    assert len(parse_json(mixed)) == 40
    # Closing brackets inside strings do not hide nesting, with or without escapes.
    for prefix in (b'[" ]",', b'["\\" ]",'):
        with pytest.raises(ValueError, match="nesting"):
            parse_json(prefix * d + b"[1]" + b"]" * d)


def test_deep_bodies_are_refused_before_the_parser_recurses() -> None:
    """py_ecc (imported with web3) raises the recursion limit to 100,000: a parser left to its
    own recursion then overflowed the C stack on 100,000 nested brackets and killed the process
    (a fresh-clone CI run, stop 13). The depth is counted before parsing."""
    import sys

    from node.api.params import parse_json

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 100_000))
    try:
        for deep in (b"[" * 100_000 + b"]" * 100_000, b"[" * 100_000, b'{"a":' * 100_000):
            with pytest.raises(ValueError, match="nesting"):
                parse_json(deep)
    finally:
        sys.setrecursionlimit(limit)


async def test_a_batch_shares_one_deadline_and_only_the_late_calls_time_out() -> None:
    """One timer per batch (not per call): the calls done by the deadline answer, a call still
    running answers TIMEOUT with its id, a late notification stays silent, and each counts."""
    metrics = _Counter()
    svc = FakeService()
    svc.slow_s = 30.0
    app = make_rpc_app(svc, admin_token=None, request_timeout_s=0.3, metrics=metrics)
    batch = [
        {"jsonrpc": "2.0", "id": "fast", "method": "node_status"},
        {"jsonrpc": "2.0", "id": "slow", "method": "detector_status"},
        {"jsonrpc": "2.0", "method": "detector_status"},  # a notification, late too
        {"jsonrpc": "2.0", "id": 3, "method": "nope"},
    ]
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as s:
        started = asyncio.get_running_loop().time()
        async with s.post(server.make_url("/"), json=batch) as r:
            body = await r.json()
        took = asyncio.get_running_loop().time() - started
    assert took < 5.0  # the deadline, not the slow calls' 30 s
    by_id = {part["id"]: part for part in body}
    assert set(by_id) == {"fast", "slow", 3}
    assert by_id["fast"]["result"]["height"] == 7
    assert by_id["slow"]["error"]["code"] == errors.TIMEOUT
    assert by_id["slow"]["error"]["message"] == "request took longer than 0.3 s"
    assert by_id[3]["error"]["code"] == errors.METHOD_NOT_FOUND
    assert sorted(metrics.seen) == sorted(
        [
            ("node_status", "ok"),
            ("unknown", "invalid"),
            ("detector_status", "timeout"),
            ("detector_status", "timeout"),
        ]
    )
