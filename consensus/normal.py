"""The replica's normal case (Castro and Liskov, OSDI 1999, section 4.2): ordering to commit.

PRE-PREPARE (sent as primary, or accepted and validated as backup), PREPARE, COMMIT, and the
commit certificate that makes a seq committed. Execution in seq order lives in
consensus/checkpoint.py. Kept apart from consensus/replica.py to keep each module small; these
functions operate on the replica's state and append to the step's action list exactly like its
own methods. Every vote is persisted (``Persist`` first) before the message carrying it is sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consensus import checkpoint
from consensus import messages as m
from consensus.api import NULL_DIGEST, Action, Broadcast, Persist, RequestProposal, Validate
from consensus.certificate import CommitCertificate
from consensus.log import Committed, Slot, slot_key

if TYPE_CHECKING:
    from consensus.replica import Replica


# --- backups ------------------------------------------------------------------------------


def on_pre_prepare(r: Replica, pp: m.PrePrepare, out: list[Action]) -> None:
    """Accept the primary's PRE-PREPARE for (view, seq) once; PREPARE after the host validates."""
    if pp.sender != r._cfg.primary(pp.view):
        return r._drop(out, "not_primary", pp.sender)
    if m.payload_digest(pp.payload) != pp.digest:
        return r._drop(out, "bad_digest", pp.sender)
    slot = r._slot(pp.seq)
    current = slot.pre_prepare
    if current is not None and current.view == pp.view:
        reason = "duplicate" if current.digest == pp.digest else "conflicting_pre_prepare"
        return r._drop(out, reason, pp.sender)
    if slot.committed is not None and slot.committed.digest != pp.digest:
        return r._drop(out, "conflicts_committed", pp.sender)
    accept_pre_prepare(slot, pp, validated=pp.digest == NULL_DIGEST)
    if slot.validated:
        send_prepare(r, slot, out)
    else:
        out.append(Persist(((slot_key(slot.seq), slot.record()),)))
        out.append(Validate(pp.view, pp.seq, pp.digest, pp.payload))
    check_slot(r, slot, out)


def accept_pre_prepare(slot: Slot, pp: m.PrePrepare, validated: bool) -> None:
    """Make ``pp`` the slot's PRE-PREPARE; the vote flags restart for its view."""
    slot.pre_prepare = pp
    slot.validated = validated
    slot.rejected = False
    slot.prepare_sent = False
    slot.commit_sent = False


def send_prepare(r: Replica, slot: Slot, out: list[Action]) -> None:
    pp = slot.pre_prepare
    assert pp is not None
    assert pp.view == r._view
    vote = r._vote(m.Prepare(pp.view, pp.seq, pp.digest, r._me))
    slot.prepare_sent = True
    slot.prepares[r._me] = (pp.digest, vote.sig)
    out.append(Persist(((slot_key(slot.seq), slot.record()),)))
    out.append(Broadcast(m.encode(vote)))


def on_vote(r: Replica, vote: m.Prepare | m.CommitVote, out: list[Action]) -> None:
    """Count one PREPARE or COMMIT per sender per slot (current view only)."""
    slot = r._slot(vote.seq)
    if isinstance(vote, m.Prepare):
        if vote.sender == r._cfg.primary(vote.view):
            return r._drop(out, "prepare_from_primary", vote.sender)
        votes = slot.prepares
    else:
        votes = slot.commits
    known = votes.get(vote.sender)
    if known is not None:
        reason = "duplicate" if known[0] == vote.digest else "conflicting_vote"
        return r._drop(out, reason, vote.sender)
    votes[vote.sender] = (vote.digest, vote.sig)
    check_slot(r, slot, out)


def on_verdict(
    r: Replica, view: int, seq: int, digest: bytes, valid: bool, out: list[Action]
) -> None:
    """The host's answer to ``Validate``; stale verdicts (other view or digest) are ignored."""
    slot = r._slots.get(seq)
    pp = None if slot is None else slot.pre_prepare
    if slot is None or pp is None or not r._active or view != r._view:
        return
    if pp.view != view or pp.digest != digest or slot.validated or slot.rejected:
        return
    if not valid:
        slot.rejected = True
        return r._drop(out, "invalid_proposal", pp.sender)
    slot.validated = True
    send_prepare(r, slot, out)
    check_slot(r, slot, out)


# --- quorums and the commit certificate ---------------------------------------------------


def check_slot(r: Replica, slot: Slot, out: list[Action]) -> None:
    """Prepared: PRE-PREPARE plus 2f PREPAREs, so COMMIT. Committed: 2f+1 matching COMMITs."""
    pp = slot.pre_prepare
    view = r._view
    if pp is not None and pp.view == view and slot.validated and not slot.commit_sent:
        primary = r._cfg.primary(view)
        backers = sorted(
            (s, sig) for s, (d, sig) in slot.prepares.items() if d == pp.digest and s != primary
        )
        if len(backers) >= r._quorum - 1:
            slot.prepared = m.PreparedCert(
                view, slot.seq, pp.digest, pp.payload, pp.sig, tuple(backers)
            )
            commit = r._vote(m.CommitVote(view, slot.seq, pp.digest, r._me))
            slot.commit_sent = True
            slot.commits[r._me] = (pp.digest, commit.sig)
            out.append(Persist(((slot_key(slot.seq), slot.record()),)))
            out.append(Broadcast(m.encode(commit)))
    if slot.committed is None and len(slot.commits) >= r._quorum:
        tally: dict[bytes, int] = {}
        for d, _ in slot.commits.values():
            tally[d] = tally.get(d, 0) + 1
        for digest, count in tally.items():
            if count < r._quorum:
                continue
            payload = payload_for(slot, digest)
            if payload is None:
                checkpoint.note_ahead(r, slot.seq, tuple(sorted(slot.commits)))
                continue
            sigs = tuple(sorted((s, sig) for s, (d, sig) in slot.commits.items() if d == digest))
            cert = CommitCertificate(view, slot.seq, digest, sigs)
            slot.committed = Committed(view, digest, payload, cert.encode())
            r._view_progress_ms = r._now_ms
            if slot.seq > r._last_committed + 1:
                checkpoint.note_ahead(r, slot.seq - 1, tuple(sorted(slot.commits)))
            break
    checkpoint.execute(r, out)


def payload_for(slot: Slot, digest: bytes) -> bytes | None:
    """The payload behind ``digest``, if this slot has seen it (PRE-PREPARE or certificate)."""
    if slot.pre_prepare is not None and slot.pre_prepare.digest == digest:
        return slot.pre_prepare.payload
    if slot.prepared is not None and slot.prepared.digest == digest:
        return slot.prepared.payload
    return None


# --- the primary --------------------------------------------------------------------------


def on_propose(r: Replica, view: int, seq: int, payload: bytes, out: list[Action]) -> None:
    """The host's answer to ``RequestProposal``: sign, persist and broadcast the PRE-PREPARE."""
    if seq not in r._requested or view != r._view or not r._active:
        return
    r._requested.discard(seq)
    if len(payload) > r._cfg.payload_bytes_max:
        return r._drop(out, "proposal_oversize", r._me)
    pp = r._vote(m.PrePrepare(view, seq, m.payload_digest(payload), payload, r._me))
    slot = r._slot(seq)
    if slot.pre_prepare is not None and slot.pre_prepare.view == view:
        return
    accept_pre_prepare(slot, pp, validated=True)
    out.append(Persist(((slot_key(seq), slot.record()),)))
    out.append(Broadcast(m.encode(pp)))
    check_slot(r, slot, out)


def request_proposals(r: Replica, out: list[Action]) -> None:
    """As active primary with work pending, ask for seqs up to the pipeline depth and window."""
    cfg = r._cfg
    if not (r._active and r._host_pending and r.primary == r._me):
        return
    limit = min(r._last_committed + cfg.pipeline_depth, r._stable_seq + cfg.log_window)
    while r._next_seq <= limit:
        seq = r._next_seq
        r._next_seq += 1
        slot = r._slots.get(seq)
        pp = None if slot is None else slot.pre_prepare
        if pp is not None and pp.view == r._view:
            continue
        r._requested.add(seq)
        out.append(RequestProposal(r._view, seq))
