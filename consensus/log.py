"""The replica's per-seq message log and the records it persists (the consensus-log namespace).

Keys: ``b"view"`` (current view and whether it is active), ``b"stable"`` (stable checkpoint with
its proof), ``b"new_view"`` (the NEW-VIEW it sent as primary, so it can still hand it to laggards
after a restart), ``b"slot/" + seq (8 bytes big-endian)`` (the votes this replica cast at that
seq and what it committed there), ``b"retract/" + sender (2 bytes big-endian)`` (the RETRACT of
that replica this one persisted: which of its VIEW-CHANGEs are void; our own one sets our epoch).
The host stores them verbatim and hands them back on restart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common import codec
from consensus.messages import PreparedCert, PrePrepare, Sigs

KEY_VIEW = b"view"
KEY_STABLE = b"stable"
KEY_NEW_VIEW = b"new_view"  # the NEW-VIEW this replica sent as primary of its current view
SLOT_PREFIX = b"slot/"
RETRACT_PREFIX = b"retract/"


def slot_key(seq: int) -> bytes:
    return SLOT_PREFIX + seq.to_bytes(8, "big")


@dataclass(slots=True)
class Committed:
    """A committed entry: its certificate, and the checkpoint hash chain right after it."""

    view: int
    digest: bytes
    payload: bytes
    certificate: bytes
    chain: bytes | None = None


@dataclass(slots=True)
class Slot:
    """Everything known at one seq. Votes from others are kept for the current view only."""

    seq: int
    pre_prepare: PrePrepare | None = None  # accepted; its view tells which view the flags are for
    validated: bool = False
    rejected: bool = False
    prepare_sent: bool = False
    commit_sent: bool = False
    prepared: PreparedCert | None = None  # highest-view prepared certificate (persisted)
    committed: Committed | None = None
    prepares: dict[int, tuple[bytes, bytes]] = field(
        default_factory=dict
    )  # sender -> (digest, sig)
    commits: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)

    # Every change to a slot goes through these methods: the slot owns its flags and votes.

    def accept(self, pp: PrePrepare, validated: bool) -> None:
        """Make ``pp`` the slot's PRE-PREPARE; the vote flags restart for its view."""
        self.pre_prepare = pp
        self.validated = validated
        self.rejected = False
        self.prepare_sent = False
        self.commit_sent = False

    def judge(self, valid: bool) -> None:
        """The host's verdict on the PRE-PREPARE's payload."""
        if valid:
            self.validated = True
        else:
            self.rejected = True

    def set_validated(self, validated: bool) -> None:
        """After a restart: whether the PRE-PREPARE counts as checked (our own, null, voted)."""
        self.validated = validated

    def own_prepare(self, me: int, digest: bytes, sig: bytes) -> None:
        """Our PREPARE, sent (or sent again in the same view)."""
        self.prepare_sent = True
        self.prepares[me] = (digest, sig)

    def own_commit(
        self, me: int, digest: bytes, sig: bytes, prepared: PreparedCert | None = None
    ) -> None:
        """Our COMMIT, sent once ``prepared`` formed (or sent again in the same view)."""
        if prepared is not None:
            self.prepared = prepared
        self.commit_sent = True
        self.commits[me] = (digest, sig)

    def commit(self, committed: Committed) -> None:
        """The commit certificate (formed here, or fetched with the block)."""
        self.committed = committed

    def clear_votes(self) -> None:
        self.prepares.clear()
        self.commits.clear()

    def record(self) -> bytes:
        pp = self.pre_prepare
        committed = self.committed
        return codec.encode(
            {
                "pp": None if pp is None else pp.value(),
                "prepare_sent": self.prepare_sent,
                "commit_sent": self.commit_sent,
                "prepared": None if self.prepared is None else self.prepared.value(),
                "committed": None
                if committed is None
                else {
                    "view": committed.view,
                    "digest": committed.digest,
                    "payload": committed.payload,
                    "cert": committed.certificate,
                    "chain": committed.chain,
                },
            }
        )

    @staticmethod
    def from_record(seq: int, data: bytes) -> Slot:
        v = codec.decode(data)
        slot = Slot(seq)
        if v["pp"] is not None:
            p = v["pp"]
            slot.pre_prepare = PrePrepare(
                p["view"], p["seq"], p["digest"], p["payload"], p["sender"], p["sig"]
            )
        slot.prepare_sent = bool(v["prepare_sent"])
        slot.commit_sent = bool(v["commit_sent"])
        if v["prepared"] is not None:
            c = v["prepared"]
            c["prepares"] = tuple((int(i), bytes(s)) for i, s in c["prepares"])
            slot.prepared = PreparedCert.from_value(c)
        if v["committed"] is not None:
            c = v["committed"]
            slot.committed = Committed(c["view"], c["digest"], c["payload"], c["cert"], c["chain"])
        return slot


class SlotLog:
    """The slots between the watermarks, and the primary's proposal bookkeeping."""

    def __init__(self) -> None:
        self._slots: dict[int, Slot] = {}
        self._next_seq = 1  # the next seq the primary asks the host a proposal for
        self._requested: set[int] = set()  # seqs with a RequestProposal out

    def get(self, seq: int) -> Slot | None:
        return self._slots.get(seq)

    def slot(self, seq: int) -> Slot:
        """The slot at ``seq``, created empty if needed."""
        slot = self._slots.get(seq)
        if slot is None:
            slot = self._slots[seq] = Slot(seq)
        return slot

    def restore(self, slot: Slot) -> None:
        """A slot from the persisted log (restart)."""
        self._slots[slot.seq] = slot

    def in_order(self) -> list[Slot]:
        return sorted(self._slots.values(), key=lambda s: s.seq)

    def delete(self, seq: int) -> None:
        del self._slots[seq]

    def clear_votes(self) -> None:
        """Votes from others count in one view only."""
        for slot in self._slots.values():
            slot.clear_votes()

    def prepared(self, in_window: Callable[[int], bool]) -> tuple[PreparedCert, ...]:
        """Our prepared certificates at seqs ``in_window``, in seq order (for a VIEW-CHANGE)."""
        return tuple(
            s.prepared
            for _, s in sorted(self._slots.items())
            if s.prepared is not None and in_window(s.seq)
        )

    def collect(self, stable_seq: int, committed_seq: int) -> list[int]:
        """Forget the slots at or below a new stable checkpoint (those not yet executed and
        committed stay, to be executed); the seqs forgotten, ascending."""
        gone = [
            seq
            for seq in sorted(s for s in self._slots if s <= stable_seq)
            if seq <= committed_seq or self._slots[seq].committed is None
        ]
        for seq in gone:
            del self._slots[seq]
        return gone

    def has_work(self, view: int, committed_seq: int) -> bool:
        """A PRE-PREPARE of ``view`` above our last commit is still open."""
        return any(
            s.pre_prepare is not None and s.pre_prepare.view == view
            for seq, s in self._slots.items()
            if seq > committed_seq
        )

    def open_slots(self, view: int, committed_seq: int) -> list[Slot]:
        """The slots above our last commit with a PRE-PREPARE of ``view``, in seq order."""
        return [
            s
            for seq, s in sorted(self._slots.items())
            if seq > committed_seq and s.pre_prepare is not None and s.pre_prepare.view == view
        ]

    # --- proposals (primary) ------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def advance(self, seq: int) -> None:
        """Never propose at or below ``seq - 1``."""
        self._next_seq = max(self._next_seq, seq)

    def restart_at(self, seq: int) -> None:
        """A NEW-VIEW decided everything below ``seq``: propose from there."""
        self._next_seq = seq

    def take_next(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def requested(self, seq: int) -> None:
        self._requested.add(seq)

    def answered(self, seq: int) -> bool:
        """A proposal for ``seq`` is one we asked for (and now no longer wait for)."""
        if seq not in self._requested:
            return False
        self._requested.discard(seq)
        return True

    def lowest_request(self) -> int | None:
        """The lowest seq with a ``RequestProposal`` still unanswered, if any."""
        return min(self._requested, default=None)

    def forget_requests(self) -> None:
        self._requested.clear()


def retract_key(sender: int) -> bytes:
    return RETRACT_PREFIX + sender.to_bytes(2, "big")


def view_record(view: int, active: bool, entered: int, returned: int) -> bytes:
    """``entered``: the highest view this replica was ever active in (a RETRACT
    never goes below); ``returned``: the highest epoch of a RETRACT of ours we returned
    through (-1: none; consensus/retract.py ``Retraction.voids_own``).
    """
    return codec.encode({"view": view, "active": active, "entered": entered, "returned": returned})


def parse_view_record(data: bytes) -> tuple[tuple[int, bool, int], int | None]:
    """((view, active, entered), returned); returned is None in a record that predates it."""
    v = codec.decode(data)
    view = int(v["view"])
    # A record without "entered" predates RETRACT: assume the current view, which forbids
    # returning below it (safe, at worst slower).
    returned = v.get("returned")
    return (view, bool(v["active"]), int(v.get("entered", view))), (
        None if returned is None else int(returned)
    )


def retract_record(view: int, epoch: int) -> bytes:
    return codec.encode({"view": view, "epoch": epoch})


def parse_retract_record(data: bytes) -> tuple[int, int]:
    v = codec.decode(data)
    return int(v["view"]), int(v["epoch"])


def stable_record(seq: int, digest: bytes, proof: Sigs) -> bytes:
    return codec.encode({"seq": seq, "digest": digest, "proof": [[i, s] for i, s in proof]})


def parse_stable_record(data: bytes) -> tuple[int, bytes, Sigs]:
    v: Any = codec.decode(data)
    return int(v["seq"]), bytes(v["digest"]), tuple((int(i), bytes(s)) for i, s in v["proof"])
