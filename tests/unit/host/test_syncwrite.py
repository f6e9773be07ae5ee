"""node/host/syncwrite.py: small synced writes run on the loop while they are fast and nothing
is pending in the thread; the rest in the writer's thread, in order."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from node.host.syncwrite import SyncWriter


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


async def test_a_write_waits_for_the_thread_while_a_submitted_one_is_pending(
    pool: ThreadPoolExecutor,
) -> None:
    writer = SyncWriter(pool, blocked_max_s=1.0)  # the wait below is no slow disk
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


async def test_blocked_writes_go_to_the_thread_until_it_measures_them_fast_again(
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
    ran = [await writer.run(sync) for _ in range(40)]
    assert ran[0].startswith("writer")  # the average comes down write by write
    assert ran[-1] == loop_thread
    first_inline = ran.index(loop_thread)
    assert all(r == loop_thread for r in ran[first_inline:])


async def test_cpu_bound_work_is_not_counted_as_blocked(pool: ThreadPoolExecutor) -> None:
    # Counted as blocked, one 20 ms write would lift the average (weight 0.2) to 4 ms.
    writer = SyncWriter(pool, blocked_max_s=0.003)

    def busy() -> str:
        end = time.thread_time() + 0.02
        while time.thread_time() < end:
            pass
        return where()

    loop_thread = where()
    assert [await writer.run(busy) for _ in range(3)] == [loop_thread] * 3


async def test_errors_reach_the_caller_from_either_path(pool: ThreadPoolExecutor) -> None:
    writer = SyncWriter(pool)

    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await writer.run(fail)
    with pytest.raises(OSError, match="disk full"):
        await writer.run(fail, small=False)
    assert await writer.run(where) == where()
