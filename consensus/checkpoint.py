"""The replica's execution, checkpoints, watermarks and catch-up (Castro and Liskov, section 4.3).

Committed seqs are executed strictly in order, extending the checkpoint hash chain; every K-th
one is announced with a CHECKPOINT, and 2f+1 matching ones make it stable, which moves the low
watermark and garbage-collects the log below it. A replica that learns it is behind asks the
host to fetch committed blocks. Kept apart from consensus/replica.py to keep each module small;
these functions operate on the replica's state and append to the step's action list exactly
like its own methods.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from common import codec
from consensus import messages as m
from consensus.api import Action, Broadcast, Commit, FetchBlocks, FetchedEntry, Persist
from consensus.certificate import CommitCertificate, verify_certificate
from consensus.log import KEY_STABLE, Committed, slot_key, stable_record

if TYPE_CHECKING:
    from consensus.replica import Replica

CHECKPOINTS_PER_SENDER_MAX = 4


# --- execution ----------------------------------------------------------------------------


def execute(r: Replica, out: list[Action]) -> None:
    """Emit ``Commit`` for every committed seq right after the last one, strictly in order."""
    while True:
        seq = r._last_committed + 1
        slot = r._slots.get(seq)
        if slot is None or slot.committed is None:
            return
        done = slot.committed
        if r._chain is not None:
            r._chain = codec.sha256(r._chain + done.digest)
        elif seq == r._stable_seq:
            r._chain = r._stable_digest
        done.chain = r._chain
        if seq > r._stable_seq:
            out.append(Persist(((slot_key(seq), slot.record()),)))
        else:  # committed below a stable checkpoint we already hold: nothing left to keep
            del r._slots[seq]
            out.append(Persist(((slot_key(seq), None),)))
        out.append(Commit(seq, done.view, done.digest, done.payload, done.certificate))
        r._last_committed = seq
        r._next_seq = max(r._next_seq, seq + 1)
        r._last_progress_ms = r._now_ms
        r._request_deadline_ms = None
        r._backoff = 0
        if seq % r._cfg.checkpoint_interval == 0 and r._chain is not None:
            if seq > r._stable_seq:
                r._chain_at[seq] = r._chain
            if not r._checkpoint_after_applied:
                r._applied_seq = max(r._applied_seq, seq)
            send_due_checkpoints(r, out)


# --- checkpoints --------------------------------------------------------------------------


def on_applied(r: Replica, seq: int, out: list[Action]) -> None:
    """The host's block for ``seq`` is durable: CHECKPOINTs up to it may go out now."""
    if seq > r._applied_seq:
        r._applied_seq = seq
        send_due_checkpoints(r, out)


def send_due_checkpoints(r: Replica, out: list[Action]) -> None:
    """Vote CHECKPOINT only for seqs the host has made durable (``Applied``).

    A stable checkpoint lets every replica delete its log up to that seq. Voting only for
    durable blocks means a stable checkpoint always has 2f+1 replicas (f+1 honest) that store
    every block up to it, so a crash cannot lose a block nobody can serve any more.
    """
    for seq in sorted(s for s in r._chain_at if r._checkpoint_sent < s <= r._applied_seq):
        send_checkpoint(r, seq, r._chain_at[seq], out)


def send_checkpoint(r: Replica, seq: int, digest: bytes, out: list[Action]) -> None:
    assert seq <= r._applied_seq, "CHECKPOINT for a block the host has not made durable"
    if seq <= r._stable_seq:
        return
    r._chain_at[seq] = digest
    r._checkpoint_sent = max(r._checkpoint_sent, seq)
    cp = r._vote(m.Checkpoint(seq, digest, r._me))
    r._own_checkpoint = cp
    out.append(Broadcast(m.encode(cp)))
    record_checkpoint(r, cp, out)


def on_checkpoint(r: Replica, cp: m.Checkpoint, out: list[Action]) -> None:
    if cp.seq <= r._stable_seq:
        return r._drop(out, "stale_checkpoint", cp.sender)
    if cp.seq % r._cfg.checkpoint_interval != 0:
        return r._drop(out, "bad_checkpoint_seq", cp.sender)
    record_checkpoint(r, cp, out)


def record_checkpoint(r: Replica, cp: m.Checkpoint, out: list[Action]) -> None:
    """Keep a few CHECKPOINT seqs per sender; 2f+1 matching ones make that seq stable."""
    mine = r._checkpoints.setdefault(cp.sender, {})
    known = mine.get(cp.seq)
    if known is not None:
        reason = "duplicate" if known[0] == cp.digest else "conflicting_vote"
        return r._drop(out, reason, cp.sender)
    mine[cp.seq] = (cp.digest, cp.sig)
    while len(mine) > CHECKPOINTS_PER_SENDER_MAX:
        del mine[min(mine)]
    proof = tuple(
        sorted(
            (s, seqs[cp.seq][1])
            for s, seqs in r._checkpoints.items()
            if cp.seq in seqs and seqs[cp.seq][0] == cp.digest
        )
    )
    if len(proof) >= r._quorum:
        own = r._chain_at.get(cp.seq)
        if own is not None and own != cp.digest:
            return r._drop(out, "checkpoint_mismatch", cp.sender)
        adopt_stable(r, cp.seq, cp.digest, proof, out)


def adopt_stable(r: Replica, seq: int, digest: bytes, proof: m.Sigs, out: list[Action]) -> None:
    """Make ``seq`` the low watermark and drop everything at or below it (section 4.3)."""
    if seq <= r._stable_seq:
        return
    r._stable_seq, r._stable_digest, r._stable_proof = seq, digest, proof
    records: list[tuple[bytes, bytes | None]] = [(KEY_STABLE, stable_record(seq, digest, proof))]
    for old in sorted(s for s in r._slots if s <= seq):
        if old <= r._last_committed or r._slots[old].committed is None:
            del r._slots[old]
            records.append((slot_key(old), None))
    r._chain_at = {s: d for s, d in r._chain_at.items() if s > seq}
    for seqs in r._checkpoints.values():
        for old in [s for s in seqs if s <= seq]:
            del seqs[old]
    out.append(Persist(tuple(records)))
    r._next_seq = max(r._next_seq, seq + 1)
    if r._last_committed < seq:
        note_ahead(r, seq, tuple(i for i, _ in proof))
        maybe_fetch(r, out, urgent=True)


# --- falling behind -----------------------------------------------------------------------


def note_ahead(r: Replica, seq: int, peers: Iterable[int]) -> None:
    """Remember that ``seq`` is committed somewhere, and which peers can serve it."""
    if seq > r._known_ahead:
        r._known_ahead = seq
    r._ahead_peers.update(p for p in peers if p != r._me)


def maybe_fetch(r: Replica, out: list[Action], urgent: bool = False) -> None:
    """Ask the host to fetch blocks we know are committed, after a grace period, rate-limited.

    What peers' status reports (``_hint_ahead``) is fetched too, but unlike commits we saw it
    does not count as work for the request timer: a hint never starts a view change.
    """
    ahead = max(r._known_ahead, r._hint_ahead)
    if ahead <= r._last_committed:
        r._fetch_deadline_ms = None
        return
    now = r._now_ms
    delay = max(1, r._cfg.request_timeout_ms // 4)
    due = r._last_progress_ms + delay
    if not urgent and now < due:
        r._fetch_deadline_ms = due
        return
    recent = r._last_fetch_ms is not None and now - r._last_fetch_ms < 2 * delay
    if recent and r._last_fetch_to >= ahead:
        r._fetch_deadline_ms = (r._last_fetch_ms or 0) + 2 * delay
        return
    r._last_fetch_ms = now
    r._last_fetch_to = ahead
    r._fetch_deadline_ms = now + 2 * delay
    peers = tuple(sorted(r._ahead_peers))
    out.append(FetchBlocks(r._last_committed + 1, ahead, peers))


def on_fetched(r: Replica, entries: Iterable[FetchedEntry], out: list[Action]) -> None:
    """Execute fetched entries in order; each needs a certificate matching its payload."""
    for entry in sorted(entries, key=lambda e: e.seq):
        if entry.seq <= r._last_committed:
            continue
        if entry.seq != r._last_committed + 1:
            return r._drop(out, "fetched_gap")
        if len(entry.payload) > r._cfg.payload_bytes_max:
            return r._drop(out, "fetched_oversize")
        try:
            cert = CommitCertificate.decode(entry.certificate)
        except codec.CodecError:
            return r._drop(out, "fetched_bad_certificate")
        if (
            cert.seq != entry.seq
            or m.payload_digest(entry.payload) != cert.digest
            or not verify_certificate(cert, r._cfg.validators, r._cfg.chain_id, r._verify)
        ):
            return r._drop(out, "fetched_bad_certificate")
        slot = r._slot(entry.seq)
        if slot.committed is None or slot.committed.digest != cert.digest:
            slot.committed = Committed(cert.view, cert.digest, entry.payload, entry.certificate)
        execute(r, out)
