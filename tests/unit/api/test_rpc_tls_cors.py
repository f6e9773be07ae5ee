"""RPC and metrics over TLS (certificate and key from config), and the CORS allow-list.

Real listeners on 127.0.0.1 with a fake service: HTTPS answers with the configured certificate,
a plain request to the TLS port gets nothing; an allowed origin gets the CORS headers and others
do not; admin methods are never callable cross-origin, while the same-origin console still is.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node import errors
from node.api.rpc import make_rpc_app, start_rpc_server
from node.host.config import ConfigError, parse_config
from node.host.metrics import Metrics, serve_metrics
from node.net.tls import TlsError, make_certificate, server_context
from tests.unit.api.test_rpc_fake import FakeService

TOKEN = "correct-horse-battery-staple"
WALLET = "https://wallet.example"
EVIL = "https://evil.example"


def _cert(tmp: Path, name: str) -> tuple[Path, Path]:
    make_certificate(tmp / f"{name}.crt", tmp / f"{name}.key", name)
    return tmp / f"{name}.crt", tmp / f"{name}.key"


def _pinned(cert: Path) -> ssl.SSLContext:
    """What ``vigil db backup`` does: trust exactly the node's own certificate."""
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    return ctx


@contextlib.asynccontextmanager
async def rpc_server(
    service: FakeService, ctx: ssl.SSLContext | None, origins: tuple[str, ...] = ()
) -> AsyncIterator[int]:
    app = make_rpc_app(service, admin_token=TOKEN, cors_origins=origins)
    runner = await start_rpc_server(app, "127.0.0.1", 0, ssl_context=ctx)
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def _body(method: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": []}


async def test_rpc_over_tls(tmp_path: Path) -> None:
    cert, key = _cert(tmp_path, "rpc")
    other, _ = _cert(tmp_path, "other")
    ctx = server_context(cert, key, "rpc.tls_cert")
    async with rpc_server(FakeService(), ctx) as port, aiohttp.ClientSession() as s:
        url = f"https://127.0.0.1:{port}/"
        async with s.post(url, json=_body("node_status"), ssl=_pinned(cert)) as r:
            assert (await r.json())["result"]["height"] == 7
        # Plain HTTP to the TLS port: no answer (no downgrade to cleartext).
        with pytest.raises(aiohttp.ClientError):
            async with s.post(f"http://127.0.0.1:{port}/", json=_body("node_status")) as r:
                pass
        # A client pinned to another certificate refuses the node's.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with s.post(url, json=_body("node_status"), ssl=_pinned(other)) as r:
                pass


async def test_metrics_over_tls(tmp_path: Path) -> None:
    cert, key = _cert(tmp_path, "metrics")
    ctx = server_context(cert, key, "metrics.tls_cert")
    async with (
        serve_metrics(Metrics(), "127.0.0.1", 0, ctx) as runner,
        aiohttp.ClientSession() as s,
    ):
        port = runner.addresses[0][1]
        async with s.get(f"https://127.0.0.1:{port}/metrics", ssl=_pinned(cert)) as r:
            assert r.status == 200
            assert "vigil_chain_height" in await r.text()
        with pytest.raises(aiohttp.ClientError):
            async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                pass


def test_tls_config_refused_in_one_line(tmp_path: Path) -> None:
    cert, _ = _cert(tmp_path, "a")
    _, other_key = _cert(tmp_path, "b")
    with pytest.raises(TlsError, match=r"^rpc\.tls_cert: cannot use .*a\.crt with .*b\.key: "):
        server_context(cert, other_key, "rpc.tls_cert")
    base: dict[str, Any] = {
        "node": {"data_dir": ".", "genesis": "g", "key_file": "k"},
        "p2p": {"insecure": True},
    }
    for section in ("rpc", "metrics"):
        with pytest.raises(ConfigError, match=rf"^{section}\.tls_cert: tls_cert and tls_key go"):
            parse_config({**base, section: {"tls_cert": str(cert)}}, tmp_path)
    with pytest.raises(ConfigError, match=r"^rpc\.cors_origins: 'wallet\.example' is not an"):
        parse_config({**base, "rpc": {"cors_origins": ["wallet.example"]}}, tmp_path)


async def test_cors_allow_list() -> None:
    service = FakeService()
    async with rpc_server(service, None, (WALLET,)) as port, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{port}/"
        # The allowed origin gets the headers; another origin gets the answer without them,
        # so a browser keeps it from that page.
        async with s.post(url, json=_body("node_status"), headers={"Origin": WALLET}) as r:
            assert r.headers["Access-Control-Allow-Origin"] == WALLET
            assert r.headers["Vary"] == "Origin"
        async with s.post(url, json=_body("node_status"), headers={"Origin": EVIL}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers
        preflight = {"Access-Control-Request-Method": "POST"}
        async with s.options(url, headers={**preflight, "Origin": EVIL}) as r:
            assert r.status == 403
            assert "Access-Control-Allow-Origin" not in r.headers
        asked = {**preflight, "Origin": WALLET, "Access-Control-Request-Headers": "content-type"}
        async with s.options(url, headers=asked) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == WALLET
            assert "authorization" not in r.headers["Access-Control-Allow-Headers"].lower()


async def test_admin_methods_never_cross_origin() -> None:
    service = FakeService()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with rpc_server(service, None, ("*",)) as port, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{port}/"
        # A browser must preflight an Authorization header: refused, even for an allowed origin.
        ask = {
            "Origin": WALLET,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, Authorization",
        }
        async with s.options(url, headers=ask) as r:
            assert r.status == 403
            assert "cross-origin" in await r.text()
            assert "Access-Control-Allow-Origin" not in r.headers
        # A request that carries it anyway never reaches the method.
        for origin in (WALLET, EVIL):
            body = _body("admin_db_backup")
            async with s.post(url, json=body, headers={**auth, "Origin": origin}) as r:
                answer = await r.json()
                assert answer["error"]["code"] == errors.UNAUTHORIZED
                assert "cross-origin" in answer["error"]["message"]
                assert "Access-Control-Allow-Origin" not in r.headers
        assert ("admin_db_backup", b"") not in service.calls
        # The operator console is same-origin: its admin calls still work.
        same = {**auth, "Origin": f"http://127.0.0.1:{port}"}
        async with s.post(url, json=_body("quarantine_list"), headers=same) as r:
            assert "result" in await r.json()
        # No Origin (curl, vigil CLI): admin as before.
        async with s.post(url, json=_body("admin_db_backup"), headers=auth) as r:
            assert "result" in await r.json()
        assert ("admin_db_backup", b"") in service.calls
