"""Commit certificates: 2f+1 signed COMMITs over one (view, seq, digest), checkable offline.

A light client holding only the genesis validator set and the chain id verifies a certificate
with :func:`verify_certificate`; nothing else from the replica's state is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common import codec
from common.crypto import SIGNATURE_BYTES, to_hex, verify
from consensus.messages import VALIDATORS_MAX, Verify, domain, vote_content

CERTIFICATE_BYTES_MAX = 256 * 1024

_COMMIT_DOMAIN = domain("commit")


@dataclass(frozen=True, slots=True)
class CommitCertificate:
    view: int
    seq: int
    digest: bytes
    commits: tuple[tuple[int, bytes], ...]  # (validator index, signature), sorted by index

    def encode(self) -> bytes:
        return codec.encode(
            {
                "view": self.view,
                "seq": self.seq,
                "digest": self.digest,
                "commits": [[i, s] for i, s in self.commits],
            }
        )

    @staticmethod
    def decode(data: bytes) -> CommitCertificate:
        """Parse canonical bytes; raises ``codec.CodecError`` on anything else."""
        v = codec.decode_struct(data, _SCHEMA, CERTIFICATE_BYTES_MAX)
        commits: list[tuple[int, bytes]] = []
        for i, pair in enumerate(v["commits"]):
            if not isinstance(pair, list) or len(pair) != 2:
                raise codec.CodecError(f"commits[{i}]: expected [index, signature]")
            index = codec.uint(VALIDATORS_MAX - 1)(pair[0], f"commits[{i}].index")
            sig = codec.raw(SIGNATURE_BYTES)(pair[1], f"commits[{i}].signature")
            commits.append((index, sig))
        indexes = [i for i, _ in commits]
        if indexes != sorted(set(indexes)):
            raise codec.CodecError("commits: indexes not strictly increasing")
        return CommitCertificate(v["view"], v["seq"], v["digest"], tuple(commits))

    def to_json(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "seq": self.seq,
            "digest": to_hex(self.digest),
            "commits": [{"index": i, "signature": to_hex(s)} for i, s in self.commits],
        }


_SCHEMA = codec.struct(
    {
        "view": codec.uint(),
        "seq": codec.uint(),
        "digest": codec.raw(32),
        "commits": codec.list_of(lambda v, _name: v, VALIDATORS_MAX),
    }
)


def verify_certificate(
    cert: CommitCertificate,
    validators: Sequence[bytes],
    chain_id: str,
    verify_fn: Verify = verify,
) -> bool:
    """True when at least 2f+1 distinct validators validly signed COMMIT(view, seq, digest) and
    no listed signature is invalid. ``verify_fn`` lets the simulator share a signature cache."""
    n = len(validators)
    quorum = 2 * ((n - 1) // 3) + 1
    if n == 0:
        return False
    seen: set[int] = set()
    valid = 0
    for index, sig in cert.commits:
        if index in seen or not 0 <= index < n:
            return False
        seen.add(index)
        content = vote_content("commit", cert.view, cert.seq, cert.digest, index, chain_id)
        if not verify_fn(validators[index], _COMMIT_DOMAIN, content, sig):
            return False
        valid += 1
    return valid >= quorum
