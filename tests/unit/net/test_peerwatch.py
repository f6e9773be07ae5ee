"""Peer status tracking (node/net/peerwatch.py): when to fetch, and when our view is off."""

from __future__ import annotations


def test_peerwatch_fetches_only_when_stuck_behind_f_plus_1_peers() -> None:
    from node.net.peerwatch import PeerWatch, vouched

    assert vouched([5, 9, 7], f=1) == 7
    assert vouched([5], f=1) == 0
    w = PeerWatch(f=1)
    w.on_status(1, 30, 0)
    assert w.check(head=25, view=0).fetch_to == 0  # one peer (maybe lying) is not enough
    w.on_status(2, 26, 0)
    first = w.check(head=25, view=0)
    assert first.fetch_to == 26
    assert first.behind
    w.on_status(1, 40, 0)
    w.on_status(2, 40, 0)
    assert w.check(head=30, view=0).fetch_to == 0  # head moves: consensus carries it
    both = w.check(head=30, view=0)
    assert both.fetch_to == 40
    assert both.fetch_from == (1, 2)
    assert w.check(head=40, view=0).behind is False


def test_peerwatch_view_behind_needs_two_checks_and_f_plus_1_peers() -> None:
    from node.net.peerwatch import PeerWatch

    w = PeerWatch(f=1)
    w.on_status(1, 5, 3)
    assert not w.higher_view(1)
    w.on_status(2, 5, 2)
    assert w.higher_view(1)
    assert w.check(head=5, view=1).view_behind is False
    assert w.check(head=5, view=1).view_behind is True
    assert w.check(head=5, view=2).view_behind is False
    w.forget(1)
    assert not w.higher_view(1)


def test_peerwatch_view_apart_when_2f_peers_share_another_view() -> None:
    """A lone replica in a higher view (issue 11 #2) is apart; so is one left behind."""
    from node.net.peerwatch import PeerWatch

    w = PeerWatch(1)
    for peer in (0, 1, 3):
        w.on_status(peer, 10, 1)
    assert not w.check(10, 2).view_apart  # two checks in a row: view changes race
    lag = w.check(10, 2)
    assert lag.view_apart
    assert not lag.view_behind  # the peers are *below* us: the old rule never saw it
    assert not w.check(10, 1).view_apart
    w.on_status(3, 10, 2)  # split 2/2: 0 and 1 in view 1, 3 with us in view 2
    w.check(10, 2)
    assert w.check(10, 2).view_apart  # 2f peers in view 1 agree on a view without us
