"""The genesis file: format version, chain id, validator set, initial balances, and its hash.

The file is JSON (bytes as 0x hex). Its hash is SHA-256 of the canonical msgpack encoding of the
same fields with bytes as bytes, so JSON whitespace or key order never changes it. Format version
2 (docs/genesis.md) holds validators' public keys only: where a validator can be reached lives in
each node's config (``p2p.peers``), so a validator that moves to another host keeps its chain.
Version 1 files (with a ``p2p_url`` per validator) are refused with a message saying so.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import codec
from common.crypto import (
    ADDRESS_BYTES,
    PUBLIC_KEY_BYTES,
    address_of,
    from_hex,
    is_strong_public_key,
    to_hex,
)

VALIDATORS_MAX = 64
FORMAT_VERSION = 2
_CHAIN_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class GenesisError(ValueError):
    """A genesis file or value that is wrong; the message names the field."""


@dataclass(frozen=True, slots=True)
class Validator:
    index: int
    public_key: bytes

    @property
    def address(self) -> bytes:
        return address_of(self.public_key)


@dataclass(frozen=True, slots=True)
class Genesis:
    chain_id: str
    validators: tuple[Validator, ...]
    balances: tuple[tuple[bytes, int], ...]  # (address, amount), sorted by address, unique
    timestamp_ms: int

    def __post_init__(self) -> None:
        if not isinstance(self.chain_id, str) or not _CHAIN_ID_RE.fullmatch(self.chain_id):
            raise GenesisError("chain_id: expected 1..64 characters of A-Z a-z 0-9 . _ -")
        if not 1 <= len(self.validators) <= VALIDATORS_MAX:
            raise GenesisError(f"validators: expected 1..{VALIDATORS_MAX} entries")
        keys = set()
        for i, v in enumerate(self.validators):
            if v.index != i:
                raise GenesisError(f"validators[{i}].index: expected {i}")
            if not isinstance(v.public_key, bytes) or len(v.public_key) != PUBLIC_KEY_BYTES:
                raise GenesisError(f"validators[{i}].public_key: expected 32 bytes")
            if not is_strong_public_key(v.public_key):
                raise GenesisError(
                    f"validators[{i}].public_key: not a usable Ed25519 key "
                    "(small order, off the curve or not canonical)"
                )
            if v.public_key in keys:
                raise GenesisError(f"validators[{i}].public_key: duplicate")
            keys.add(v.public_key)
        addresses = [a for a, _ in self.balances]
        if addresses != sorted(set(addresses)):
            raise GenesisError("balances: addresses must be unique and sorted")
        total = 0
        for i, (address, amount) in enumerate(self.balances):
            if not isinstance(address, bytes) or len(address) != ADDRESS_BYTES:
                raise GenesisError(f"balances[{i}].address: expected 20 bytes")
            if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
                raise GenesisError(f"balances[{i}].amount: expected a positive integer")
            total += amount
        # Total supply fits u64, so no balance can ever overflow the account encoding.
        if total > codec.U64_MAX:
            raise GenesisError("balances: total supply exceeds 2**64 - 1")
        if isinstance(self.timestamp_ms, bool) or not isinstance(self.timestamp_ms, int):
            raise GenesisError("timestamp_ms: expected an integer")
        if not 0 <= self.timestamp_ms <= codec.U64_MAX:
            raise GenesisError("timestamp_ms: out of range")

    @property
    def hash(self) -> bytes:
        return codec.sha256(
            codec.encode(
                {
                    "version": FORMAT_VERSION,
                    "chain_id": self.chain_id,
                    "timestamp_ms": self.timestamp_ms,
                    "validators": [
                        {"index": v.index, "public_key": v.public_key} for v in self.validators
                    ],
                    "balances": [[a, n] for a, n in self.balances],
                }
            )
        )

    @property
    def total_supply(self) -> int:
        return sum(n for _, n in self.balances)

    def validator_keys(self) -> tuple[bytes, ...]:
        return tuple(v.public_key for v in self.validators)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "chain_id": self.chain_id,
            "timestamp_ms": self.timestamp_ms,
            "validators": [
                {"index": v.index, "public_key": to_hex(v.public_key)} for v in self.validators
            ],
            "balances": [{"address": to_hex(a), "amount": n} for a, n in self.balances],
        }

    @staticmethod
    def from_json(obj: Any) -> Genesis:
        if not isinstance(obj, dict):
            raise GenesisError("genesis: expected a JSON object")
        version = obj.get("version", 1)
        if version != FORMAT_VERSION:
            if version == 1:
                raise GenesisError(
                    "version: format 1 (p2p_url per validator) is no longer read; peer addresses"
                    " now live in each node's config (p2p.peers): rebuild it with `vigil genesis`"
                )
            raise GenesisError(f"version: expected {FORMAT_VERSION}, got {version!r}")
        validators = []
        for i, v in enumerate(_field(obj, "validators", list)):
            where = f"validators[{i}]"
            if not isinstance(v, dict):
                raise GenesisError(f"{where}: expected an object")
            validators.append(
                Validator(
                    index=_field(v, "index", int, where),
                    public_key=_hex(v, "public_key", PUBLIC_KEY_BYTES, where),
                )
            )
        balances = []
        for i, b in enumerate(_field(obj, "balances", list)):
            where = f"balances[{i}]"
            if not isinstance(b, dict):
                raise GenesisError(f"{where}: expected an object")
            balances.append(
                (_hex(b, "address", ADDRESS_BYTES, where), _field(b, "amount", int, where))
            )
        return Genesis(
            chain_id=_field(obj, "chain_id", str),
            validators=tuple(validators),
            balances=tuple(sorted(balances)),
            timestamp_ms=_field(obj, "timestamp_ms", int),
        )

    @staticmethod
    def load(path: str | Path) -> Genesis:
        try:
            obj = json.loads(Path(path).read_text())
        except OSError as exc:
            raise GenesisError(f"{path}: cannot read genesis file: {exc.strerror}") from None
        except ValueError as exc:
            raise GenesisError(f"{path}: not valid JSON: {exc}") from None
        try:
            return Genesis.from_json(obj)
        except GenesisError as exc:
            raise GenesisError(f"{path}: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def _field(obj: dict[str, Any], name: str, kind: type, where: str = "") -> Any:
    label = f"{where}.{name}" if where else name
    if name not in obj:
        raise GenesisError(f"{label}: missing")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise GenesisError(f"{label}: expected {kind.__name__}")
    return value


def _hex(obj: dict[str, Any], name: str, size: int, where: str) -> bytes:
    value = _field(obj, name, str, where)
    try:
        return from_hex(value, size)
    except ValueError as exc:
        raise GenesisError(f"{where}.{name}: {exc}") from None
