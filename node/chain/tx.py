"""Signed transactions: the two kinds, their one canonical encoding, hash, signature and address.

docs/transactions.md is the normative description (a wallet in another language is written from
it); this module is the reference implementation and tests/vectors/ pins it byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from common import codec
from common.codec import CodecError
from common.crypto import (
    ADDRESS_BYTES,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    SigningKey,
    address_of,
    to_hex,
    verify,
)

TX_DOMAIN = b"vigil/tx/v1"
TX_BYTES_MAX = 1024
MEMO_BYTES_MAX = 128
DIGEST_BYTES = 32
KINDS = ("transfer", "anchor")
_CHAIN_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class TxError(CodecError):
    """A transaction value that cannot exist (wrong kind fields, bad sizes): a CodecError too."""


# Other wire formats, by first byte: (decode, hash). node/chain/ethtx.py registers Ethereum's
# envelopes (node/chain/__init__.py imports it); a native tx always starts with 0x88.
_FORMATS: dict[int, tuple[Callable[[bytes], Transaction], Callable[[bytes], bytes]]] = {}


def register_format(
    first_bytes: Iterable[int],
    decode: Callable[[bytes], Transaction],
    hash_raw: Callable[[bytes], bytes],
) -> None:
    for b in first_bytes:
        assert b not in range(0x80, 0x90), "0x80..0x8f start a native (msgpack map) transaction"
        _FORMATS[b] = (decode, hash_raw)


def tx_hash_of(raw: bytes) -> bytes:
    """The hash of a signed tx from its raw bytes, whatever its format (no decoding)."""
    fmt = _FORMATS.get(raw[0]) if raw else None
    return fmt[1](raw) if fmt is not None else codec.sha256(raw)


def _chain_id(v: Any, name: str) -> str:
    if not isinstance(v, str) or not _CHAIN_ID_RE.fullmatch(v):
        raise CodecError(f"{name}: expected 1..64 characters of A-Z a-z 0-9 . _ -")
    return v


_COMMON: dict[str, codec.Check] = {
    "kind": codec.one_of(*KINDS),
    "chain_id": _chain_id,
    "sender": codec.raw(PUBLIC_KEY_BYTES),
    "nonce": codec.uint(),
    "fee": codec.uint(),
}
_KIND_FIELDS: dict[str, dict[str, codec.Check]] = {
    "transfer": {"to": codec.raw(ADDRESS_BYTES), "amount": codec.uint()},
    "anchor": {"digest": codec.raw(DIGEST_BYTES), "memo": codec.raw(max_size=MEMO_BYTES_MAX)},
}
_UNSIGNED = {k: codec.struct({**_COMMON, **f}) for k, f in _KIND_FIELDS.items()}
_SIGNED = {
    k: codec.struct({**_COMMON, **f, "signature": codec.raw(SIGNATURE_BYTES)})
    for k, f in _KIND_FIELDS.items()
}


# The signature entry of a signed encoding (fixstr key, bin8 of 64 bytes) and the "to" entry that
# follows it in a transfer: "signature" and "to" are the two largest keys of a transfer, and
# "signature" the largest of an anchor (docs/transactions.md, canonical key order).
_SIG_KEY = b"\xa9signature\xc4\x40"
_SIG_ENTRY_BYTES = len(_SIG_KEY) + SIGNATURE_BYTES
_TO_ENTRY_BYTES = 1 + 2 + 2 + ADDRESS_BYTES
_SIGNED_MAP = 0x88  # fixmap of 8 entries; the unsigned map has 7
_TAIL_BYTES = {"transfer": _TO_ENTRY_BYTES, "anchor": 0}


def _check(schema: codec.Check, m: dict[str, Any]) -> None:
    """Schema check of a value we are about to encode: a bad field is a TxError."""
    try:
        schema(m, "")
    except TxError:
        raise
    except CodecError as exc:
        raise TxError(exc.reason) from None


@dataclass(frozen=True, slots=True)
class Transaction:
    """One signed transaction. Fields of the other kind hold their empty value (b"" or 0)."""

    kind: str
    chain_id: str
    sender: bytes
    nonce: int
    fee: int
    to: bytes
    amount: int
    digest: bytes
    memo: bytes
    signature: bytes
    # Cache of encode(); not part of the value (compare=False) and rebuilt by dataclasses.replace.
    _encoded: bytes | None = field(default=None, init=False, repr=False, compare=False)
    # Hash and sender address are asked for many times per tx on the admission path (dedup,
    # mempool, gossip, detector): computed once, like the encoding.
    _hash: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _sender_address: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def _unsigned_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {
            "kind": self.kind,
            "chain_id": self.chain_id,
            "sender": self.sender,
            "nonce": self.nonce,
            "fee": self.fee,
        }
        if self.kind == "transfer":
            if self.digest or self.memo:
                raise TxError("transfer: digest and memo must be empty")
            m["to"] = self.to
            m["amount"] = self.amount
        elif self.kind == "anchor":
            if self.to or self.amount:
                raise TxError("anchor: to and amount must be empty")
            m["digest"] = self.digest
            m["memo"] = self.memo
        else:
            raise TxError(f"kind: expected one of {', '.join(KINDS)}")
        return m

    def signing_bytes(self) -> bytes:
        """Canonical encoding of every field except the signature (the signed message)."""
        spliced = self._spliced_signing_bytes()
        if spliced is not None:
            return spliced
        m = self._unsigned_map()
        _check(_UNSIGNED[self.kind], m)
        return codec.encode_checked(m)

    def _spliced_signing_bytes(self) -> bytes | None:
        """The signing bytes cut out of the cached signed encoding, without encoding again.

        A canonical map is its sorted entries after a header, so the unsigned map is the
        signed one minus the signature entry, whose place is fixed by the key order; None
        (encode instead) unless the bytes there are exactly that entry.
        """
        raw = self._encoded
        tail = _TAIL_BYTES.get(self.kind)
        if raw is None or tail is None or not raw or raw[0] != _SIGNED_MAP:
            return None
        end = len(raw) - tail
        start = end - _SIG_ENTRY_BYTES
        if start < 1 or raw[start:end] != _SIG_KEY + self.signature:
            return None
        return b"\x87" + raw[1:start] + raw[end:]

    def encode(self) -> bytes:
        """Canonical signed encoding: the wire format and the hash input."""
        if self._encoded is None:
            m = self._unsigned_map()
            m["signature"] = self.signature
            _check(_SIGNED[self.kind], m)
            data = codec.encode_checked(m)
            if len(data) > TX_BYTES_MAX:
                raise TxError(f"transaction longer than {TX_BYTES_MAX} bytes")
            object.__setattr__(self, "_encoded", data)
            return data
        return self._encoded

    @staticmethod
    def decode(data: bytes) -> Transaction:
        """Parse canonical signed bytes; anything malformed raises CodecError (never another)."""
        fmt = _FORMATS.get(data[0]) if data else None
        if fmt is not None:
            return fmt[0](data)
        # The schema below refuses floats, extension types and integer keys (codec.py).
        value = codec.decode_for_schema(data, max_bytes=TX_BYTES_MAX)
        if not isinstance(value, dict):
            raise CodecError("transaction: expected map")
        kind = value.get("kind")
        if not isinstance(kind, str) or kind not in _SIGNED:
            raise CodecError(f"kind: expected one of {', '.join(KINDS)}")
        m = codec.check_schema(value, _SIGNED[kind])
        tx = Transaction(
            kind=kind,
            chain_id=m["chain_id"],
            sender=m["sender"],
            nonce=m["nonce"],
            fee=m["fee"],
            to=m.get("to", b""),
            amount=m.get("amount", 0),
            digest=m.get("digest", b""),
            memo=m.get("memo", b""),
            signature=m["signature"],
        )
        object.__setattr__(tx, "_encoded", bytes(data))
        return tx

    @property
    def hash(self) -> bytes:
        """SHA-256 of the canonical signed encoding (the signature is covered)."""
        h = self._hash
        if h is None:
            h = codec.sha256(self.encode())
            object.__setattr__(self, "_hash", h)
        return h

    @property
    def sender_address(self) -> bytes:
        a = self._sender_address
        if a is None:
            a = address_of(self.sender)
            object.__setattr__(self, "_sender_address", a)
        return a

    @property
    def size_bytes(self) -> int:
        return len(self.encode())

    def verify_signature(self) -> bool:
        """True when ``signature`` is the sender's Ed25519 signature over the signing bytes."""
        try:
            message = self.signing_bytes()
        except CodecError:
            return False
        return verify(self.sender, TX_DOMAIN, message, self.signature)

    def for_chain(self, chain_id: str) -> bool:
        """Whether this tx was signed for the chain named ``chain_id`` (replay protection)."""
        return self.chain_id == chain_id

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly fields: 0x hex for bytes, integers as integers, plus hash and from."""
        out: dict[str, Any] = {
            "hash": to_hex(self.hash),
            "kind": self.kind,
            "chain_id": self.chain_id,
            "sender": to_hex(self.sender),
            "from": to_hex(self.sender_address),
            "nonce": self.nonce,
            "fee": self.fee,
        }
        if self.kind == "transfer":
            out["to"] = to_hex(self.to)
            out["amount"] = self.amount
        else:
            out["digest"] = to_hex(self.digest)
            out["memo"] = to_hex(self.memo)
        out["signature"] = to_hex(self.signature)
        return out


class Claim(NamedTuple):
    """The sender and nonce a tx's bytes claim, before any check (``claim_of``)."""

    sender_address: bytes
    nonce: int


def claim_of(raw: bytes) -> Claim | None:
    """The sender address and nonce ``raw`` claims, cheaply: admission's back-pressure reads
    them from every client tx while it pushes back, before the full decode and signature
    check (which decide). A native tx is read without its schema check (~3 us against ~12 for
    ``Transaction.decode``); another format's sender comes from its signature, so it is decoded
    in full. None when the bytes do not say.
    """
    if not raw:
        return None
    if raw[0] in _FORMATS:
        try:
            tx = Transaction.decode(raw)
        except CodecError:
            return None
        return Claim(tx.sender_address, tx.nonce)
    try:
        value = codec.peek(raw, TX_BYTES_MAX)
    except CodecError:
        return None
    if not isinstance(value, dict) or value.get("kind") not in KINDS:
        return None
    sender, nonce = value.get("sender"), value.get("nonce")
    if not isinstance(sender, bytes) or len(sender) != PUBLIC_KEY_BYTES:
        return None
    if type(nonce) is not int or nonce < 0:
        return None
    return Claim(address_of(sender), nonce)


def decode_verified(raws: Iterable[bytes]) -> list[Transaction | str]:
    """Decode and check the signature of each raw tx: the tx, or the reason it fails.

    The CPU-heavy half of admission; callers run it in a worker thread, a batch at a time.
    """
    out: list[Transaction | str] = []
    for raw in raws:
        try:
            tx = Transaction.decode(raw)
        except CodecError as exc:
            out.append(f"does not decode: {exc.reason}")
            continue
        out.append(tx if tx.verify_signature() else "bad signature")
    return out


def _signed(unsigned: Transaction, key: SigningKey) -> Transaction:
    sig = key.sign(TX_DOMAIN, unsigned.signing_bytes())
    tx = replace(unsigned, signature=sig)  # the cached encoding and hash start empty again
    tx.encode()  # validates sizes now rather than at first use
    return tx


def make_transfer(
    key: SigningKey, chain_id: str, to: bytes, amount: int, fee: int, nonce: int
) -> Transaction:
    """A signed transfer of ``amount`` to the 20-byte address ``to``."""
    unsigned = Transaction(
        "transfer", chain_id, key.public_key, nonce, fee, to, amount, b"", b"", b"\x00" * 64
    )
    return _signed(unsigned, key)


def make_anchor(
    key: SigningKey, chain_id: str, digest: bytes, memo: bytes, fee: int, nonce: int
) -> Transaction:
    """A signed anchor of a 32-byte digest (usually a file's SHA-256) with a short memo."""
    unsigned = Transaction(
        "anchor", chain_id, key.public_key, nonce, fee, b"", 0, digest, memo, b"\x00" * 64
    )
    return _signed(unsigned, key)
