"""Builds the transaction test vectors in tests/vectors/ (run via scripts/make_vectors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.crypto import SigningKey, address_of, signing_bytes, to_hex
from common.merkle import merkle_proof, merkle_root
from node.chain.block import BLOCK_VERSION, BlockHeader, Proposal, build_block
from node.chain.ethtx import ANCHOR_ADDRESS, decode_eth, eth_chain_id, sign_dynamic_fee
from node.chain.tx import TX_DOMAIN, Transaction, make_anchor, make_transfer

VECTORS = Path(__file__).resolve().parent / "vectors"
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
SEED_TO = bytes(range(32))


def vector(name: str, description: str, seed: bytes, tx: Transaction) -> dict[str, Any]:
    key = SigningKey(seed)
    fields = tx.to_json()
    for k in ("hash", "from", "signature"):
        fields.pop(k)
    return {
        "name": name,
        "description": description,
        "seed": to_hex(seed),
        "public_key": to_hex(key.public_key),
        "address": to_hex(address_of(key.public_key)),
        "fields": fields,
        "signing_bytes": to_hex(tx.signing_bytes()),
        "signed_message": to_hex(signing_bytes(TX_DOMAIN, tx.signing_bytes())),
        "signature": to_hex(tx.signature),
        "encoded": to_hex(tx.encode()),
        "hash": to_hex(tx.hash),
    }


def header_vector(header: BlockHeader) -> dict[str, Any]:
    return {
        "fields": {
            "version": BLOCK_VERSION,
            "height": header.height,
            "prev_hash": to_hex(header.prev_hash),
            "tx_root": to_hex(header.tx_root),
            "proposer": header.proposer,
            "timestamp_ms": header.timestamp_ms,
            "payload_digest": to_hex(header.payload_digest),
        },
        "encoded": to_hex(header.encode()),
        "hash": to_hex(header.hash),
    }


def block_vector(transfer: Transaction, anchor: Transaction) -> dict[str, Any]:
    """Block 8 with two txs on a fixed parent, then the null block 9 on top of it."""
    parent = BlockHeader(7, bytes([7]) * 32, merkle_root([]), 2, 1_700_000_000_000, bytes(32))
    proposal = Proposal(8, 1, 1_700_000_001_000, (transfer.hash, anchor.hash))
    block = build_block(proposal, [transfer, anchor], parent)
    null = build_block(None, [], block.header)
    return {
        "name": "block",
        "description": (
            f"block format {BLOCK_VERSION}: a block of [transfer, anchor] proposed by validator 1"
            " at height 8, then a null block at height 9 (proposer and timestamp of its parent);"
            " no view in the hashed header"
        ),
        "parent_hash": to_hex(parent.hash),
        "payload": to_hex(proposal.encode()),
        "payload_digest": to_hex(proposal.digest),
        "header": header_vector(block.header),
        "null_header": header_vector(null.header),
    }


# The private key of the EIP-155 example (0x46 repeated): its address is well known.
ETH_KEY = bytes([0x46]) * 32


def eth_vector(name: str, description: str, raw: bytes) -> dict[str, Any]:
    tx = decode_eth(raw)
    assert tx.verify_signature()
    return {
        "name": name,
        "description": description,
        "private_key": to_hex(ETH_KEY),
        "address": to_hex(tx.sender_address),
        "chain_id_text": "vigil-testnet",
        "eth_chain_id": tx.eth_chain,
        "kind": tx.kind,
        "nonce": tx.nonce,
        "to": to_hex(tx.eth_to),
        "value_wei": str(tx.value_wei),
        "data": to_hex(tx.data),
        "gas": tx.gas_limit,
        "max_fee_per_gas": tx.gas_price_wei,
        "max_priority_fee_per_gas": tx.priority_fee_wei,
        "amount_units": tx.amount,
        "fee_units": tx.fee,
        "signing_hash": to_hex(tx.signing_hash),
        "raw": to_hex(raw),
        "hash": to_hex(tx.hash),
    }


def build_eth() -> dict[str, dict[str, Any]]:
    chain = eth_chain_id("vigil-testnet")
    to = bytes([0x35]) * 20
    transfer = sign_dynamic_fee(ETH_KEY, chain, 9, to, 10**18)
    digest = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    anchor = sign_dynamic_fee(ETH_KEY, chain, 10, ANCHOR_ADDRESS, 0, digest + b"empty file")
    return {
        "eth_transfer.json": eth_vector(
            "eth_transfer", "EIP-1559 transfer of 1 coin (10^18 wei), nonce 9", transfer
        ),
        "eth_anchor.json": eth_vector(
            "eth_anchor", "EIP-1559 anchor of SHA-256(empty string), memo 'empty file'", anchor
        ),
    }


def build() -> dict[str, dict[str, Any]]:
    key = SigningKey(SEED)
    to = address_of(SigningKey(SEED_TO).public_key)
    transfer = make_transfer(key, "vigil-testnet", to, 1_000_000, 10, 0)
    anchor = make_anchor(
        key,
        "vigil-testnet",
        bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        b"empty file",
        5,
        1,
    )
    leaves = [transfer.hash, anchor.hash, bytes(32)]
    return {
        "transfer.json": vector(
            "transfer", "a transfer of 1000000 with fee 10, nonce 0", SEED, transfer
        ),
        "anchor.json": vector(
            "anchor", "an anchor of SHA-256(empty string), memo 'empty file'", SEED, anchor
        ),
        "block.json": block_vector(transfer, anchor),
        "merkle.json": {
            "name": "merkle",
            "description": (
                "tree over [transfer hash, anchor hash, 32 zero bytes]; proof of index 2"
            ),
            "leaves": [to_hex(x) for x in leaves],
            "root": to_hex(merkle_root(leaves)),
            "index": 2,
            "branch": [to_hex(x) for x in merkle_proof(leaves, 2)],
            "empty_root": to_hex(merkle_root([])),
        },
    }


def main() -> None:
    VECTORS.mkdir(exist_ok=True)
    for name, content in {**build(), **build_eth()}.items():
        (VECTORS / name).write_text(json.dumps(content, indent=2) + "\n")
        print(f"wrote tests/vectors/{name}")


if __name__ == "__main__":
    main()
