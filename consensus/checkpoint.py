"""Checkpoints (Castro and Liskov, OSDI 1999, section 4.3): the hash chain over executed seqs, our
CHECKPOINT digests, others' CHECKPOINT votes, the stable checkpoint and the watermarks.

Every K-th executed seq extends the chain into a checkpoint digest; we vote CHECKPOINT for it only
once the host made the block durable (``Applied``), and 2f+1 matching votes make it stable, which
moves the low watermark. The transitions that send and adopt live in consensus/execution.py.
"""

from __future__ import annotations

from common import codec
from consensus import messages as m
from consensus.viewchange import GENESIS_CHECKPOINT

CHECKPOINTS_PER_SENDER_MAX = 4


class CheckpointTracker:
    """Owns the stable checkpoint, the watermarks, our checkpoint digests and everyone's votes."""

    def __init__(self, interval: int, log_window: int, quorum: int, committed_seq: int) -> None:
        assert log_window >= 2 * interval > 0
        self._interval = interval
        self._log_window = log_window
        self._quorum = quorum
        self._stable_seq = 0
        self._stable_digest = GENESIS_CHECKPOINT
        self._stable_proof: m.Sigs = ()
        # The hash chain after the last executed seq; unknown after a restart until resumed.
        self._chain: bytes | None = GENESIS_CHECKPOINT if committed_seq == 0 else None
        self._chain_at: dict[int, bytes] = {}  # own checkpoint digests above the stable one
        self._votes: dict[int, dict[int, tuple[bytes, bytes]]] = {}  # sender -> seq -> vote
        self._own: m.Checkpoint | None = None  # our latest CHECKPOINT
        # Blocks the host reports durable (``Applied``); our CHECKPOINTs never go above it.
        self._applied_seq = committed_seq
        self._sent_seq = 0  # highest seq of a CHECKPOINT of ours sent

    # --- the stable checkpoint and the watermarks ---------------------------------------------

    @property
    def stable_seq(self) -> int:
        return self._stable_seq

    @property
    def stable_digest(self) -> bytes:
        return self._stable_digest

    @property
    def stable_proof(self) -> m.Sigs:
        return self._stable_proof

    @property
    def high_watermark(self) -> int:
        return self._stable_seq + self._log_window

    def in_window(self, seq: int) -> bool:
        return self._stable_seq < seq <= self.high_watermark

    def restore_stable(self, seq: int, digest: bytes, proof: m.Sigs) -> None:
        self._stable_seq, self._stable_digest, self._stable_proof = seq, digest, proof

    def adopt(self, seq: int, digest: bytes, proof: m.Sigs) -> bool:
        """Make ``seq`` stable and forget everything at or below it; False if not above ours."""
        if seq <= self._stable_seq:
            return False
        self._stable_seq, self._stable_digest, self._stable_proof = seq, digest, proof
        self._chain_at = {s: d for s, d in self._chain_at.items() if s > seq}
        for seqs in self._votes.values():
            for old in [s for s in seqs if s <= seq]:
                del seqs[old]
        return True

    # --- the hash chain -------------------------------------------------------------------------

    def resume_chain(self, committed_seq: int, chain_of_committed: bytes | None) -> None:
        """After a restart: the chain at ``committed_seq``, from the stable
        checkpoint or our log.
        """
        if self._chain is None:
            if committed_seq == self._stable_seq:
                self._chain = self._stable_digest
            else:
                self._chain = chain_of_committed

    def extend(self, seq: int, digest: bytes) -> bytes | None:
        """The chain after executing ``digest`` at ``seq`` (None while still unknown)."""
        if self._chain is not None:
            self._chain = codec.sha256(self._chain + digest)
        elif seq == self._stable_seq:
            self._chain = self._stable_digest
        if seq % self._interval == 0 and self._chain is not None and seq > self._stable_seq:
            self._chain_at[seq] = self._chain
        return self._chain

    def is_checkpoint(self, seq: int) -> bool:
        """``seq`` is a checkpoint whose digest we know (a CHECKPOINT of ours may be due)."""
        return seq % self._interval == 0 and self._chain is not None

    # --- our votes ------------------------------------------------------------------------------

    def applied(self, seq: int) -> bool:
        """The host's block for ``seq`` is durable; True when that is news."""
        if seq <= self._applied_seq:
            return False
        self._applied_seq = seq
        return True

    def due(self) -> list[tuple[int, bytes]]:
        """Our checkpoints not yet voted for, up to what the host made durable, in seq order."""
        return [
            (seq, self._chain_at[seq])
            for seq in sorted(s for s in self._chain_at if self._sent_seq < s <= self._applied_seq)
        ]

    def sending(self, seq: int, digest: bytes) -> bool:
        """We vote CHECKPOINT(seq, digest) now; False if ``seq`` is stable already."""
        assert seq <= self._applied_seq, "CHECKPOINT for a block the host has not made durable"
        if seq <= self._stable_seq:
            return False
        self._chain_at[seq] = digest
        self._sent_seq = max(self._sent_seq, seq)
        return True

    def sent(self, cp: m.Checkpoint) -> None:
        self._own = cp

    @property
    def own_unstable(self) -> m.Checkpoint | None:
        """Our latest CHECKPOINT if it is not stable yet (worth resending)."""
        own = self._own
        return own if own is not None and own.seq > self._stable_seq else None

    # --- everyone's votes -------------------------------------------------------------------------

    def record(self, cp: m.Checkpoint) -> str | None:
        """Keep a few CHECKPOINT seqs per sender; the reason to drop ``cp`` if it does not count."""
        mine = self._votes.setdefault(cp.sender, {})
        known = mine.get(cp.seq)
        if known is not None:
            return "duplicate" if known[0] == cp.digest else "conflicting_vote"
        mine[cp.seq] = (cp.digest, cp.sig)
        while len(mine) > CHECKPOINTS_PER_SENDER_MAX:
            del mine[min(mine)]
        return None

    def proof(self, seq: int, digest: bytes) -> m.Sigs | None:
        """2f+1 matching CHECKPOINT signatures for (seq, digest), sorted by sender,
        if we hold them.
        """
        proof = tuple(
            sorted(
                (s, seqs[seq][1])
                for s, seqs in self._votes.items()
                if seq in seqs and seqs[seq][0] == digest
            )
        )
        return proof if len(proof) >= self._quorum else None

    def contradicts_ours(self, seq: int, digest: bytes) -> bool:
        own = self._chain_at.get(seq)
        return own is not None and own != digest
