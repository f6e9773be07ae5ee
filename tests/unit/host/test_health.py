"""Readiness (node/host/health.py): the reason a node reports itself not ready."""

from __future__ import annotations


def test_readiness_reasons() -> None:
    from node.host.health import Health
    from node.net.peerwatch import Lag

    h = Health(quorum_peers=2, grace_s=1.0)
    ok = Lag(0, (), False)
    assert h.not_ready_reason(3, False, ok, 0.0) is None
    assert h.not_ready_reason(1, False, ok, 0.0) == "peers"
    assert h.not_ready_reason(3, True, ok, 0.0) == "syncing"
    assert h.not_ready_reason(3, False, Lag(0, (), False, True), 0.0) == "lone_view"
    h.on_round(view=2, active=False, now_s=10.0)
    assert h.not_ready_reason(3, False, ok, 10.5) is None  # a view change takes a moment
    assert h.not_ready_reason(3, False, ok, 11.5) == "view_change"
    h.on_round(view=2, active=True, now_s=12.0)
    assert h.not_ready_reason(3, False, ok, 12.0) is None
    assert h.update("peers")
    assert not h.update("peers")
    assert h.update(None)
