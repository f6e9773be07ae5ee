"""Catching up: what we know is committed beyond our log, who holds it, and when to ask the host
to fetch it (``FetchBlocks``), after a grace period and rate-limited."""

from __future__ import annotations

from collections.abc import Iterable

from consensus.api import FetchBlocks


class FetchPlanner:
    """Owns how far ahead the others are, who can serve it, and the fetch deadline."""

    def __init__(self, me: int, request_timeout_ms: int, now_ms: int) -> None:
        self._me = me
        self._delay_ms = max(1, request_timeout_ms // 4)  # grace after our last progress
        self._known_ahead = 0  # committed somewhere: we saw its commit certificate or checkpoint
        self._hint_ahead = 0  # height f+1 peers report (PeerStatus): fetch, but no view change
        self._peers: set[int] = set()
        self._deadline_ms: int | None = None
        self._last_progress_ms = now_ms  # last seq we executed
        self._last_fetch_ms: int | None = None
        self._last_fetch_to = 0

    @property
    def deadline_ms(self) -> int | None:
        return self._deadline_ms

    def due(self, now_ms: int) -> bool:
        return self._deadline_ms is not None and now_ms >= self._deadline_ms

    def behind(self, committed_seq: int) -> bool:
        """Commits we saw (not mere hints) are ahead of us: work for the request timer."""
        return self._known_ahead > committed_seq

    def note_ahead(self, seq: int, peers: Iterable[int]) -> None:
        """Remember that ``seq`` is committed somewhere, and which peers can serve it."""
        if seq > self._known_ahead:
            self._known_ahead = seq
        self._peers.update(p for p in peers if p != self._me)

    def hint(self, height: int, peers: Iterable[int], committed_seq: int) -> None:
        """f+1 peers report ``height``: fetch up to it, but it is no evidence of work."""
        if height > max(self._hint_ahead, committed_seq):
            self._hint_ahead = height
            self._peers.update(peers)

    def progressed(self, now_ms: int) -> None:
        self._last_progress_ms = now_ms

    def plan(self, now_ms: int, committed_seq: int, urgent: bool) -> FetchBlocks | None:
        """A ``FetchBlocks`` to emit now, if any; otherwise when to look again (``deadline_ms``)."""
        ahead = max(self._known_ahead, self._hint_ahead)
        if ahead <= committed_seq:
            self._deadline_ms = None
            return None
        delay = self._delay_ms
        due = self._last_progress_ms + delay
        if not urgent and now_ms < due:
            self._deadline_ms = due
            return None
        last = self._last_fetch_ms
        if last is not None and now_ms - last < 2 * delay and self._last_fetch_to >= ahead:
            self._deadline_ms = last + 2 * delay
            return None
        self._last_fetch_ms = now_ms
        self._last_fetch_to = ahead
        self._deadline_ms = now_ms + 2 * delay
        return FetchBlocks(committed_seq + 1, ahead, tuple(sorted(self._peers)))
