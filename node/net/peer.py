"""One authenticated websocket to another validator, with its own bounded send queue.

A slow peer fills only its own queue, bounded in frames and in bytes; when it is full new frames
for that peer are dropped and counted (PBFT tolerates lost messages through its timers) so one peer
never stalls the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from aiohttp import ClientWebSocketResponse, WSMessage, web

log = logging.getLogger(__name__)

WebSocket = web.WebSocketResponse | ClientWebSocketResponse


class PeerSocket(Protocol):
    """The websocket methods a peer link uses: ``PeerConn`` sends and closes, ``P2P._serve``
    receives. aiohttp's ``web.WebSocketResponse`` and ``ClientWebSocketResponse`` satisfy it
    structurally (node/net/p2p.py builds a ``PeerConn`` from each); tests pass small fakes."""

    async def receive(self) -> WSMessage: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self) -> bool: ...


class PeerConn:
    """An established, authenticated connection to validator ``index``."""

    def __init__(
        self, index: int, ws: PeerSocket, dialer: int, queue_max: int, bytes_max: int = 1 << 62
    ) -> None:
        self.index = index
        self.ws = ws
        self.dialer = dialer  # which side dialed: decides which duplicate connection survives
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=queue_max)
        self.bytes_max = bytes_max
        self.queued_bytes = 0
        self.closed = asyncio.Event()
        self.dropped = 0
        self.requests_inflight = 0  # this peer's requests we are still answering (node/net/p2p.py)
        self._writer: asyncio.Task[None] | None = None

    def start_writer(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"p2p-write-{self.index}")

    def enqueue(self, frame: bytes) -> bool:
        """Queue a frame without waiting; False (and counted) when the peer is too slow."""
        if self.closed.is_set():
            return False
        # One frame always fits in an empty queue, whatever its size (it passed the size limit).
        if self.queued_bytes + len(frame) > self.bytes_max and not self.queue.empty():
            self.dropped += 1
            return False
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        self.queued_bytes += len(frame)
        return True

    async def _write_loop(self) -> None:
        try:
            while True:
                frame = await self.queue.get()
                self.queued_bytes -= len(frame)
                async with asyncio.timeout(30):
                    await self.ws.send_bytes(frame)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken socket ends this connection only
            log.info("peer_write_failed", extra={"peer": self.index, "error": type(exc).__name__})
            await self.close()

    async def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.ws.close()
