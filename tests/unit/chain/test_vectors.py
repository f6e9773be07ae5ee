"""tests/vectors/*.json pin the wire format byte for byte (docs/transactions.md cites them)."""

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.crypto import SigningKey
from common.merkle import merkle_proof, merkle_root, verify_proof
from node.chain.tx import Transaction, make_anchor, make_transfer
from tests.vectors_gen import build

VECTORS = Path(__file__).resolve().parents[2] / "vectors"


def _load(name: str) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return vector


def _b(hex_str: str) -> bytes:
    assert hex_str.startswith("0x")
    return bytes.fromhex(hex_str[2:])


@pytest.mark.parametrize("name", ["transfer.json", "anchor.json"])
def test_transaction_vector(name: str) -> None:
    v = _load(name)
    f = v["fields"]
    key = SigningKey(_b(v["seed"]))
    assert key.public_key == _b(v["public_key"]) == _b(f["sender"])
    # the address rule, computed independently of common.crypto
    expected_address = hashlib.sha256(b"vigil/address/v1\x00" + key.public_key).digest()[:20]
    assert _b(v["address"]) == expected_address
    if f["kind"] == "transfer":
        tx = make_transfer(key, f["chain_id"], _b(f["to"]), f["amount"], f["fee"], f["nonce"])
    else:
        tx = make_anchor(key, f["chain_id"], _b(f["digest"]), _b(f["memo"]), f["fee"], f["nonce"])
    assert tx.signing_bytes() == _b(v["signing_bytes"])
    assert _b(v["signed_message"]) == b"vigil/tx/v1\x00" + _b(v["signing_bytes"])
    assert tx.signature == _b(v["signature"])  # Ed25519 is deterministic
    assert tx.encode() == _b(v["encoded"])
    assert tx.hash == _b(v["hash"]) == hashlib.sha256(_b(v["encoded"])).digest()
    decoded = Transaction.decode(_b(v["encoded"]))
    assert decoded == tx
    assert decoded.verify_signature()
    # the signature checks with a plain Ed25519 library over the documented message
    Ed25519PublicKey.from_public_bytes(key.public_key).verify(
        _b(v["signature"]), _b(v["signed_message"])
    )


def test_merkle_vector() -> None:
    v = _load("merkle.json")
    leaves = [_b(x) for x in v["leaves"]]
    assert merkle_root(leaves) == _b(v["root"])
    assert merkle_proof(leaves, v["index"]) == [_b(x) for x in v["branch"]]
    assert verify_proof(leaves[v["index"]], v["index"], [_b(x) for x in v["branch"]],
                        _b(v["root"]), len(leaves))  # fmt: skip
    assert merkle_root([]) == _b(v["empty_root"])


def test_block_vector() -> None:
    """Block format 2: the hashed header has no view; a null block copies its parent's fields."""
    from common import codec
    from node.chain.block import BlockHeader

    v = _load("block.json")
    for key in ("header", "null_header"):
        h = v[key]
        encoded = _b(h["encoded"])
        assert hashlib.sha256(encoded).digest() == _b(h["hash"])
        header = BlockHeader.decode(encoded)
        assert header.encode() == encoded
        assert codec.decode(encoded) == {
            k: (_b(x) if isinstance(x, str) else x) for k, x in h["fields"].items()
        }
    assert _b(v["header"]["fields"]["prev_hash"]) == _b(v["parent_hash"])
    assert _b(v["null_header"]["fields"]["prev_hash"]) == _b(v["header"]["hash"])
    assert hashlib.sha256(_b(v["payload"])).digest() == _b(v["payload_digest"])


def test_vector_files_are_up_to_date() -> None:
    for name, content in build().items():
        assert _load(name) == content, f"regenerate with scripts/make_vectors: {name}"
