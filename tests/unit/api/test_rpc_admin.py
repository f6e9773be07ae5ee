"""Admin methods need ``Authorization: Bearer <token>``; anything else gets
UNAUTHORIZED, no data.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from node import errors
from node.api.rpc import bearer_ok, make_rpc_app
from tests.unit.api.test_rpc_fake import FakeService

TOKEN = "correct-horse-battery-staple"
HASH = "0x" + "22" * 32


async def _call(url: str, method: str, params: list[object], auth: str | None) -> dict[str, Any]:
    headers = {"Authorization": auth} if auth is not None else {}
    req = {"jsonrpc": "2.0", "id": 9, "method": method, "params": params}
    async with aiohttp.ClientSession() as s, s.post(url, json=req, headers=headers) as r:
        assert r.status == 200
        answer: dict[str, Any] = await r.json()
        return answer


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        f"Token {TOKEN}",
        TOKEN,
    ],
)
@pytest.mark.parametrize(
    ("method", "params"),
    [("quarantine_list", []), ("quarantine_release", [HASH]), ("quarantine_reject", [HASH])],
)
async def test_refused_without_the_right_token(
    auth: str | None, method: str, params: list[object], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    svc = FakeService()
    async with TestServer(make_rpc_app(svc, admin_token=TOKEN), host="127.0.0.1") as server:
        body = await _call(str(server.make_url("/")), method, params, auth)
    assert body["error"]["code"] == errors.UNAUTHORIZED
    assert "data" not in body["error"]
    assert "result" not in body
    assert svc.calls == []  # the service was never asked
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_right_token_is_served(scheme: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    svc = FakeService()
    async with TestServer(make_rpc_app(svc, admin_token=TOKEN), host="127.0.0.1") as server:
        url = str(server.make_url("/"))
        listed = await _call(url, "quarantine_list", [5], f"{scheme} {TOKEN}")
        released = await _call(url, "quarantine_release", [HASH], f"{scheme} {TOKEN}")
        rejected = await _call(url, "quarantine_reject", [HASH], f"{scheme} {TOKEN}")
    assert listed["result"][0]["reasons"] == ["amount"]
    assert released["result"]["status"] == "pending"
    assert rejected["result"]["status"] == "rejected"
    assert [c[0] for c in svc.calls] == [
        "quarantine_list",
        "quarantine_release",
        "quarantine_reject",
    ]
    assert TOKEN not in caplog.text


async def test_no_configured_token_disables_admin() -> None:
    for configured in (None, ""):
        svc = FakeService()
        app = make_rpc_app(svc, admin_token=configured)
        async with TestServer(app, host="127.0.0.1") as server:
            body = await _call(str(server.make_url("/")), "quarantine_list", [], "Bearer ")
        assert body["error"]["code"] == errors.UNAUTHORIZED
        assert svc.calls == []


async def test_token_in_a_batch_applies_to_each_admin_call() -> None:
    svc = FakeService()
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "quarantine_list"},
        {"jsonrpc": "2.0", "id": 2, "method": "node_status"},
    ]
    async with (
        TestServer(make_rpc_app(svc, admin_token=TOKEN), host="127.0.0.1") as server,
        aiohttp.ClientSession() as s,
        s.post(server.make_url("/"), json=batch) as r,
    ):
        body = sorted(await r.json(), key=lambda x: x["id"])
    assert body[0]["error"]["code"] == errors.UNAUTHORIZED
    assert body[1]["result"]["height"] == 7


def test_bearer_ok_unit() -> None:
    token = b"abc"
    assert bearer_ok("Bearer abc", token)
    assert not bearer_ok("Bearer abd", token)
    assert not bearer_ok("Bearer abc", None)
    assert not bearer_ok(None, token)
    assert not bearer_ok("Bearerabc", token)
