"""What the other replicas say about themselves: their view and height, as hints.

Fed by the host's ``PeerStatus`` events (unsigned, over authenticated links) and by signed
PRE-PREPARE/PREPARE/COMMITs of views below ours (an honest replica sends those only while active
in that view). Hints only decide *when* the core acts (send a VIEW-CHANGE, fetch blocks, start a
RETRACT); what is safe never depends on them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Report:
    view: int
    height: int
    at_ms: int


class PeerReports:
    """The latest report per peer; answers "what do at least k of them say" questions."""

    def __init__(self) -> None:
        self._views: dict[int, tuple[int, int]] = {}  # sender -> (view, at_ms)
        self._heights: dict[int, int] = {}  # sender -> height

    def status(self, sender: int, view: int, height: int, now_ms: int) -> None:
        self._views[sender] = (view, now_ms)
        self._heights[sender] = height

    def working_in(self, sender: int, view: int, now_ms: int) -> None:
        """A signed message shows ``sender`` active in ``view`` now (never moves its view back
        below a newer status of a higher view, which would only be a reordered message)."""
        known = self._views.get(sender)
        if known is None or known[0] <= view or known[1] < now_ms:
            self._views[sender] = (view, now_ms)

    def vouched_view(self, f: int, since_ms: int) -> int:
        """The highest view at least f+1 peers reported at or after ``since_ms`` (else -1)."""
        views = sorted((v for v, at in self._views.values() if at >= since_ms), reverse=True)
        return views[f] if len(views) > f else -1

    def common_view(self, below: int, count: int, since_ms: int) -> int | None:
        """The highest view under ``below`` that at least ``count`` peers reported recently."""
        tally: dict[int, int] = {}
        for view, at in self._views.values():
            if at >= since_ms and view < below:
                tally[view] = tally.get(view, 0) + 1
        found = [v for v, c in tally.items() if c >= count]
        return max(found, default=None)

    def vouched_height(self, f: int) -> tuple[int, tuple[int, ...]]:
        """The highest height at least f+1 peers reported, and the peers at or above it."""
        heights = sorted(self._heights.values(), reverse=True)
        if len(heights) <= f:
            return 0, ()
        target = heights[f]
        peers = sorted((p for p, h in self._heights.items() if h >= target), key=lambda p: p)
        return target, tuple(peers)
