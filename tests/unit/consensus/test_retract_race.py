"""A RETRACT that crosses the others' move into the view it leaves (simulator seeds 464, 749).

Replica 3 alone in VIEW-CHANGE(1) retracts it to return to view 0 just as the others leave view
0 for view 1 with a NEW-VIEW built on that very VIEW-CHANGE. Nobody acknowledges the RETRACT
any more (they left view 0), so replica 3 must be able to enter view 1 through that NEW-VIEW;
and a replica that is itself changing to view 1 must not build view 1's NEW-VIEW on a
VIEW-CHANGE whose sender retracted it, which the replicas that acknowledged would refuse.
"""

from __future__ import annotations

import random

from common import codec
from common.crypto import SigningKey
from consensus import messages as m
from consensus.api import (
    Action,
    Broadcast,
    Clock,
    Dropped,
    PeerStatus,
    Pending,
    Received,
    Tick,
)
from consensus.replica import Replica
from tests.unit.consensus.test_replica import (
    SEEDS,
    Harness,
    _alone_in_view_one,
    _heal_and_report,
    config,
    signed,
)


def view_change(sender: int, epoch: int = 0) -> m.ViewChange:
    key = SigningKey(SEEDS[sender])
    return m.sign(m.ViewChange(1, 0, b"\x00" * 32, (), (), sender, epoch=epoch), key, "vigil")


def decoded(actions: list[Action]) -> list[m.Message]:
    return [m.decode(a.data, 1024, 64 * 1024) for a in actions if isinstance(a, Broadcast)]


def _retracted_without_return(h: Harness) -> m.ViewChange:
    """Replica 3 alone in view 1 retracts (the others report view 0), but every
    acknowledgment is lost: it never returns. Its first VIEW-CHANGE(1), now retracted."""
    stale = m.decode(_alone_in_view_one(h)[0], 1024, 64 * 1024)
    assert isinstance(stale, m.ViewChange)
    h.drop = lambda src, dst, data: isinstance(m.decode(data, 1024, 64 * 1024), m.RetractAck)
    h.feed(3, Pending(False))
    for _ in range(3):
        for j in (0, 1, 2):
            h.feed(3, PeerStatus(j, len(h.commits[j]), 0))
        h.run()
        h.tick(100)
    assert any(isinstance(x, m.Retract) for x in decoded(h.actions_of[3]))
    return stale


def _drops_of_new_view(r: Replica, stale: m.ViewChange) -> list[str]:
    """Why ``r`` dropped anything when primary 1's NEW-VIEW(1) holding the VIEW-CHANGEs of 1, 2
    and ``stale`` reached it (empty: it took the NEW-VIEW)."""
    nv = signed(m.NewView(1, (view_change(1), view_change(2), stale), (), 1), 1)
    return [a.reason for a in r.step(Received(1, nv)) if isinstance(a, Dropped)]


def test_a_replica_enters_through_its_own_retracted_view_change_if_it_never_returned() -> None:
    h = Harness(blocks=2)
    stale = _retracted_without_return(h)
    r = h.replicas[3]
    assert (r.view, r.view_active) == (1, False)
    # Meanwhile the others moved to view 1 on a NEW-VIEW that holds 3's first VIEW-CHANGE.
    assert _drops_of_new_view(r, stale) == []
    assert (r.view, r.view_active) == (1, True)


def test_a_replica_that_returned_refuses_its_own_retracted_view_change() -> None:
    """After its RETRACT held and it voted in view 0 again, the old VIEW-CHANGE(1) is stale."""
    h = Harness(blocks=2)
    stale = m.decode(_alone_in_view_one(h)[0], 1024, 64 * 1024)
    assert isinstance(stale, m.ViewChange)
    _heal_and_report(h)
    r = h.replicas[3]
    assert (r.view, r.view_active) == (0, True)
    assert _drops_of_new_view(r, stale) == ["retracted_view_change"]
    assert (r.view, r.view_active) == (0, True)
    # after a restart too (whether it returned is not on record: it assumes it did)
    again = Replica(config(3), random.Random(3), sorted(h.records[3].items()), len(h.commits[3]))
    assert _drops_of_new_view(again, stale) == ["retracted_view_change"]


def test_the_next_primary_does_not_build_on_a_view_change_retracted_meanwhile() -> None:
    r = Replica(config(1), random.Random(1))  # the primary of view 1
    r.step(Tick(0))
    r.step(Pending(True))
    assert any(isinstance(x, m.ViewChange) for x in decoded(r.step(Tick(150))))
    assert (r.view, r.view_active) == (1, False)
    assert not decoded(r.step(Received(3, m.encode(view_change(3)))))
    retract = m.sign(m.Retract(0, 0, 3), SigningKey(SEEDS[3]), "vigil")
    out = r.step(Received(3, m.encode(retract)))
    assert not any(isinstance(a, Broadcast | m.RetractAck) for a in out)  # stored, not answered
    # 2f+1 VIEW-CHANGEs counting 3's retracted one: no NEW-VIEW yet
    assert not any(
        isinstance(x, m.NewView) for x in decoded(r.step(Received(2, m.encode(view_change(2)))))
    )
    assert (r.view, r.view_active) == (1, False)
    # 3 comes back with a fresh VIEW-CHANGE (next epoch): now the NEW-VIEW, built on that one
    out = r.step(Received(3, m.encode(view_change(3, epoch=1))))
    built = [x for x in decoded(out) if isinstance(x, m.NewView)]
    assert len(built) == 1
    assert sorted((vc.sender, vc.epoch) for vc in built[0].view_changes) == [(1, 0), (2, 0), (3, 1)]
    assert (r.view, r.view_active) == (1, True)


def test_the_retract_is_never_sent_with_a_view_change_it_voids() -> None:
    """The view-change timer fires as the replica becomes alone: it retracts instead of sending
    its VIEW-CHANGE once more (which pulled peers into the view change it was leaving)."""
    h = Harness(blocks=2)
    h.drop = lambda src, dst, data: dst == 3
    h.start()
    for i in (1, 2):
        h.feed(i, Pending(False))  # only 3 has work of its own: nobody else times out
    h.run()
    h.tick(100)  # 3 alone into view 1 at 100 ms: its view-change timer is due at 300
    r = h.replicas[3]
    assert (r.view, r.view_active) == (1, False)
    h.drop = lambda src, dst, data: False
    h.feed(3, Pending(False))
    h.feed(3, Clock(150))
    for j in (0, 1, 2):  # they stayed in view 0: 3 is alone from 300 ms on
        h.feed(3, PeerStatus(j, len(h.commits[j]), 0))
    first = len(h.steps)
    h.tick(200)
    rounds = [decoded(actions) for actions in h.steps[first:]]
    with_retract = [sent for sent in rounds if any(isinstance(x, m.Retract) for x in sent)]
    assert len(with_retract) == 1
    assert not any(isinstance(x, m.ViewChange) for x in with_retract[0])
    assert (r.view, r.view_active) == (0, True)  # and back, with the acknowledgments


def test_a_retract_only_heard_does_not_refuse_another_primarys_new_view() -> None:
    """A replica in the view change hears 3's RETRACT without acknowledging it: it stops counting
    3's old VIEW-CHANGE, but promised nothing, so it enters view 1 through a NEW-VIEW holding it
    (refusing it locked that replica out of view 1: simulator seed 2909)."""
    r = Replica(config(2), random.Random(2))
    r.step(Tick(0))
    r.step(Pending(True))
    assert any(isinstance(x, m.ViewChange) for x in decoded(r.step(Tick(150))))
    r.step(Received(3, m.encode(view_change(3))))
    retract = m.sign(m.Retract(0, 0, 3), SigningKey(SEEDS[3]), "vigil")
    out = r.step(Received(3, m.encode(retract)))
    assert [a.reason for a in out if isinstance(a, Dropped)] == ["retract_not_in_view"]
    assert not any(k.startswith(b"retract/") for a in out for k, _ in getattr(a, "records", ()))
    nv = signed(m.NewView(1, (view_change(1), view_change(2), view_change(3)), (), 1), 1)
    out = r.step(Received(1, nv))
    assert not any(isinstance(a, Dropped) for a in out)
    assert (r.view, r.view_active) == (1, True)


def test_after_a_restart_it_still_knows_it_never_returned() -> None:
    """Whether the replica returned through its RETRACT is persisted with its view: restarted
    while the RETRACT waited, it still enters through its own retracted VIEW-CHANGE."""
    h = Harness(blocks=2)
    stale = _retracted_without_return(h)
    again = Replica(config(3), random.Random(3), sorted(h.records[3].items()), len(h.commits[3]))
    assert (again.view, again.view_active) == (1, False)
    assert _drops_of_new_view(again, stale) == []
    assert (again.view, again.view_active) == (1, True)


def test_a_view_record_from_before_returned_assumes_the_replica_returned() -> None:
    from consensus.log import KEY_VIEW, parse_view_record, view_record

    old = codec.encode({"view": 1, "active": False, "entered": 0})
    assert parse_view_record(old) == ((1, False, 0), None)
    assert parse_view_record(view_record(1, False, 0, 2)) == ((1, False, 0), 2)
    records = [(KEY_VIEW, old), (b"retract/\x00\x03", codec.encode({"view": 0, "epoch": 0}))]
    r = Replica(config(3), random.Random(3), records)
    assert _drops_of_new_view(r, view_change(3)) == ["retracted_view_change"]
