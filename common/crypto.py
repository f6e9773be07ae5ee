"""Ed25519 keys, signatures and addresses, with domain separation for every signed message kind.

One signature rule for every verifier in Vigil (validators, proofs, ``vigil verify``): libsodium's
``crypto_sign_open`` through PyNaCl. It is the strict reading of RFC 8032: S must be canonical
(S < L), the public key A and the commitment R must be canonical encodings and must not be points
of small order, and the cofactorless equation [S]B = R + [k]A must hold. docs/transactions.md
states the rule; tests/vectors/ed25519_edge.json pins its answer on the edge cases (small-order,
mixed-order and non-canonical points, non-canonical S), so a library upgrade that would change a
validator's verdict fails the suite instead of splitting the network. Chosen over `cryptography`
(OpenSSL accepts small-order keys, 2-3x slower here) and ed25519-zebra (ZIP-215, the permissive
rule; the same speed): docs/performance.md has the figures.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from nacl.bindings import (
    crypto_sign,
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_open,
    crypto_sign_seed_keypair,
)
from nacl.exceptions import BadSignatureError

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
SEED_BYTES = 32
ADDRESS_BYTES = 20
ADDRESS_DOMAIN = b"vigil/address/v1"


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 private key from its 32-byte seed."""

    seed: bytes = field(repr=False)  # secret: never in logs or reprs
    # Derived once: the public key costs a scalar multiplication.
    _secret: bytes = field(init=False, repr=False, compare=False)  # libsodium's seed || pk
    _public_key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, bytes) or len(self.seed) != SEED_BYTES:
            raise ValueError("an Ed25519 seed is 32 bytes")
        public_key, secret = crypto_sign_seed_keypair(self.seed)
        object.__setattr__(self, "_secret", secret)
        object.__setattr__(self, "_public_key", public_key)

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def sign(self, domain: bytes, message: bytes) -> bytes:
        signed: bytes = crypto_sign(signing_bytes(domain, message), self._secret)
        return signed[:SIGNATURE_BYTES]


def signing_bytes(domain: bytes, message: bytes) -> bytes:
    """What is actually signed: the domain tag, a zero byte, then the canonical message."""
    return domain + b"\x00" + message


def verify(public_key: bytes, domain: bytes, message: bytes, signature: bytes) -> bool:
    """True when the signature is valid; malformed keys or signatures are simply invalid."""
    return verify_raw(public_key, signing_bytes(domain, message), signature)


def verify_raw(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Vigil's one Ed25519 rule (module docstring) over the exact signed bytes."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        crypto_sign_open(bytes(signature) + message, bytes(public_key))
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def is_strong_public_key(public_key: bytes) -> bool:
    """A key that can sign under the rule: a canonical curve point of the prime-order subgroup.

    libsodium refuses every signature of a small-order or malformed key; the genesis maker refuses
    such validator keys up front so an operator learns it at set-up, not at the first vote.
    libsodium's conversion to X25519 performs exactly these checks (and fails on any of them).
    """
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_BYTES:
        return False
    try:
        crypto_sign_ed25519_pk_to_curve25519(public_key)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def address_of(public_key: bytes) -> bytes:
    """The 20-byte account address: SHA-256(ADDRESS_DOMAIN || 0x00 || public key),
    first 20 bytes.
    """
    return hashlib.sha256(ADDRESS_DOMAIN + b"\x00" + public_key).digest()[:ADDRESS_BYTES]


def to_hex(data: bytes) -> str:
    return "0x" + data.hex()


def from_hex(value: str, size: int | None = None) -> bytes:
    """Parse 0x-prefixed hex; ValueError with a clear message otherwise."""
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError("expected a 0x-prefixed hex string")
    try:
        data = bytes.fromhex(value[2:])
    except ValueError:
        raise ValueError("invalid hex digits") from None
    if size is not None and len(data) != size:
        raise ValueError(f"expected {size} bytes of hex, got {len(data)}")
    return data
