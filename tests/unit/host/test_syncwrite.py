"""node/host/syncwrite.py: small synced writes run on the loop while they are fast and nothing
is pending in the thread; the rest in the writer's thread, in order."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from node.host import syncwrite
from node.host.syncwrite import (
    LIGHT_BLOCKS,
    LIGHT_TXS_MAX,
    PROBE_EVERY,
    WINDOW,
    LightLoad,
    SyncWriter,
)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    p = ThreadPoolExecutor(1, thread_name_prefix="writer")
    yield p
    p.shutdown(wait=True)


def where() -> str:
    return threading.current_thread().name


async def test_a_small_fast_write_runs_on_the_loop_and_a_large_one_in_the_thread(
    pool: ThreadPoolExecutor,
) -> None:
    writer = SyncWriter(pool)
    loop_thread = where()
    assert await writer.run(where) == loop_thread
    assert (await writer.run(where, small=False)).startswith("writer")
    assert (writer.inline, writer.pooled) == (1, 1)
    never = SyncWriter(pool, inline=False)
    assert (await never.run(where)).startswith("writer")


async def test_a_write_waits_for_the_thread_while_a_submitted_one_is_pending(
    pool: ThreadPoolExecutor,
) -> None:
    writer = SyncWriter(pool)
    release = threading.Event()
    order: list[str] = []

    def slow() -> None:
        release.wait(5)
        order.append("submitted")

    def mine() -> str:
        order.append("run")
        return where()

    writer.submit(slow)
    task = asyncio.create_task(writer.run(mine))
    await asyncio.sleep(0.05)
    assert order == []  # not run inline ahead of the pending write
    release.set()
    assert (await task).startswith("writer")
    assert order == ["submitted", "run"]
    # Once the thread is idle again, small writes go back to the loop.
    assert await writer.run(where) == where()


async def test_a_slow_disk_sends_writes_to_the_thread_and_a_probe_brings_them_back(
    pool: ThreadPoolExecutor,
) -> None:
    writer = SyncWriter(pool, blocked_max_s=0.002)
    slow = True

    def sync() -> str:
        if slow:
            time.sleep(0.02)  # blocked, not CPU: a slow disk's fsync
        return where()

    loop_thread = where()
    assert await writer.run(sync) == loop_thread  # measured only once it has run
    assert (await writer.run(sync)).startswith("writer")
    slow = False
    ran = [await writer.run(sync) for _ in range(2 * PROBE_EVERY)]
    first_inline = ran.index(loop_thread)  # the probe: one write in PROBE_EVERY runs inline
    assert 0 < first_inline < PROBE_EVERY
    assert all(r.startswith("writer") for r in ran[:first_inline])
    assert all(r == loop_thread for r in ran[first_inline:])  # measured fast again


async def test_one_write_held_up_on_the_loop_does_not_move_the_writes(
    pool: ThreadPoolExecutor,
) -> None:
    """Preempted, or waiting for the GIL: one slow write among fast ones is not a slow disk."""
    writer = SyncWriter(pool, blocked_max_s=0.002)
    loop_thread = where()
    assert [await writer.run(where) for _ in range(3)] == [loop_thread] * 3
    await writer.run(lambda: time.sleep(0.02))
    assert await writer.run(where) == loop_thread
    for _ in range(WINDOW):
        await writer.run(lambda: time.sleep(0.005))
    assert (await writer.run(where)).startswith("writer")  # a whole window of slow ones is


class Clocks:
    """Wall and thread-CPU clocks the test moves by hand (a real busy loop on a loaded CI
    machine is preempted for milliseconds, which is wall time without CPU)."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def perf_counter(self) -> float:
        return self.wall

    def thread_time(self) -> float:
        return self.cpu


async def test_cpu_bound_work_is_not_counted_as_blocked(
    pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    clocks = Clocks()
    monkeypatch.setattr(syncwrite, "time", clocks)
    writer = SyncWriter(pool, blocked_max_s=0.003)

    def busy() -> str:  # 20 ms of CPU: the Python of a block
        clocks.wall += 0.02
        clocks.cpu += 0.02
        return where()

    def sync() -> str:  # 20 ms of wall time, 1 ms of it CPU: a slow disk
        clocks.wall += 0.02
        clocks.cpu += 0.001
        return where()

    loop_thread = where()
    assert [await writer.run(busy) for _ in range(WINDOW + 1)] == [loop_thread] * (WINDOW + 1)
    for _ in range(WINDOW):
        assert await writer.run(sync) == loop_thread  # the window still holds a fast one
    assert (await writer.run(busy)).startswith("writer")  # now a window of 19 ms blocked each


async def test_errors_reach_the_caller_from_either_path(pool: ThreadPoolExecutor) -> None:
    writer = SyncWriter(pool)

    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await writer.run(fail)
    with pytest.raises(OSError, match="disk full"):
        await writer.run(fail, small=False)
    assert await writer.run(where) == where()


async def test_under_load_every_write_goes_to_the_thread_until_blocks_are_small_again(
    pool: ThreadPoolExecutor,
) -> None:
    """A round's records stay small under overload, but LevelDB may stall any write then: on
    the loop that would stop the node, so a loaded chain writes in the threads only."""
    load = LightLoad()
    writer = SyncWriter(pool, load)
    loop_thread = where()
    assert load.light
    assert await writer.run(where) == loop_thread
    load.note_block(LIGHT_TXS_MAX + 1)
    assert not load.light
    assert (await writer.run(where)).startswith("writer")
    for _ in range(LIGHT_BLOCKS - 1):
        load.note_block(LIGHT_TXS_MAX)
    assert (await writer.run(where)).startswith("writer")
    load.note_block(0)
    assert load.light
    assert await writer.run(where) == loop_thread


async def test_finished_thread_writes_are_forgotten_under_load(pool: ThreadPoolExecutor) -> None:
    """A loaded chain sends every write to the thread; their futures (a block's result) must not
    pile up."""
    load = LightLoad()
    load.note_block(LIGHT_TXS_MAX + 1)
    writer = SyncWriter(pool, load)
    for n in range(200):
        assert await writer.run(functools.partial(int, n)) == n
    assert writer.pooled == 200
    assert writer.pending <= 1
