"""The PBFT core driven directly: normal case, persistence order, restart, fetch, view change."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import get_args

from common.crypto import SigningKey
from consensus import messages as m
from consensus.api import (
    Action,
    Applied,
    Broadcast,
    Clock,
    Commit,
    ConsensusConfig,
    Dropped,
    Event,
    FetchBlocks,
    Fetched,
    FetchedEntry,
    PeerStatus,
    Pending,
    Persist,
    Propose,
    Received,
    RequestProposal,
    Send,
    Tick,
    Validate,
    Verdict,
    ViewChanged,
)
from consensus.certificate import CommitCertificate, verify_certificate
from consensus.replica import Replica

SEEDS = [bytes([i + 1]) * 32 for i in range(4)]
VALIDATORS = tuple(SigningKey(s).public_key for s in SEEDS)


def config(index: int, pipeline_depth: int = 2) -> ConsensusConfig:
    return ConsensusConfig(
        VALIDATORS,
        index,
        SEEDS[index],
        checkpoint_interval=2,
        pipeline_depth=pipeline_depth,
        log_window=8,
        request_timeout_ms=100,
        view_change_timeout_ms=200,
        payload_bytes_max=1024,
        message_bytes_max=64 * 1024,
    )


class Harness:
    """Four replicas, instant delivery, an obliging host that proposes ``blocks`` payloads."""

    def __init__(self, blocks: int = 4, pipeline_depth: int = 2) -> None:
        self.replicas = [Replica(config(i, pipeline_depth), random.Random(i)) for i in range(4)]
        self.records: list[dict[bytes, bytes]] = [{} for _ in range(4)]
        self.commits: list[list[Commit]] = [[] for _ in range(4)]
        self.steps: list[list[Action]] = []
        self.actions_of: list[list[Action]] = [[] for _ in range(4)]
        self.down: set[int] = set()
        self.drop: Callable[[int, int, bytes], bool] = lambda src, dst, data: False
        self.queue: deque[tuple[int, Event]] = deque()
        self.blocks = blocks
        self.proposed = 0
        self.now_ms = 0

    def feed(self, i: int, event: Event) -> list[Action]:
        if i in self.down:
            return []
        actions = self.replicas[i].step(event)
        self.steps.append(actions)
        self.actions_of[i].extend(actions)
        for a in actions:
            match a:
                case Persist(records):
                    for k, v in records:
                        if v is None:
                            self.records[i].pop(k, None)
                        else:
                            self.records[i][k] = v
                case Broadcast(data):
                    for j in range(4):
                        if j != i and not self.drop(i, j, data):
                            self.queue.append((j, Received(i, data)))
                case Send(to, data):
                    if not self.drop(i, to, data):
                        self.queue.append((to, Received(i, data)))
                case Commit():
                    self.commits[i].append(a)
                    self.queue.append((i, Applied(a.seq)))  # the block is durable at once
                case RequestProposal(view, seq):
                    self.proposed += 1
                    self.queue.append((i, Propose(view, seq, b"block-%d" % seq)))
                    if self.proposed >= self.blocks:
                        self.queue.append((i, Pending(False)))
                case Validate(view, seq, digest, payload):
                    self.queue.append((i, Verdict(view, seq, digest, payload.startswith(b"block"))))
                case FetchBlocks(lo, hi, _):
                    source = max(range(4), key=lambda j: len(self.commits[j]))
                    entries = tuple(
                        FetchedEntry(c.seq, c.payload, c.certificate)
                        for c in self.commits[source]
                        if lo <= c.seq <= hi
                    )
                    self.queue.append((i, Fetched(entries)))
        return actions

    def run(self, limit: int = 20_000) -> None:
        for _ in range(limit):
            if not self.queue:
                return
            i, event = self.queue.popleft()
            self.feed(i, event)
        raise AssertionError("harness did not quiesce")

    def start(self) -> None:
        for i in range(4):
            self.feed(i, Pending(True))
        self.run()

    def tick(self, ms: int) -> None:
        self.now_ms += ms
        for i in range(4):
            self.feed(i, Tick(self.now_ms))
        self.run()


def signed(msg: m.MessageT, index: int, chain: str = "vigil") -> bytes:
    return m.encode(m.sign(msg, SigningKey(SEEDS[index]), chain))


def test_normal_case_commits_in_order_with_verifiable_certificates() -> None:
    h = Harness(blocks=6)
    h.start()
    for i in range(4):
        assert [c.seq for c in h.commits[i]] == [1, 2, 3, 4, 5, 6]
        assert [c.payload for c in h.commits[i]] == [b"block-%d" % s for s in range(1, 7)]
        for c in h.commits[i]:
            cert = CommitCertificate.decode(c.certificate)
            assert (cert.seq, cert.digest, cert.view) == (c.seq, c.digest, 0)
            assert verify_certificate(cert, VALIDATORS, "vigil")
        assert h.replicas[i].committed_seq == 6
        assert h.replicas[i].stable_checkpoint == 6
    # garbage collection: nothing below the stable checkpoint stays in the log
    assert not any(k.startswith(b"slot/") for k in h.records[1])


def test_every_vote_is_persisted_before_it_is_sent() -> None:
    h = Harness(blocks=4)
    h.start()
    checked = 0
    for actions in h.steps:
        persisted: set[bytes] = set()
        for a in actions:
            if isinstance(a, Persist):
                persisted.update(k for k, _ in a.records)
            elif isinstance(a, Broadcast):
                msg = m.decode(a.data, 1024, 64 * 1024)
                if isinstance(msg, m.PrePrepare | m.Prepare | m.CommitVote):
                    assert b"slot/" + msg.seq.to_bytes(8, "big") in persisted
                    checked += 1
    assert checked >= 4 * 3


def test_hostile_messages_are_dropped_with_reasons() -> None:
    r = Replica(config(1), random.Random(1))
    digest = m.payload_digest(b"block-1")
    pp = m.PrePrepare(0, 1, digest, b"block-1", 0)

    def reasons(sender: int, data: bytes) -> list[str]:
        return [a.reason for a in r.step(Received(sender, data)) if hasattr(a, "reason")]

    assert reasons(9, signed(pp, 0)) == ["unknown_sender"]
    assert reasons(0, b"\x00garbage") == ["malformed"]
    assert reasons(0, b"\x00" * (64 * 1024 + 1)) == ["oversize"]
    assert reasons(2, signed(pp, 0)) == ["sender_mismatch"]
    assert reasons(0, signed(pp, 0, chain="other")) == ["bad_signature"]
    assert reasons(0, m.encode(m.PrePrepare(0, 1, digest, b"block-1", 0, b"\x01" * 64))) == [
        "bad_signature"
    ]
    assert reasons(2, signed(m.PrePrepare(0, 1, digest, b"block-1", 2), 2)) == ["not_primary"]
    far = m.PrePrepare(0, 9, m.payload_digest(b"x"), b"x", 0)
    assert reasons(0, signed(far, 0)) == ["outside_watermarks"]
    assert reasons(0, signed(m.PrePrepare(0, 1, digest, b"block-2", 0), 0)) == ["bad_digest"]
    oversize = m.PrePrepare(0, 1, m.payload_digest(b"y" * 2000), b"y" * 2000, 0)
    assert reasons(0, signed(oversize, 0)) == ["malformed"]

    first = r.step(Received(0, signed(pp, 0)))
    assert next(type(a) for a in first if not isinstance(a, Persist)) is Validate
    other = m.PrePrepare(0, 1, m.payload_digest(b"block-X"), b"block-X", 0)
    after = r.step(Received(0, signed(other, 0)))
    assert [a.reason for a in after if hasattr(a, "reason")] == ["conflicting_pre_prepare"]
    assert not any(isinstance(a, Validate | Broadcast) for a in after)
    assert reasons(0, signed(pp, 0)) == ["duplicate"]
    assert reasons(0, signed(m.Prepare(0, 1, digest, 0), 0)) == ["prepare_from_primary"]
    assert reasons(2, signed(m.Prepare(0, 1, digest, 2), 2)) == []
    assert reasons(2, signed(m.Prepare(0, 1, digest, 2), 2)) == ["duplicate"]
    assert reasons(2, signed(m.Prepare(0, 1, m.payload_digest(b"z"), 2), 2)) == ["conflicting_vote"]
    assert reasons(2, signed(m.Checkpoint(3, digest, 2), 2)) == ["bad_checkpoint_seq"]
    assert r.dropped_counts["duplicate"] == 2
    assert r.committed_seq == 0


def test_random_bytes_never_raise() -> None:
    r = Replica(config(1), random.Random(1))
    rng = random.Random(7)
    valid = signed(m.PrePrepare(0, 1, m.payload_digest(b"block-1"), b"block-1", 0), 0)
    for _ in range(300):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        out = r.step(Received(rng.randrange(5), bytes(data[: rng.randint(0, len(data))])))
        assert all(isinstance(a, get_args(Action)) for a in out)
    assert r.committed_seq == 0


def test_old_view_messages_are_dropped_after_restart_in_a_later_view() -> None:
    from consensus.log import KEY_VIEW, view_record

    r = Replica(config(2), random.Random(2), records=[(KEY_VIEW, view_record(1, True, 1, -1))])
    assert (r.view, r.primary) == (1, 1)
    pp = m.PrePrepare(0, 1, m.payload_digest(b"block-1"), b"block-1", 0)
    assert [a.reason for a in r.step(Received(0, signed(pp, 0))) if hasattr(a, "reason")] == [
        "old_view"
    ]


def test_restarted_replica_keeps_its_votes() -> None:
    cfg = config(1)
    r = Replica(cfg, random.Random(1))
    records: dict[bytes, bytes] = {}
    digest = m.payload_digest(b"block-1")
    sent: list[bytes] = []
    for event in (
        Received(0, signed(m.PrePrepare(0, 1, digest, b"block-1", 0), 0)),
        Verdict(0, 1, digest, True),
    ):
        for a in r.step(event):
            if isinstance(a, Persist):
                records.update({k: v for k, v in a.records if v is not None})
            if isinstance(a, Broadcast):
                sent.append(a.data)
    assert len(sent) == 1
    again = Replica(cfg, random.Random(5), records=sorted(records.items()))
    conflicting = m.PrePrepare(0, 1, m.payload_digest(b"block-X"), b"block-X", 0)
    out = again.step(Received(0, signed(conflicting, 0)))
    # It resends the very same PREPARE (same bytes) and refuses the conflicting PRE-PREPARE.
    assert [a.data for a in out if isinstance(a, Broadcast)] == sent
    assert [a.reason for a in out if hasattr(a, "reason")] == ["conflicting_pre_prepare"]
    assert not any(isinstance(a, Validate) for a in out)


def test_restart_reemits_commits_the_host_lost_and_fetches_the_rest() -> None:
    h = Harness(blocks=3, pipeline_depth=1)
    h.start()
    assert [c.seq for c in h.commits[2]] == [1, 2, 3]
    assert h.replicas[2].stable_checkpoint == 2
    # The host lost block 3 only (its store lagged the log): the log re-emits it at once.
    r = Replica(config(2, 1), random.Random(9), sorted(h.records[2].items()), 2)
    out = r.step(Tick(0))
    assert [(c.seq, c.payload) for c in out if isinstance(c, Commit)] == [(3, b"block-3")]
    # The host lost every block: seqs under the stable checkpoint are fetched, 3 comes from the log.
    h.replicas[2] = Replica(config(2, 1), random.Random(9), sorted(h.records[2].items()), 0)
    h.commits[2] = []
    out = h.feed(2, Tick(0))
    assert [(a.from_seq, a.to_seq) for a in out if isinstance(a, FetchBlocks)] == [(1, 2)]
    h.run()
    assert [c.seq for c in h.commits[2]] == [1, 2, 3]
    assert [c.digest for c in h.commits[2]] == [c.digest for c in h.commits[0]]


def test_fetched_blocks_need_a_valid_certificate() -> None:
    h = Harness(blocks=2)
    h.start()
    good = h.commits[0][0]
    r = Replica(config(3), random.Random(3))
    bad_payload = Fetched((FetchedEntry(1, b"block-evil", good.certificate),))
    assert [a.reason for a in r.step(bad_payload) if hasattr(a, "reason")] == [
        "fetched_bad_certificate"
    ]
    assert [
        a.reason
        for a in r.step(Fetched((FetchedEntry(1, good.payload, b"\x00"),)))
        if hasattr(a, "reason")
    ] == ["fetched_bad_certificate"]
    out = r.step(Fetched((FetchedEntry(1, good.payload, good.certificate),)))
    assert [(c.seq, c.payload) for c in out if isinstance(c, Commit)] == [(1, b"block-1")]
    assert r.committed_seq == 1


def test_view_change_re_proposes_prepared_payloads() -> None:
    h = Harness(blocks=1)
    # Phase 1: every COMMIT is lost, so seq 1 prepares everywhere but commits nowhere.
    h.drop = lambda src, dst, data: isinstance(m.decode(data, 1024, 64 * 1024), m.CommitVote)
    h.start()
    assert all(not c for c in h.commits)
    h.drop = lambda src, dst, data: False
    h.down.add(0)  # the primary of view 0 goes silent
    for i in (1, 2, 3):
        h.feed(i, Pending(True))
    h.run()
    changed: list[ViewChanged] = []
    for _ in range(20):
        h.tick(100)
        changed.extend(a for actions in h.steps for a in actions if isinstance(a, ViewChanged))
        if all(h.commits[i] for i in (1, 2, 3)):
            break
    entered = [a for a in changed if a.view == 1]
    assert entered
    assert all(a.primary == 1 for a in entered)
    # The host learns the re-proposed payloads from the action, not by decoding the NEW-VIEW.
    assert [(p.seq, p.payload) for p in entered[0].reproposed] == [(1, b"block-1"), (2, b"block-2")]
    for i in (1, 2, 3):
        first = h.commits[i][0]
        assert (first.seq, first.view, first.payload) == (1, 1, b"block-1")
        assert h.replicas[i].view == 1


def _view_one_without_replica_3(h: Harness) -> None:
    """Replicas 0-2 change to view 1 while 3 hears nothing; view 1 then orders two blocks."""
    h.down.add(3)
    # Every view-0 PRE-PREPARE is lost, so the work pending in view 0 times out.
    h.drop = lambda src, dst, data: (
        isinstance(msg := m.decode(data, 1024, 64 * 1024), m.PrePrepare) and msg.view == 0
    )
    h.start()
    for _ in range(10):
        h.tick(100)
        if all(h.replicas[i].view == 1 and h.replicas[i].view_active for i in (0, 1, 2)):
            break
    assert all(h.replicas[i].view == 1 for i in (0, 1, 2))
    assert all(len(h.commits[i]) >= 2 for i in (0, 1, 2))
    h.drop = lambda src, dst, data: False


def _rejoin_3_under_load(h: Harness) -> list[Action]:
    """3 comes back in view 0 and only messages flow (no tick): it must rejoin view 1 and vote."""
    h.down.discard(3)
    h.replicas[3] = Replica(config(3), random.Random(33), sorted(h.records[3].items()))
    assert (h.replicas[3].view, h.replicas[3].view_active) == (0, True)
    first = len(h.steps)
    h.blocks += 6
    h.feed(1, Pending(True))
    h.run()
    return [a for actions in h.steps[first:] for a in actions]


def test_laggard_in_an_old_view_rejoins_without_a_timeout() -> None:
    # f+1 replicas sending messages of a later view prove that view has a NEW-VIEW; the laggard
    # asks for it with a VIEW-CHANGE (answered by the primary) instead of following by catch-up.
    h = Harness(blocks=2)
    _view_one_without_replica_3(h)
    _rejoin_3_under_load(h)
    r = h.replicas[3]
    assert (r.view, r.view_active) == (1, True)
    assert h.commits[3]
    assert [c.digest for c in h.commits[3]] == [c.digest for c in h.commits[0][: len(h.commits[3])]]
    votes = [m.decode(a.data, 1024, 64 * 1024) for a in h.actions_of[3] if isinstance(a, Broadcast)]
    assert any(isinstance(v, m.CommitVote) and v.view == 1 for v in votes)


def test_laggard_rejoins_after_the_new_primary_restarted() -> None:
    # The primary of view 1 restarts from its records: it must still be able to hand its NEW-VIEW
    # to the laggard, so the NEW-VIEW is part of what it persists.
    h = Harness(blocks=2)
    _view_one_without_replica_3(h)
    h.replicas[1] = Replica(config(1), random.Random(11), sorted(h.records[1].items()), 2)
    assert (h.replicas[1].view, h.replicas[1].view_active) == (1, True)
    _rejoin_3_under_load(h)
    assert (h.replicas[3].view, h.replicas[3].view_active) == (1, True)
    assert len(h.commits[3]) == len(h.commits[0])


def test_a_valid_new_view_for_a_later_view_is_adopted_directly() -> None:
    h = Harness(blocks=2)
    _view_one_without_replica_3(h)
    new_view = next(
        a.data
        for a in h.actions_of[1]
        if isinstance(a, Broadcast) and isinstance(m.decode(a.data, 1024, 64 * 1024), m.NewView)
    )
    r = Replica(config(3), random.Random(3))
    out = r.step(Received(1, new_view))
    assert (r.view, r.view_active) == (1, True)
    assert ViewChanged(1, 1) in out
    # Persisted before anything is sent, and a replay of it later is just an old message.
    assert isinstance(out[0], Persist)
    assert [a.reason for a in r.step(Received(1, new_view)) if hasattr(a, "reason")] == ["old_view"]
    # Relayed by someone else it does not count: the transport sender must be the signer.
    other = Replica(config(3), random.Random(3))
    assert [a.reason for a in other.step(Received(2, new_view)) if hasattr(a, "reason")] == [
        "sender_mismatch"
    ]
    assert other.view == 0


class SlowApplyHarness(Harness):
    """The hosts of 1 and 2 are slow to write their blocks: their ``Applied`` events are held."""

    def __init__(self, blocks: int) -> None:
        super().__init__(blocks=blocks)
        self.applied: list[tuple[int, Event]] = []

    def feed(self, i: int, event: Event) -> list[Action]:
        if isinstance(event, Applied) and i in (1, 2):
            self.applied.append((i, event))
            return []
        return super().feed(i, event)


def test_checkpoint_waits_for_the_host_to_apply_the_block() -> None:
    h = SlowApplyHarness(blocks=2)
    h.start()
    kinds = [
        type(m.decode(a.data, 1024, 64 * 1024)) for a in h.actions_of[2] if isinstance(a, Broadcast)
    ]
    assert len(h.commits[2]) == 2
    assert m.Checkpoint not in kinds
    assert h.replicas[2].stable_checkpoint == 0  # 0 and 3 voted: not a quorum yet
    out = Harness.feed(h, 2, Applied(2))  # past the hold: host 2 has written block 2
    sent = [m.decode(a.data, 1024, 64 * 1024) for a in out if isinstance(a, Broadcast)]
    assert [(c.seq, c.sender) for c in sent if isinstance(c, m.Checkpoint)] == [(2, 2)]


def _alone_in_view_one(h: Harness) -> list[bytes]:
    """Replica 3 hears nothing, times out alone into view 1; the others stay in view 0."""
    h.drop = lambda src, dst, data: dst == 3
    h.start()
    for i in (1, 2):
        h.feed(i, Pending(False))  # only 3 has work of its own: nobody else times out
    h.run()
    for _ in range(3):
        h.tick(100)
    r = h.replicas[3]
    assert (r.view, r.view_active) == (1, False)
    assert all((h.replicas[i].view, h.replicas[i].view_active) == (0, True) for i in (0, 1, 2))
    return [
        a.data
        for a in h.actions_of[3]
        if isinstance(a, Broadcast) and isinstance(m.decode(a.data, 1024, 64 * 1024), m.ViewChange)
    ]


def _heal_and_report(h: Harness) -> None:
    h.drop = lambda src, dst, data: False
    h.feed(3, Pending(False))  # else, with nothing proposed, it times out again once back
    for _ in range(3):
        for j in (0, 1, 2):
            h.feed(3, PeerStatus(j, len(h.commits[j]), 0))
        h.run()
        h.tick(100)


def test_replica_alone_in_a_view_change_retracts_and_returns() -> None:
    h = Harness(blocks=2)
    _alone_in_view_one(h)
    _heal_and_report(h)
    r = h.replicas[3]
    assert (r.view, r.view_active) == (0, True)
    sent = [m.decode(a.data, 1024, 64 * 1024) for a in h.actions_of[3] if isinstance(a, Broadcast)]
    retracts = [x for x in sent if isinstance(x, m.Retract)]
    assert [(x.view, x.epoch) for x in retracts] == [(0, 0)]
    assert ViewChanged(0, 0) in h.actions_of[3]
    # The RETRACT is durable on every replica that acknowledged it, before its acknowledgment.
    for i in (0, 1, 2):
        assert b"retract/\x00\x03" in h.records[i]
    assert b"retract/\x00\x03" in h.records[3]
    # Back to voting in view 0: the next blocks commit everywhere, 3 included, with its COMMITs.
    first = len(h.actions_of[3])
    h.blocks += 2
    h.feed(0, Pending(True))
    h.run()
    h.tick(100)
    assert [c.digest for c in h.commits[3]] == [c.digest for c in h.commits[0]]
    assert len(h.commits[3]) == 4
    later = [
        m.decode(a.data, 1024, 64 * 1024)
        for a in h.actions_of[3][first:]
        if isinstance(a, Broadcast)
    ]
    assert any(isinstance(v, m.CommitVote) and v.view == 0 for v in later)
    # A fresh VIEW-CHANGE of 3 carries the next epoch, so it is not void.
    h.replicas[3].step(Tick(h.now_ms + 10_000))
    fresh = [
        m.decode(a.data, 1024, 64 * 1024)
        for a in h.replicas[3].step(Tick(h.now_ms + 20_000))
        if isinstance(a, Broadcast)
    ]
    assert all(x.epoch == 1 for x in fresh if isinstance(x, m.ViewChange))


def test_new_view_with_a_retracted_view_change_is_refused_even_after_restart() -> None:
    h = Harness(blocks=2)
    stale = m.decode(_alone_in_view_one(h)[0], 1024, 64 * 1024)
    assert isinstance(stale, m.ViewChange)
    _heal_and_report(h)
    assert h.replicas[3].view_active

    def vc(sender: int) -> m.ViewChange:
        return m.sign(
            m.ViewChange(1, 0, b"\x00" * 32, (), (), sender), SigningKey(SEEDS[sender]), "vigil"
        )

    # A (byzantine) primary of view 1 builds its NEW-VIEW from 3's retracted VIEW-CHANGE.
    nv = signed(m.NewView(1, (vc(1), vc(2), stale), (), 1), 1)
    out = h.replicas[0].step(Received(1, nv))
    assert [a.reason for a in out if isinstance(a, Dropped)] == ["retracted_view_change"]
    assert (h.replicas[0].view, h.replicas[0].view_active) == (0, True)
    again = Replica(config(0), random.Random(0), sorted(h.records[0].items()), len(h.commits[0]))
    out = again.step(Received(1, nv))
    assert [a.reason for a in out if isinstance(a, Dropped)] == ["retracted_view_change"]
    # The same NEW-VIEW is fine where the RETRACT never arrived: the acknowledgments matter.
    fresh = Replica(config(0), random.Random(0))
    assert not any(isinstance(a, Dropped) for a in fresh.step(Received(1, nv)))
    assert (fresh.view, fresh.view_active) == (1, True)


def test_laggard_in_an_old_view_follows_peer_status_on_an_idle_cluster() -> None:
    h = Harness(blocks=2)
    _view_one_without_replica_3(h)
    h.down.discard(3)
    h.replicas[3] = Replica(config(3), random.Random(33), sorted(h.records[3].items()))
    for _ in range(3):
        for j in (0, 1, 2):
            h.feed(3, PeerStatus(j, len(h.commits[j]), 1))
        h.run()
        h.tick(100)
    assert (h.replicas[3].view, h.replicas[3].view_active) == (1, True)
    assert len(h.commits[3]) == len(h.commits[0])


class _ReturnsOnOwnWord(Replica):
    """The broken rule: returns without 2f+1 acknowledgments (tests/test_sim_broken_variants.py)."""

    def _retract_quorum(self) -> int:
        return 1


class _CountsRetracted(Replica):
    """The broken rule: still counts VIEW-CHANGEs whose sender retracted them."""

    _refuse_retracted = False


def test_return_needs_2f_plus_1_acknowledgments() -> None:
    for cls, returns in ((Replica, False), (_ReturnsOnOwnWord, True)):
        h = Harness(blocks=2)
        h.replicas[3] = cls(config(3), random.Random(3))
        _alone_in_view_one(h)

        def lose_acks(src: int, dst: int, data: bytes) -> bool:
            return src in (1, 2) and isinstance(m.decode(data, 1024, 64 * 1024), m.RetractAck)

        h.feed(3, Pending(False))
        for _ in range(3):
            for j in (0, 1, 2):
                h.feed(3, PeerStatus(j, len(h.commits[j]), 0))
            h.drop = lose_acks
            h.run()
            h.tick(100)
        assert h.replicas[3].view_active is returns, cls.__name__


def test_only_the_refusing_rule_keeps_a_retracted_view_change_out() -> None:
    for cls, refused in ((Replica, True), (_CountsRetracted, False)):
        h = Harness(blocks=2)
        h.replicas[0] = cls(config(0), random.Random(0))
        stale = m.decode(_alone_in_view_one(h)[0], 1024, 64 * 1024)
        assert isinstance(stale, m.ViewChange)
        _heal_and_report(h)

        def vc(sender: int) -> m.ViewChange:
            key = SigningKey(SEEDS[sender])
            return m.sign(m.ViewChange(1, 0, b"\x00" * 32, (), (), sender), key, "vigil")

        nv = signed(m.NewView(1, (vc(1), vc(2), stale), (), 1), 1)
        h.replicas[0].step(Received(1, nv))
        assert (h.replicas[0].view == 0) is refused, cls.__name__


def test_request_timer_waits_while_the_host_applies_committed_blocks() -> None:
    """Under overload a backup's host applies blocks seconds after they committed, and the
    primary's pipeline waits for those applications: each ``Applied`` restarts the request
    timer (100 ms here), which judges the primary only once our own backlog is drained."""
    r = Replica(config(1), random.Random(1))
    r.step(Tick(0))
    r.step(Pending(True))  # work the primary should propose: the timer runs from 0
    r.step(Applied(1))  # at 0: the host finished a block committed earlier
    r.step(Tick(80))
    r.step(Applied(2))  # at 80: another; the timer now runs from here
    r.step(Tick(150))
    assert r.view_active  # 150 ms after the work came, but only 70 after the last block
    r.step(Applied(2))  # the same height again is no progress
    r.step(Tick(170))
    assert r.view_active
    r.step(Tick(190))  # 110 ms with neither a certificate nor an applied block
    assert not r.view_active
    assert r.view == 1


def test_the_request_timer_counts_from_the_hosts_clock_and_only_a_tick_checks_it() -> None:
    """A ``Clock`` moves the core's time on without checking timers: work that arrives in a
    round is timed from the round's clock (not from the last Tick, a second old under load),
    and a deadline passed meanwhile fires only at a Tick, after the round's own events."""
    r = Replica(config(2), random.Random(2))  # a backup; request_timeout_ms = 100
    r.step(Tick(0))
    r.step(Clock(80))
    r.step(Pending(True))  # work: the request timer runs from 80, not from the Tick at 0
    r.step(Tick(150))
    assert r.view_active  # 150 < 80 + 100: a timer armed at the Tick's time would have fired
    r.step(Clock(500))
    assert r.view_active  # long past the deadline, but a Clock checks no timer
    out = r.step(Tick(500))
    assert not r.view_active
    sent = [m.decode(a.data, 1024, 64 * 1024) for a in out if isinstance(a, Broadcast)]
    assert [type(x).__name__ for x in sent] == ["ViewChange"]
