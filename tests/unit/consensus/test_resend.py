"""Messages lost on a link are sent again: an open slot stalled for a quarter of a request timeout
has its PRE-PREPARE (by the primary) and every replica's own PREPARE and COMMIT re-broadcast.

Links drop frames while a peer is disconnected (node/net), and nothing else sends a slot's
messages twice: without the resend a PRE-PREPARE that reached too few backups left the slot open
until a view change (under load) or for good (an idle chain with the heartbeat: the backups
expect nothing, and the primary bounced alone between view changes).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from common.crypto import SigningKey
from consensus import messages as m
from consensus.api import (
    Action,
    Applied,
    Broadcast,
    Dropped,
    Pending,
    Propose,
    Received,
    Send,
    Tick,
)
from consensus.replica import FUTURE_PER_SENDER_MAX, Replica
from tests.unit.consensus.test_heartbeat import INTERVAL_MS, heartbeat_harness, view_changes
from tests.unit.consensus.test_replica import SEEDS, Harness, config

REQUEST_TIMEOUT_MS = 100  # config() in test_replica.py
RESEND_MS = REQUEST_TIMEOUT_MS // 4
Drop = Callable[[int, int, bytes], bool]


def kind(data: bytes) -> type:
    return type(m.decode(data, 1024, 64 * 1024))


def losing(kinds: tuple[type, ...], src: int, dsts: set[int], seq: int = 1) -> Drop:
    """A drop rule: the first message of ``kinds`` at ``seq`` from ``src`` to each of ``dsts``."""
    lost: set[tuple[type, int]] = set()

    def drop(s: int, d: int, data: bytes) -> bool:
        msg = m.decode(data, 1024, 64 * 1024)
        what = (type(msg), d)
        if s != src or d not in dsts or type(msg) not in kinds or what in lost:
            return False
        if getattr(msg, "seq", None) != seq:
            return False
        lost.add(what)
        return True

    return drop


def copies(actions: list[Action], of: type) -> int:
    """Messages of type ``of`` sent, one per receiver (a broadcast reaches the 3 others)."""
    n = 0
    for a in actions:
        if isinstance(a, Broadcast | Send) and kind(a.data) is of:
            n += 3 if isinstance(a, Broadcast) else 1
    return n


def test_a_heartbeat_pre_prepare_lost_to_every_backup_is_sent_again() -> None:
    """The idle chain of the heartbeat: the backups expect nothing, so only a resend helps."""
    h = heartbeat_harness()
    h.drop = losing((m.PrePrepare,), 0, {1, 2, 3})
    h.tick(INTERVAL_MS)  # the primary asks for a heartbeat block and proposes it: all lost
    assert not any(h.commits)
    for _ in range(REQUEST_TIMEOUT_MS // 25):
        h.tick(25)
    for i in range(4):
        assert [c.seq for c in h.commits[i]] == [1], i
    assert copies(h.actions_of[0], m.PrePrepare) == 2 * 3  # the proposal, then one resend
    assert all(view_changes(acts) == 0 for acts in h.actions_of)
    assert [(r.view, r.view_active) for r in h.replicas] == [(0, True)] * 4


def test_a_pre_prepare_lost_to_two_backups_commits_without_a_view_change() -> None:
    """Under load the backups' request timers run; the resend comes before they run out."""
    h = Harness(blocks=40)
    h.drop = losing((m.PrePrepare,), 0, {2, 3})
    h.start()  # seq 1 cannot prepare (one backup has it); seq 2 commits but cannot execute
    assert [len(c) for c in h.commits] == [0, 0, 0, 0]
    h.tick(RESEND_MS)
    for i in range(4):
        assert [(c.seq, c.view) for c in h.commits[i]] == [(s, 0) for s in range(1, 41)], i
    # seq 1 again to the two backups without it (not to 1, whose PREPARE came), nothing else
    assert copies(h.actions_of[0], m.PrePrepare) == 40 * 3 + 2
    assert all(view_changes(acts) == 0 for acts in h.actions_of)


def test_lost_votes_are_sent_again_by_their_voters() -> None:
    """Every backup's first PREPARE lost to everyone, then every backup's first COMMIT: each
    voter sends its own again, once per stall."""
    h = Harness(blocks=1, pipeline_depth=1)
    prepares = [losing((m.Prepare,), i, {0, 1, 2, 3}) for i in (1, 2, 3)]
    h.drop = lambda s, d, data: any(rule(s, d, data) for rule in prepares)
    h.start()
    assert not any(h.commits)  # nobody prepared: each backup holds its own PREPARE only
    commits = [losing((m.CommitVote,), i, {0, 1, 2, 3}) for i in (0, 1, 2, 3)]
    h.drop = lambda s, d, data: any(rule(s, d, data) for rule in commits)
    h.tick(RESEND_MS)  # the PREPAREs again: everyone prepares, COMMITs lost
    assert not any(h.commits)
    h.tick(RESEND_MS)  # the COMMITs again
    assert [[c.seq for c in h.commits[i]] for i in range(4)] == [[1]] * 4
    for i in (1, 2, 3):
        assert copies(h.actions_of[i], m.Prepare) == 3 * 3  # sent, then at each resend
    assert all(view_changes(acts) == 0 for acts in h.actions_of)


def test_nothing_is_sent_again_while_blocks_keep_executing() -> None:
    """The resend waits for a stall: a chain that executes a block every 25 ms sends each
    message once, and an idle one with nothing open sends nothing."""
    h = Harness(blocks=1, pipeline_depth=1)
    h.start()
    for i in (1, 2, 3):  # only the primary's host has txs: no backup's request timer runs
        h.feed(i, Pending(False))
    for _ in range(12):
        h.blocks = h.proposed + 1
        h.feed(0, Pending(True))
        h.run()
        h.tick(25)
    for _ in range(8):
        h.tick(REQUEST_TIMEOUT_MS)
    assert [c.seq for c in h.commits[3]] == list(range(1, 14))
    assert copies(h.actions_of[0], m.PrePrepare) == 13 * 3
    for i in (1, 2, 3):
        assert copies(h.actions_of[i], m.Prepare) == 13 * 3
    assert all(copies(h.actions_of[i], m.CommitVote) == 13 * 3 for i in range(4))


def test_the_resend_repeats_while_the_slot_stays_open_and_stops_on_leaving_the_view() -> None:
    """A primary cut off from every backup resends every quarter of a request timeout until its
    request timer takes it into a view change; in the view change it resends nothing of view 0."""
    h = heartbeat_harness()
    h.drop = lambda s, d, data: s == 0
    h.tick(INTERVAL_MS)
    sent = [copies(h.actions_of[0], m.PrePrepare)]
    for _ in range(8):
        h.feed(0, Tick(h.now_ms + RESEND_MS))
        h.now_ms += RESEND_MS
        sent.append(copies(h.actions_of[0], m.PrePrepare))
    assert sent[:4] == [3, 6, 9, 12]  # three resends before the request timer runs out
    assert not h.replicas[0].view_active  # then alone into a view change
    assert sent[-1] == sent[4]  # nothing of view 0 after leaving it


def test_no_resend_while_the_host_works_through_its_backlog() -> None:
    """Each ``Applied`` (a committed block made durable) restarts the resend timer, as it does
    the request timer: a host behind on its own blocks is no sign of lost messages."""
    r = Replica(config(0, pipeline_depth=1), random.Random(0))
    r.step(Tick(0))
    r.step(Pending(True))
    assert copies(r.step(Propose(0, 1, b"block-1")), m.PrePrepare) == 3  # nobody answers
    out: list[Action] = []
    for t, applied in ((20, 1), (40, 2), (60, 3)):  # blocks committed before, applied now
        out += r.step(Tick(t))
        out += r.step(Applied(applied))
    assert copies(out, m.PrePrepare) == 0
    assert copies(r.step(Tick(60 + RESEND_MS)), m.PrePrepare) == 3


def test_a_message_resent_to_a_replica_not_yet_in_its_view_is_buffered_once() -> None:
    r = Replica(config(3), random.Random(3))  # in view 0; the message is of view 1
    prepare = m.encode(m.sign(m.Prepare(1, 1, b"\x01" * 32, 2), SigningKey(SEEDS[2]), "vigil"))
    for _ in range(FUTURE_PER_SENDER_MAX + 5):
        out = r.step(Received(2, prepare))
        assert not any(isinstance(a, Dropped) for a in out)  # never "future_buffer_full"
