"""The console's static files and the admin methods' same-origin rule
(node/api/console.py, rpc.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from node import errors
from node.api.console import load_console_files
from node.api.rpc import make_rpc_app
from tests.unit.api.test_rpc_fake import FakeService

TOKEN = "s3cret-token"
CONSOLE = Path(__file__).resolve().parents[3] / "node" / "api" / "console"


@pytest.fixture
async def base() -> AsyncIterator[str]:
    app = make_rpc_app(FakeService(), admin_token=TOKEN, cors_origins=("*",))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def _admin(base: str, headers: dict[str, str]) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": "quarantine_list"}
    h = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}", **headers}
    async with aiohttp.ClientSession() as s, s.post(base + "/rpc", json=body, headers=h) as r:
        return json.loads(await r.text())


async def test_console_page_and_modules_served_with_csp(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/console") as r:
            assert r.status == 200
            assert r.content_type == "text/html"
            page = await r.text()
            csp = r.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp
            assert "frame-ancestors 'none'" in csp
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        # Every referenced file is shipped, with relative URLs only (reverse proxies).
        refs = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert refs
        assert all(not ref.startswith(("/", "http")) for ref in refs if ref != "data:,")
        async with s.get(base + "/console/js/main.js") as r:
            assert r.status == 200
            assert r.content_type == "text/javascript"
        async with s.get(base + "/console/../pyproject.toml") as r:
            assert r.status == 404
        async with s.get(base + "/console/", allow_redirects=False) as r:
            assert r.status == 301
            assert r.headers["Location"] == "../console"


def test_every_console_file_is_package_data() -> None:
    shipped = set(load_console_files())
    on_disk = {str(p.relative_to(CONSOLE)) for p in CONSOLE.rglob("*") if p.is_file()}
    assert shipped == on_disk


def test_console_never_puts_data_into_html() -> None:
    """Data reaches the page as text: no innerHTML, outerHTML, insertAdjacentHTML or eval."""
    for js in CONSOLE.rglob("*.js"):
        text = js.read_text()
        for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "document.write"):
            assert banned not in text, f"{js.name} uses {banned}"


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({}, False),  # curl, the CLI
        ({"Origin": "http://evil.example"}, True),
        ({"Origin": "null"}, True),
        ({"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}, True),
        ({"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:1"}, True),  # another node
        ({"Sec-Fetch-Site": "same-origin"}, False),
    ],
)
async def test_admin_methods_refuse_cross_origin(
    base: str, headers: dict[str, str], refused: bool
) -> None:
    answer = await _admin(base, headers)
    if refused:
        assert answer["error"]["code"] == errors.UNAUTHORIZED
        assert "cross-origin" in answer["error"]["message"]
    else:
        assert "result" in answer, answer


async def test_admin_call_from_the_consoles_own_origin_passes(base: str) -> None:
    answer = await _admin(base, {"Origin": base})
    assert "result" in answer, answer
    behind_proxy = await _admin(
        base, {"Origin": "https://vigil.example.org", "X-Forwarded-Host": "vigil.example.org"}
    )
    assert "result" in behind_proxy, behind_proxy


async def test_cors_never_allows_the_authorization_header(base: str) -> None:
    """Even with cors_origins = ["*"], a preflight for a bearer token gets no Authorization."""
    headers = {
        "Origin": "http://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with aiohttp.ClientSession() as s, s.options(base + "/rpc", headers=headers) as r:
        allowed = r.headers.get("Access-Control-Allow-Headers", "").lower()
        assert "authorization" not in allowed
