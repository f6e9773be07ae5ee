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
2. at least one of the last ``WINDOW`` writes run inline was blocked (wall time minus the
   thread's CPU time) for at most ``INLINE_BLOCKED_MAX_S``. The least of a window, not an
   average: on a busy machine a write on the loop is now and then preempted or waits for the
   GIL for milliseconds, which says nothing about the disk, while a slow disk is slow every
   time. Once the writes go to the thread, every ``PROBE_EVERY``-th small one still runs inline
   to measure the disk again (in the thread its wall time would include the GIL's waits);
3. nothing handed to the thread is still running: writes of one writer keep their order;
4. the chain is lightly loaded (``LightLoad``: each of its last LIGHT_BLOCKS blocks had at most
   LIGHT_TXS_MAX txs). Under overload a round's few records are still small, but LevelDB may
   then stall a write (compactions behind the block writes) for as long as it takes, and on the
   loop that stall stops the node: in one of two 5,000-wallet overload runs without this rule
   every validator's request timer ran out twice in four minutes, against at most one lone
   timer per run before. Under load the writes go to their threads, as before stop 21.

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

# A write blocked longer than this is not worth a loop stall: it goes to the thread.
INLINE_BLOCKED_MAX_S = 0.001
WINDOW = 8  # inline writes whose least blocked time decides
PROBE_EVERY = 16  # while the writes go to the thread, one small write in this many runs inline
LIGHT_TXS_MAX = 64  # a block of more txs is load (and is itself written in the thread)
LIGHT_BLOCKS = 8  # blocks of at most LIGHT_TXS_MAX txs in a row before writes go inline again


class LightLoad:
    """Whether the chain is lightly loaded, from the sizes of its latest blocks: the committer
    notes each block, the writers read ``light``."""

    def __init__(self) -> None:
        self._small_run = LIGHT_BLOCKS  # a node starts idle

    def note_block(self, txs: int) -> None:
        self._small_run = self._small_run + 1 if txs <= LIGHT_TXS_MAX else 0

    @property
    def light(self) -> bool:
        return self._small_run >= LIGHT_BLOCKS


class SyncWriter:
    """Runs one kind of durable write: inline when cheap, else in ``pool`` (one thread)."""

    def __init__(
        self,
        pool: Executor,
        load: LightLoad | None = None,
        blocked_max_s: float = INLINE_BLOCKED_MAX_S,
        inline: bool = True,
    ) -> None:
        self._pool = pool
        self._load = load  # None: as if always lightly loaded
        self._may_inline = inline  # False: every write in the thread
        self._blocked_max_s = blocked_max_s
        self._blocked: deque[float] = deque(maxlen=WINDOW)  # of the last inline writes (s)
        self._fast = True  # the least of ``_blocked`` is within ``blocked_max_s``
        self._since_probe = 0
        self._outstanding: deque[Future[Any]] = deque()
        self.inline = 0  # writes run on the loop, and in the thread (for tests and docs)
        self.pooled = 0

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Hand ``fn`` to the thread without waiting (a write nobody waits for); in order with
        every other write of this writer."""
        fut: Future[T] = self._pool.submit(fn)
        self._forget_finished()  # a loaded chain never asks ``_idle``, which does it too
        self._outstanding.append(fut)
        self.pooled += 1
        return fut

    async def run(self, fn: Callable[[], T], small: bool = True) -> T:
        """Run ``fn`` and return its result: on the loop when it may, else in the thread."""
        light = self._load is None or self._load.light
        if small and light and self._may_inline and self._idle():
            if self._fast:
                return self._inline(fn)
            self._since_probe += 1
            if self._since_probe >= PROBE_EVERY:
                self._since_probe = 0
                return self._inline(fn)
        return await asyncio.wrap_future(self.submit(fn))

    @property
    def pending(self) -> int:
        """Writes handed to the thread and not yet seen finished."""
        return len(self._outstanding)

    def _forget_finished(self) -> None:
        """Drop the writes the thread has finished (one thread: they finish in order)."""
        queue = self._outstanding
        while queue and queue[0].done():
            queue.popleft()

    def _idle(self) -> bool:
        """Nothing handed to the thread is still running."""
        self._forget_finished()
        return not self._outstanding

    def _inline(self, fn: Callable[[], T]) -> T:
        self.inline += 1
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return fn()
        finally:
            blocked = (time.perf_counter() - wall) - (time.thread_time() - cpu)
            self._blocked.append(blocked)
            self._fast = min(self._blocked) <= self._blocked_max_s
