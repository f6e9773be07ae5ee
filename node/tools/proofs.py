"""Client-side verification of a committed transaction, trusting only the genesis validator set.

A node's answers are not trusted: from ``tx_proof`` and ``block_get`` JSON this module rebuilds
the block header, checks the Merkle branch against its ``tx_root``, checks that the header and its
tx list are what the commit certificate committed (the Proposal digest, seq == height, view), and
that 2f+1 genesis validators signed the certificate (docs/architecture.md, "light client").
For an anchor it also rebuilds the transaction from ``tx_get`` and checks that it hashes to the
proven hash and carries the expected digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common.codec import CodecError
from common.crypto import from_hex
from common.merkle import verify_proof
from consensus.certificate import CommitCertificate, verify_certificate
from node.chain.block import BlockHeader, header_matches_certificate
from node.chain.tx import Transaction


class ProofError(Exception):
    """A proof that does not verify; ``reason`` says which check failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _hex(value: Any, what: str, size: int | None = 32) -> bytes:
    try:
        return from_hex(value, size)
    except ValueError as exc:
        raise ProofError(f"{what}: {exc}") from None


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProofError(f"{what}: expected a non-negative integer")
    return value


def header_from_json(block: dict[str, Any]) -> BlockHeader:
    """Rebuild the header from block_get JSON (flat, or nested under ``header``)."""
    h = block.get("header", block)
    if not isinstance(h, dict):
        raise ProofError("block: header is not an object")
    header = BlockHeader(
        height=_int(h.get("height"), "header.height"),
        prev_hash=_hex(h.get("prev_hash"), "header.prev_hash"),
        tx_root=_hex(h.get("tx_root"), "header.tx_root"),
        proposer=_int(h.get("proposer"), "header.proposer"),
        timestamp_ms=_int(h.get("timestamp", h.get("timestamp_ms")), "header.timestamp"),
        payload_digest=_hex(h.get("payload_digest"), "header.payload_digest"),
    )
    claimed = h.get("hash")
    if claimed is not None and _hex(claimed, "header.hash") != header.hash:
        raise ProofError("header: hash does not match the header fields")
    return header


def certificate_from_json(value: Any) -> CommitCertificate:
    """A certificate as block_get gives it: its JSON object, or hex of its canonical bytes."""
    try:
        if isinstance(value, str):
            return CommitCertificate.decode(_hex(value, "certificate", None))
        if isinstance(value, dict):
            commits = value.get("commits")
            if not isinstance(commits, list):
                raise ProofError("certificate.commits: expected a list")
            pairs = []
            for i, c in enumerate(commits):
                if isinstance(c, dict):
                    pairs.append((c.get("index"), c.get("signature")))
                elif isinstance(c, list) and len(c) == 2:
                    pairs.append((c[0], c[1]))
                else:
                    raise ProofError(f"certificate.commits[{i}]: expected index and signature")
            cert = CommitCertificate(
                view=_int(value.get("view"), "certificate.view"),
                seq=_int(value.get("seq"), "certificate.seq"),
                digest=_hex(value.get("digest"), "certificate.digest"),
                commits=tuple(
                    (_int(i, "certificate.commits.index"), _hex(s, "certificate.signature", 64))
                    for i, s in pairs
                ),
            )
            # Round trip through the canonical decoder: rejects duplicates and unsorted indexes.
            return CommitCertificate.decode(cert.encode())
    except CodecError as exc:
        raise ProofError(f"certificate: {exc.reason}") from None
    raise ProofError("certificate: missing or not an object")


def verify_block(
    block: dict[str, Any], validators: Sequence[bytes], chain_id: str
) -> tuple[BlockHeader, tuple[bytes, ...], CommitCertificate]:
    """Check a block_get answer against its commit certificate and the validator set."""
    header = header_from_json(block)
    raw_hashes = block.get("tx_hashes")
    if not isinstance(raw_hashes, list):
        raise ProofError("block: tx_hashes missing")
    tx_hashes = tuple(_hex(x, "block.tx_hashes[]") for x in raw_hashes)
    cert = certificate_from_json(block.get("certificate"))
    # The header's view is not hashed (it is the certificate's); if the answer shows one, it must
    # be the certificate's, so a node cannot pair a header with a certificate it mislabels.
    h = block.get("header", block)
    if isinstance(h, dict) and h.get("view") is not None and h.get("view") != cert.view:
        raise ProofError("certificate: view does not match the header")
    if not header_matches_certificate(header, tx_hashes, cert.seq, cert.digest):
        raise ProofError("certificate: does not commit this header and tx list")
    if not verify_certificate(cert, list(validators), chain_id):
        raise ProofError("certificate: fewer than 2f+1 valid signatures of the validator set")
    return header, tx_hashes, cert


def verify_tx_inclusion(
    tx_hash: bytes,
    proof: dict[str, Any],
    block: dict[str, Any],
    validators: Sequence[bytes],
    chain_id: str,
) -> None:
    """Raise ProofError unless ``tx_hash`` is proven committed in ``block`` (see module doc)."""
    header, tx_hashes, _cert = verify_block(block, validators, chain_id)
    height = _int(proof.get("height"), "proof.height")
    index = _int(proof.get("index"), "proof.index")
    if height != header.height:
        raise ProofError(f"proof: height {height} but the block is at {header.height}")
    if _hex(proof.get("tx_root"), "proof.tx_root") != header.tx_root:
        raise ProofError("proof: tx_root differs from the header's")
    branch_raw = proof.get("branch")
    if not isinstance(branch_raw, list):
        raise ProofError("proof.branch: expected a list")
    branch = [_hex(x, "proof.branch[]") for x in branch_raw]
    size = proof.get("size", len(tx_hashes))
    if not verify_proof(tx_hash, index, branch, header.tx_root, _int(size, "proof.size")):
        raise ProofError("proof: Merkle branch does not lead to the header's tx_root")


def verify_anchor_tx(tx_json: dict[str, Any], tx_hash: bytes, digest: bytes) -> Transaction:
    """Rebuild a tx from tx_get JSON; it must hash to ``tx_hash`` and anchor ``digest``.

    An Ethereum-format tx (``format: ethereum``) is rebuilt from its ``raw`` signed bytes.
    """
    try:
        if tx_json.get("format") == "ethereum":
            tx = Transaction.decode(_hex(tx_json.get("raw"), "tx.raw", None))
        else:
            tx = _native_anchor(tx_json)
        if tx.kind != "anchor":
            raise ProofError("tx: not an anchor transaction")
        actual = tx.hash
    except CodecError as exc:
        raise ProofError(f"tx: {exc.reason}") from None
    if actual != tx_hash:
        raise ProofError("tx: fields do not hash to the proven tx hash")
    if tx.digest != digest:
        raise ProofError("tx: anchors a different digest")
    if not tx.verify_signature():
        raise ProofError("tx: bad signature")
    return tx


def _native_anchor(tx_json: dict[str, Any]) -> Transaction:
    """A native anchor rebuilt field by field (raises CodecError or ProofError)."""
    tx = Transaction(
        kind=str(tx_json.get("kind")),
        chain_id=str(tx_json.get("chain_id")),
        sender=_hex(tx_json.get("sender"), "tx.sender"),
        nonce=_int(tx_json.get("nonce"), "tx.nonce"),
        fee=_int(tx_json.get("fee"), "tx.fee"),
        to=b"",
        amount=0,
        digest=_hex(tx_json.get("digest"), "tx.digest"),
        memo=_hex(tx_json.get("memo", "0x"), "tx.memo", None),
        signature=_hex(tx_json.get("signature"), "tx.signature", 64),
    )
    return tx
