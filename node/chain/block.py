"""Proposals (the consensus payload), block headers and blocks, each with one canonical encoding.

See docs/architecture.md: PBFT orders the encoded ``Proposal`` of each seq; every replica then
builds the same ``Block`` from it, deriving ``prev_hash`` from its own chain, so ``height == seq``
and a null request becomes an empty block. The hashed header holds only what the replicas agreed
on: the view a replica committed in belongs to its commit certificate (different honest replicas
may commit one seq in different views), and a null block copies proposer and timestamp from its
parent, so every replica derives the same block hash at every height.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common import codec
from common.codec import CodecError
from common.crypto import to_hex
from common.merkle import merkle_root
from consensus.api import NULL_DIGEST
from node.chain.tx import TX_BYTES_MAX, Transaction

if TYPE_CHECKING:
    from node.chain.genesis import Genesis

HASH_BYTES = 32
# Version 2: ``view`` left the hashed header (it is the certificate's); null blocks copy their
# parent's proposer. Version 1 headers (implicit) are refused.
BLOCK_VERSION = 2
BLOCK_TXS_MAX = 4096  # hard ceiling of the format; the configured block_txs_max is lower
# The header of height 0 has this prev_hash; block 1 links to genesis_header(genesis).hash.
GENESIS_PREV_HASH = b"\x00" * HASH_BYTES
PROPOSAL_BYTES_MAX = BLOCK_TXS_MAX * (HASH_BYTES + 2) + 256
BLOCK_BYTES_MAX = BLOCK_TXS_MAX * (TX_BYTES_MAX + 3) + 1024

_HASH = codec.raw(HASH_BYTES)
_PROPOSAL = codec.struct(
    {
        "height": codec.uint(),
        "proposer": codec.uint(),
        "timestamp_ms": codec.uint(),
        "tx_hashes": codec.list_of(_HASH, BLOCK_TXS_MAX),
    }
)
_HEADER_FIELDS: dict[str, codec.Check] = {
    "version": codec.uint(BLOCK_VERSION),
    "height": codec.uint(),
    "prev_hash": _HASH,
    "tx_root": _HASH,
    "proposer": codec.uint(),
    "timestamp_ms": codec.uint(),
    "payload_digest": _HASH,
}
_HEADER = codec.struct(_HEADER_FIELDS)
BLOCK_SCHEMA = _BLOCK = codec.struct(
    {
        "header": _HEADER,
        "txs": codec.list_of(codec.raw(max_size=TX_BYTES_MAX), BLOCK_TXS_MAX),
    }
)


@dataclass(frozen=True, slots=True)
class Proposal:
    """What the primary proposes for seq ``height``; its encoding is the PBFT payload."""

    height: int
    proposer: int
    timestamp_ms: int
    tx_hashes: tuple[bytes, ...]

    def _map(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "proposer": self.proposer,
            "timestamp_ms": self.timestamp_ms,
            "tx_hashes": list(self.tx_hashes),
        }

    def encode(self) -> bytes:
        m = self._map()
        _PROPOSAL(m, "")
        return codec.encode_checked(m)  # the schema check above walked it

    @staticmethod
    def decode(data: bytes) -> Proposal:
        m = codec.decode_struct(data, _PROPOSAL, PROPOSAL_BYTES_MAX)
        return Proposal(m["height"], m["proposer"], m["timestamp_ms"], tuple(m["tx_hashes"]))

    @property
    def digest(self) -> bytes:
        """sha256 of the payload: what the commit certificate signs."""
        return codec.sha256(self.encode())

    @property
    def tx_root(self) -> bytes:
        return merkle_root(self.tx_hashes)


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """What every replica agreed on at ``height``; the commit view lives in the certificate."""

    height: int
    prev_hash: bytes
    tx_root: bytes
    proposer: int  # validator index (a null block copies its parent's)
    timestamp_ms: int
    payload_digest: bytes  # digest of the committed payload; NULL_DIGEST for a null request

    def _map(self) -> dict[str, Any]:
        return {
            "version": BLOCK_VERSION,
            "height": self.height,
            "prev_hash": self.prev_hash,
            "tx_root": self.tx_root,
            "proposer": self.proposer,
            "timestamp_ms": self.timestamp_ms,
            "payload_digest": self.payload_digest,
        }

    def encode(self) -> bytes:
        m = self._map()
        _HEADER(m, "")
        return codec.encode_checked(m)  # the schema check above walked it

    @staticmethod
    def decode(data: bytes) -> BlockHeader:
        return BlockHeader._from_map(codec.decode_struct(data, _HEADER, 1024))

    @staticmethod
    def _from_map(m: dict[str, Any]) -> BlockHeader:
        if m["version"] != BLOCK_VERSION:
            raise CodecError(f"header: block version {m['version']}, expected {BLOCK_VERSION}")
        return BlockHeader(**{k: m[k] for k in _HEADER_FIELDS if k != "version"})

    @property
    def hash(self) -> bytes:
        return codec.sha256(self.encode())

    @property
    def is_null(self) -> bool:
        return self.payload_digest == NULL_DIGEST

    def to_json(self, view: int) -> dict[str, Any]:
        """The contract's header shape: height, hash, prev_hash, tx_root, view, proposer, timestamp.

        ``view`` is the view of the commit certificate served with the header; it is not hashed.
        """
        return {
            "height": self.height,
            "hash": to_hex(self.hash),
            "prev_hash": to_hex(self.prev_hash),
            "tx_root": to_hex(self.tx_root),
            "view": view,
            "proposer": self.proposer,
            "timestamp": self.timestamp_ms,
            "payload_digest": to_hex(self.payload_digest),
        }


@dataclass(frozen=True, slots=True)
class Block:
    header: BlockHeader
    txs: tuple[Transaction, ...]

    def encode(self) -> bytes:
        m = {"header": self.header._map(), "txs": [tx.encode() for tx in self.txs]}
        _BLOCK(m, "")
        return codec.encode_checked(m)  # the schema check above walked it

    @staticmethod
    def decode(data: bytes) -> Block:
        m = codec.decode_struct(data, _BLOCK, BLOCK_BYTES_MAX)
        header = BlockHeader._from_map(m["header"])
        txs = tuple(Transaction.decode(raw) for raw in m["txs"])
        if merkle_root([tx.hash for tx in txs]) != header.tx_root:
            raise CodecError("block: tx_root does not match the transactions")
        return Block(header, txs)

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def tx_hashes(self) -> tuple[bytes, ...]:
        return tuple(tx.hash for tx in self.txs)

    def proposal(self) -> Proposal | None:
        """The payload this block was built from (None for a null block)."""
        if self.header.is_null:
            return None
        h = self.header
        return Proposal(h.height, h.proposer, h.timestamp_ms, self.tx_hashes)


def genesis_header(genesis: Genesis) -> BlockHeader:
    """The height-0 header: the parent of block 1, binding the chain to its genesis file."""
    return BlockHeader(
        height=0,
        prev_hash=GENESIS_PREV_HASH,
        tx_root=merkle_root([]),
        proposer=0,
        timestamp_ms=genesis.timestamp_ms,
        payload_digest=genesis.hash,
    )


def build_block(
    proposal: Proposal | None, txs: Sequence[Transaction], prev: BlockHeader | None
) -> Block:
    """The block every replica derives from a committed payload (None = null request).

    ``prev`` is the header at height - 1 (``genesis_header(genesis)`` for block 1; None means a
    bare parent with hash GENESIS_PREV_HASH, proposer 0 and timestamp 0, for tests). The result
    is a pure function of the agreed payload and the chain below it: nothing local (the view we
    committed in, the primary of that view, our clock) enters it. A null block copies its
    parent's proposer and timestamp.
    """
    prev_hash = prev.hash if prev is not None else GENESIS_PREV_HASH
    height = prev.height + 1 if prev is not None else 1
    if proposal is None:
        if txs:
            raise ValueError("a null block has no transactions")
        header = BlockHeader(
            height=height,
            prev_hash=prev_hash,
            tx_root=merkle_root([]),
            proposer=prev.proposer if prev is not None else 0,
            timestamp_ms=prev.timestamp_ms if prev is not None else 0,
            payload_digest=NULL_DIGEST,
        )
        return Block(header, ())
    if proposal.height != height:
        raise ValueError(f"proposal for height {proposal.height} on top of height {height - 1}")
    hashes = tuple(tx.hash for tx in txs)
    if hashes != proposal.tx_hashes:
        raise ValueError("transactions do not match the proposal's tx_hashes")
    header = BlockHeader(
        height=height,
        prev_hash=prev_hash,
        tx_root=merkle_root(hashes),
        proposer=proposal.proposer,
        timestamp_ms=proposal.timestamp_ms,
        payload_digest=proposal.digest,
    )
    return Block(header, tuple(txs))


def header_matches_certificate(
    header: BlockHeader, tx_hashes: Sequence[bytes], cert_seq: int, cert_digest: bytes
) -> bool:
    """Whether a header and its tx list are what a certificate for (seq, digest) committed.

    Recomputes the Proposal from the header's fields and checks its digest, the seq and the
    tx_root. The certificate's signatures are checked by consensus/certificate.py, not here.
    """
    if cert_seq != header.height or cert_digest != header.payload_digest:
        return False
    if merkle_root(list(tx_hashes)) != header.tx_root:
        return False
    if cert_digest == NULL_DIGEST:
        return not tx_hashes
    try:
        proposal = Proposal(header.height, header.proposer, header.timestamp_ms, tuple(tx_hashes))
        return proposal.digest == cert_digest
    except CodecError:
        return False
