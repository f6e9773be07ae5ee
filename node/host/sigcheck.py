"""Decoding and signature checks of raw txs: a few on the loop, batches in a worker process.

Why a process and not a thread: libsodium's check (through cffi) releases the GIL, and a thread
checking a batch must take it back after every tx. While the event loop runs Python, each of
those takes up to the switch interval (5 ms): on this machine a batch of 512 took 40 ms in a
thread beside an idle loop, 2,730 ms and three times the CPU beside a busy one, and 115 ms in a
worker process beside the same busy loop (``scripts/bench_sigcheck``; docs/performance.md,
stop 22). Under overload admission's batches crawled that way, and
clients' calls waited out their 10 s deadline in it. The price: one process per pool (started at
its first batch), the batch's bytes sent over a pipe, and a second decode here of the txs that
passed (~15 us each).

If a worker dies (killed, out of memory), its batch is checked in a thread and the next batch
starts a new worker: no tx is lost or misjudged. Until a worker is ready, batches go to a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor

from common.codec import CodecError
from node.chain.tx import Transaction, decode_verified
from node.host.workers import check_signatures, process_pool

log = logging.getLogger(__name__)

# Up to this many txs are checked on the loop (~60-120 us each): a hand-off to another thread or
# process and back costs more than that on a lightly loaded chain, where batches are one or two.
INLINE_VERIFY_MAX = 2
ADMISSION_NICE = 5  # admission's checks yield the CPU to the validators' loops (an increment)


async def checked_txs(raws: list[bytes]) -> list[Transaction | str]:
    """``decode_verified`` in the loop's default thread pool, or on the loop for a few txs (the
    fallback of ``SignatureChecks``, and what a part uses when none is wired in)."""
    if len(raws) <= INLINE_VERIFY_MAX:
        return decode_verified(raws)
    return await asyncio.get_running_loop().run_in_executor(None, decode_verified, raws)


class SignatureChecks:
    """Each raw tx decoded with its signature checked (or why not), in order; a callable with
    ``checked_txs``'s shape, owning one worker process (``nice``: its niceness increment).

    The worker starts at the first batch and takes batches once it has answered an empty one:
    a start costs ~0.5 s (a Python and the tx code's imports), and the batches meanwhile go to a
    thread as before, so no batch waits for it (the first batches of a loaded test chain did,
    and the clients behind them were pushed back)."""

    def __init__(self, nice: int) -> None:
        self._nice = nice
        self._pool: ProcessPoolExecutor | None = None
        self._ready: Future[list[str | None]] | None = None  # the start's empty batch
        self.batches = 0  # checked in the worker
        self.workers_lost = 0

    def _worker(self) -> ProcessPoolExecutor | None:
        """The worker if it is ready; else starts it (once) and answers None."""
        if self._pool is None:
            self._pool = process_pool(self._nice)
            self._ready = self._pool.submit(check_signatures, [])
        ready = self._ready
        if ready is None or not ready.done():
            return None
        if ready.cancelled() or ready.exception() is not None:
            self._lost(self._pool)  # it died starting: the next batch starts another
            return None
        return self._pool

    async def warm(self) -> bool:
        """Start the worker now and wait until it takes batches; whether it does."""
        self._worker()
        ready = self._ready
        if ready is None:
            return False
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(ready)
        return self._worker() is not None

    def _lost(self, pool: ProcessPoolExecutor) -> None:
        self.workers_lost += 1
        if self._pool is pool:
            self._pool = None
            self._ready = None
        pool.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, raws: list[bytes]) -> list[Transaction | str]:
        if len(raws) <= INLINE_VERIFY_MAX:
            return decode_verified(raws)
        pool = self._worker()
        if pool is None:
            return await checked_txs(raws)
        try:
            verdicts = await asyncio.get_running_loop().run_in_executor(
                pool, check_signatures, raws
            )
        except BrokenExecutor:
            log.warning("signature_check_process_lost", extra={"txs": len(raws)})
            self._lost(pool)
            return await checked_txs(raws)
        self.batches += 1
        return _decoded(raws, verdicts)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            self._ready = None


def _decoded(raws: Sequence[bytes], verdicts: Sequence[str | None]) -> list[Transaction | str]:
    out: list[Transaction | str] = []
    for raw, why in zip(raws, verdicts, strict=True):
        if why is not None:
            out.append(why)
            continue
        try:
            out.append(Transaction.decode(raw))
        except CodecError as exc:  # decoded in the worker: only a mismatch of the two could
            out.append(f"does not decode: {exc.reason}")
    return out
