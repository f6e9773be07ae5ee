"""Counting votes at one slot (Castro and Liskov, OSDI 1999, section 4.2): pure functions over a
slot's PREPAREs and COMMITs, ``sender -> (digest, signature)``."""

from __future__ import annotations

from consensus import messages as m

Votes = dict[int, tuple[bytes, bytes]]


def add_vote(votes: Votes, sender: int, digest: bytes, sig: bytes) -> str | None:
    """Count one vote per sender; the reason to drop it when the sender already voted."""
    known = votes.get(sender)
    if known is not None:
        return "duplicate" if known[0] == digest else "conflicting_vote"
    votes[sender] = (digest, sig)
    return None


def prepare_backers(prepares: Votes, digest: bytes, primary: int) -> m.Sigs:
    """PREPAREs for ``digest`` from backups (the primary's PRE-PREPARE counts as its vote)."""
    return tuple(
        sorted((s, sig) for s, (d, sig) in prepares.items() if d == digest and s != primary)
    )


def quorum_digests(commits: Votes, quorum: int) -> list[bytes]:
    """Digests with at least ``quorum`` COMMITs, in the order their first vote arrived."""
    if len(commits) < quorum:
        return []
    tally: dict[bytes, int] = {}
    for d, _ in commits.values():
        tally[d] = tally.get(d, 0) + 1
    return [digest for digest, count in tally.items() if count >= quorum]


def signatures(votes: Votes, digest: bytes) -> m.Sigs:
    """The signatures for ``digest``, sorted by sender (a certificate's order)."""
    return tuple(sorted((s, sig) for s, (d, sig) in votes.items() if d == digest))
