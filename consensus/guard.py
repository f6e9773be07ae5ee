"""The double-sign rule, pure: what this replica may sign given what it signed before.

The host (node/host/signguard.py) keeps a ``SignRule`` in a file next to the database and applies
it where our consensus messages leave the process; the simulator (consensus/sim/) applies the
same rule to every honest replica, so a core that would sign something the guard refuses shows
up there as a violation instead of as a replica silently muted on a real network. The rules are
in node/host/signguard.py's docstring and docs/deploy.md.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from common.codec import CodecError
from consensus import messages as cmsg

SEQ_WINDOW = 1024  # records kept per kind, below the highest seq signed
VIEW_WINDOW = 64  # VIEW-CHANGE / NEW-VIEW / RETRACT records kept, below the highest view signed
_VOTES = ("pre_prepare", "prepare", "commit")
_VIEW_KINDS = ("view_change", "new_view", "retract")  # windowed by view; the others by seq

Key = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class Signed:
    kind: str
    view: int
    seq: int
    digest: bytes


def describe(data: bytes, me: int, payload_bytes_max: int) -> Signed | None:
    """Our own message's (kind, view, seq, digest); None for anything not signed by us."""
    try:
        msg = cmsg.decode(data, payload_bytes_max, len(data))
    except CodecError:
        return None
    if msg.sender != me:
        return None
    match msg:
        case cmsg.PrePrepare() | cmsg.Prepare() | cmsg.CommitVote():
            return Signed(msg.kind, msg.view, msg.seq, msg.digest)
        case cmsg.Checkpoint():
            return Signed("checkpoint", 0, msg.seq, msg.digest)
        case cmsg.ViewChange() | cmsg.NewView():
            return Signed(msg.kind, msg.view, 0, hashlib.sha256(data).digest())
        case cmsg.Retract():
            return Signed(msg.kind, msg.view, msg.epoch, hashlib.sha256(data).digest())
    return None


class SignRule:
    """What was signed (a window of records per kind), the floors below which nothing new may
    be signed, and the rule. ``record`` is the only transition; replaying records in order
    rebuilds the same state."""

    def __init__(
        self,
        view_floor: int = 0,
        vote_floor: int | None = None,
        floors: dict[str, list[int]] | None = None,
        signed: Iterable[tuple[Key, bytes]] = (),
    ) -> None:
        self.view_floor = view_floor
        # The highest view we voted in (PRE-PREPARE, PREPARE, COMMIT): a RETRACT lowers the view
        # floor back to the view it returns to, never below this.
        self.vote_floor = view_floor if vote_floor is None else vote_floor
        self.floors: dict[str, list[int]] = {k: list(v) for k, v in (floors or {}).items()}
        self.signed: dict[Key, bytes] = dict(signed)
        self.refused = 0
        # Per seq-numbered kind, its records as a heap on (seq, view) and the highest seq: the
        # window is pruned from the bottom without sorting every record on every vote.
        self._heaps: dict[str, list[tuple[int, int]]] = {}
        self._tops: dict[str, int] = {}
        for k, v, s in self.signed:
            if k not in _VIEW_KINDS:
                self._heaps.setdefault(k, []).append((s, v))
                self._tops[k] = max(self._tops.get(k, s), s)
        for heap in self._heaps.values():
            heapq.heapify(heap)

    def _forgot(self, key: Key) -> None:
        """A record left the window or was replaced (the host drops its cached JSON)."""

    def check(self, s: Signed) -> str | None:
        """Why ``s`` must not be signed, or None when it may (and is then recorded)."""
        key = (s.kind, s.view, s.seq)
        known = self.signed.get(key)
        if known is not None and s.kind != "view_change":
            return None if known == s.digest else "conflicting_digest"
        if s.kind not in ("checkpoint", "retract") and s.view < self.view_floor:
            return "view_below_signed"
        floor = self.floors.get(s.kind)
        if floor is not None and (s.view, s.seq) <= (floor[0], floor[1]):
            return "at_or_below_floor"
        return None

    def record(self, s: Signed) -> bool:
        """Remember ``s``; True when the file must be written."""
        key = (s.kind, s.view, s.seq)
        known = self.signed.get(key)
        if known == s.digest:
            return False
        if known is not None:  # a VIEW-CHANGE signed again: the newest one is kept
            self.signed[key] = s.digest
            self._forgot(key)
            return True
        self.signed[key] = s.digest
        if s.kind in _VOTES:
            self.vote_floor = max(self.vote_floor, s.view)
        if s.kind in _VOTES or s.kind == "view_change":
            self.view_floor = max(self.view_floor, s.view)
        elif s.kind == "retract" and s.view < self.view_floor:
            # Our VIEW-CHANGEs above s.view are void once 2f+1 replicas take this RETRACT (the
            # core waits for them before it votes in s.view again): votes there are allowed.
            self.view_floor = max(self.vote_floor, s.view)
        self._prune(s.kind, s.seq, s.view)
        return True

    def _prune(self, kind: str, seq: int, view: int) -> None:
        """Forget records of ``kind`` that fell out of the window; raise its floor over them."""
        if kind in _VIEW_KINDS:
            keys = sorted(k for k in self.signed if k[0] == kind)
            top = keys[-1][1]
            old = [k for k in keys if k[1] <= top - VIEW_WINDOW]
        else:  # the just recorded (seq, view) joins the heap; the lowest seqs leave first
            heap = self._heaps.setdefault(kind, [])
            heapq.heappush(heap, (seq, view))
            top = self._tops[kind] = max(self._tops.get(kind, seq), seq)
            old = []
            while heap and heap[0][0] <= top - SEQ_WINDOW:
                s, v = heapq.heappop(heap)
                old.append((kind, v, s))
        for k in old:
            del self.signed[k]
            self._forgot(k)
            floor = self.floors.get(kind, [0, 0])
            self.floors[kind] = max(floor, [k[1], k[2]])

    def decide(self, items: Sequence[Signed | None]) -> tuple[list[str | None], list[Signed]]:
        """Check and record a round's messages: the refusal reason per item, and the records
        that are new (what the host must make durable before the messages leave)."""
        reasons: list[str | None] = []
        new: list[Signed] = []
        for s in items:
            if s is None:
                reasons.append(None)
                continue
            why = self.check(s)
            reasons.append(why)
            if why is None:
                if self.record(s):
                    new.append(s)
            else:
                self.refused += 1
        return reasons, new
