"""P2P frames: one msgpack map per websocket binary message, with a type tag and checked fields.

Frames between validators are not hashed or signed (consensus messages carry their own
signatures inside ``data``), so they use plain msgpack with hard limits rather than the canonical
codec. Anything that does not decode into a known, well-typed frame raises ``BadFrame``: the
sender is a misbehaving peer (or not a peer at all) and gets disconnected.
"""

from __future__ import annotations

from typing import Any

import msgpack

from common.codec import encode
from common.crypto import SigningKey, verify

HANDSHAKE_DOMAIN = b"vigil/p2p-handshake/v2"
CHALLENGE_BYTES = 32

# type tag -> required fields and their types (extra fields are ignored for forward compatibility)
_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "hello": {"chain_id": str, "genesis": bytes, "index": int, "challenge": bytes, "tls": bool},
    "hello_ack": {"index": int, "challenge": bytes, "sig": bytes, "tls": bool},
    "auth": {"sig": bytes},
    "ok": {},
    "c": {"d": bytes},  # a consensus message for the replica
    "txs": {"txs": list},  # gossiped raw transactions
    "status": {"height": int, "view": int},
    "req": {"id": int, "kind": str, "body": dict},  # request: get_txs, get_blocks
    "resp": {"id": int, "body": dict},
}


class BadFrame(ValueError):
    """A frame that is not valid msgpack, too big, or not a known well-typed message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode_frame(msg: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(msg, use_bin_type=True)
    return data


# The core's message types as metric labels (a bounded set; consensus/messages.py names them).
CONSENSUS_KINDS = {
    "pre_prepare": "preprepare",
    "prepare": "prepare",
    "commit": "commit",
    "checkpoint": "checkpoint",
    "view_change": "viewchange",
    "new_view": "newview",
    "retract": "retract",
    "retract_ack": "retractack",
}


def consensus_kind(data: bytes) -> str:
    """The type of an encoded consensus message, as a metric label, without decoding the rest.

    Walks the top-level msgpack map and skips values until the ``type`` key, so a big
    PRE-PREPARE payload is never copied. Anything unexpected is ``"unknown"``.
    """
    try:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(data), 1))
        unpacker.feed(data)
        for _ in range(unpacker.read_map_header()):
            if unpacker.unpack() == "type":
                return CONSENSUS_KINDS.get(unpacker.unpack(), "unknown")
            unpacker.skip()
    except Exception:  # noqa: BLE001 - any garbage is just "unknown" here; the core rejects it
        return "unknown"
    return "unknown"


def frame_label(msg: dict[str, Any]) -> str:
    """The ``type`` label of a frame: its tag, or the consensus message kind for ``c`` frames."""
    kind = msg.get("t")
    if kind == "c":
        data = msg.get("d")
        return consensus_kind(data) if isinstance(data, bytes) else "unknown"
    return kind if isinstance(kind, str) and kind in _FIELDS else "unknown"


def decode_frame(data: bytes, max_bytes: int) -> dict[str, Any]:
    """Decode and type-check one frame; raises BadFrame with a short, bounded reason."""
    if len(data) > max_bytes:
        raise BadFrame("frame_too_large")
    try:
        msg = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_ext_len=0,
        )
    except Exception:  # noqa: BLE001 - msgpack raises many types on garbage
        raise BadFrame("malformed") from None
    if not isinstance(msg, dict):
        raise BadFrame("not_a_map")
    kind = msg.get("t")
    fields = _FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise BadFrame("unknown_type")
    for name, typ in fields.items():
        value = msg.get(name)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise BadFrame(f"bad_field_{kind}")
    return msg


def handshake_message(
    chain_id: str,
    genesis_hash: bytes,
    challenge: bytes,
    signer: int,
    verifier: int,
    binding: bytes = b"",
) -> bytes:
    """What a validator signs to prove its key: bound to the chain, both ends, a fresh nonce and
    the TLS session (``binding``: SHA-256 of the acceptor's certificate as this side saw it;
    empty on an insecure link), so the key vouches for the very TLS session it speaks over."""
    return encode(
        {
            "chain_id": chain_id,
            "genesis": genesis_hash,
            "challenge": challenge,
            "signer": signer,
            "verifier": verifier,
            "binding": binding,
        }
    )


def sign_challenge(
    key: SigningKey,
    chain_id: str,
    genesis_hash: bytes,
    challenge: bytes,
    me: int,
    them: int,
    binding: bytes = b"",
) -> bytes:
    return key.sign(
        HANDSHAKE_DOMAIN, handshake_message(chain_id, genesis_hash, challenge, me, them, binding)
    )


def check_challenge(
    public_key: bytes,
    chain_id: str,
    genesis_hash: bytes,
    challenge: bytes,
    signer: int,
    me: int,
    sig: bytes,
    binding: bytes = b"",
) -> bool:
    msg = handshake_message(chain_id, genesis_hash, challenge, signer, me, binding)
    return verify(public_key, HANDSHAKE_DOMAIN, msg, sig)
