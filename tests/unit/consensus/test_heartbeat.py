"""The heartbeat (``empty_interval_ms``): an idle primary asks for a possibly empty block.

Only the active primary asks, only with no host work and no open PRE-PREPARE, only once the
interval has passed since the last block; backups never expect one, so the request timer (and
with it a view change) is never armed by the heartbeat schedule.
"""

from __future__ import annotations

import dataclasses
import random

from consensus import messages as m
from consensus.api import (
    Action,
    Broadcast,
    Clock,
    PeerStatus,
    Pending,
    Propose,
    Received,
    RequestProposal,
    SetTimer,
    Tick,
)
from consensus.replica import Replica
from tests.unit.consensus.test_replica import Harness, config, signed

INTERVAL_MS = 500  # request timeout 100 ms, view-change timeout 200 ms (config())


def heartbeat_harness(interval_ms: int = INTERVAL_MS, blocks: int = 0) -> Harness:
    h = Harness(blocks=blocks)
    h.replicas = [
        Replica(dataclasses.replace(config(i), empty_interval_ms=interval_ms), random.Random(i))
        for i in range(4)
    ]
    return h


def lone_primary(request_timeout_ms: int = 100) -> Replica:
    """Replica 0 (primary of view 0) alone; a long request timeout keeps it in view 0."""
    cfg = dataclasses.replace(
        config(0), empty_interval_ms=INTERVAL_MS, request_timeout_ms=request_timeout_ms
    )
    return Replica(cfg, random.Random(0))


def requests(actions: list[Action]) -> list[RequestProposal]:
    return [a for a in actions if isinstance(a, RequestProposal)]


def view_changes(actions: list[Action]) -> int:
    return sum(
        1
        for a in actions
        if isinstance(a, Broadcast) and isinstance(m.decode(a.data, 1024, 64 * 1024), m.ViewChange)
    )


def test_idle_primary_asks_for_a_block_only_after_the_interval() -> None:
    h = heartbeat_harness()
    h.tick(INTERVAL_MS - 1)
    assert not any(requests(acts) for acts in h.actions_of)
    h.tick(1)
    assert requests(h.actions_of[0]) == [RequestProposal(0, 1, heartbeat=True)]
    assert all(not requests(h.actions_of[i]) for i in (1, 2, 3))
    for i in range(4):  # an ordinary block: committed everywhere, with its certificate
        assert [c.seq for c in h.commits[i]] == [1]
    # the next one is due one interval after that block, not before
    h.tick(INTERVAL_MS - 1)
    assert len(requests(h.actions_of[0])) == 1
    h.tick(1)
    assert requests(h.actions_of[0])[-1] == RequestProposal(0, 2, heartbeat=True)
    assert [c.seq for c in h.commits[3]] == [1, 2]
    # the primary tells its host when to tick it for the heartbeat (the other deadlines are the
    # request timer of the block in flight, as for any block)
    timers = {a.at_ms for a in h.actions_of[0] if isinstance(a, SetTimer)}
    assert {INTERVAL_MS, 2 * INTERVAL_MS, 3 * INTERVAL_MS} <= timers


def test_off_by_default_an_idle_chain_stays_still() -> None:
    h = heartbeat_harness(interval_ms=0)
    for _ in range(20):
        h.tick(INTERVAL_MS)
    assert not any(requests(acts) for acts in h.actions_of)
    assert not any(h.commits)


def test_backups_never_ask_and_no_view_change_on_an_idle_chain() -> None:
    h = heartbeat_harness()
    for _ in range(10):
        h.tick(INTERVAL_MS)
    assert [c.seq for c in h.commits[2]] == list(range(1, 11))
    for i in (1, 2, 3):
        assert not requests(h.actions_of[i])
    h.tick(INTERVAL_MS // 2)  # a heartbeat block committed: nothing is left that could time out
    h.down = {0}
    for _ in range(10):
        h.tick(INTERVAL_MS)
    assert all(view_changes(acts) == 0 for acts in h.actions_of)
    assert [r.view for r in h.replicas] == [0, 0, 0, 0]


def test_a_silent_primary_on_an_idle_chain_causes_no_view_change() -> None:
    """Backups do not expect heartbeats: their request timer stays off while none comes."""
    h = heartbeat_harness()
    h.down = {0}
    for _ in range(20):
        h.tick(INTERVAL_MS)
    for i in (1, 2, 3):
        assert view_changes(h.actions_of[i]) == 0
        assert not any(isinstance(a, SetTimer) for a in h.actions_of[i])
        assert h.replicas[i].view == 0
        assert h.replicas[i].view_active


def test_no_heartbeat_while_the_host_has_work() -> None:
    """Pending work: the normal case asks (no heartbeat flag), however long the host takes."""
    r = lone_primary(request_timeout_ms=60_000)
    out = r.step(Pending(True))
    assert requests(out) == [RequestProposal(0, 1), RequestProposal(0, 2)]
    for t in range(1, 10):
        assert requests(r.step(Tick(t * INTERVAL_MS))) == []
    assert r.view_active
    assert r.view == 0


def test_no_heartbeat_while_a_block_is_in_flight() -> None:
    """An open PRE-PREPARE (its commit lost here) is work: no empty block piles up behind it."""
    r = lone_primary(request_timeout_ms=60_000)
    assert requests(r.step(Tick(INTERVAL_MS))) == [RequestProposal(0, 1, heartbeat=True)]
    r.step(Propose(0, 1, b"block-1"))  # broadcast, but no PREPARE ever comes back
    for t in range(2, 10):
        assert requests(r.step(Tick(t * INTERVAL_MS))) == []
    assert r.view_active
    assert r.view == 0


def test_no_extra_empty_blocks_on_a_busy_chain() -> None:
    """A block every 300 ms (interval 500 ms): the heartbeat never fires."""
    h = heartbeat_harness()
    for _ in range(20):
        h.blocks = h.proposed + 1  # the harness's host runs dry after one more proposal
        h.feed(0, Pending(True))
        h.run()
        h.tick(300)
    asked = requests(h.actions_of[0])
    assert len(asked) >= 20
    assert not any(r.heartbeat for r in asked)


def test_heartbeat_reuses_an_unanswered_request() -> None:
    """Pending work asked for seqs 1-2, the host filled only 1 and ran dry: the heartbeat asks
    for seq 2 again (it may be answered empty now) rather than leave a hole below seq 3."""
    r = lone_primary()
    assert requests(r.step(Pending(True))) == [RequestProposal(0, 1), RequestProposal(0, 2)]
    pp = r.step(Propose(0, 1, b"block-1"))
    r.step(Pending(False))
    r.step(Tick(50))  # within the request timeout (100 ms) of the open PRE-PREPARE
    pp_data = next(a.data for a in pp if isinstance(a, Broadcast))
    digest = m.decode(pp_data, 1024, 64 * 1024).digest  # type: ignore[union-attr]
    for sender in (1, 2):
        r.step(Received(sender, signed(m.Prepare(0, 1, digest, sender), sender)))
    for sender in (1, 2):
        r.step(Received(sender, signed(m.CommitVote(0, 1, digest, sender), sender)))
    assert r.committed_seq == 1
    # the commit came at 50 ms: due at 550 ms
    assert requests(r.step(Tick(549))) == []
    assert requests(r.step(Tick(550))) == [RequestProposal(0, 2, heartbeat=True)]


def test_the_heartbeat_never_arms_the_request_timer() -> None:
    """The primary asked for a heartbeat and its host has not answered: nothing times out."""
    r = lone_primary()
    assert requests(r.step(Tick(INTERVAL_MS))) == [RequestProposal(0, 1, heartbeat=True)]
    out: list[Action] = []
    for t in range(INTERVAL_MS + 50, 5 * INTERVAL_MS, 50):
        out.extend(r.step(Tick(t)))
    assert view_changes(out) == 0
    assert r.view_active
    assert r.view == 0
    # only heartbeat deadlines, no request-timer deadline (request timeout is 100 ms)
    timers = [a.at_ms for a in out if isinstance(a, SetTimer)]
    assert all(at % INTERVAL_MS == 0 for at in timers)


def test_a_clock_only_moves_time_the_next_event_acts_on_it() -> None:
    """A ``Clock`` past the heartbeat's deadline answers nothing; the event the host steps next
    in the same round (here a PeerStatus, which changes nothing by itself) asks for the block."""
    r = lone_primary(request_timeout_ms=60_000)
    assert not requests(r.step(Tick(0)))
    assert r.step(Clock(INTERVAL_MS)) == []
    out = r.step(PeerStatus(1, 0, 0))
    assert requests(out) == [RequestProposal(0, 1, heartbeat=True)]
