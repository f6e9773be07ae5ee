"""Unit tests of the runtime's defences: bounded queues and caches, and hostile peer input."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType

from common.codec import sha256
from common.crypto import SigningKey
from consensus.api import FetchedEntry
from node.chain.tx import make_transfer
from node.net.address import PeerAddress
from node.net.catchup import CatchUp, vouched_height
from node.net.p2p import P2P, REQUESTS_INFLIGHT_MAX
from node.net.peer import PeerConn
from node.net.wire import decode_frame, encode_frame
from node.tools import devnet
from tests.unit.host.fakes import FakeChain, resolver


class FakeWs:
    """A ``PeerSocket``: frames to hand out, then a CLOSE; records what is sent."""

    def __init__(self, frames: Sequence[bytes] = ()) -> None:
        self.frames = list(frames)
        self.sent: list[bytes] = []
        self.closed = False

    async def receive(self) -> aiohttp.WSMessage:
        if self.frames:
            return aiohttp.WSMessage(WSMsgType.BINARY, self.frames.pop(0), None)
        return aiohttp.WSMessage(WSMsgType.CLOSED, None, None)

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)

    async def close(self, **_: Any) -> bool:
        self.closed = True
        return True


def _p2p(on_frame: Any = None, on_request: Any = None) -> P2P:
    async def nothing(*_: Any) -> Any:
        return {}

    return P2P(
        index=0,
        key=SigningKey(b"\x01" * 32),
        validators=(b"\x00" * 32,) * 4,
        peers={j: PeerAddress(b"\x00" * 32, "127.0.0.1", 1) for j in range(1, 4)},
        tls=None,
        chain_id="test",
        genesis_hash=b"\x00" * 32,
        on_frame=on_frame or nothing,
        on_request=on_request or nothing,
        on_peer=lambda *_: None,
        metrics=None,
        msg_bytes_max=1 << 20,
        send_queue_max=100,
        reconnect_min_ms=100,
        reconnect_max_ms=200,
        handshake_timeout_ms=1000,
    )


async def test_a_frame_the_runtime_chokes_on_ends_the_link_not_the_task() -> None:
    async def boom(_peer: int, _frame: dict[str, Any]) -> None:
        raise KeyError("height")

    p2p = _p2p(on_frame=boom)
    ws = FakeWs([encode_frame({"t": "status", "height": 1, "view": 0})] * 2)
    conn = PeerConn(2, ws, dialer=2, queue_max=10)
    p2p._conns[2] = conn
    await p2p._serve(conn)  # returns instead of raising (a dial loop would have died)
    assert conn.closed.is_set()
    assert p2p.peers() == []
    assert len(ws.frames) == 1  # stopped reading at the first bad frame


async def test_a_flood_of_requests_is_answered_busy_beyond_the_inflight_limit() -> None:
    release = asyncio.Event()
    served = 0

    async def slow(_peer: int, _kind: str, _body: dict[str, Any]) -> dict[str, Any]:
        nonlocal served
        served += 1
        await release.wait()
        return {"entries": []}

    p2p = _p2p(on_request=slow)
    conn = PeerConn(1, FakeWs(), dialer=1, queue_max=1000)
    for rid in range(50):
        p2p._take_request(conn, {"t": "req", "id": rid, "kind": "get_blocks", "body": {}})
    await asyncio.sleep(0)
    assert served == REQUESTS_INFLIGHT_MAX
    busy = [decode_frame(conn.queue.get_nowait(), 1 << 20) for _ in range(conn.queue.qsize())]
    assert [f["body"] for f in busy] == [{"error": "busy"}] * (50 - REQUESTS_INFLIGHT_MAX)
    release.set()
    await p2p.close()
    assert conn.requests_inflight == 0


async def test_an_answer_counts_only_from_the_peer_that_was_asked() -> None:
    p2p = _p2p()
    fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    p2p._pending[7] = (1, fut)
    liar = FakeWs([encode_frame({"t": "resp", "id": 7, "body": {"txs": []}})])
    await p2p._serve(PeerConn(2, liar, dialer=2, queue_max=10))
    assert not fut.done()
    honest = FakeWs([encode_frame({"t": "resp", "id": 7, "body": {"txs": [b"x"]}})])
    await p2p._serve(PeerConn(1, honest, dialer=1, queue_max=10))
    assert fut.result() == {"txs": [b"x"]}


async def test_peer_send_queue_is_bounded_in_bytes() -> None:
    conn = PeerConn(1, FakeWs(), dialer=1, queue_max=1000, bytes_max=3 * 1024)
    ok = [conn.enqueue(b"\x00" * 1024) for _ in range(5)]
    assert ok == [True, True, True, False, False]
    assert conn.queued_bytes == 3 * 1024
    lone = PeerConn(1, FakeWs(), dialer=1, queue_max=10, bytes_max=10)
    assert lone.enqueue(b"\x00" * 100)  # one big frame still fits an empty queue


def test_one_lying_peer_cannot_make_a_node_sync_forever() -> None:
    async def deliver(entries: list[FetchedEntry], txs: dict[bytes, Any]) -> None:
        raise AssertionError("nothing is fetched here")

    async def wait_head(seq: int, timeout_s: float) -> bool:
        return False

    catchup = CatchUp(
        p2p=_p2p(),
        head=lambda: 10,
        deliver=deliver,
        wait_head=wait_head,
        batch_blocks=64,
        timeout_s=1.0,
        metrics=None,
        f=1,
    )
    catchup.on_status(3, 2**63, slack=8)
    catchup.on_status(1, 11, slack=8)
    catchup.on_status(2, 12, slack=8)
    assert catchup.target == 0
    assert not catchup.syncing
    catchup.on_status(1, 500, slack=8)  # now f+1 peers (3 and 1) are at 500 or above
    assert catchup.target == 500
    assert vouched_height([2**63, 500, 12], 1) == 500
    assert vouched_height([7], 1) == 0


def _tx(nonce: int) -> Any:
    return make_transfer(SigningKey(b"\x05" * 32), "test", b"\x01" * 20, 1, 1, nonce)


def test_resolver_forgets_tx_bodies_of_seqs_at_or_below_a_commit() -> None:
    r = resolver(FakeChain(height=4))
    forged, stale, live = _tx(0), _tx(1), _tx(2)
    r.add_fetched({b"f" * 32: (forged,)}, {b"f" * 32: 5})  # a forged catch-up entry at seq 5
    r._record(6, b"s" * 32, (stale, live), view=0)  # a proposal superseded by a view change
    r.on_view_change(1, [])
    r._record(7, b"l" * 32, (live,), view=1)  # the same tx re-proposed in the new view
    r.committed(6, sha256(b"the payload that won seq 6"))
    assert set(r._resolved) == {b"l" * 32}
    assert r.known(live.hash)
    assert not r.known(forged.hash)
    assert not r.known(stale.hash)


async def test_block_range_requests_beyond_the_head_are_answered_empty() -> None:
    chain = FakeChain(height=3)
    r = resolver(chain, catchup_batch_blocks=64, msg_bytes_max=1 << 20)
    body: dict[str, Any]
    for body in ({"from": 2**64 - 1, "to": 2**64 - 1}, {"from": 4, "to": 2**63}):
        assert await r.serve_get_blocks(body) == {"entries": []}
    for body in ({"from": -1, "to": 5}, {"from": 9, "to": 2}, {"from": "a", "to": 1}):
        assert await r.serve_get_blocks(body) == {"error": "bad_request"}
    assert await r.serve_get_blocks({"from": 2, "to": 2**63}) == {"entries": []}
    assert chain.store.reads == [
        (2, 3)
    ]  # never a read past the head (2**64 does not even fit a key)


def test_cluster_files_with_the_admin_token_are_private(tmp_path: Path) -> None:

    devnet.init_cluster(tmp_path, devnet.base_ports(41000, 4))
    token = (tmp_path / "admin_token").read_text().strip()
    assert stat.S_IMODE((tmp_path / "admin_token").stat().st_mode) == 0o600
    for i in range(4):
        config = tmp_path / f"node{i}" / "config.toml"
        assert token in config.read_text()
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
