"""One PBFT replica as a pure state machine: ``step(event) -> list[Action]``.

Normal case, checkpoints and watermarks follow Castro and Liskov (OSDI 1999) section 4.2-4.3;
view changes section 4.4-4.5 with signed messages. Votes are persisted (``Persist`` first in the
action list) before the message that depends on them is sent, so a restarted replica neither
contradicts a vote it cast nor forgets a prepared certificate or a commit.

``Replica`` wires the parts, restarts from the persisted records, takes messages in, dispatches
them and runs the timers. State has one owner each (consensus/views.py, log.py, checkpoint.py,
fetch.py, timers.py, retract.py, peers.py); the transitions are consensus/normal.py,
execution.py, viewchange_core.py and retract.py.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from common import codec
from common.crypto import verify as crypto_verify
from consensus import messages as m
from consensus.api import (
    NULL_DIGEST,
    Action,
    Applied,
    Broadcast,
    Clock,
    ConsensusConfig,
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
from consensus.checkpoint import CheckpointTracker
from consensus.context import Context
from consensus.execution import Execution
from consensus.fetch import FetchPlanner
from consensus.log import (
    KEY_NEW_VIEW,
    KEY_STABLE,
    KEY_VIEW,
    RETRACT_PREFIX,
    SLOT_PREFIX,
    Slot,
    SlotLog,
    parse_retract_record,
    parse_stable_record,
    parse_view_record,
)
from consensus.normal import NormalCase
from consensus.peers import PeerReports
from consensus.timers import ViewTimers
from consensus.viewchange_core import ViewChanger
from consensus.views import FutureBuffer, ViewState

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
        return self._ctx.quorum

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
        if config.empty_interval_ms < 0:
            raise ValueError("empty_interval_ms must be 0 (off) or positive")
        cfg = config
        self._ctx = ctx = Context(cfg, self._quorum_size(cfg), verify, now_ms)
        self._views = ViewState()
        self._log = SlotLog()
        self._checkpoints = CheckpointTracker(
            cfg.checkpoint_interval, cfg.log_window, ctx.quorum, committed_seq
        )
        self._fetch = FetchPlanner(cfg.index, cfg.request_timeout_ms, now_ms)
        self._timers = ViewTimers(cfg.request_timeout_ms, cfg.view_change_timeout_ms, now_ms)
        self._future = FutureBuffer(FUTURE_PER_SENDER_MAX)
        self._peers = PeerReports()
        self._execution = Execution(
            ctx,
            self._log,
            self._checkpoints,
            self._fetch,
            self._timers,
            committed_seq,
            self._checkpoint_after_applied,
        )
        self._normal = NormalCase(
            ctx,
            self._views,
            self._log,
            self._checkpoints,
            self._fetch,
            self._timers,
            self._execution,
        )
        self._view_changer = ViewChanger(
            ctx,
            rng,
            self._views,
            self._log,
            self._checkpoints,
            self._timers,
            self._peers,
            self._future,
            self._execution,
            self._dispatch,
            use_prepared=self._use_prepared,
            retract_when_alone=self._retract_when_alone,
            refuse_retracted=self._refuse_retracted,
            retract_quorum=self._retract_quorum(),
        )
        self._startup: list[Action] = []  # restart's actions, returned by the first step
        self._restore(list(records), committed_seq)

    # --- public view of the state ---------------------------------------------------------

    @property
    def view(self) -> int:
        return self._views.view

    @property
    def primary(self) -> int:
        return self._ctx.primary(self._views.view)

    @property
    def committed_seq(self) -> int:
        return self._execution.committed_seq

    @property
    def stable_checkpoint(self) -> int:
        return self._checkpoints.stable_seq

    @property
    def view_active(self) -> bool:
        return self._views.active

    @property
    def dropped_counts(self) -> dict[str, int]:
        return self._ctx.dropped_counts

    # --- restart ----------------------------------------------------------------------------

    def _restore(self, records: list[tuple[bytes, bytes]], committed_seq: int) -> None:
        ctx, views, log, checkpoints = self._ctx, self._views, self._log, self._checkpoints
        out = self._startup
        slots: list[Slot] = []
        new_view: bytes | None = None
        for key, value in records:
            if key == KEY_NEW_VIEW:
                new_view = value
            elif key == KEY_VIEW:
                view_state, returned = parse_view_record(value)
                views.restore(*view_state)
                self._view_changer.restore_returned(returned)
            elif key.startswith(RETRACT_PREFIX):
                sender = int.from_bytes(key[len(RETRACT_PREFIX) :], "big")
                self._view_changer.restore_retraction(sender, *parse_retract_record(value))
            elif key == KEY_STABLE:
                checkpoints.restore_stable(*parse_stable_record(value))
            elif key.startswith(SLOT_PREFIX):
                slots.append(
                    Slot.from_record(int.from_bytes(key[len(SLOT_PREFIX) :], "big"), value)
                )
        self._view_changer.restore(new_view)
        stable_seq = checkpoints.stable_seq
        for slot in slots:
            if slot.seq > stable_seq:
                log.restore(slot)
        last = log.get(committed_seq)
        checkpoints.resume_chain(
            committed_seq, None if last is None or last.committed is None else last.committed.chain
        )
        rebroadcast: list[Action] = []
        for slot in log.in_order():
            pp = slot.pre_prepare
            if pp is None or pp.view != views.view:
                continue
            slot.set_validated(slot.prepare_sent or pp.sender == ctx.me or pp.digest == NULL_DIGEST)
            if pp.sender == ctx.me:
                log.advance(slot.seq + 1)
            if not views.active:
                continue
            if slot.prepare_sent:
                vote = ctx.vote(m.Prepare(views.view, slot.seq, pp.digest, ctx.me))
                slot.own_prepare(ctx.me, pp.digest, vote.sig)
                rebroadcast.append(Broadcast(m.encode(vote)))
            elif not slot.validated and slot.seq > committed_seq:
                out.append(Validate(pp.view, pp.seq, pp.digest, pp.payload))
            if slot.commit_sent:
                commit = ctx.vote(m.CommitVote(views.view, slot.seq, pp.digest, ctx.me))
                slot.own_commit(ctx.me, pp.digest, commit.sig)
                rebroadcast.append(Broadcast(m.encode(commit)))
        log.advance(max(stable_seq + 1, committed_seq + 1))
        if committed_seq < stable_seq:
            self._fetch.note_ahead(stable_seq, (i for i, _ in checkpoints.stable_proof))
            self._execution.maybe_fetch(out, urgent=True)
        self._execution.execute(out)
        out.extend(rebroadcast)
        if not views.active:
            self._view_changer.start_view_change(views.view, out, resend=True)

    # --- the step function ------------------------------------------------------------------

    def step(self, event: Event) -> list[Action]:
        if isinstance(event, Clock) and not self._startup:
            # Time only: what it changes (a heartbeat due, peers ahead for long enough) is
            # looked at by the next event's step, which the host feeds in the same round. Every
            # round of the host's driver starts with one: without ``_after_step`` it costs
            # ~1 us instead of ~9.
            self._ctx.advance(event.now_ms)
            return []
        out: list[Action] = self._startup
        self._startup = []
        match event:
            case Tick(now_ms):
                self._ctx.advance(now_ms)
                self._on_tick(out)
            case Clock(now_ms):
                self._ctx.advance(now_ms)
            case Received(sender, data):
                self._on_received(sender, data, out)
            case Pending(pending):
                self._normal.on_pending(pending)
            case Propose(view, seq, payload):
                self._normal.on_propose(view, seq, payload, out)
            case Verdict(view, seq, digest, valid):
                self._normal.on_verdict(view, seq, digest, valid, out)
            case Fetched(entries):
                self._execution.on_fetched(entries, out)
            case Applied(seq):
                self._execution.on_applied(seq, out)
            case PeerStatus(sender, height, view):
                self._on_peer_status(sender, height, view)
        self._after_step(out)
        return out

    # --- receiving --------------------------------------------------------------------------

    def _on_received(self, sender: int, data: bytes, out: list[Action]) -> None:
        ctx = self._ctx
        cfg = ctx.cfg
        if not 0 <= sender < cfg.n:
            return ctx.drop(out, "unknown_sender", None)
        if sender == ctx.me:
            return ctx.drop(out, "from_self", sender)
        if len(data) > cfg.message_bytes_max:
            return ctx.drop(out, "oversize", sender)
        try:
            msg = m.decode(data, cfg.payload_bytes_max, cfg.message_bytes_max)
        except codec.CodecError:
            return ctx.drop(out, "malformed", sender)
        if msg.sender != sender:
            return ctx.drop(out, "sender_mismatch", sender)
        content = m.signing_content(msg, cfg.chain_id)
        if not ctx.verify(cfg.validators[sender], m.domain(msg.kind), content, msg.sig):
            return ctx.drop(out, "bad_signature", sender)
        self._dispatch(msg, out)

    def _dispatch(self, msg: m.Message, out: list[Action]) -> None:
        views = self._views
        match msg:
            case m.PrePrepare() | m.Prepare() | m.CommitVote():
                if msg.view < views.view:
                    self._peers.working_in(msg.sender, msg.view, self._ctx.now_ms)
                    return self._ctx.drop(out, "old_view", msg.sender)
                if msg.view > views.view or not views.active:
                    return self._buffer(msg, out)
                if not self._checkpoints.in_window(msg.seq):
                    return self._ctx.drop(out, "outside_watermarks", msg.sender)
                if isinstance(msg, m.PrePrepare):
                    return self._normal.on_pre_prepare(msg, out)
                return self._normal.on_vote(msg, out)
            case m.Checkpoint():
                return self._execution.on_checkpoint(msg, out)
            case m.ViewChange():
                return self._view_changer.on_view_change(msg, out)
            case m.NewView():
                return self._view_changer.on_new_view(msg, out)
            case m.Retract():
                return self._view_changer.on_retract(msg, out)
            case m.RetractAck():
                return self._view_changer.on_retract_ack(msg, out)

    def _buffer(self, msg: m.SlotMessage, out: list[Action]) -> None:
        if not self._future.add(msg):
            return self._ctx.drop(out, "future_buffer_full", msg.sender)
        self._view_changer.on_buffered(out)

    def _on_peer_status(self, sender: int, height: int, view: int) -> None:
        """A peer's (unsigned) status: remember it; ``_after_step`` decides what to do."""
        ctx = self._ctx
        if not 0 <= sender < ctx.cfg.n or sender == ctx.me:
            return
        self._peers.status(sender, view, height, ctx.now_ms)
        target, peers = self._peers.vouched_height(ctx.cfg.f)
        self._fetch.hint(target, peers, self._execution.committed_seq)

    # --- timers -----------------------------------------------------------------------------

    def _has_work(self) -> bool:
        committed = self._execution.committed_seq
        if self._normal.host_pending or self._fetch.behind(committed):
            return True
        return self._log.has_work(self._views.view, committed)

    def _on_tick(self, out: list[Action]) -> None:
        now = self._ctx.now_ms
        if self._views.active:
            if self._timers.request_timed_out(now):
                self._view_changer.start_view_change(self._views.view + 1, out)
            elif self._timers.resend_due(now) and not self._normal.resend(out):
                self._timers.stop_resend()
        elif self._timers.view_change_timed_out(now):
            self._view_changer.on_view_change_timer(out)
        if self._fetch.due(now):
            self._execution.maybe_fetch(out)

    def _keep_resend(self) -> None:
        """Arm the resend timer when a slot of our view is open (progress disarms it; a timer
        that finds nothing open stops). Scans the log only while the timer is off: under load
        once per executed block, on an idle chain at every step (a few slots at most)."""
        views, timers = self._views, self._timers
        if not views.active or timers.resend_armed:
            return
        if self._log.has_work(views.view, self._execution.committed_seq):
            timers.arm_resend(self._ctx.now_ms)

    def _after_step(self, out: list[Action]) -> None:
        self._view_changer.follow_peers(out)
        self._normal.request_proposals(out)
        work = self._has_work()
        self._normal.heartbeat(not work, out)  # never arms the request timer
        self._timers.keep_request(self._ctx.now_ms, self._views.active and work)
        self._keep_resend()
        self._execution.maybe_fetch(out)
        at = self._timers.next_timer(
            self._views.active, self._fetch.deadline_ms, self._normal.heartbeat_timer(not work)
        )
        if at is not None:
            out.append(SetTimer(at))
