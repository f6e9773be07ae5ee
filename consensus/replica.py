"""One PBFT replica as a pure state machine: ``step(event) -> list[Action]``.

Normal case, checkpoints and watermarks follow Castro and Liskov (OSDI 1999) section 4.2-4.3;
view changes section 4.4-4.5 with signed messages. Votes are persisted (``Persist`` first in the
action list) before the message that depends on them is sent, so a restarted replica neither
contradicts a vote it cast nor forgets a prepared certificate or a commit.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from common import codec
from common.crypto import SigningKey
from common.crypto import verify as crypto_verify
from consensus import messages as m
from consensus import viewchange_core as vcc
from consensus.api import (
    NULL_DIGEST,
    Action,
    Broadcast,
    Commit,
    ConsensusConfig,
    Dropped,
    Event,
    FetchBlocks,
    Fetched,
    FetchedEntry,
    Pending,
    Persist,
    Propose,
    Received,
    RequestProposal,
    SetTimer,
    Tick,
    Validate,
    Verdict,
)
from consensus.certificate import CommitCertificate, verify_certificate
from consensus.log import (
    KEY_NEW_VIEW,
    KEY_STABLE,
    KEY_VIEW,
    SLOT_PREFIX,
    Committed,
    Slot,
    parse_stable_record,
    parse_view_record,
    slot_key,
    stable_record,
)
from consensus.viewchange import GENESIS_CHECKPOINT, Selection, select

FUTURE_PER_SENDER_MAX = 64  # buffered messages of a view we have not entered yet, per sender
CHECKPOINTS_PER_SENDER_MAX = 4


class Replica:
    """A PBFT replica. The host feeds events to :meth:`step` and performs the actions in order."""

    # Tests subclass these two hooks to build deliberately broken replicas the simulator must catch.
    _use_prepared = True

    @staticmethod
    def _quorum_size(config: ConsensusConfig) -> int:
        return config.quorum

    def __init__(
        self,
        config: ConsensusConfig,
        rng: random.Random,
        records: Iterable[tuple[bytes, bytes]] = (),
        committed_seq: int = 0,
        now_ms: int = 0,
        *,
        verify: m.Verify = crypto_verify,
    ) -> None:
        if not 0 <= config.index < config.n or config.n < 1:
            raise ValueError("config.index is not a validator index")
        if config.log_window < 2 * config.checkpoint_interval:
            raise ValueError("log_window must be at least 2 * checkpoint_interval")
        self._cfg = config
        self._rng = rng
        self._key = SigningKey(config.seed)
        self._verify = verify
        self._quorum = self._quorum_size(config)
        self._me = config.index
        self._now_ms = now_ms
        self._view = 0
        self._active = True  # False while changing to ``_view``
        self._slots: dict[int, Slot] = {}
        self._stable_seq = 0
        self._stable_digest = GENESIS_CHECKPOINT
        self._stable_proof: m.Sigs = ()
        self._chain_at: dict[int, bytes] = {}  # own checkpoint digests above the stable one
        self._last_committed = committed_seq
        self._chain: bytes | None = GENESIS_CHECKPOINT if committed_seq == 0 else None
        self._host_pending = False
        self._next_seq = 1
        self._requested: set[int] = set()
        self._checkpoints: dict[int, dict[int, tuple[bytes, bytes]]] = {}
        self._own_checkpoint: m.Checkpoint | None = None
        self._view_changes: dict[int, m.ViewChange] = {}  # highest-view VIEW-CHANGE per sender
        self._new_view: m.NewView | None = None
        self._future: dict[int, list[m.SlotMessage]] = {}
        self._request_deadline_ms: int | None = None
        self._view_change_deadline_ms: int | None = None
        self._view_change_timeout_ms = config.view_change_timeout_ms
        self._view_change_armed = False
        self._fetch_deadline_ms: int | None = None
        self._backoff = 0
        self._known_ahead = 0
        self._ahead_peers: set[int] = set()
        self._last_progress_ms = now_ms
        self._last_fetch_ms: int | None = None
        self._last_fetch_to = 0
        self._timer_ms: int | None = None
        self._startup: list[Action] = []
        self._dropped: dict[str, int] = {}
        self._restore(list(records), committed_seq)

    # --- public view of the state ---------------------------------------------------------

    @property
    def view(self) -> int:
        return self._view

    @property
    def primary(self) -> int:
        return self._cfg.primary(self._view)

    @property
    def committed_seq(self) -> int:
        return self._last_committed

    @property
    def stable_checkpoint(self) -> int:
        return self._stable_seq

    @property
    def view_active(self) -> bool:
        return self._active

    @property
    def dropped_counts(self) -> dict[str, int]:
        return dict(self._dropped)

    # --- restart ----------------------------------------------------------------------------

    def _restore(self, records: list[tuple[bytes, bytes]], committed_seq: int) -> None:
        out = self._startup
        slots: list[Slot] = []
        new_view: bytes | None = None
        for key, value in records:
            if key == KEY_NEW_VIEW:
                new_view = value
            elif key == KEY_VIEW:
                self._view, self._active = parse_view_record(value)
            elif key == KEY_STABLE:
                seq, digest, proof = parse_stable_record(value)
                self._stable_seq, self._stable_digest, self._stable_proof = seq, digest, proof
            elif key.startswith(SLOT_PREFIX):
                slots.append(
                    Slot.from_record(int.from_bytes(key[len(SLOT_PREFIX) :], "big"), value)
                )
        self._new_view = vcc.restore_new_view(self, new_view)
        for slot in slots:
            if slot.seq > self._stable_seq:
                self._slots[slot.seq] = slot
        if self._chain is None:
            if committed_seq == self._stable_seq:
                self._chain = self._stable_digest
            else:
                own = self._slots.get(committed_seq)
                if own is not None and own.committed is not None:
                    self._chain = own.committed.chain
        rebroadcast: list[Action] = []
        for slot in sorted(self._slots.values(), key=lambda s: s.seq):
            pp = slot.pre_prepare
            if pp is None or pp.view != self._view:
                continue
            slot.validated = slot.prepare_sent or pp.sender == self._me or pp.digest == NULL_DIGEST
            if pp.sender == self._me:
                self._next_seq = max(self._next_seq, slot.seq + 1)
            if not self._active:
                continue
            if slot.prepare_sent:
                vote = self._vote(m.Prepare(self._view, slot.seq, pp.digest, self._me))
                slot.prepares[self._me] = (pp.digest, vote.sig)
                rebroadcast.append(Broadcast(m.encode(vote)))
            elif not slot.validated and slot.seq > self._last_committed:
                out.append(Validate(pp.view, pp.seq, pp.digest, pp.payload))
            if slot.commit_sent:
                commit = self._vote(m.CommitVote(self._view, slot.seq, pp.digest, self._me))
                slot.commits[self._me] = (pp.digest, commit.sig)
                rebroadcast.append(Broadcast(m.encode(commit)))
        self._next_seq = max(self._next_seq, self._stable_seq + 1, self._last_committed + 1)
        if self._last_committed < self._stable_seq:
            self._note_ahead(self._stable_seq, (i for i, _ in self._stable_proof))
            self._maybe_fetch(out, urgent=True)
        self._execute(out)
        out.extend(rebroadcast)
        if not self._active:
            self._start_view_change(self._view, out, resend=True)

    # --- the step function ------------------------------------------------------------------

    def step(self, event: Event) -> list[Action]:
        out: list[Action] = self._startup
        self._startup = []
        match event:
            case Tick(now_ms):
                self._now_ms = max(self._now_ms, now_ms)
                self._on_tick(out)
            case Received(sender, data):
                self._on_received(sender, data, out)
            case Pending(pending):
                self._host_pending = pending
            case Propose(view, seq, payload):
                self._on_propose(view, seq, payload, out)
            case Verdict(view, seq, digest, valid):
                self._on_verdict(view, seq, digest, valid, out)
            case Fetched(entries):
                self._on_fetched(entries, out)
        self._after_step(out)
        return out

    def _drop(self, out: list[Action], reason: str, sender: int | None = None) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1
        out.append(Dropped(reason, sender))

    def _vote(self, msg: m.MessageT) -> m.MessageT:
        return m.sign(msg, self._key, self._cfg.chain_id)

    def _slot(self, seq: int) -> Slot:
        slot = self._slots.get(seq)
        if slot is None:
            slot = self._slots[seq] = Slot(seq)
        return slot

    def _in_window(self, seq: int) -> bool:
        return self._stable_seq < seq <= self._stable_seq + self._cfg.log_window

    # --- receiving --------------------------------------------------------------------------

    def _on_received(self, sender: int, data: bytes, out: list[Action]) -> None:
        cfg = self._cfg
        if not 0 <= sender < cfg.n:
            return self._drop(out, "unknown_sender", None)
        if sender == self._me:
            return self._drop(out, "from_self", sender)
        if len(data) > cfg.message_bytes_max:
            return self._drop(out, "oversize", sender)
        try:
            msg = m.decode(data, cfg.payload_bytes_max, cfg.message_bytes_max)
        except codec.CodecError:
            return self._drop(out, "malformed", sender)
        if msg.sender != sender:
            return self._drop(out, "sender_mismatch", sender)
        content = m.signing_content(msg, cfg.chain_id)
        if not self._verify(cfg.validators[sender], m.domain(msg.kind), content, msg.sig):
            return self._drop(out, "bad_signature", sender)
        self._dispatch(msg, out)

    def _dispatch(self, msg: m.Message, out: list[Action]) -> None:
        match msg:
            case m.PrePrepare() | m.Prepare() | m.CommitVote():
                if msg.view < self._view:
                    return self._drop(out, "old_view", msg.sender)
                if msg.view > self._view or not self._active:
                    return self._buffer(msg, out)
                if not self._in_window(msg.seq):
                    return self._drop(out, "outside_watermarks", msg.sender)
                if isinstance(msg, m.PrePrepare):
                    return self._on_pre_prepare(msg, out)
                return self._on_vote(msg, out)
            case m.Checkpoint():
                return self._on_checkpoint(msg, out)
            case m.ViewChange():
                return self._on_view_change(msg, out)
            case m.NewView():
                return self._on_new_view(msg, out)

    def _buffer(self, msg: m.SlotMessage, out: list[Action]) -> None:
        queue = self._future.setdefault(msg.sender, [])
        if len(queue) >= FUTURE_PER_SENDER_MAX:
            return self._drop(out, "future_buffer_full", msg.sender)
        queue.append(msg)
        vcc.on_buffered(self, out)

    def _on_pre_prepare(self, pp: m.PrePrepare, out: list[Action]) -> None:
        if pp.sender != self._cfg.primary(pp.view):
            return self._drop(out, "not_primary", pp.sender)
        if m.payload_digest(pp.payload) != pp.digest:
            return self._drop(out, "bad_digest", pp.sender)
        slot = self._slot(pp.seq)
        current = slot.pre_prepare
        if current is not None and current.view == pp.view:
            reason = "duplicate" if current.digest == pp.digest else "conflicting_pre_prepare"
            return self._drop(out, reason, pp.sender)
        if slot.committed is not None and slot.committed.digest != pp.digest:
            return self._drop(out, "conflicts_committed", pp.sender)
        self._accept_pre_prepare(slot, pp, validated=pp.digest == NULL_DIGEST)
        if slot.validated:
            self._send_prepare(slot, out)
        else:
            out.append(Persist(((slot_key(slot.seq), slot.record()),)))
            out.append(Validate(pp.view, pp.seq, pp.digest, pp.payload))
        self._check_slot(slot, out)

    def _accept_pre_prepare(self, slot: Slot, pp: m.PrePrepare, validated: bool) -> None:
        slot.pre_prepare = pp
        slot.validated = validated
        slot.rejected = False
        slot.prepare_sent = False
        slot.commit_sent = False

    def _send_prepare(self, slot: Slot, out: list[Action]) -> None:
        pp = slot.pre_prepare
        assert pp is not None
        assert pp.view == self._view
        vote = self._vote(m.Prepare(pp.view, pp.seq, pp.digest, self._me))
        slot.prepare_sent = True
        slot.prepares[self._me] = (pp.digest, vote.sig)
        out.append(Persist(((slot_key(slot.seq), slot.record()),)))
        out.append(Broadcast(m.encode(vote)))

    def _on_vote(self, vote: m.Prepare | m.CommitVote, out: list[Action]) -> None:
        slot = self._slot(vote.seq)
        if isinstance(vote, m.Prepare):
            if vote.sender == self._cfg.primary(vote.view):
                return self._drop(out, "prepare_from_primary", vote.sender)
            votes = slot.prepares
        else:
            votes = slot.commits
        known = votes.get(vote.sender)
        if known is not None:
            reason = "duplicate" if known[0] == vote.digest else "conflicting_vote"
            return self._drop(out, reason, vote.sender)
        votes[vote.sender] = (vote.digest, vote.sig)
        self._check_slot(slot, out)

    def _on_verdict(
        self, view: int, seq: int, digest: bytes, valid: bool, out: list[Action]
    ) -> None:
        slot = self._slots.get(seq)
        pp = None if slot is None else slot.pre_prepare
        if slot is None or pp is None or not self._active or view != self._view:
            return
        if pp.view != view or pp.digest != digest or slot.validated or slot.rejected:
            return
        if not valid:
            slot.rejected = True
            return self._drop(out, "invalid_proposal", pp.sender)
        slot.validated = True
        self._send_prepare(slot, out)
        self._check_slot(slot, out)

    # --- quorums, commits, execution --------------------------------------------------------

    def _check_slot(self, slot: Slot, out: list[Action]) -> None:
        pp = slot.pre_prepare
        view = self._view
        if pp is not None and pp.view == view and slot.validated and not slot.commit_sent:
            primary = self._cfg.primary(view)
            backers = sorted(
                (s, sig) for s, (d, sig) in slot.prepares.items() if d == pp.digest and s != primary
            )
            if len(backers) >= self._quorum - 1:
                slot.prepared = m.PreparedCert(
                    view, slot.seq, pp.digest, pp.payload, pp.sig, tuple(backers)
                )
                commit = self._vote(m.CommitVote(view, slot.seq, pp.digest, self._me))
                slot.commit_sent = True
                slot.commits[self._me] = (pp.digest, commit.sig)
                out.append(Persist(((slot_key(slot.seq), slot.record()),)))
                out.append(Broadcast(m.encode(commit)))
        if slot.committed is None and len(slot.commits) >= self._quorum:
            tally: dict[bytes, int] = {}
            for d, _ in slot.commits.values():
                tally[d] = tally.get(d, 0) + 1
            for digest, count in tally.items():
                if count < self._quorum:
                    continue
                payload = self._payload_for(slot, digest)
                if payload is None:
                    self._note_ahead(slot.seq, tuple(sorted(slot.commits)))
                    continue
                sigs = tuple(
                    sorted((s, sig) for s, (d, sig) in slot.commits.items() if d == digest)
                )
                cert = CommitCertificate(view, slot.seq, digest, sigs)
                slot.committed = Committed(view, digest, payload, cert.encode())
                if slot.seq > self._last_committed + 1:
                    self._note_ahead(slot.seq - 1, tuple(sorted(slot.commits)))
                break
        self._execute(out)

    @staticmethod
    def _payload_for(slot: Slot, digest: bytes) -> bytes | None:
        if slot.pre_prepare is not None and slot.pre_prepare.digest == digest:
            return slot.pre_prepare.payload
        if slot.prepared is not None and slot.prepared.digest == digest:
            return slot.prepared.payload
        return None

    def _execute(self, out: list[Action]) -> None:
        """Emit ``Commit`` for every committed seq right after the last one, strictly in order."""
        while True:
            seq = self._last_committed + 1
            slot = self._slots.get(seq)
            if slot is None or slot.committed is None:
                return
            done = slot.committed
            if self._chain is not None:
                self._chain = codec.sha256(self._chain + done.digest)
            elif seq == self._stable_seq:
                self._chain = self._stable_digest
            done.chain = self._chain
            if seq > self._stable_seq:
                out.append(Persist(((slot_key(seq), slot.record()),)))
            else:  # committed below a stable checkpoint we already hold: nothing left to keep
                del self._slots[seq]
                out.append(Persist(((slot_key(seq), None),)))
            out.append(Commit(seq, done.view, done.digest, done.payload, done.certificate))
            self._last_committed = seq
            self._next_seq = max(self._next_seq, seq + 1)
            self._last_progress_ms = self._now_ms
            self._request_deadline_ms = None
            self._backoff = 0
            if seq % self._cfg.checkpoint_interval == 0 and self._chain is not None:
                self._send_checkpoint(seq, self._chain, out)

    # --- checkpoints ------------------------------------------------------------------------

    def _send_checkpoint(self, seq: int, digest: bytes, out: list[Action]) -> None:
        if seq <= self._stable_seq:
            return
        self._chain_at[seq] = digest
        cp = self._vote(m.Checkpoint(seq, digest, self._me))
        self._own_checkpoint = cp
        out.append(Broadcast(m.encode(cp)))
        self._record_checkpoint(cp, out)

    def _on_checkpoint(self, cp: m.Checkpoint, out: list[Action]) -> None:
        if cp.seq <= self._stable_seq:
            return self._drop(out, "stale_checkpoint", cp.sender)
        if cp.seq % self._cfg.checkpoint_interval != 0:
            return self._drop(out, "bad_checkpoint_seq", cp.sender)
        self._record_checkpoint(cp, out)

    def _record_checkpoint(self, cp: m.Checkpoint, out: list[Action]) -> None:
        mine = self._checkpoints.setdefault(cp.sender, {})
        known = mine.get(cp.seq)
        if known is not None:
            reason = "duplicate" if known[0] == cp.digest else "conflicting_vote"
            return self._drop(out, reason, cp.sender)
        mine[cp.seq] = (cp.digest, cp.sig)
        while len(mine) > CHECKPOINTS_PER_SENDER_MAX:
            del mine[min(mine)]
        proof = tuple(
            sorted(
                (s, seqs[cp.seq][1])
                for s, seqs in self._checkpoints.items()
                if cp.seq in seqs and seqs[cp.seq][0] == cp.digest
            )
        )
        if len(proof) >= self._quorum:
            own = self._chain_at.get(cp.seq)
            if own is not None and own != cp.digest:
                return self._drop(out, "checkpoint_mismatch", cp.sender)
            self._adopt_stable(cp.seq, cp.digest, proof, out)

    def _adopt_stable(self, seq: int, digest: bytes, proof: m.Sigs, out: list[Action]) -> None:
        """Make ``seq`` the low watermark and drop everything at or below it (section 4.3)."""
        if seq <= self._stable_seq:
            return
        self._stable_seq, self._stable_digest, self._stable_proof = seq, digest, proof
        records: list[tuple[bytes, bytes | None]] = [
            (KEY_STABLE, stable_record(seq, digest, proof))
        ]
        for old in sorted(s for s in self._slots if s <= seq):
            if old <= self._last_committed or self._slots[old].committed is None:
                del self._slots[old]
                records.append((slot_key(old), None))
        self._chain_at = {s: d for s, d in self._chain_at.items() if s > seq}
        for seqs in self._checkpoints.values():
            for old in [s for s in seqs if s <= seq]:
                del seqs[old]
        out.append(Persist(tuple(records)))
        self._next_seq = max(self._next_seq, seq + 1)
        if self._last_committed < seq:
            self._note_ahead(seq, tuple(i for i, _ in proof))
            self._maybe_fetch(out, urgent=True)

    # --- falling behind ---------------------------------------------------------------------

    def _note_ahead(self, seq: int, peers: Iterable[int]) -> None:
        if seq > self._known_ahead:
            self._known_ahead = seq
        self._ahead_peers.update(p for p in peers if p != self._me)

    def _maybe_fetch(self, out: list[Action], urgent: bool = False) -> None:
        if self._known_ahead <= self._last_committed:
            self._fetch_deadline_ms = None
            return
        now = self._now_ms
        delay = max(1, self._cfg.request_timeout_ms // 4)
        due = self._last_progress_ms + delay
        if not urgent and now < due:
            self._fetch_deadline_ms = due
            return
        recent = self._last_fetch_ms is not None and now - self._last_fetch_ms < 2 * delay
        if recent and self._last_fetch_to >= self._known_ahead:
            self._fetch_deadline_ms = (self._last_fetch_ms or 0) + 2 * delay
            return
        self._last_fetch_ms = now
        self._last_fetch_to = self._known_ahead
        self._fetch_deadline_ms = now + 2 * delay
        peers = tuple(sorted(self._ahead_peers))
        out.append(FetchBlocks(self._last_committed + 1, self._known_ahead, peers))

    def _on_fetched(self, entries: Iterable[FetchedEntry], out: list[Action]) -> None:
        for entry in sorted(entries, key=lambda e: e.seq):
            if entry.seq <= self._last_committed:
                continue
            if entry.seq != self._last_committed + 1:
                return self._drop(out, "fetched_gap")
            if len(entry.payload) > self._cfg.payload_bytes_max:
                return self._drop(out, "fetched_oversize")
            try:
                cert = CommitCertificate.decode(entry.certificate)
            except codec.CodecError:
                return self._drop(out, "fetched_bad_certificate")
            if (
                cert.seq != entry.seq
                or m.payload_digest(entry.payload) != cert.digest
                or not verify_certificate(
                    cert, self._cfg.validators, self._cfg.chain_id, self._verify
                )
            ):
                return self._drop(out, "fetched_bad_certificate")
            slot = self._slot(entry.seq)
            if slot.committed is None or slot.committed.digest != cert.digest:
                slot.committed = Committed(cert.view, cert.digest, entry.payload, entry.certificate)
            self._execute(out)

    # --- the primary ------------------------------------------------------------------------

    def _on_propose(self, view: int, seq: int, payload: bytes, out: list[Action]) -> None:
        if seq not in self._requested or view != self._view or not self._active:
            return
        self._requested.discard(seq)
        if len(payload) > self._cfg.payload_bytes_max:
            return self._drop(out, "proposal_oversize", self._me)
        pp = self._vote(m.PrePrepare(view, seq, m.payload_digest(payload), payload, self._me))
        slot = self._slot(seq)
        if slot.pre_prepare is not None and slot.pre_prepare.view == view:
            return
        self._accept_pre_prepare(slot, pp, validated=True)
        out.append(Persist(((slot_key(seq), slot.record()),)))
        out.append(Broadcast(m.encode(pp)))
        self._check_slot(slot, out)

    def _request_proposals(self, out: list[Action]) -> None:
        cfg = self._cfg
        if not (self._active and self._host_pending and self.primary == self._me):
            return
        limit = min(self._last_committed + cfg.pipeline_depth, self._stable_seq + cfg.log_window)
        while self._next_seq <= limit:
            seq = self._next_seq
            self._next_seq += 1
            slot = self._slots.get(seq)
            pp = None if slot is None else slot.pre_prepare
            if pp is not None and pp.view == self._view:
                continue
            self._requested.add(seq)
            out.append(RequestProposal(self._view, seq))

    # --- timers -----------------------------------------------------------------------------

    def _has_work(self) -> bool:
        if self._host_pending or self._known_ahead > self._last_committed:
            return True
        return any(
            s.pre_prepare is not None and s.pre_prepare.view == self._view
            for seq, s in self._slots.items()
            if seq > self._last_committed
        )

    def _on_tick(self, out: list[Action]) -> None:
        now = self._now_ms
        if self._active:
            if self._request_deadline_ms is not None and now >= self._request_deadline_ms:
                self._start_view_change(self._view + 1, out)
        elif self._view_change_deadline_ms is not None and now >= self._view_change_deadline_ms:
            vcc.on_view_change_timer(self, out)
        if self._fetch_deadline_ms is not None and now >= self._fetch_deadline_ms:
            self._maybe_fetch(out)

    def _after_step(self, out: list[Action]) -> None:
        self._request_proposals(out)
        if self._active and self._has_work():
            if self._request_deadline_ms is None:
                self._request_deadline_ms = self._now_ms + self._cfg.request_timeout_ms
        else:
            self._request_deadline_ms = None
        self._maybe_fetch(out)
        deadlines = [
            d
            for d in (
                self._request_deadline_ms,
                self._view_change_deadline_ms if not self._active else None,
                self._fetch_deadline_ms,
            )
            if d is not None
        ]
        at = min(deadlines, default=None)
        if at is not None and at != self._timer_ms:
            self._timer_ms = at
            out.append(SetTimer(at))

    # --- view changes (consensus/viewchange_core.py) ---------------------------------------

    def _selection_for(self, vcs: list[m.ViewChange]) -> Selection:
        return select(vcs, use_prepared=self._use_prepared)

    def _start_view_change(self, view: int, out: list[Action], resend: bool = False) -> None:
        vcc.start_view_change(self, view, out, resend)

    def _on_view_change(self, vc: m.ViewChange, out: list[Action]) -> None:
        vcc.on_view_change(self, vc, out)

    def _on_new_view(self, nv: m.NewView, out: list[Action]) -> None:
        vcc.on_new_view(self, nv, out)
