"""The driver's round: Persist records durable before any send; the rounds that need not wait."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from consensus.api import Action, Applied, Broadcast, Clock, Dropped, Event, Persist, Tick, Validate
from node.host.driver import Driver
from node.host.signals import ProposalBodies
from node.host.syncwrite import SyncWriter


class Replica:
    """Answers each event with the next scripted round of actions."""

    view = 0
    view_active = True

    def __init__(self, rounds: list[list[Action]]) -> None:
        self.rounds = rounds
        self.events: list[Event] = []

    def step(self, event: Event) -> list[Action]:
        self.events.append(event)
        if isinstance(event, Clock):
            return []  # the clock moves on; nothing else happens
        return self.rounds.pop(0) if self.rounds else []


class Log:
    """A consensus log whose writes finish only when the test says so."""

    def __init__(self, trace: list[str]) -> None:
        self.trace = trace
        self.release = threading.Event()
        self.batches: list[tuple[list[tuple[bytes, bytes | None]], list[tuple[bytes, bytes]]]] = []

    def log_write(
        self,
        records: Sequence[tuple[bytes, bytes | None]],
        meta: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.batches.append((list(records), list(meta)))
        self.trace.append("write started")
        assert self.release.wait(5.0)
        self.trace.append("write durable")


class Performer:
    def __init__(self, trace: list[str]) -> None:
        self.trace = trace

    async def perform(self, a: Action) -> None:
        if not isinstance(a, Persist):
            self.trace.append(type(a).__name__)


class Metrics:
    @contextlib.contextmanager
    def time_storage_write(self) -> Iterator[None]:
        yield


class Health:
    def on_round(self, view: int, active: bool, now: float) -> None:
        pass


async def _until(cond: Any) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 5 s")


async def test_a_round_that_only_validates_writes_nothing_and_the_next_writes_both() -> None:
    trace: list[str] = []
    log = Log(trace)
    inbox: asyncio.Queue[Event] = asyncio.Queue()
    pool = ThreadPoolExecutor(1)
    bodies = ProposalBodies()
    driver = Driver(
        replica=cast(
            Any,
            Replica(
                [
                    [Persist(((b"pp", b"1"),)), Validate(0, 1, b"d", b"p")],
                    [Dropped("late", 2)],
                    [Persist(((b"prepare", b"2"),)), Broadcast(b"vote")],
                ]
            ),
        ),
        inbox=cast(Any, inbox),
        log=log,
        log_writer=SyncWriter(pool, inline=False),  # in the thread: the fake log blocks
        sign_guard=None,
        index=1,
        payload_bytes_max=1 << 20,
        actions=cast(Any, Performer(trace)),
        health=cast(Any, Health()),
        metrics=cast(Any, Metrics()),
        durable_height=lambda: 0,
        bodies=bodies,
        now_ms=lambda: 0,
    )
    task = asyncio.create_task(driver.run())
    try:
        # A backup's accepted PRE-PREPARE: validation starts, nothing is written (no fsync).
        inbox.put_nowait(Tick(0))
        await _until(lambda: "Validate" in trace)
        inbox.put_nowait(Tick(1))
        await _until(lambda: "Dropped" in trace)
        assert trace == ["Validate", "Dropped"]
        # The round that sends writes the held-back record with its own, in order, and the
        # proposal txs the resolver handed over, in one batch; nothing leaves before it is
        # durable. Txs of a seq already committed here are not written.
        assert log.batches == []
        bodies.add(1, b"ptx1", b"txs of seq 1")
        bodies.add(0, b"ptx0", b"txs of a committed seq")
        inbox.put_nowait(Tick(2))
        await _until(lambda: len(log.batches) == 1)
        await asyncio.sleep(0.1)
        assert "Broadcast" not in trace
        log.release.set()
        await _until(lambda: "Broadcast" in trace)
        assert log.batches == [([(b"pp", b"1"), (b"prepare", b"2")], [(b"ptx1", b"txs of seq 1")])]
        assert len(bodies) == 0
        assert trace == ["Validate", "Dropped", "write started", "write durable", "Broadcast"]
    finally:
        log.release.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        pool.shutdown(wait=True)


async def test_each_round_starts_with_the_hosts_clock_not_the_last_ticks() -> None:
    """Under load the last Tick can be a second old when a round is stepped; a request timer
    re-armed in that round (an ``Applied``) then ran out that much early, and the backups
    left a primary that was keeping up (since_commit_ms 1.1-1.4 s against a 2 s timer). The
    round's events follow a ``Clock`` with the time the round started, and the timers are
    checked (one Tick) after them: a Tick queued ahead of an ``Applied`` fired the timer a
    moment before that progress was stepped."""
    clock = [5_000]
    replica = Replica([])
    inbox: asyncio.Queue[Event] = asyncio.Queue()
    driver = Driver(
        replica=cast(Any, replica),
        inbox=cast(Any, inbox),
        log=Log([]),
        log_writer=SyncWriter(ThreadPoolExecutor(1)),
        sign_guard=None,
        index=1,
        payload_bytes_max=1 << 20,
        actions=cast(Any, Performer([])),
        health=cast(Any, Health()),
        metrics=cast(Any, Metrics()),
        durable_height=lambda: 0,
        bodies=ProposalBodies(),
        now_ms=lambda: clock[0],
    )
    inbox.put_nowait(Tick(4_000))  # queued a second ago
    inbox.put_nowait(Applied(7))
    task = asyncio.create_task(driver.run())
    try:
        await _until(lambda: len(replica.events) >= 3)
        assert replica.events == [Clock(5_000), Applied(7), Tick(5_000)]
        clock[0] = 6_000
        inbox.put_nowait(Applied(8))
        await _until(lambda: len(replica.events) >= 5)
        assert replica.events[3:] == [Clock(6_000), Applied(8)]  # no Tick queued: none stepped
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
