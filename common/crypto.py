"""Ed25519 keys, signatures and addresses, with domain separation for every signed message kind."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
SEED_BYTES = 32
ADDRESS_BYTES = 20
ADDRESS_DOMAIN = b"vigil/address/v1"


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 private key from its 32-byte seed."""

    seed: bytes = field(repr=False)  # secret: never in logs or reprs
    # Derived once: building the key object and its public key costs a scalar multiplication.
    _key: Ed25519PrivateKey = field(init=False, repr=False, compare=False)
    _public_key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, bytes) or len(self.seed) != SEED_BYTES:
            raise ValueError("an Ed25519 seed is 32 bytes")
        key = Ed25519PrivateKey.from_private_bytes(self.seed)
        object.__setattr__(self, "_key", key)
        object.__setattr__(
            self, "_public_key", key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        )

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def sign(self, domain: bytes, message: bytes) -> bytes:
        return self._key.sign(signing_bytes(domain, message))


def signing_bytes(domain: bytes, message: bytes) -> bytes:
    """What is actually signed: the domain tag, a zero byte, then the canonical message."""
    return domain + b"\x00" + message


def verify(public_key: bytes, domain: bytes, message: bytes, signature: bytes) -> bool:
    """True when the signature is valid; malformed keys or signatures are simply invalid."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        _public_key_object(bytes(public_key)).verify(signature, signing_bytes(domain, message))
    except (InvalidSignature, ValueError):
        return False
    return True


@lru_cache(maxsize=4096)
def _public_key_object(public_key: bytes) -> Ed25519PublicKey:
    """Parsed keys are cached: validators and busy senders verify many signatures each."""
    return Ed25519PublicKey.from_public_bytes(public_key)


def address_of(public_key: bytes) -> bytes:
    """The 20-byte account address: SHA-256(ADDRESS_DOMAIN || 0x00 || public key), first 20 bytes."""
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
