"""The double-sign guard: a small file, apart from the database, of what this validator signed.

The core signs its messages itself; the guard sits where they leave the process. Before any of
our consensus messages is sent, its (kind, view, seq) and digest are recorded here and fsynced
(with the round's Persist records, in one write: node/host/syncwrite.py), and a message is
refused when:

- its view is below the highest view we already signed a vote or VIEW-CHANGE in (views only
  grow, PBFT section 4.4: once we voted in view v, nothing of a lower view may be signed again);
- the same (kind, view, seq) was signed with another digest (equivocation), except VIEW-CHANGE:
  the core signs a fresh one for the same view after a RETRACT (a new epoch, consensus/retract.py)
  or a restart (a later checkpoint). It only states what we prepared, which an honest replica
  never loses, and a NEW-VIEW is safe with any 2f+1 valid ones; refusing it left a retracted
  replica unable to rejoin its view, a view-change storm under load;
- it is new but at or below the floor of what was forgotten when the record was pruned.

Our RETRACT (consensus/retract.py: a view change nobody joined, taken back) lowers the view
floor back to the view it returns to, but never below a view we voted in.

Re-sending the very same message (same kind, view, seq and digest) is allowed. The file lives
next to the database, not in it, so restoring an older database backup cannot make the validator
vote again where it already voted: the guard still remembers (tested in tests/test_signguard.py).
A missing guard file next to an existing database stops the node (recovery: docs/deploy.md).

The file is JSON lines: a head line with the whole state as of the last compaction, then one
line per record signed since, appended and fsynced each round (a few hundred bytes, instead of
rewriting every record kept: about 30 ms a round with a full window). Loading replays the lines
through the same ``record`` rule, so floors come out as they were. Every COMPACT_EVERY appended
records the file is rewritten (temporary file, fsync, rename). A torn last line (a crash in
mid-append) was never fsynced, so its message was never sent: it is dropped and the file
compacted. Version 1 files (the head alone) still load.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consensus.api import Broadcast, Send
from consensus.guard import Key, Signed, SignRule, describe
from node.host.syncwrite import SyncWriter

log = logging.getLogger(__name__)

VERSION = 2
VERSIONS_READ = (1, 2)
COMPACT_EVERY = 4096  # records appended before the file is rewritten whole


class GuardError(Exception):
    """The guard file is missing, unreadable or for another key: the node must not sign."""


class SignGuard(SignRule):
    def __init__(self, path: Path, public_key: bytes, state: dict[str, Any]) -> None:
        super().__init__(
            state["view_floor"],
            state.get("vote_floor"),
            state["floors"],
            (((k, v, s), bytes.fromhex(d)) for k, v, s, d in state["signed"]),
        )
        self.path = path
        self.public_key = public_key
        # Each record's JSON text, made once (a compaction writes every record kept).
        self._json: dict[Key, str] = {}
        self._appended = 0  # record lines after the head line
        self.torn = False  # the file's last line was torn (read by ``load``)
        self.needs_compaction = False  # torn, or an older version: ``open`` rewrites it

    # --- file -----------------------------------------------------------------------------

    @staticmethod
    def open(path: Path, public_key: bytes, *, fresh: bool, view_floor: int = 0) -> SignGuard:
        """Load the guard; create it only for a ``fresh`` node (no database yet)."""
        if not path.exists():
            if not fresh:
                raise GuardError(
                    f"node.guard_file: {path} is missing but the database exists: refusing to"
                    " sign (it could repeat votes); see docs/deploy.md 'Lost guard file'"
                )
            guard = SignGuard(
                path, public_key, {"view_floor": view_floor, "floors": {}, "signed": []}
            )
            guard.save()
            return guard
        guard = SignGuard.load(path, public_key)
        if guard.needs_compaction:
            if guard.torn:
                log.warning("sign_guard_torn_tail", extra={"path": str(path)})
            guard.save()
        return guard

    @staticmethod
    def load(path: Path, public_key: bytes | None = None) -> SignGuard:
        """Read the guard file without writing it (``public_key`` None: any key, to inspect)."""
        try:
            head, *lines = path.read_text().split("\n")
            state = json.loads(head)
            if state.get("version") not in VERSIONS_READ:
                raise ValueError("unknown version")
            key = bytes.fromhex(state["public_key"])
            if public_key is not None and key != public_key:
                raise GuardError(f"node.guard_file: {path} belongs to another validator key")
            guard = SignGuard(path, key, state)
            guard.torn = guard._replay(lines)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GuardError(
                f"node.guard_file: {path} is unreadable ({exc}); see docs/deploy.md"
            ) from None
        guard.needs_compaction = guard.torn or state["version"] != VERSION
        return guard

    def _replay(self, lines: list[str]) -> bool:
        """Apply the appended record lines; True when the last one was torn (and dropped)."""
        while lines and not lines[-1]:
            lines.pop()
        for n, line in enumerate(lines):
            try:
                kind, view, seq, digest = json.loads(line)
                signed = Signed(str(kind), int(view), int(seq), bytes.fromhex(digest))
            except (ValueError, TypeError):
                if n == len(lines) - 1:
                    return True
                raise ValueError(f"line {n + 2} is not a record") from None
            self.record(signed)
            self._appended += 1
        return False

    def save(self) -> None:
        """Write to a temporary file, fsync, rename over the old one, fsync the directory."""
        head = {
            "version": VERSION,
            "public_key": self.public_key.hex(),
            "view_floor": self.view_floor,
            "vote_floor": self.vote_floor,
            "floors": self.floors,
        }
        # The same JSON object as json.dumps of the whole state, records in insertion order.
        text = (
            json.dumps(head, separators=(",", ":"))[:-1]
            + ',"signed":['
            + ",".join(self._record_json(key, d) for key, d in self.signed.items())
            + "]}"
        )
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self._appended = 0

    def append(self, new: list[Signed]) -> None:
        """Add ``new`` records to the file durably: appended and fsynced, or a compaction."""
        if self._appended + len(new) > COMPACT_EVERY:
            self.save()
            return
        text = "".join(
            "\n" + json.dumps([s.kind, s.view, s.seq, s.digest.hex()], separators=(",", ":"))
            for s in new
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._appended += len(new)

    def _record_json(self, key: tuple[str, int, int], digest: bytes) -> str:
        text = self._json.get(key)
        if text is None:
            text = json.dumps([key[0], key[1], key[2], digest.hex()], separators=(",", ":"))
            self._json[key] = text
        return text

    def admit(self, items: list[Signed | None]) -> list[str | None]:
        """Check and record a round's messages, then fsync once; the refusal reason per item."""
        reasons, new = self.decide(items)
        if new:
            self.append(new)
        return reasons

    def _forgot(self, key: Key) -> None:
        self._json.pop(key, None)


async def guard_round(
    guard: SignGuard | None,
    writer: SyncWriter,
    me: int,
    payload_bytes_max: int,
    metrics: Any,
    actions: list[Any],
    before: Callable[[], None] | None = None,
    small: bool = True,
) -> set[int]:
    """Record the round's outgoing messages durably before they leave; ids of refused actions.

    Runs right after ``before`` (the round's Persist records) as one write of the node's
    consensus-log writer (node/host/syncwrite.py: on the loop while ``small`` and the syncs are
    fast, else one hand-off to its thread): the order "log durable, guard durable, then sent"
    holds either way.
    """
    out = [a for a in actions if isinstance(a, Send | Broadcast)] if guard is not None else []
    if guard is None or not out:
        if before is not None:
            await writer.run(before, small)
        return set()

    def work() -> list[str | None]:
        if before is not None:
            before()
        return guard.admit([describe(a.data, me, payload_bytes_max) for a in out])

    reasons = await writer.run(work, small)
    refused = set()
    for a, why in zip(out, reasons, strict=True):
        if why is not None:
            refused.add(id(a))
            s = describe(a.data, me, payload_bytes_max)
            where = {} if s is None else {"kind": s.kind, "view": s.view, "seq": s.seq}
            log.error("double_sign_refused", extra={"reason": why, **where})
            metrics.consensus_dropped_total.labels(reason=f"guard_{why}").inc()
    return refused
