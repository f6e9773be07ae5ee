"""Builds the transaction test vectors in tests/vectors/ (run via scripts/make_vectors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.crypto import SigningKey, address_of, signing_bytes, to_hex
from common.merkle import merkle_proof, merkle_root
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
        "merkle.json": {
            "name": "merkle",
            "description": "tree over [transfer hash, anchor hash, 32 zero bytes]; proof of index 2",
            "leaves": [to_hex(x) for x in leaves],
            "root": to_hex(merkle_root(leaves)),
            "index": 2,
            "branch": [to_hex(x) for x in merkle_proof(leaves, 2)],
            "empty_root": to_hex(merkle_root([])),
        },
    }


def main() -> None:
    VECTORS.mkdir(exist_ok=True)
    for name, content in build().items():
        (VECTORS / name).write_text(json.dumps(content, indent=2) + "\n")
        print(f"wrote tests/vectors/{name}")


if __name__ == "__main__":
    main()
