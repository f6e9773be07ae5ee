"""What the peers' status frames say about this node: behind in height, or stuck in an older view.

PBFT only tells a replica it is behind when messages flow: a commit quorum for a later seq or a
stable checkpoint. On an idle cluster nothing flows, so a node restarted a block or two behind (or
one that missed a NEW-VIEW) would stay there, answer 200 on /ready and, once work arrives, act on
stale state. Every node broadcasts ``status{height, view}`` once a second; this module turns those
into two signals, checked once per status period:

* **stuck behind**: at least f+1 peers (so at least one honest one) report a height above ours
  and our head did not move during the last period. Then catch-up fetches up to that height.
  A head that still moves is being carried by consensus, so nothing is fetched twice under load.
* **view behind**: at least f+1 peers report a view above ours on two checks in a row. The
  runtime then stops proposing in its stale view; the core, fed the same frames as
  ``PeerStatus``, sends the VIEW-CHANGE that the current primary answers with its NEW-VIEW.
* **view apart**: at least 2f peers report one same view other than ours (higher *or lower*) on
  two checks in a row. Our view then has at most f+1 members and no quorum: we are alone in a
  view nobody joined (or left behind). ``/ready`` says 503 (node/host/health.py); leaving that
  view safely is the core's rule, fed by the same status frames as ``PeerStatus`` events.

Peers can lie about their status; the f+1 rule means a single faulty peer cannot trigger either
signal, and fetched blocks are checked against their commit certificates anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

VIEW_BEHIND_CHECKS = 2  # consecutive checks before an older view counts (view changes race)


@dataclass(frozen=True, slots=True)
class Lag:
    """The outcome of one check: fetch up to ``fetch_to`` (0: nothing), view behind or apart."""

    fetch_to: int
    fetch_from: tuple[int, ...]  # peers at or above fetch_to, best first
    view_behind: bool
    view_apart: bool = False  # 2f peers share a view that is not ours

    @property
    def behind(self) -> bool:
        return self.fetch_to > 0 or self.view_behind


def common_view(views: Iterable[int], size: int) -> int | None:
    """The highest view that at least ``size`` of ``views`` report, None when there is none."""
    counts: dict[int, int] = {}
    for v in views:
        counts[v] = counts.get(v, 0) + 1
    agreed = [v for v, c in counts.items() if c >= size]
    return max(agreed) if agreed and size > 0 else None


def vouched(values: Iterable[int], f: int) -> int:
    """The highest value that at least f+1 of ``values`` reach (0 when fewer than f+1 values)."""
    ordered = sorted(values, reverse=True)
    return ordered[f] if len(ordered) > f else 0


class PeerWatch:
    def __init__(self, f: int) -> None:
        self.f = f
        self.heights: dict[int, int] = {}
        self.views: dict[int, int] = {}
        self._last_head: int | None = None
        self._view_checks = 0
        self._apart_checks = 0
        self.last = Lag(0, (), False)

    def on_status(self, peer: int, height: int, view: int) -> None:
        self.heights[peer] = height
        self.views[peer] = view

    def forget(self, peer: int) -> None:
        self.heights.pop(peer, None)
        self.views.pop(peer, None)

    def quorum_listening(self) -> bool:
        """2f peers are connected and have told us their status: with us, a quorum that hears
        what we broadcast now. A peer's status is forgotten when its link goes down."""
        return len(self.views) >= 2 * self.f

    def higher_view(self, view: int) -> bool:
        """f+1 peers are in a view above ``view`` right now (no persistence required)."""
        return vouched(self.views.values(), self.f) > view

    def apart(self, view: int) -> bool:
        """2f peers agree on a view other than ``view`` right now (no persistence required)."""
        common = common_view(self.views.values(), 2 * self.f)
        return common is not None and common != view

    def check(self, head: int, view: int) -> Lag:
        """Call once per status period with our head height and current view."""
        target = vouched(self.heights.values(), self.f)
        stuck = target > head and self._last_head is not None and head <= self._last_head
        self._last_head = head
        fetch_to = target if stuck else 0
        peers = tuple(
            sorted(
                (p for p, h in self.heights.items() if h >= target), key=lambda p: -self.heights[p]
            )
        )
        self._view_checks = self._view_checks + 1 if self.higher_view(view) else 0
        self._apart_checks = self._apart_checks + 1 if self.apart(view) else 0
        self.last = Lag(
            fetch_to,
            peers if stuck else (),
            self._view_checks >= VIEW_BEHIND_CHECKS,
            self._apart_checks >= VIEW_BEHIND_CHECKS,
        )
        return self.last
