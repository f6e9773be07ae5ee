"""Where a synced write runs: on the event loop while it is small and the disk answers fast,
otherwise in its writer thread.

A hand-off to a thread and back is not free. On the 2-core machine of docs/performance.md (stop
21) ``run_in_executor`` of a no-op cost ~90 us of CPU and ~92 us of wall time, while an append
of a few hundred bytes and its fsync cost 25-34 us of CPU and ~100 us of wall time when run
inline. At light load every block takes about four such writes per validator (the consensus log
and the double-sign guard before each vote leaves, the block itself), each a hand-off and a
wake-up of another thread, and they sit on the commit's critical path.

So a write runs inline when

1. the caller calls it small (a signing round's records, a block of a few txs: the Python of a
   bigger one would hold the GIL in the thread anyway, but its LevelDB write lets the loop run);
2. the writer's recent writes were not blocked for long (a moving average of wall time minus
   the thread's CPU time, wherever they ran, at most ``INLINE_BLOCKED_MAX_S``): a slow disk, or
   a sync that suddenly takes milliseconds, sends the writes back to the thread, and they come
   back inline once the thread measures them fast again;
3. nothing handed to the thread is still running: writes of one writer keep their order.

Each writer owns one single-thread executor; every write of that thread goes through it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

# A write blocked longer than this (on average) is not worth a loop stall: it goes to the thread.
INLINE_BLOCKED_MAX_S = 0.001
AVERAGE_WEIGHT = 0.2  # of the newest write in the moving average of blocked time


class SyncWriter:
    """Runs one kind of durable write: inline when cheap, else in ``pool`` (one thread)."""

    def __init__(self, pool: Executor, blocked_max_s: float = INLINE_BLOCKED_MAX_S) -> None:
        self._pool = pool
        self._blocked_max_s = blocked_max_s
        # Moving average of the writes' blocked time (s). Written from the writer thread too: a
        # float store is atomic under the GIL, and a stale read only picks the other path once.
        self._blocked_s = 0.0
        self._outstanding: deque[Future[Any]] = deque()
        self.inline = 0  # writes run on the loop, and in the thread (for tests and docs)
        self.pooled = 0

    @property
    def pool(self) -> Executor:
        return self._pool

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Hand ``fn`` to the thread without waiting (a write nobody waits for); in order with
        every other write of this writer."""
        fut: Future[T] = self._pool.submit(self._timed, fn)
        self._outstanding.append(fut)
        self.pooled += 1
        return fut

    async def run(self, fn: Callable[[], T], small: bool = True) -> T:
        """Run ``fn`` and return its result: on the loop when it may, else in the thread."""
        if small and self._blocked_s <= self._blocked_max_s and self._idle():
            self.inline += 1
            return self._timed(fn)
        return await asyncio.wrap_future(self.submit(fn))

    def _idle(self) -> bool:
        """Nothing handed to the thread is still running (one thread: they finish in order)."""
        queue = self._outstanding
        while queue and queue[0].done():
            queue.popleft()
        return not queue

    def _timed(self, fn: Callable[[], T]) -> T:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return fn()
        finally:
            blocked = (time.perf_counter() - wall) - (time.thread_time() - cpu)
            self._blocked_s += AVERAGE_WEIGHT * (max(0.0, blocked) - self._blocked_s)
