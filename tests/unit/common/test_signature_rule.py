"""One Ed25519 rule everywhere: every verifier in the repo gives the pinned verdict on the edge
cases.

tests/vectors/ed25519_edge.json holds small-order, mixed-order and non-canonical cases with the
verdict of Vigil's rule (docs/transactions.md). A library upgrade or a second verifier that would
answer differently fails here, before it can split validators.
"""

import ast
import json
from pathlib import Path

import pytest
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from common.crypto import SigningKey, is_strong_public_key, verify, verify_raw

ROOT = Path(__file__).resolve().parents[3]
CASES = json.loads((ROOT / "tests" / "vectors" / "ed25519_edge.json").read_text())["cases"]


def _nacl_public_api(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


VERIFIERS = {"common.crypto.verify_raw": verify_raw, "nacl.signing.VerifyKey": _nacl_public_api}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
@pytest.mark.parametrize("name", sorted(VERIFIERS))
def test_every_verifier_gives_the_pinned_verdict(name: str, case: dict[str, object]) -> None:
    pk, msg, sig = (bytes.fromhex(str(case[k])) for k in ("public_key", "message", "signature"))
    assert VERIFIERS[name](pk, msg, sig) is case["valid"], case["what"]


def test_the_rule_is_strict_on_the_speccheck_set() -> None:
    """Only the one case valid under both equations with canonical encodings is accepted."""
    accepted = [c["name"] for c in CASES if c["name"].startswith("speccheck") and c["valid"]]
    assert accepted == ["speccheck-3"]


def test_domain_separated_verify_is_the_raw_rule() -> None:
    key = SigningKey(bytes(range(32)))
    sig = key.sign(b"vigil/tx/v1", b"payload")
    assert verify(key.public_key, b"vigil/tx/v1", b"payload", sig)
    assert not verify(key.public_key, b"vigil/block/v1", b"payload", sig)


def test_weak_keys_are_not_strong() -> None:
    small_order = ["01" + "00" * 31, "ec" + "ff" * 30 + "7f", "00" * 32]
    for hex_key in small_order:
        assert not is_strong_public_key(bytes.fromhex(hex_key))
    assert is_strong_public_key(SigningKey(bytes(32)).public_key)
    assert not is_strong_public_key(b"\x01" * 31)


def test_no_other_ed25519_verifier_in_the_repo() -> None:
    """Signatures are checked only through common/crypto.py, so the rule has one home."""
    forbidden = ("cryptography.hazmat.primitives.asymmetric.ed25519", "ed25519_zebra", "nacl")
    for package in ("common", "consensus", "ml", "storage", "node"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "common" / "crypto.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    assert not name.startswith(forbidden), f"{path}: imports {name}"
