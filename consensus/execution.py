"""Execution, checkpoints and catch-up (Castro and Liskov, OSDI 1999, section 4.3).

Committed seqs are executed strictly in order, extending the checkpoint hash chain; every K-th
one is announced with a CHECKPOINT once the host made it durable, and 2f+1 matching ones make
it stable, which moves the low watermark and garbage-collects the log below it. A replica that
learns it is behind asks the host to fetch committed blocks. The state lives in its owners
(consensus/checkpoint.py, fetch.py, log.py, timers.py); this class holds the transitions and
the last executed seq.
"""

from __future__ import annotations

from collections.abc import Iterable

from common import codec
from consensus import messages as m
from consensus.api import Action, Broadcast, Commit, FetchedEntry, Persist
from consensus.certificate import CommitCertificate, verify_certificate
from consensus.checkpoint import CheckpointTracker
from consensus.context import Context
from consensus.fetch import FetchPlanner
from consensus.log import KEY_STABLE, Committed, SlotLog, slot_key, stable_record
from consensus.timers import ViewTimers


class Execution:
    """In-order execution, our CHECKPOINT votes, stable checkpoints and fetching."""

    def __init__(
        self,
        ctx: Context,
        log: SlotLog,
        checkpoints: CheckpointTracker,
        fetch: FetchPlanner,
        timers: ViewTimers,
        committed_seq: int,
        checkpoint_after_applied: bool,
    ) -> None:
        self._ctx = ctx
        self._log = log
        self._checkpoints = checkpoints
        self._fetch = fetch
        self._timers = timers
        self._committed_seq = committed_seq  # the last seq executed (a Commit emitted)
        self._applied_seq = committed_seq  # the last seq the host said is durable (Applied)
        self._checkpoint_after_applied = checkpoint_after_applied  # False: a broken test variant

    @property
    def committed_seq(self) -> int:
        return self._committed_seq

    def execute(self, out: list[Action]) -> None:
        """Emit ``Commit`` for every committed seq right after the last one, strictly in order."""
        log, checkpoints = self._log, self._checkpoints
        while True:
            seq = self._committed_seq + 1
            slot = log.get(seq)
            if slot is None or slot.committed is None:
                return
            done = slot.committed
            done.chain = checkpoints.extend(seq, done.digest)
            if seq > checkpoints.stable_seq:
                out.append(Persist(((slot_key(seq), slot.record()),)))
            else:  # committed below a stable checkpoint we already hold: nothing left to keep
                log.delete(seq)
                out.append(Persist(((slot_key(seq), None),)))
            out.append(Commit(seq, done.view, done.digest, done.payload, done.certificate))
            self._committed_seq = seq
            log.advance(seq + 1)
            self._fetch.progressed(self._ctx.now_ms)
            self._timers.executed()
            if checkpoints.is_checkpoint(seq):
                if not self._checkpoint_after_applied:
                    checkpoints.applied(seq)
                self.send_due_checkpoints(out)

    # --- checkpoints --------------------------------------------------------------------------

    def on_applied(self, seq: int, out: list[Action]) -> None:
        """The host's block for ``seq`` is durable: CHECKPOINTs up to it may go out now, and
        the request timer restarts (``ViewTimers.applied``)."""
        if seq > self._applied_seq:
            self._applied_seq = seq
            self._timers.applied()
        if self._checkpoints.applied(seq):
            self.send_due_checkpoints(out)

    def send_due_checkpoints(self, out: list[Action]) -> None:
        """Vote CHECKPOINT only for seqs the host has made durable (``Applied``).

        A stable checkpoint lets every replica delete its log up to that seq. Voting only for
        durable blocks means a stable checkpoint always has 2f+1 replicas (f+1 honest) that store
        every block up to it, so a crash cannot lose a block nobody can serve any more.
        """
        for seq, digest in self._checkpoints.due():
            self._send_checkpoint(seq, digest, out)

    def _send_checkpoint(self, seq: int, digest: bytes, out: list[Action]) -> None:
        if not self._checkpoints.sending(seq, digest):
            return
        cp = self._ctx.vote(m.Checkpoint(seq, digest, self._ctx.me))
        self._checkpoints.sent(cp)
        out.append(Broadcast(m.encode(cp)))
        self._record_checkpoint(cp, out)

    def on_checkpoint(self, cp: m.Checkpoint, out: list[Action]) -> None:
        if cp.seq <= self._checkpoints.stable_seq:
            return self._ctx.drop(out, "stale_checkpoint", cp.sender)
        if cp.seq % self._ctx.cfg.checkpoint_interval != 0:
            return self._ctx.drop(out, "bad_checkpoint_seq", cp.sender)
        self._record_checkpoint(cp, out)

    def _record_checkpoint(self, cp: m.Checkpoint, out: list[Action]) -> None:
        """Count ``cp``; 2f+1 matching CHECKPOINTs make its seq stable."""
        checkpoints = self._checkpoints
        reason = checkpoints.record(cp)
        if reason is not None:
            return self._ctx.drop(out, reason, cp.sender)
        proof = checkpoints.proof(cp.seq, cp.digest)
        if proof is not None:
            if checkpoints.contradicts_ours(cp.seq, cp.digest):
                return self._ctx.drop(out, "checkpoint_mismatch", cp.sender)
            self.adopt_stable(cp.seq, cp.digest, proof, out)

    def adopt_stable(self, seq: int, digest: bytes, proof: m.Sigs, out: list[Action]) -> None:
        """Make ``seq`` the low watermark and drop everything at or below it (section 4.3)."""
        if not self._checkpoints.adopt(seq, digest, proof):
            return
        records: list[tuple[bytes, bytes | None]] = [
            (KEY_STABLE, stable_record(seq, digest, proof))
        ]
        records += [(slot_key(old), None) for old in self._log.collect(seq, self._committed_seq)]
        out.append(Persist(tuple(records)))
        self._log.advance(seq + 1)
        if self._committed_seq < seq:
            self._fetch.note_ahead(seq, tuple(i for i, _ in proof))
            self.maybe_fetch(out, urgent=True)

    # --- falling behind -----------------------------------------------------------------------

    def maybe_fetch(self, out: list[Action], urgent: bool = False) -> None:
        """Ask the host to fetch blocks we know are committed, after a grace period, rate-limited.

        What peers' status reports is fetched too, but unlike commits we saw it does not count
        as work for the request timer: a hint never starts a view change.
        """
        fetch = self._fetch.plan(self._ctx.now_ms, self._committed_seq, urgent)
        if fetch is not None:
            out.append(fetch)

    def on_fetched(self, entries: Iterable[FetchedEntry], out: list[Action]) -> None:
        """Execute fetched entries in order; each needs a certificate matching its payload."""
        ctx = self._ctx
        cfg = ctx.cfg
        for entry in sorted(entries, key=lambda e: e.seq):
            if entry.seq <= self._committed_seq:
                continue
            if entry.seq != self._committed_seq + 1:
                return ctx.drop(out, "fetched_gap")
            if len(entry.payload) > cfg.payload_bytes_max:
                return ctx.drop(out, "fetched_oversize")
            try:
                cert = CommitCertificate.decode(entry.certificate)
            except codec.CodecError:
                return ctx.drop(out, "fetched_bad_certificate")
            if (
                cert.seq != entry.seq
                or m.payload_digest(entry.payload) != cert.digest
                or not verify_certificate(cert, cfg.validators, cfg.chain_id, ctx.verify)
            ):
                return ctx.drop(out, "fetched_bad_certificate")
            slot = self._log.slot(entry.seq)
            if slot.committed is None or slot.committed.digest != cert.digest:
                slot.commit(Committed(cert.view, cert.digest, entry.payload, entry.certificate))
            self.execute(out)
