"""A node never crashes or stalls because of what a peer or a stranger sends on the P2P port.

One 4-node cluster. Node 3 is stopped and the test takes its place with node 3's validator key:
it passes the handshake with node 0 as validator 3, then sends malformed frames of every type the
runtime accepts. Before that, an unauthenticated client throws garbage and bad handshakes. Node 0
must stay healthy and ready, keep committing with nodes 1 and 2, and count what it refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
from typing import Any

import aiohttp
import msgpack
import pytest

from common.crypto import SigningKey, from_hex
from node.chain.genesis import Genesis
from node.net.tls import fingerprint
from node.net.wire import decode_frame, encode_frame, sign_challenge
from tests.cluster_util import LocalCluster, wait_for

pytestmark = pytest.mark.e2e

CLUSTER_OPTIONS = {"n": 4}
TARGET = 0
IMPOSTOR = 3


def _metric(c: LocalCluster, i: int, family: str) -> float:
    import urllib.request

    with urllib.request.urlopen(c.cluster.metrics_url(i), timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"^{family}(\{{|\s)", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _ready(c: LocalCluster, i: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(c.cluster.rpc_url(i) + "/ready", timeout=3) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError:
        return False


def _commits(c: LocalCluster, k: int) -> None:
    """One transfer through node TARGET, committed (by nodes 0, 1, 2 without node 3)."""
    [answer] = c.submit(TARGET, [c.transfer(k, c.address(k + 1))])
    h = answer["result"]["hash"]
    wait_for("a commit", lambda: c.tx_status(TARGET, h) == "committed", deadline_s=30)


async def _closed_after(ws: aiohttp.ClientWebSocketResponse) -> bool:
    async with asyncio.timeout(10):
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return True
            if msg.type == aiohttp.WSMsgType.ERROR:
                return True


async def _strangers(url: str, genesis: Genesis) -> list[bool]:
    """Unauthenticated clients; each connection must be closed by the node."""
    rng = random.Random(7)
    hello = {
        "t": "hello",
        "chain_id": genesis.chain_id,
        "genesis": genesis.hash,
        "index": 1,
        "challenge": os.urandom(32),
        "tls": True,
    }
    attempts: list[list[Any]] = [
        [b"\xc1\xff not msgpack"],
        [os.urandom(2048)],
        ["text frame"],
        [msgpack.packb([1, 2, 3])],
        [msgpack.packb({"t": "hello", "index": "zero"})],
        [msgpack.packb({"t": "c", "d": b"\x00"})],  # a consensus frame before any handshake
        [encode_frame({**hello, "index": 99})],
        [encode_frame({**hello, "index": -1})],
        [encode_frame({**hello, "chain_id": "other"})],
        [encode_frame({**hello, "challenge": b"short"})],
        [encode_frame(hello), encode_frame({"t": "auth", "sig": os.urandom(64)})],
        [encode_frame(hello), encode_frame({"t": "auth", "sig": b""})],
        [encode_frame(hello), encode_frame({"t": "ok"})],
        [bytes(rng.getrandbits(8) for _ in range(64)) for _ in range(3)],
    ]
    out = []
    async with aiohttp.ClientSession() as s:
        for frames in attempts:
            async with s.ws_connect(url + "/p2p", max_msg_size=0, ssl=False) as ws:
                for f in frames:
                    if isinstance(f, str):
                        await ws.send_str(f)
                    else:
                        await ws.send_bytes(f)
                out.append(await _closed_after(ws))
        # A frame over the node's size limit (16 MiB by default).
        async with s.ws_connect(url + "/p2p", max_msg_size=0, ssl=False) as ws:
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await ws.send_bytes(b"\x00" * (17 * 1024 * 1024))
            out.append(await _closed_after(ws))
    return out


async def _replayed_handshake(url: str, genesis: Genesis, key: SigningKey) -> bool:
    """Completing a handshake with a signature recorded from an earlier one must fail."""
    async with aiohttp.ClientSession() as s:
        # First link: the real exchange, captured (then abandoned before "ok" matters).
        async with s.ws_connect(url + "/p2p", max_msg_size=0, ssl=False) as ws:
            await ws.send_bytes(_hello(genesis, IMPOSTOR))
            ack = decode_frame((await ws.receive()).data, 1 << 24)
            old_sig = sign_challenge(
                key,
                genesis.chain_id,
                genesis.hash,
                ack["challenge"],
                IMPOSTOR,
                TARGET,
                _binding(ws),
            )
            await ws.close()
        async with s.ws_connect(url + "/p2p", max_msg_size=0, ssl=False) as ws:
            await ws.send_bytes(_hello(genesis, IMPOSTOR))
            await ws.receive()  # a fresh challenge: the old signature does not cover it
            await ws.send_bytes(encode_frame({"t": "auth", "sig": old_sig}))
            return await _closed_after(ws)


def _binding(ws: aiohttp.ClientWebSocketResponse) -> bytes:
    """The TLS binding the node expects: the fingerprint of the certificate it showed us."""
    der = ws.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return fingerprint(der)


def _hello(genesis: Genesis, index: int) -> bytes:
    return encode_frame(
        {
            "t": "hello",
            "chain_id": genesis.chain_id,
            "genesis": genesis.hash,
            "index": index,
            "challenge": os.urandom(32),
            "tls": True,
        }
    )


async def _impostor_session(
    s: aiohttp.ClientSession, url: str, genesis: Genesis, key: SigningKey
) -> aiohttp.ClientWebSocketResponse:
    ws = await s.ws_connect(url + "/p2p", max_msg_size=0, ssl=False)
    await ws.send_bytes(_hello(genesis, IMPOSTOR))
    ack = decode_frame((await ws.receive()).data, 1 << 24)
    sig = sign_challenge(
        key, genesis.chain_id, genesis.hash, ack["challenge"], IMPOSTOR, TARGET, _binding(ws)
    )
    await ws.send_bytes(encode_frame({"t": "auth", "sig": sig}))
    ok = decode_frame((await ws.receive()).data, 1 << 24)
    assert ok["t"] == "ok"
    return ws


async def _drain(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> int:
    """Read what the node sends for a while (so its queue to us never blocks); frames read."""
    n = 0
    try:
        async with asyncio.timeout(seconds):
            while True:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.BINARY:
                    return n
                n += 1
    except TimeoutError:
        return n


async def _hostile_validator(url: str, genesis: Genesis, key: SigningKey) -> dict[str, Any]:
    """Well-formed frames with absurd contents; the link must survive (they are not garbage)."""
    rng = random.Random(11)
    frames: list[dict[str, Any]] = [
        {"t": "status", "height": 2**63, "view": 0},
        {"t": "status", "height": -5, "view": -1},
        {"t": "status", "height": 2**64 - 1, "view": 2**63},
        {"t": "txs", "txs": [b"", b"\x00" * 10, 5, None, "str", os.urandom(300), [1]]},
        {"t": "txs", "txs": [os.urandom(200) for _ in range(3000)]},
        {"t": "txs", "txs": [b"x"], "released": True},
        {"t": "req", "id": 1, "kind": "get_blocks", "body": {"from": -10, "to": -1}},
        {"t": "req", "id": 2, "kind": "get_blocks", "body": {"from": 1, "to": 2**63}},
        {"t": "req", "id": 3, "kind": "get_blocks", "body": {"from": 50, "to": 3}},
        {"t": "req", "id": 4, "kind": "get_blocks", "body": {"from": 2**64 - 1, "to": 2**64 - 1}},
        {"t": "req", "id": 5, "kind": "get_blocks", "body": {"from": "a", "to": None}},
        {"t": "req", "id": 6, "kind": "get_txs", "body": {"hashes": [os.urandom(32)] * 5000}},
        {"t": "req", "id": 7, "kind": "get_txs", "body": {"hashes": [os.urandom(32)] * 3000}},
        {"t": "req", "id": 8, "kind": "get_txs", "body": {"hashes": [1, None, b"", b"y" * 5000]}},
        {"t": "req", "id": 9, "kind": "nonsense", "body": {}},
        {"t": "resp", "id": 424242, "body": {"entries": "no"}},
        {"t": "resp", "id": 1, "body": {"txs": [b"bad"]}},
    ]
    frames += [{"t": "c", "d": bytes(rng.getrandbits(8) for _ in range(n))} for n in (0, 1, 99)]
    frames += [{"t": "c", "d": msgpack.packb({"type": t, "seq": 2**63})} for t in CKINDS]
    async with aiohttp.ClientSession() as s:
        ws = await _impostor_session(s, url, genesis, key)
        for f in frames:
            await ws.send_bytes(encode_frame(f))
        # Many block-range requests at once: the node must bound what it does for one peer.
        for rid in range(100, 400):
            body = {"from": 1, "to": 2**40}
            await ws.send_bytes(
                encode_frame({"t": "req", "id": rid, "kind": "get_blocks", "body": body})
            )
        # Keep telling the node we are far ahead, as a liar would, while reading its frames.
        for _ in range(3):
            await ws.send_bytes(encode_frame({"t": "status", "height": 2**63, "view": 0}))
            await _drain(ws, 1.0)
        alive_after_nonsense = not ws.closed
        # Now real garbage from an authenticated peer: disconnected.
        await ws.send_bytes(b"\xc1 garbage")
        closed = await _closed_after(ws)
        return {"alive_after_nonsense": alive_after_nonsense, "closed_after_garbage": closed}


CKINDS = ("pre_prepare", "prepare", "commit", "checkpoint", "view_change", "new_view")


def test_strangers_and_an_authenticated_hostile_peer_do_not_hurt_the_node(
    cluster: LocalCluster,
) -> None:
    c = cluster
    genesis = Genesis.load(c.cluster.root / "genesis.json")
    url = c.cluster.p2p_url(TARGET)
    _commits(c, 0)
    rejected_before = _metric(c, TARGET, "vigil_p2p_rejected_total")

    closed = asyncio.run(_strangers(url, genesis))
    assert all(closed), closed
    assert c.health(TARGET)["peers"] == 3

    # Take validator 3's place: stop it, then speak for it with its own key.
    c.stop(IMPOSTOR)
    wait_for("node 0 sees 2 peers", lambda: c.health(TARGET)["peers"] == 2, deadline_s=30)
    seed = json.loads((c.cluster.node_dir(IMPOSTOR) / "key.json").read_text())["seed"]
    key = SigningKey(from_hex(seed, 32))
    assert asyncio.run(_replayed_handshake(url, genesis, key))

    outcome = asyncio.run(_hostile_validator(url, genesis, key))
    assert outcome == {"alive_after_nonsense": True, "closed_after_garbage": True}

    # Still serving, committing with nodes 1 and 2, and not fooled by the 2**63 status.
    assert c.running(TARGET)
    _commits(c, 2)
    health = c.health(TARGET)
    assert health["peers"] == 2
    assert health["syncing"] is False
    wait_for("node 0 ready again", lambda: _ready(c, TARGET), deadline_s=20)
    status = c.rpc(TARGET, "node_status")
    assert status["height"] < 10_000
    assert _metric(c, TARGET, "vigil_p2p_rejected_total") >= rejected_before + len(closed)
    log = c.log(TARGET)
    assert "task_failed" not in log
    assert "Traceback" not in log
