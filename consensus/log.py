"""The replica's per-seq message log and the records it persists (the consensus-log namespace).

Keys: ``b"view"`` (current view and whether it is active), ``b"stable"`` (stable checkpoint with
its proof), ``b"new_view"`` (the NEW-VIEW it sent as primary, so it can still hand it to laggards
after a restart), ``b"slot/" + seq (8 bytes big-endian)`` (the votes this replica cast at that
seq and what it committed there), ``b"retract/" + sender (2 bytes big-endian)`` (the RETRACT of
that replica this one persisted: which of its VIEW-CHANGEs are void; our own one sets our epoch).
The host stores them verbatim and hands them back on restart.
"""

from __future__ import annotations

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


def retract_key(sender: int) -> bytes:
    return RETRACT_PREFIX + sender.to_bytes(2, "big")


def view_record(view: int, active: bool, entered: int) -> bytes:
    """``entered``: the highest view this replica was ever active in (a RETRACT never goes below)."""
    return codec.encode({"view": view, "active": active, "entered": entered})


def parse_view_record(data: bytes) -> tuple[int, bool, int]:
    v = codec.decode(data)
    view = int(v["view"])
    # A record without "entered" predates RETRACT: assume the current view, which forbids
    # returning below it (safe, at worst slower).
    return view, bool(v["active"]), int(v.get("entered", view))


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
