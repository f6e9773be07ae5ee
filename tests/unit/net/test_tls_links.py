"""P2P links at the socket level: what a relay, a stranger, an old certificate or a downgrade
attempt gets. Two in-process ``P2P`` endpoints on 127.0.0.1 (real TLS, real websockets), no node.

Each refusal must be one warning line naming the cause (``peer_misbehaving`` with a ``reason``
and, on the dialing side, the peer's address and ``why`` in words), and no link may come up: no
peer registered, no frame delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from common.crypto import SigningKey
from node.net.address import PeerAddress
from node.net.p2p import P2P
from node.net.tls import (
    P2PTls,
    TlsError,
    client_context,
    fingerprint,
    make_certificate,
    p2p_tls,
    server_context,
)
from node.net.wire import decode_frame, encode_frame, sign_challenge

KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(2)]
VALIDATORS = tuple(k.public_key for k in KEYS)
CHAIN = "tls-test"
GENESIS = b"\x42" * 32
DIALER, ACCEPTOR = 0, 1
WAIT_S = 1.5  # a few redials at 100-200 ms back-off


def _tls(tmp: Path, name: str, **cert: Any) -> P2PTls:
    """A P2PTls from a fresh self-signed certificate (expired ones too: no validity check)."""
    der = make_certificate(tmp / f"{name}.crt", tmp / f"{name}.key", name, **cert)
    ctx = server_context(tmp / f"{name}.crt", tmp / f"{name}.key", name)
    return P2PTls(ctx, client_context(), fingerprint(der))


class Endpoint:
    """One P2P endpoint, with what reached it."""

    def __init__(
        self, index: int, key: SigningKey, tls: P2PTls | None, peers: dict[int, PeerAddress]
    ) -> None:
        self.frames: list[dict[str, Any]] = []
        self.up: list[int] = []

        async def on_frame(j: int, frame: dict[str, Any]) -> None:
            self.frames.append(frame)

        async def on_request(j: int, kind: str, body: dict[str, Any]) -> dict[str, Any]:
            return {}

        self.p2p = P2P(
            index=index,
            key=key,
            validators=VALIDATORS,
            peers=peers,
            tls=tls,
            chain_id=CHAIN,
            genesis_hash=GENESIS,
            on_frame=on_frame,
            on_request=on_request,
            on_peer=lambda j, up: self.up.append(j) if up else None,
            metrics=None,
            msg_bytes_max=1 << 20,
            send_queue_max=64,
            reconnect_min_ms=100,
            reconnect_max_ms=200,
            handshake_timeout_ms=2000,
        )


@contextlib.asynccontextmanager
async def listening(ep: Endpoint, tls: P2PTls | None) -> AsyncIterator[int]:
    """Serve ``ep``'s /p2p on a free port (TLS with ``tls``); yields the port."""
    app = web.Application()
    app.add_routes(ep.p2p.routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server if tls else None)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await ep.p2p.close()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def tls_relay(upstream_port: int, own: P2PTls) -> AsyncIterator[int]:
    """A relay in the middle: terminates TLS with its own certificate, re-encrypts upstream."""

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):
            w.close()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", upstream_port, ssl=client_context())
        except OSError:
            w.close()
            return
        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=own.server)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await server.wait_closed()


def _dialer(tls: P2PTls | None, port: int) -> Endpoint:
    return Endpoint(
        DIALER, KEYS[DIALER], tls, {ACCEPTOR: PeerAddress(VALIDATORS[ACCEPTOR], "127.0.0.1", port)}
    )


def _reasons(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """(reason, why) of every warning line the P2P layer wrote."""
    return [
        (str(getattr(r, "reason", "")), str(getattr(r, "why", "")))
        for r in caplog.records
        if r.name == "node.net.p2p" and r.levelno == logging.WARNING
    ]


async def _until(check: Callable[[], bool], deadline_s: float = 5.0) -> None:
    end = asyncio.get_running_loop().time() + deadline_s
    while not check() and asyncio.get_running_loop().time() < end:
        await asyncio.sleep(0.05)


def _no_link(*eps: Endpoint) -> None:
    for ep in eps:
        assert ep.p2p.peers() == []
        assert ep.up == []
        assert ep.frames == []


@pytest.fixture
def caplog_p2p(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="node.net.p2p")
    return caplog


async def test_honest_pair_links_up(tmp_path: Path) -> None:
    """The control: the same set-up with both real certificates makes a link."""
    a_tls, d_tls = _tls(tmp_path, "a"), _tls(tmp_path, "d")
    acceptor = Endpoint(ACCEPTOR, KEYS[ACCEPTOR], a_tls, {})
    async with listening(acceptor, a_tls) as port:
        dialer = _dialer(d_tls, port)
        dialer.p2p.start()
        await _until(lambda: bool(dialer.p2p.peers() and acceptor.p2p.peers()))
        assert dialer.p2p.peers() == [ACCEPTOR]
        assert acceptor.p2p.peers() == [DIALER]
        dialer.p2p.broadcast({"t": "status", "height": 1, "view": 0})
        await _until(lambda: bool(acceptor.frames))
        assert acceptor.frames[0]["t"] == "status"
        await dialer.p2p.close()


async def test_relay_with_its_own_certificate_refused(
    tmp_path: Path, caplog_p2p: pytest.LogCaptureFixture
) -> None:
    a_tls, d_tls, mitm = _tls(tmp_path, "a"), _tls(tmp_path, "d"), _tls(tmp_path, "mitm")
    acceptor = Endpoint(ACCEPTOR, KEYS[ACCEPTOR], a_tls, {})
    async with listening(acceptor, a_tls) as port, tls_relay(port, mitm) as relay_port:
        dialer = _dialer(d_tls, relay_port)
        dialer.p2p.start()
        await _until(lambda: bool(_reasons(caplog_p2p)))
        await asyncio.sleep(WAIT_S)
        await dialer.p2p.close()
        _no_link(dialer, acceptor)
    lines = _reasons(caplog_p2p)
    assert lines == [("dial_certificate_not_bound_to_key", lines[0][1])], lines
    assert "relay in the middle" in lines[0][1]


async def test_relay_cannot_get_a_signature_accepted_either(
    tmp_path: Path, caplog_p2p: pytest.LogCaptureFixture
) -> None:
    """The acceptor's side: even with the real dialer key, a signature over the certificate the
    relay showed (not the acceptor's) is refused."""
    a_tls, mitm = _tls(tmp_path, "a"), _tls(tmp_path, "mitm")
    acceptor = Endpoint(ACCEPTOR, KEYS[ACCEPTOR], a_tls, {})
    async with listening(acceptor, a_tls) as port, tls_relay(port, mitm) as relay_port:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(f"wss://127.0.0.1:{relay_port}/p2p", ssl=client_context()) as ws,
        ):
            seen = ws.get_extra_info("ssl_object").getpeercert(binary_form=True)
            assert fingerprint(seen) == mitm.binding
            await ws.send_bytes(
                encode_frame(
                    {
                        "t": "hello",
                        "chain_id": CHAIN,
                        "genesis": GENESIS,
                        "index": DIALER,
                        "challenge": os.urandom(32),
                        "tls": True,
                    }
                )
            )
            ack = decode_frame((await ws.receive()).data, 1 << 20)
            sig = sign_challenge(
                KEYS[DIALER], CHAIN, GENESIS, ack["challenge"], DIALER, ACCEPTOR, fingerprint(seen)
            )
            await ws.send_bytes(encode_frame({"t": "auth", "sig": sig}))
            msg = await ws.receive()
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        _no_link(acceptor)
    assert [r for r, _ in _reasons(caplog_p2p)] == ["handshake_bad_signature_or_binding"]


async def test_expired_peer_certificate_refused(
    tmp_path: Path, caplog_p2p: pytest.LogCaptureFixture
) -> None:
    old = _tls(tmp_path, "old", days=1, not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    acceptor = Endpoint(ACCEPTOR, KEYS[ACCEPTOR], old, {})
    async with listening(acceptor, old) as port:
        dialer = _dialer(_tls(tmp_path, "d"), port)
        dialer.p2p.start()
        await _until(lambda: bool(_reasons(caplog_p2p)))
        await asyncio.sleep(WAIT_S)
        await dialer.p2p.close()
        _no_link(dialer, acceptor)
    lines = _reasons(caplog_p2p)
    assert [r for r, _ in lines] == ["dial_peer_certificate_expired"], lines
    assert "expired" in lines[0][1]


def test_own_expired_certificate_stops_the_node(tmp_path: Path) -> None:
    make_certificate(
        tmp_path / "c.crt",
        tmp_path / "c.key",
        "old",
        days=1,
        not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    )
    with pytest.raises(TlsError, match=r"^p2p\.tls_cert: certificate expired on 2020-01-02$"):
        p2p_tls(tmp_path / "c.crt", tmp_path / "c.key")


async def test_self_signed_stranger_not_bound_to_the_genesis_key(
    tmp_path: Path, caplog_p2p: pytest.LogCaptureFixture
) -> None:
    """A valid self-signed certificate at the validator's address, held by someone without the
    validator's key (it signs with its own): refused, whatever the certificate."""
    fake_tls = _tls(tmp_path, "stranger")
    stranger = Endpoint(ACCEPTOR, SigningKey(b"\x66" * 32), fake_tls, {})
    async with listening(stranger, fake_tls) as port:
        dialer = _dialer(_tls(tmp_path, "d"), port)
        dialer.p2p.start()
        await _until(lambda: bool(_reasons(caplog_p2p)))
        await asyncio.sleep(WAIT_S)
        await dialer.p2p.close()
        _no_link(dialer)
    warned = [r for r, _ in _reasons(caplog_p2p)]
    # The dialer refuses first; the stranger, never answered, sees the socket close.
    assert warned[0] == "dial_certificate_not_bound_to_key", warned
    assert warned.count("dial_certificate_not_bound_to_key") == 1  # one line, not one per redial


async def test_plain_dial_to_tls_node_refused(
    tmp_path: Path, caplog_p2p: pytest.LogCaptureFixture
) -> None:
    a_tls = _tls(tmp_path, "a")
    acceptor = Endpoint(ACCEPTOR, KEYS[ACCEPTOR], a_tls, {})
    async with listening(acceptor, a_tls) as port:
        dialer = _dialer(None, port)
        dialer.p2p.start()
        await _until(lambda: bool(_reasons(caplog_p2p)))
        await dialer.p2p.close()
        _no_link(dialer, acceptor)
    lines = _reasons(caplog_p2p)
    assert [r for r, _ in lines] == ["dial_peer_requires_tls"], lines
    assert "refusing to downgrade" in lines[0][1]


async def test_tls_dial_to_plain_node_refused(
    tmp_path: Path, caplog_p2p: pytest.LogCaptureFixture
) -> None:
    acceptor = Endpoint(ACCEPTOR, KEYS[ACCEPTOR], None, {})
    async with listening(acceptor, None) as port:
        dialer = _dialer(_tls(tmp_path, "d"), port)
        dialer.p2p.start()
        await _until(lambda: bool(_reasons(caplog_p2p)))
        await dialer.p2p.close()
        _no_link(dialer, acceptor)
    lines = _reasons(caplog_p2p)
    assert [r for r, _ in lines] == ["dial_tls_failed"], lines
    assert "p2p.insecure" in lines[0][1]


async def test_hello_claiming_plain_over_tls_refused(
    tmp_path: Path, caplog_p2p: pytest.LogCaptureFixture
) -> None:
    """A downgrade inside the handshake (a relay rewriting ``tls``): refused before any key
    is used."""
    a_tls = _tls(tmp_path, "a")
    acceptor = Endpoint(ACCEPTOR, KEYS[ACCEPTOR], a_tls, {})
    async with listening(acceptor, a_tls) as port:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(f"wss://127.0.0.1:{port}/p2p", ssl=client_context()) as ws,
        ):
            hello = {
                "t": "hello",
                "chain_id": CHAIN,
                "genesis": GENESIS,
                "index": DIALER,
                "challenge": os.urandom(32),
                "tls": False,
            }
            await ws.send_bytes(encode_frame(hello))
            msg = await ws.receive()
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        _no_link(acceptor)
    assert [r for r, _ in _reasons(caplog_p2p)] == ["handshake_tls_mismatch"]
