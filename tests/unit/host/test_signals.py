"""PendingFlag: the core hears when runnable work appears or goes, at a bounded cost."""

from __future__ import annotations

import asyncio

from consensus.api import Event, Pending
from node.host.signals import PendingFlag


class Walk:
    """A fake ``has_runnable`` whose every call advances the fake clock by ``cost_s``."""

    def __init__(self) -> None:
        self.now = 0.0
        self.cost_s = 0.0
        self.answer = False
        self.calls = 0

    def clock(self) -> float:
        return self.now

    def __call__(self) -> bool:
        self.calls += 1
        self.now += self.cost_s
        return self.answer


async def test_a_cheap_walk_answers_every_time_a_slow_one_at_most_every_25_ms() -> None:
    walk = Walk()
    inbox: asyncio.Queue[Event] = asyncio.Queue()
    flag = PendingFlag(walk, inbox, clock=walk.clock)
    walk.answer = True
    flag.update()
    assert inbox.get_nowait() == Pending(True)  # a small mempool: at once
    walk.answer = False
    flag.update()
    assert inbox.get_nowait() == Pending(False)
    assert walk.calls == 2

    walk.cost_s = 0.004  # tens of thousands of parked txs
    flag.update()  # measured slow
    walk.answer = True
    for _ in range(5):
        walk.now += 0.003
        flag.update()  # within 25 ms of the slow walk: not walked again
    assert walk.calls == 3
    assert inbox.empty()
    walk.now += 0.010
    flag.update()
    assert walk.calls == 4
    assert inbox.get_nowait() == Pending(True)
