"""The hold budget: at most so many senders held a minute by one validator.

A model gone wrong (a regime it never saw, a bad window) would otherwise hold honest traffic by
the thousand. The budget bounds that worst case and makes it visible: past ``per_min`` senders
newly held in the last minute, a tx is held only when it scores above everything held in that
minute (the clearly worst still wait for an operator), and never past twice the budget; the rest
pass marked ``watch``, counted in ``overflows`` (a metric and a warning log in node/host/).

Senders count, not txs: a sender already held in the window is held again at no charge, since
its later txs wait behind the first hold anyway. Time is passed in (milliseconds), so the same
inputs give the same decisions.
"""

from __future__ import annotations

from collections import deque

WINDOW_MS = 60_000
HARD_CAP_FACTOR = 2  # even the highest scores stop being held past this many budgets


class HoldBudget:
    """Which of the detector's would-be holds are held; the rest are ``watch``."""

    def __init__(self, per_min: int) -> None:
        if per_min < 1:
            raise ValueError("hold budget: per_min must be positive")
        self.per_min = per_min
        self._charged: deque[tuple[int, bytes, float]] = deque()  # (time, sender, score)
        self._senders: dict[bytes, int] = {}
        self.overflows = 0  # would-be holds passed as watch, ever
        self.holds = 0  # holds decided, ever (charged or not)
        self._times: deque[int] = deque()  # times of holds in the last minute (hold rate)

    def _evict(self, now_ms: int) -> None:
        horizon = now_ms - WINDOW_MS
        while self._charged and self._charged[0][0] <= horizon:
            _, sender, _ = self._charged.popleft()
            left = self._senders[sender] - 1
            if left:
                self._senders[sender] = left
            else:
                del self._senders[sender]
        while self._times and self._times[0] <= horizon:
            self._times.popleft()

    def decide(self, sender: bytes, score: float, now_ms: int, *, blocked: bool = False) -> bool:
        """True: hold this would-be hold. False: pass it marked ``watch`` (counted).

        ``blocked``: the sender already has a tx held, so holding this one costs nothing.
        """
        self._evict(now_ms)
        if blocked or sender in self._senders:
            return self._held(now_ms)
        n = len(self._charged)
        if n >= self.per_min:
            top = max(s for _, _, s in self._charged)
            if n >= HARD_CAP_FACTOR * self.per_min or score <= top:
                self.overflows += 1
                return False
        self._charged.append((now_ms, sender, score))
        self._senders[sender] = self._senders.get(sender, 0) + 1
        return self._held(now_ms)

    def _held(self, now_ms: int) -> bool:
        self.holds += 1
        self._times.append(now_ms)
        return True

    def holds_last_minute(self, now_ms: int) -> int:
        self._evict(now_ms)
        return len(self._times)

    def senders_last_minute(self, now_ms: int) -> int:
        self._evict(now_ms)
        return len(self._charged)
