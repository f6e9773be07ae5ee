"""The normal case (Castro and Liskov, OSDI 1999, section 4.2): ordering to commit.

PRE-PREPARE (sent as primary, or accepted and validated as backup), PREPARE, COMMIT, and the
commit certificate that makes a seq committed; execution in seq order is consensus/execution.py.
Every vote is persisted (``Persist`` first) before the message carrying it is sent.
"""

from __future__ import annotations

from consensus import messages as m
from consensus import quorum
from consensus.api import NULL_DIGEST, Action, Broadcast, Persist, RequestProposal, Send, Validate
from consensus.certificate import CommitCertificate
from consensus.checkpoint import CheckpointTracker
from consensus.context import Context
from consensus.execution import Execution
from consensus.fetch import FetchPlanner
from consensus.log import Committed, Slot, SlotLog, slot_key
from consensus.timers import ViewTimers
from consensus.views import ViewState


class NormalCase:
    """The normal-case transitions of the view we are active in; owns whether the host has work."""

    def __init__(
        self,
        ctx: Context,
        views: ViewState,
        log: SlotLog,
        checkpoints: CheckpointTracker,
        fetch: FetchPlanner,
        timers: ViewTimers,
        execution: Execution,
    ) -> None:
        self._ctx = ctx
        self._views = views
        self._log = log
        self._checkpoints = checkpoints
        self._fetch = fetch
        self._timers = timers
        self._execution = execution
        self._host_pending = False  # the last ``Pending`` said the host has transactions
        # Heartbeat (empty_interval_ms): when a block was last executed here or proposed by us.
        self._last_block_ms = ctx.now_ms
        self._seen_seq = execution.committed_seq

    @property
    def host_pending(self) -> bool:
        return self._host_pending

    def on_pending(self, pending: bool) -> None:
        self._host_pending = pending

    # --- backups ------------------------------------------------------------------------------

    def on_pre_prepare(self, pp: m.PrePrepare, out: list[Action]) -> None:
        """Accept the primary's PRE-PREPARE for (view, seq) once; PREPARE after the
        host validates.
        """
        ctx = self._ctx
        if pp.sender != ctx.primary(pp.view):
            return ctx.drop(out, "not_primary", pp.sender)
        if m.payload_digest(pp.payload) != pp.digest:
            return ctx.drop(out, "bad_digest", pp.sender)
        slot = self._log.slot(pp.seq)
        current = slot.pre_prepare
        if current is not None and current.view == pp.view:
            reason = "duplicate" if current.digest == pp.digest else "conflicting_pre_prepare"
            return ctx.drop(out, reason, pp.sender)
        if slot.committed is not None and slot.committed.digest != pp.digest:
            return ctx.drop(out, "conflicts_committed", pp.sender)
        slot.accept(pp, validated=pp.digest == NULL_DIGEST)
        if slot.validated:
            self._send_prepare(slot, out)
        else:
            out.append(Persist(((slot_key(slot.seq), slot.record()),)))
            out.append(Validate(pp.view, pp.seq, pp.digest, pp.payload))
        self.check_slot(slot, out)

    def _send_prepare(self, slot: Slot, out: list[Action]) -> None:
        pp = slot.pre_prepare
        assert pp is not None
        assert pp.view == self._views.view
        vote = self._ctx.vote(m.Prepare(pp.view, pp.seq, pp.digest, self._ctx.me))
        slot.own_prepare(self._ctx.me, pp.digest, vote.sig)
        out.append(Persist(((slot_key(slot.seq), slot.record()),)))
        out.append(Broadcast(m.encode(vote)))

    def on_vote(self, vote: m.Prepare | m.CommitVote, out: list[Action]) -> None:
        """Count one PREPARE or COMMIT per sender per slot (current view only)."""
        slot = self._log.slot(vote.seq)
        if isinstance(vote, m.Prepare):
            if vote.sender == self._ctx.primary(vote.view):
                return self._ctx.drop(out, "prepare_from_primary", vote.sender)
            votes = slot.prepares
        else:
            votes = slot.commits
        reason = quorum.add_vote(votes, vote.sender, vote.digest, vote.sig)
        if reason is not None:
            return self._ctx.drop(out, reason, vote.sender)
        self.check_slot(slot, out)

    def on_verdict(
        self, view: int, seq: int, digest: bytes, valid: bool, out: list[Action]
    ) -> None:
        """The host's answer to ``Validate``; stale verdicts (other view or digest) are ignored."""
        slot = self._log.get(seq)
        pp = None if slot is None else slot.pre_prepare
        views = self._views
        if slot is None or pp is None or not views.active or view != views.view:
            return
        if pp.view != view or pp.digest != digest or slot.validated or slot.rejected:
            return
        slot.judge(valid)
        if not valid:
            return self._ctx.drop(out, "invalid_proposal", pp.sender)
        self._send_prepare(slot, out)
        self.check_slot(slot, out)

    # --- quorums and the commit certificate ---------------------------------------------------

    def check_slot(self, slot: Slot, out: list[Action]) -> None:
        """Prepared: PRE-PREPARE plus 2f PREPAREs, so COMMIT. Committed: 2f+1 matching COMMITs."""
        ctx = self._ctx
        pp = slot.pre_prepare
        view = self._views.view
        if pp is not None and pp.view == view and slot.validated and not slot.commit_sent:
            backers = quorum.prepare_backers(slot.prepares, pp.digest, ctx.primary(view))
            if len(backers) >= ctx.quorum - 1:
                prepared = m.PreparedCert(view, slot.seq, pp.digest, pp.payload, pp.sig, backers)
                commit = ctx.vote(m.CommitVote(view, slot.seq, pp.digest, ctx.me))
                slot.own_commit(ctx.me, pp.digest, commit.sig, prepared)
                out.append(Persist(((slot_key(slot.seq), slot.record()),)))
                out.append(Broadcast(m.encode(commit)))
        if slot.committed is None:
            for digest in quorum.quorum_digests(slot.commits, ctx.quorum):
                payload = payload_for(slot, digest)
                if payload is None:
                    self._fetch.note_ahead(slot.seq, tuple(sorted(slot.commits)))
                    continue
                sigs = quorum.signatures(slot.commits, digest)
                cert = CommitCertificate(view, slot.seq, digest, sigs)
                slot.commit(Committed(view, digest, payload, cert.encode()))
                self._timers.certificate_formed(ctx.now_ms)
                if slot.seq > self._execution.committed_seq + 1:
                    self._fetch.note_ahead(slot.seq - 1, tuple(sorted(slot.commits)))
                break
        self._execution.execute(out)

    # --- lost messages ------------------------------------------------------------------------

    def resend(self, out: list[Action]) -> bool:
        """Nothing executed for a quarter of a request timeout: send again what we sent for the
        open slots of our view (the primary its PRE-PREPAREs to the backups that did not
        PREPARE, everyone its PREPAREs and COMMITs to all); False when no slot is open.

        Links drop what they cannot deliver (a peer disconnected, a frame lost in a reconnect)
        and nothing else sends a slot's messages twice: without this a PRE-PREPARE that reached
        too few backups held its slot until a view change, or for good on an idle chain, whose
        backups expect nothing. The messages are the same signed bytes, already durable, which
        the host's double-sign guard lets through again (a PRE-PREPARE of a NEW-VIEW gets a
        record of its own there at its first resend); a receiver that has them drops them as
        duplicates after checking them as any message. A replica that missed a slot the
        others executed catches up by fetching (their status reports a greater height).
        """
        ctx, view = self._ctx, self._views.view
        slots = self._log.open_slots(view, self._execution.committed_seq)
        for slot in slots:
            pp = slot.pre_prepare
            assert pp is not None
            if pp.sender == ctx.me:
                # Only to the backups whose PREPARE has not come: a PREPARE shows its sender
                # holds the PRE-PREPARE, whose payload may be megabytes.
                data = m.encode(pp)
                for backup in range(ctx.cfg.n):
                    if backup != ctx.me and backup not in slot.prepares:
                        out.append(Send(backup, data))
            own_prepare = slot.prepares.get(ctx.me)
            if own_prepare is not None:
                digest, sig = own_prepare
                out.append(Broadcast(m.encode(m.Prepare(view, slot.seq, digest, ctx.me, sig))))
            own_commit = slot.commits.get(ctx.me)
            if own_commit is not None:
                digest, sig = own_commit
                vote = m.CommitVote(view, slot.seq, digest, ctx.me, sig)
                out.append(Broadcast(m.encode(vote)))
        return bool(slots)

    # --- the primary --------------------------------------------------------------------------

    def on_propose(self, view: int, seq: int, payload: bytes, out: list[Action]) -> None:
        """The host's answer to ``RequestProposal``: sign, persist and broadcast the PRE-PREPARE."""
        ctx = self._ctx
        if view != self._views.view or not self._views.active or not self._log.answered(seq):
            return
        if len(payload) > ctx.cfg.payload_bytes_max:
            return ctx.drop(out, "proposal_oversize", ctx.me)
        pp = ctx.vote(m.PrePrepare(view, seq, m.payload_digest(payload), payload, ctx.me))
        slot = self._log.slot(seq)
        if slot.pre_prepare is not None and slot.pre_prepare.view == view:
            return
        slot.accept(pp, validated=True)
        self._last_block_ms = ctx.now_ms
        out.append(Persist(((slot_key(seq), slot.record()),)))
        out.append(Broadcast(m.encode(pp)))
        self.check_slot(slot, out)

    def request_proposals(self, out: list[Action]) -> None:
        """As active primary with work pending, ask for seqs up to the pipeline depth and window."""
        ctx, views, log = self._ctx, self._views, self._log
        if not (views.active and self._host_pending and ctx.primary(views.view) == ctx.me):
            return
        limit = self._proposal_limit()
        while log.next_seq <= limit:
            seq = log.take_next()
            slot = log.get(seq)
            pp = None if slot is None else slot.pre_prepare
            if pp is not None and pp.view == views.view:
                continue
            log.requested(seq)
            out.append(RequestProposal(views.view, seq))

    # --- the heartbeat (empty blocks on an idle chain) --------------------------------------

    def heartbeat(self, idle: bool, out: list[Action]) -> None:
        """As idle active primary, ask for a block that may be empty once the chain has been
        still for ``empty_interval_ms``.

        ``idle``: no host work, no open PRE-PREPARE of this view, nothing to fetch (the replica's
        "has work", whose request timer this never arms: a backup does not expect heartbeats,
        so a silent primary on an idle chain causes no view change). The seq is the lowest one
        still waiting for the host's txs (it may now be answered empty) or the next one within
        the pipeline and the watermarks. A block executed here or proposed by us restarts the
        interval, so a busy chain gets no extra blocks; so does asking, so an unanswered
        heartbeat is repeated once per interval, not on every step.
        """
        if self._ctx.cfg.empty_interval_ms <= 0:
            return
        self._note_progress()
        if not self._heartbeat_waits(idle) or self._ctx.now_ms < self.heartbeat_deadline_ms:
            return
        self._last_block_ms = self._ctx.now_ms  # due again one interval from now
        log, view = self._log, self._views.view
        seq = log.lowest_request()
        if seq is None:
            if log.next_seq > self._proposal_limit():
                return  # the pipeline or the window is full: nothing to ask for
            seq = log.take_next()
            log.requested(seq)
        out.append(RequestProposal(view, seq, heartbeat=True))

    @property
    def heartbeat_deadline_ms(self) -> int:
        return self._last_block_ms + self._ctx.cfg.empty_interval_ms

    def heartbeat_timer(self, idle: bool) -> int | None:
        """When the host must tick us for the next heartbeat (None: none is waiting)."""
        if self._ctx.cfg.empty_interval_ms <= 0 or not self._heartbeat_waits(idle):
            return None
        return self.heartbeat_deadline_ms

    def _heartbeat_waits(self, idle: bool) -> bool:
        ctx, views = self._ctx, self._views
        return idle and views.active and ctx.primary(views.view) == ctx.me

    def _note_progress(self) -> None:
        committed = self._execution.committed_seq
        if committed != self._seen_seq:
            self._seen_seq = committed
            self._last_block_ms = self._ctx.now_ms

    def _proposal_limit(self) -> int:
        return min(
            self._execution.committed_seq + self._ctx.cfg.pipeline_depth,
            self._checkpoints.high_watermark,
        )


def payload_for(slot: Slot, digest: bytes) -> bytes | None:
    """The payload behind ``digest``, if this slot has seen it (PRE-PREPARE or certificate)."""
    if slot.pre_prepare is not None and slot.pre_prepare.digest == digest:
        return slot.pre_prepare.payload
    if slot.prepared is not None and slot.prepared.digest == digest:
        return slot.prepared.payload
    return None
