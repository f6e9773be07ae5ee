"""Readiness: whether this validator can take part in a quorum right now (``GET /ready``).

A node that serves RPC is not necessarily one that votes. ``/ready`` answers 503 with one of
these reasons (logged as ``not_ready`` when it starts, ``ready`` when it ends):

* ``peers``: fewer than 2f peers connected, so no quorum can include us;
* ``syncing`` / ``behind``: catching up, or f+1 peers report a higher head that ours does not reach;
* ``view_change``: our view change has been in progress longer than ``VIEW_CHANGE_GRACE_S``
  (a normal one completes in well under that once a quorum joins);
* ``view_behind``: f+1 peers work in a higher view (node/net/peerwatch.py);
* ``lone_view``: 2f peers agree on a view other than ours, so our view has at most f+1 members
  and cannot gather a quorum: we are alone in a view nobody joined, or left behind.
"""

from __future__ import annotations

from node.net.peerwatch import Lag

VIEW_CHANGE_GRACE_S = 1.0


class Health:
    def __init__(self, quorum_peers: int, grace_s: float = VIEW_CHANGE_GRACE_S) -> None:
        self._quorum_peers = quorum_peers
        self._grace_s = grace_s
        self._inactive_since_s: float | None = None
        self.reason: str | None = "starting"  # the last reason reported by ``update``

    def on_round(self, view: int, active: bool, now_s: float) -> None:
        """After each round of the core: track how long a view change has been going on."""
        del view
        if active:
            self._inactive_since_s = None
        elif self._inactive_since_s is None:
            self._inactive_since_s = now_s

    def view_change_s(self, now_s: float) -> float:
        """Seconds our current view change has lasted (0 while a view is active)."""
        since = self._inactive_since_s
        return 0.0 if since is None else max(0.0, now_s - since)

    def not_ready_reason(self, peers: int, syncing: bool, lag: Lag, now_s: float) -> str | None:
        """Why this node cannot take part in a quorum now, or None when it can."""
        if peers < self._quorum_peers:
            return "peers"
        if syncing:
            return "syncing"
        if lag.fetch_to:
            return "behind"
        if self.view_change_s(now_s) > self._grace_s:
            return "view_change"
        if lag.view_behind:
            return "view_behind"
        if lag.view_apart:
            return "lone_view"
        return None

    def update(self, reason: str | None) -> bool:
        """Record the current reason; True when readiness changed since the last call."""
        changed = (reason is None) != (self.reason is None) or reason != self.reason
        self.reason = reason
        return changed
