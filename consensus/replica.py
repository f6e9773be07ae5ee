"""One PBFT replica as a pure state machine: ``step(event) -> list[Action]``.

Normal case, checkpoints and watermarks follow Castro and Liskov (OSDI 1999) section 4.2-4.3;
view changes section 4.4-4.5 with signed messages. Votes are persisted (``Persist`` first in the
action list) before the message that depends on them is sent, so a restarted replica neither
contradicts a vote it cast nor forgets a prepared certificate or a commit.

This module holds the state, restart, message intake and timers, and dispatches to the helpers:
consensus/normal.py (PRE-PREPARE, PREPARE, COMMIT, the commit certificate), consensus/checkpoint.py
(in-order execution, checkpoints, watermarks, fetching) and consensus/viewchange_core.py.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from common import codec
from common.crypto import SigningKey
from common.crypto import verify as crypto_verify
from consensus import checkpoint, normal
from consensus import messages as m
from consensus import viewchange_core as vcc
from consensus.api import (
    NULL_DIGEST,
    Action,
    Applied,
    Broadcast,
    ConsensusConfig,
    Dropped,
    Event,
    Fetched,
    PeerStatus,
    Pending,
    Propose,
    Received,
    SetTimer,
    Tick,
    Validate,
    Verdict,
)
from consensus.log import (
    KEY_NEW_VIEW,
    KEY_STABLE,
    KEY_VIEW,
    RETRACT_PREFIX,
    SLOT_PREFIX,
    Slot,
    parse_retract_record,
    parse_stable_record,
    parse_view_record,
)
from consensus.peers import PeerReports
from consensus.viewchange import GENESIS_CHECKPOINT, Selection, select

FUTURE_PER_SENDER_MAX = 64  # buffered messages of a view we have not entered yet, per sender


class Replica:
    """A PBFT replica. The host feeds events to :meth:`step` and performs the actions in order."""

    # Tests subclass these hooks to build deliberately broken replicas the simulator must catch.
    _use_prepared = True
    _checkpoint_after_applied = True  # False: CHECKPOINT as soon as executed (the old rule)
    _retract_when_alone = True  # False: stay alone in a view change nobody joined (the old rule)
    _refuse_retracted = True  # False: count VIEW-CHANGEs their sender retracted

    @staticmethod
    def _quorum_size(config: ConsensusConfig) -> int:
        return config.quorum

    def _retract_quorum(self) -> int:
        """Acknowledgments (own included) a RETRACT needs before we return (2f+1)."""
        return self._quorum

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
        # Blocks the host reports durable (``Applied``); our CHECKPOINTs never go above it.
        self._applied_seq = committed_seq
        self._checkpoint_sent = 0  # highest seq of a CHECKPOINT of ours sent
        self._view_progress_ms: int | None = None  # last commit certificate formed in our view
        # Leaving a view change nobody joined (consensus/viewchange_core.py, RETRACT).
        self._entered = 0  # highest view we were ever active in: we never return below it
        self._epoch = 0  # stamped on our VIEW-CHANGEs; a RETRACT voids epochs at or below its own
        self._retracted: dict[int, tuple[int, int]] = {}  # sender -> (view, epoch) it voided
        self._retract: m.Retract | None = None  # our RETRACT waiting for 2f+1 acknowledgments
        self._retract_acks: set[int] = set()
        self._retract_tries = 0
        self._retract_new_view: tuple[m.NewView, Selection] | None = None  # of the RETRACT's view
        self._inactive_since_ms = now_ms
        self._peers = PeerReports()
        self._behind_since_ms: int | None = None  # f+1 peers report a view above ours since
        self._hint_ahead = 0  # height f+1 peers report (PeerStatus): fetch, but no view change
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
                self._view, self._active, self._entered = parse_view_record(value)
            elif key.startswith(RETRACT_PREFIX):
                sender = int.from_bytes(key[len(RETRACT_PREFIX) :], "big")
                self._retracted[sender] = parse_retract_record(value)
            elif key == KEY_STABLE:
                seq, digest, proof = parse_stable_record(value)
                self._stable_seq, self._stable_digest, self._stable_proof = seq, digest, proof
            elif key.startswith(SLOT_PREFIX):
                slots.append(
                    Slot.from_record(int.from_bytes(key[len(SLOT_PREFIX) :], "big"), value)
                )
        if self._active:
            self._entered = max(self._entered, self._view)
        mine = self._retracted.get(self._me)
        self._epoch = 0 if mine is None else mine[1] + 1
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
            checkpoint.note_ahead(self, self._stable_seq, (i for i, _ in self._stable_proof))
            checkpoint.maybe_fetch(self, out, urgent=True)
        checkpoint.execute(self, out)
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
                normal.on_propose(self, view, seq, payload, out)
            case Verdict(view, seq, digest, valid):
                normal.on_verdict(self, view, seq, digest, valid, out)
            case Fetched(entries):
                checkpoint.on_fetched(self, entries, out)
            case Applied(seq):
                checkpoint.on_applied(self, seq, out)
            case PeerStatus(sender, height, view):
                self._on_peer_status(sender, height, view)
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
                    self._peers.working_in(msg.sender, msg.view, self._now_ms)
                    return self._drop(out, "old_view", msg.sender)
                if msg.view > self._view or not self._active:
                    return self._buffer(msg, out)
                if not self._in_window(msg.seq):
                    return self._drop(out, "outside_watermarks", msg.sender)
                if isinstance(msg, m.PrePrepare):
                    return normal.on_pre_prepare(self, msg, out)
                return normal.on_vote(self, msg, out)
            case m.Checkpoint():
                return checkpoint.on_checkpoint(self, msg, out)
            case m.ViewChange():
                return self._on_view_change(msg, out)
            case m.NewView():
                return self._on_new_view(msg, out)
            case m.Retract():
                return vcc.on_retract(self, msg, out)
            case m.RetractAck():
                return vcc.on_retract_ack(self, msg, out)

    def _buffer(self, msg: m.SlotMessage, out: list[Action]) -> None:
        queue = self._future.setdefault(msg.sender, [])
        if len(queue) >= FUTURE_PER_SENDER_MAX:
            return self._drop(out, "future_buffer_full", msg.sender)
        queue.append(msg)
        vcc.on_buffered(self, out)

    def _on_peer_status(self, sender: int, height: int, view: int) -> None:
        """A peer's (unsigned) status: remember it; ``_after_step`` decides what to do."""
        if not 0 <= sender < self._cfg.n or sender == self._me:
            return
        self._peers.status(sender, view, height, self._now_ms)
        target, peers = self._peers.vouched_height(self._cfg.f)
        if target > max(self._hint_ahead, self._last_committed):
            self._hint_ahead = target
            self._ahead_peers.update(peers)

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
                progress = self._view_progress_ms
                if progress is not None and now < progress + self._cfg.request_timeout_ms:
                    # Commit certificates keep forming in this view (2f+1 replicas, so f+1
                    # honest ones, vote in it): what we miss is fetched; leaving alone would
                    # only strand us in a view nobody joins.
                    self._request_deadline_ms = progress + self._cfg.request_timeout_ms
                else:
                    self._start_view_change(self._view + 1, out)
        elif self._view_change_deadline_ms is not None and now >= self._view_change_deadline_ms:
            vcc.on_view_change_timer(self, out)
        if self._fetch_deadline_ms is not None and now >= self._fetch_deadline_ms:
            checkpoint.maybe_fetch(self, out)

    def _after_step(self, out: list[Action]) -> None:
        vcc.follow_peers(self, out)
        normal.request_proposals(self, out)
        if self._active and self._has_work():
            if self._request_deadline_ms is None:
                self._request_deadline_ms = self._now_ms + self._cfg.request_timeout_ms
        else:
            self._request_deadline_ms = None
        checkpoint.maybe_fetch(self, out)
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
