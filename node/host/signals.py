"""Small shared objects the host's tasks use to signal each other, each with one owner.

The driver, the committer, admission and the proposer meet here instead of in one big ``Node``:
the core's proposal requests and the proposer's wake-up (``ProposalQueue``), the chain head that
catch-up waits on (``Head``), the core's "pending work" flag (``PendingFlag``), the /ws
subscribers (``Subscribers``) and the txs of proposals waiting for the driver's next log write
(``ProposalBodies``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from consensus.api import Event, Pending

log = logging.getLogger(__name__)

Inbox = asyncio.Queue[Event]
Publish = Callable[[dict[str, Any]], None]


class ProposalQueue:
    """The core's ``RequestProposal``s in order, and the event that wakes the proposer.

    ``heartbeats``: the requests the core marked ``heartbeat`` (the chain is idle): they are
    answered at once with whatever is ready, possibly no txs. The core may mark a request it
    made earlier; it is not queued twice.
    """

    def __init__(self) -> None:
        self.requests: deque[tuple[int, int]] = deque()
        self.heartbeats: set[tuple[int, int]] = set()
        self._wake = asyncio.Event()

    def request(self, view: int, seq: int, heartbeat: bool = False) -> None:
        if heartbeat:
            self.heartbeats.add((view, seq))
        if (view, seq) not in self.requests:
            self.requests.append((view, seq))
        self._wake.set()

    def pop(self) -> tuple[int, int]:
        """The first request, done with (answered or stale)."""
        first = self.requests.popleft()
        self.heartbeats.discard(first)
        return first

    def clear(self) -> None:
        """A view change: requests of other views are void."""
        self.requests.clear()
        self.heartbeats.clear()

    def wake(self) -> None:
        """Something changed that may let a waiting request be filled (txs, a commit)."""
        self._wake.set()

    async def woken(self) -> None:
        await self._wake.wait()
        self._wake.clear()


class ProposalBodies:
    """The txs of payloads we propose or are about to vote for, until the driver's next write.

    They must be durable before our PRE-PREPARE or PREPARE for the payload leaves (a quorum that
    voted can always serve the block's txs). The resolver adds them before it answers (the
    proposal, the verdict); the round that sends that message takes them into its consensus-log
    batch (node/host/driver.py), so they cost no fsync and no thread hand-off of their own.
    """

    def __init__(self) -> None:
        self._items: list[tuple[int, bytes, bytes]] = []  # (seq, key, data), in order

    def add(self, seq: int, key: bytes, data: bytes) -> None:
        self._items.append((seq, key, data))

    def take(self, committed: int) -> list[tuple[bytes, bytes]]:
        """Everything added so far, but for seqs already committed here (nothing to back)."""
        items, self._items = self._items, []
        return [(key, data) for seq, key, data in items if seq > committed]

    def __len__(self) -> int:
        return len(self._items)


class Head:
    """The chain head as other tasks wait on it; the committer calls ``advanced``."""

    def __init__(self, height: Callable[[], int]) -> None:
        self.height = height
        self._changed = asyncio.Event()
        self.advanced_s = -math.inf  # time.monotonic() of the last advance (the proposer's pace)

    def advanced(self) -> None:
        self.advanced_s = time.monotonic()
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, seq: int, timeout_s: float) -> bool:
        """Wait until the chain reaches ``seq``; False on timeout (catch-up uses it)."""
        try:
            async with asyncio.timeout(timeout_s):
                while self.height() < seq:
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True


class PendingFlag:
    """Tells the core when the mempool starts or stops holding txs not yet in a proposal.

    ``has_runnable`` walks the senders of the mempool until one can run. With tens of
    thousands of txs parked behind nonce gaps (sustained overload) that walk took a fifth of a
    node's CPU, asked on every commit, admission batch and tick. Once a walk costs more than
    SLOW_S, the flag is refreshed at most every SLOW_EVERY_S (the ticker asks every tick_ms);
    a small mempool, as on a lightly loaded chain, is still answered at once.
    """

    SLOW_S = 0.001
    SLOW_EVERY_S = 0.025

    def __init__(
        self,
        has_runnable: Callable[[], bool],
        inbox: Inbox,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._has_runnable = has_runnable
        self._inbox = inbox
        self._pending = False
        self._clock = clock
        self._walked_at = -math.inf
        self._walk_s = 0.0

    def update(self) -> None:
        now = self._clock()
        if self._walk_s > self.SLOW_S and now - self._walked_at < self.SLOW_EVERY_S:
            return
        pending = self._has_runnable()
        self._walked_at = now
        self._walk_s = self._clock() - now
        if pending != self._pending:
            try:
                self._inbox.put_nowait(Pending(pending))
            except asyncio.QueueFull:
                return  # the ticker tries again
            self._pending = pending


class Subscribers:
    """The /ws subscribers' callbacks (node/api/ws.py); a subscriber's bug never stops us."""

    def __init__(self) -> None:
        self.callbacks: list[Publish] = []

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def publish(self, event: dict[str, Any]) -> None:
        for cb in list(self.callbacks):
            try:
                cb(event)
            except Exception:  # a subscriber's bug must not stop commits
                log.exception("subscriber_failed")

    def subscribe(self, callback: Publish) -> Callable[[], None]:
        subs = self.callbacks
        subs.append(callback)

        def unsubscribe() -> None:
            if callback in subs:
                subs.remove(callback)

        return unsubscribe
