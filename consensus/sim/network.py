"""The simulated clock and network: a heap of timed events, per-message faults drawn from one rng.

Before GST messages are delayed, lost, duplicated (and so reordered) and cut by partitions,
one-way cuts and heavy loss on one node's links; from GST on every message between live
replicas arrives within ``delay_after_gst_ms_max``.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Faults:
    """One seed's fault schedule (all drawn from the seed's rng)."""

    gst_ms: int
    loss: float
    duplicate: float
    delay_ms_max: int
    spike: float  # chance that a message is delayed by up to 10x delay_ms_max
    partitions: tuple[tuple[int, int, frozenset[int]], ...]  # (start_ms, end_ms, one side)
    crashes: tuple[tuple[int, int, int], ...]  # (at_ms, node, down_ms)
    mid_step_crash: float  # chance that a step's actions stop halfway (crash) before GST
    # One-way cuts: nothing from ``src`` side to ``dst`` side, (start_ms, end_ms, src, dst).
    cuts: tuple[tuple[int, int, frozenset[int], frozenset[int]], ...] = ()
    # Heavy loss on every link of one node, (start_ms, end_ms, node, loss).
    lossy: tuple[tuple[int, int, int, float], ...] = ()
    durable_ms_max: int = 0  # the host writes a committed block this long after the Commit
    delay_after_gst_ms_max: int = 10

    @staticmethod
    def draw(rng: random.Random, n: int) -> Faults:
        gst_ms = rng.randint(200, 1000)
        partitions = []
        for _ in range(rng.randint(0, 2)):
            start = rng.randrange(gst_ms)
            end = min(gst_ms, start + rng.randint(20, 400))
            side = frozenset(i for i in range(n) if rng.random() < 0.5)
            partitions.append((start, end, side))
        crashes = [
            (rng.randrange(gst_ms), rng.randrange(n), rng.randint(5, 300))
            for _ in range(rng.randint(0, 3))
        ]
        cuts: list[tuple[int, int, frozenset[int], frozenset[int]]] = []
        lossy: list[tuple[int, int, int, float]] = []
        if rng.random() < 0.4:
            # Leave one replica alone: it stops hearing the others (or they stop hearing it, or
            # its links lose most messages) until GST, long enough to time out by itself.
            alone = rng.randrange(n)
            others = frozenset(range(n)) - {alone}
            start = rng.randrange(gst_ms // 2)
            kind = rng.randrange(3)
            if kind == 0:
                cuts.append((start, gst_ms, others, frozenset({alone})))
            elif kind == 1:
                cuts.append((start, gst_ms, frozenset({alone}), others))
            else:
                lossy.append((start, gst_ms, alone, rng.choice([0.5, 0.8, 0.95])))
        clean = bool(cuts or lossy) and rng.random() < 0.5
        if clean:
            # Only the lone replica's fault: nothing else makes the others change view with it.
            partitions, crashes = [], []
        return Faults(
            gst_ms=gst_ms,
            loss=0.0 if clean else rng.choice([0.0, 0.02, 0.1, 0.25]),
            duplicate=rng.choice([0.0, 0.05, 0.2]),
            delay_ms_max=rng.choice([5, 20, 60, 150]),
            spike=0.0 if clean else rng.choice([0.0, 0.01, 0.05]),
            partitions=tuple(partitions),
            crashes=tuple(crashes),
            mid_step_crash=0.0 if clean else rng.choice([0.0, 0.002, 0.01, 0.03]),
            cuts=tuple(cuts),
            lossy=tuple(lossy),
            durable_ms_max=rng.choice([0, 2, 10, 40]),
        )


@dataclass(order=True, slots=True)
class Scheduled:
    at_ms: int
    order: int
    node: int = field(compare=False)
    kind: str = field(compare=False)
    data: Any = field(compare=False, default=None)


class Network:
    """The event heap plus the message-fault model."""

    def __init__(self, rng: random.Random, faults: Faults) -> None:
        self.rng = rng
        self.faults = faults
        self.now_ms = 0
        self._heap: list[Scheduled] = []
        self._order = 0
        self.sent = 0
        self.lost = 0

    def schedule(self, at_ms: int, node: int, kind: str, data: Any = None) -> None:
        self._order += 1
        heapq.heappush(
            self._heap, Scheduled(max(at_ms, self.now_ms), self._order, node, kind, data)
        )

    def pop(self) -> Scheduled | None:
        if not self._heap:
            return None
        event = heapq.heappop(self._heap)
        self.now_ms = event.at_ms
        return event

    def partitioned(self, a: int, b: int) -> bool:
        now = self.now_ms
        for start, end, side in self.faults.partitions:
            if start <= now < end and ((a in side) != (b in side)):
                return True
        return False

    def cut(self, src: int, dst: int) -> bool:
        """Partitioned, or a one-way cut from ``src`` to ``dst`` in force now."""
        now = self.now_ms
        return self.partitioned(src, dst) or any(
            start <= now < end and src in froms and dst in tos
            for start, end, froms, tos in self.faults.cuts
        )

    def loss(self, src: int, dst: int) -> float:
        now = self.now_ms
        extra = [
            loss
            for start, end, node, loss in self.faults.lossy
            if start <= now < end and node in (src, dst)
        ]
        return max([self.faults.loss, *extra])

    def send(self, src: int, dst: int, data: Any, kind: str = "msg") -> None:
        """Queue ``data`` for ``dst``, subject to the faults in force now."""
        self.sent += 1
        f = self.faults
        rng = self.rng
        if self.now_ms >= f.gst_ms:
            self.schedule(
                self.now_ms + rng.randint(1, f.delay_after_gst_ms_max), dst, kind, (src, data)
            )
            return
        if self.cut(src, dst) or rng.random() < self.loss(src, dst):
            self.lost += 1
            return
        copies = 2 if rng.random() < f.duplicate else 1
        for _ in range(copies):
            delay = rng.randint(1, f.delay_ms_max)
            if rng.random() < f.spike:
                delay *= rng.randint(2, 10)
            self.schedule(self.now_ms + delay, dst, kind, (src, data))
