"""Wallet key files: JSON, created with mode 0600, optionally encrypted with a passphrase.

Encryption derives a 32-byte key with scrypt (salted, memory-hard, so a stolen file resists
guessing) and seals the seed with AES-256-GCM; the address is the associated data, so a file
whose visible address was edited fails to open instead of signing for someone else.

    {"version": 1, "public_key": "0x..", "address": "0x..", "seed": "0x.."}              plain
    {"version": 1, "public_key": "0x..", "address": "0x..",
     "crypto": {"kdf": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": "0x..",
                "cipher": "aes-256-gcm", "nonce": "0x..", "ciphertext": "0x.."}}        encrypted
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from common.crypto import SigningKey, address_of, from_hex, to_hex

VERSION = 1
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
KEYFILE_BYTES_MAX = 64 * 1024


class KeyfileError(Exception):
    """A key file that is missing, malformed, or cannot be opened with this passphrase."""


def _kdf(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())


def key_to_json(key: SigningKey, passphrase: str | None = None) -> dict[str, Any]:
    address = address_of(key.public_key)
    out: dict[str, Any] = {
        "version": VERSION,
        "public_key": to_hex(key.public_key),
        "address": to_hex(address),
    }
    if passphrase is None:
        out["seed"] = to_hex(key.seed)
        return out
    salt = os.urandom(16)
    nonce = os.urandom(12)
    sealed = AESGCM(_kdf(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)).encrypt(
        nonce, key.seed, address
    )
    out["crypto"] = {
        "kdf": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": to_hex(salt),
        "cipher": "aes-256-gcm",
        "nonce": to_hex(nonce),
        "ciphertext": to_hex(sealed),
    }
    return out


def is_encrypted(obj: dict[str, Any]) -> bool:
    return "crypto" in obj


def key_from_json(obj: Any, passphrase: str | None = None) -> SigningKey:
    if not isinstance(obj, dict) or obj.get("version") != VERSION:
        raise KeyfileError("not a vigil key file (expected version 1 JSON)")
    try:
        address = from_hex(str(obj.get("address")), 20)
        if "seed" in obj:
            key = SigningKey(from_hex(obj["seed"], 32))
        elif "crypto" in obj:
            c: Any = obj["crypto"]
            if (
                not isinstance(c, dict)
                or c.get("kdf") != "scrypt"
                or c.get("cipher") != "aes-256-gcm"
            ):
                raise KeyfileError("unsupported key file encryption")
            if passphrase is None:
                raise KeyfileError("key file is encrypted: a passphrase is needed")
            n: Any = c.get("n")
            r: Any = c.get("r")
            p: Any = c.get("p")
            if not all(isinstance(x, int) and 0 < x <= 2**20 for x in (n, r, p)):
                raise KeyfileError("key file: bad scrypt parameters")
            dk = _kdf(passphrase, from_hex(str(c.get("salt"))), n, r, p)
            try:
                seed = AESGCM(dk).decrypt(
                    from_hex(str(c.get("nonce")), 12), from_hex(str(c.get("ciphertext"))), address
                )
            except InvalidTag:
                raise KeyfileError("wrong passphrase or damaged key file") from None
            key = SigningKey(seed)
        else:
            raise KeyfileError("key file has neither seed nor crypto")
    except ValueError as exc:
        raise KeyfileError(f"malformed key file: {exc}") from None
    if address_of(key.public_key) != address:
        raise KeyfileError("key file: address does not match the key")
    return key


def save_key(
    path: Path, key: SigningKey, passphrase: str | None = None, *, force: bool = False
) -> None:
    """Write a key file readable by its owner only; refuses to overwrite unless ``force``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = (json.dumps(key_to_json(key, passphrase), indent=2) + "\n").encode()
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyfileError(f"{path} already exists (use --force to overwrite)") from None
    except OSError as exc:
        raise KeyfileError(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to an existing file
        os.write(fd, data)
    finally:
        os.close(fd)


def read_keyfile(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            raw = fh.read(KEYFILE_BYTES_MAX + 1)
    except FileNotFoundError:
        raise KeyfileError(
            f"{path}: no such key file (create one with `vigil wallet new` or `vigil init`)"
        ) from None
    except OSError as exc:
        raise KeyfileError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > KEYFILE_BYTES_MAX:
        raise KeyfileError(f"{path}: not a vigil key file (too large)")
    try:
        obj = json.loads(raw)
    except ValueError:
        raise KeyfileError(f"{path}: not a vigil key file (not JSON)") from None
    if not isinstance(obj, dict):
        raise KeyfileError(f"{path}: not a vigil key file")
    return obj


def load_key(path: Path, passphrase: str | None = None) -> SigningKey:
    try:
        return key_from_json(read_keyfile(path), passphrase)
    except KeyfileError as exc:
        msg = str(exc)
        raise KeyfileError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
