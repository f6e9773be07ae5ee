"""A user-space link shaper: one asyncio TCP relay per validator, rules per directed link.

This kernel has no ``sch_netem``, so ``tc ... netem`` cannot delay or drop. Instead every
validator's genesis ``p2p_url`` names its relay (in the root namespace, on the lab's bridge), the
relay learns the dialer from the source address (each validator has its own address in its own
namespace) and forwards bytes to the validator's real address. Each direction of a relayed
connection applies the rule of its directed link (src -> dst):

- **delay and jitter**: a chunk is delivered ``delay_ms +- jitter_ms`` after it was read, never
  before the chunk ahead of it (TCP keeps order, so jitter cannot reorder).
- **loss** (``loss`` > 0, emulated): TCP is reliable, so a lost segment shows as a retransmission
  stall. Each 1448-byte segment of a chunk is lost with probability ``loss``; a chunk with a loss
  waits one RTO (200 ms + the round trip), doubled for each retransmission lost in turn. Later
  chunks queue behind it (head-of-line blocking). The lab uses real drops (nftables) instead
  where the kernel has them.
- **cut**: bytes are held, as a real partition holds TCP segments in retransmission, and
  delivered after the heal if the connection is still open by then (the validators' websocket
  heartbeat closes a silent link after a few seconds, and they redial). A one-way cut (A -> B
  held, B -> A flowing) is just a cut on one directed link.

Every random draw comes from one ``random.Random`` per directed link, seeded from the lab seed.
Known gap: when one end closes its socket during a cut, the relay closes the other end at once
(a real partition would hide the FIN until the heal).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

SEGMENT_BYTES = 1448  # TCP payload of one Ethernet frame
RTO_MIN_MS = 200.0  # Linux's minimum retransmission timeout
CHUNK_BYTES = 64 * 1024
QUEUE_CHUNKS_MAX = 256  # per direction; then the reader waits (the sender's TCP window fills)
CONNECT_TIMEOUT_S = 5.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LinkRule:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0  # emulated per-segment loss probability, in [0, 1)
    cut: bool = False


class Shaper:
    """The rules of every directed link (src, dst); updated from any thread."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self._lock = threading.Lock()
        self._rules = {(s, d): LinkRule() for s in range(n) for d in range(n) if s != d}
        self._rngs = {link: random.Random(f"{seed}:{link[0]}:{link[1]}") for link in self._rules}
        self._listeners: list[Any] = []

    def rule(self, src: int, dst: int) -> LinkRule:
        with self._lock:
            return self._rules[(src, dst)]

    def update(self, links: list[tuple[int, int]], **changes: Any) -> None:
        """Replace fields of the rules of ``links`` (e.g. ``cut=True``) and wake held writers."""
        with self._lock:
            for link in links:
                self._rules[link] = dataclasses.replace(self._rules[link], **changes)
            listeners = list(self._listeners)
        for notify in listeners:
            notify()

    def links(self) -> list[tuple[int, int]]:
        return list(self._rules)

    def snapshot(self) -> dict[tuple[int, int], LinkRule]:
        with self._lock:
            return dict(self._rules)

    def on_change(self, notify: Any) -> None:
        with self._lock:
            self._listeners.append(notify)

    def delay_s(self, src: int, dst: int, nbytes: int) -> float:
        """Seconds from reading ``nbytes`` on link src -> dst to delivering them."""
        with self._lock:
            rule = self._rules[(src, dst)]
            rng = self._rngs[(src, dst)]
            ms = rule.delay_ms
            if rule.jitter_ms > 0:
                ms = max(0.0, ms + rng.uniform(-rule.jitter_ms, rule.jitter_ms))
            if rule.loss > 0:
                segments = max(1, math.ceil(nbytes / SEGMENT_BYTES))
                if rng.random() < 1.0 - (1.0 - rule.loss) ** segments:
                    rto = RTO_MIN_MS + 2 * rule.delay_ms
                    ms += rto
                    while rng.random() < rule.loss:  # the retransmission was lost as well
                        rto *= 2
                        ms += rto
        return ms / 1000.0


class Relay:
    """Relays for every validator, running on their own event loop in a daemon thread."""

    def __init__(self, shaper: Shaper) -> None:
        self.shaper = shaper
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="relay")
        self._servers: list[asyncio.Server] = []
        self._conns: set[asyncio.Task[None]] = set()
        self._changed: asyncio.Event | None = None
        self.connections_total = 0
        self._thread.start()
        self.call(self._init())
        shaper.on_change(lambda: self._loop.call_soon_threadsafe(self._bump))

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    async def _init(self) -> None:
        self._changed = asyncio.Event()

    def _bump(self) -> None:
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()

    def listen(
        self,
        dst: int,
        host: str,
        target: tuple[str, int],
        sources: dict[str, int],
        port: int = 0,
    ) -> int:
        """Relay connections to validator ``dst`` at ``target``; returns the port on ``host``.

        ``sources`` (source address -> validator) is read on every connection: the caller may
        add an address to it, e.g. when a validator moves.
        """

        async def start() -> int:
            async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                task = asyncio.current_task()
                assert task is not None
                self._conns.add(task)
                try:
                    await self._relay(dst, target, sources, r, w)
                finally:
                    self._conns.discard(task)

            server = await asyncio.start_server(accept, host, port)
            self._servers.append(server)
            return int(server.sockets[0].getsockname()[1])

        return self.call(start())

    def close(self) -> None:
        """Stop listening, drop every relayed connection, stop the loop thread."""
        if not self._loop.is_running():
            return

        async def stop() -> None:
            for server in self._servers:
                server.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)

        with contextlib.suppress(TimeoutError, RuntimeError):
            self.call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    async def _relay(
        self,
        dst: int,
        target: tuple[str, int],
        sources: dict[str, int],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        peer = writer.get_extra_info("peername")
        src = sources.get(peer[0]) if peer else None
        if src is None or src == dst:
            writer.close()  # not one of the lab's validators
            return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                up_reader, up_writer = await asyncio.open_connection(*target)
        except (OSError, TimeoutError):
            writer.close()  # the validator is down: the dialer sees the connection close
            return
        self.connections_total += 1
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, src, dst)),
            asyncio.create_task(self._pump(up_reader, writer, dst, src)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, src: int, dst: int
    ) -> None:
        """Copy one direction under the rule of link src -> dst until EOF or an error."""
        loop = asyncio.get_running_loop()
        # (deliver_at, chunk); an empty chunk is the EOF, delivered in order like a FIN.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=QUEUE_CHUNKS_MAX)

        async def read() -> None:
            last = 0.0
            while True:
                data = await reader.read(CHUNK_BYTES)
                last = max(last, loop.time() + self.shaper.delay_s(src, dst, len(data)))
                await queue.put((last, data))
                if not data:
                    return

        async def deliver() -> None:
            while True:
                at, data = await queue.get()
                if at > loop.time():
                    await asyncio.sleep(at - loop.time())  # the link's delay, not a sync wait
                while self.shaper.rule(src, dst).cut:
                    assert self._changed is not None
                    await self._changed.wait()
                if not data:
                    return
                writer.write(data)
                await writer.drain()

        tasks = {asyncio.create_task(read()), asyncio.create_task(deliver())}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
