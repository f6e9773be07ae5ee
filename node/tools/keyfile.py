"""Key files: the implementation lives in node/host/keyfile.py (the node opens validator keys)."""

from node.host.keyfile import (
    KEYFILE_BYTES_MAX,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    VERSION,
    KeyfileError,
    is_encrypted,
    key_from_json,
    key_to_json,
    load_key,
    read_keyfile,
    save_key,
)

__all__ = [
    "KEYFILE_BYTES_MAX",
    "SCRYPT_N",
    "SCRYPT_P",
    "SCRYPT_R",
    "VERSION",
    "KeyfileError",
    "is_encrypted",
    "key_from_json",
    "key_to_json",
    "load_key",
    "read_keyfile",
    "save_key",
]
