"""Transactions: canonical round trips, signatures bound to every field, strict decoding."""

import dataclasses
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import codec
from common.codec import CodecError
from common.crypto import SigningKey, address_of
from node.chain.tx import (
    MEMO_BYTES_MAX,
    TX_BYTES_MAX,
    Claim,
    Transaction,
    TxError,
    claim_of,
    make_anchor,
    make_transfer,
)

u64 = st.integers(min_value=0, max_value=codec.U64_MAX)
keys = st.binary(min_size=32, max_size=32).map(SigningKey)
chain_ids = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
transfers = st.builds(
    make_transfer,
    key=keys,
    chain_id=chain_ids,
    to=st.binary(min_size=20, max_size=20),
    amount=u64,
    fee=u64,
    nonce=u64,
)
anchors = st.builds(
    make_anchor,
    key=keys,
    chain_id=chain_ids,
    digest=st.binary(min_size=32, max_size=32),
    memo=st.binary(max_size=MEMO_BYTES_MAX),
    fee=u64,
    nonce=u64,
)
txs = transfers | anchors

KEY = SigningKey(bytes(range(32)))


def _transfer(chain_id: str = "vigil") -> Transaction:
    return make_transfer(KEY, chain_id, to=b"\x07" * 20, amount=5, fee=1, nonce=0)


def _anchor() -> Transaction:
    return make_anchor(KEY, "vigil", digest=b"\x09" * 32, memo=b"hi", fee=1, nonce=0)


@given(txs)
@settings(max_examples=60, deadline=None)
def test_round_trip_and_signature(tx: Transaction) -> None:
    data = tx.encode()
    assert len(data) <= TX_BYTES_MAX
    back = Transaction.decode(data)
    assert back == tx
    assert back.encode() == data
    assert back.hash == codec.sha256(data)
    assert back.verify_signature()
    assert back.sender_address == address_of(tx.sender)


def _other(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1 if value < codec.U64_MAX else value - 1
    if isinstance(value, str):
        return value + "x" if len(value) < 64 else value[:-1]
    if isinstance(value, bytes):
        if not value:
            return b"\x01"
        return bytes([value[0] ^ 1]) + value[1:]
    raise AssertionError(value)


FIELDS = [f.name for f in dataclasses.fields(Transaction) if not f.name.startswith("_")]


@given(txs, st.sampled_from(FIELDS))
@settings(max_examples=150, deadline=None)
def test_every_single_field_change_invalidates(tx: Transaction, name: str) -> None:
    change: dict[str, Any] = {name: _other(getattr(tx, name))}  # a field chosen at run time
    changed = dataclasses.replace(tx, **change)
    assert changed != tx
    assert not changed.verify_signature()


def test_kind_change_invalidates() -> None:
    tx = _transfer()
    assert not dataclasses.replace(tx, kind="anchor").verify_signature()


def test_chain_id_is_signed() -> None:
    tx = _transfer(chain_id="a")
    forged = dataclasses.replace(tx, chain_id="b")
    assert not forged.verify_signature()


@given(txs, st.data())
@settings(max_examples=100, deadline=None)
def test_mutated_bytes_raise_only_codec_error(tx: Transaction, data: st.DataObject) -> None:
    raw = bytearray(tx.encode())
    choice = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if choice == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    elif choice == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=8))
    try:
        back = Transaction.decode(bytes(raw))
    except CodecError:
        return
    # Rarely a flip still yields a well-formed tx (e.g. inside the signature): it must differ.
    assert back != tx
    assert back.encode() == bytes(raw)


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_random_bytes_raise_only_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        Transaction.decode(data)


def _fields(tx: Transaction) -> dict[str, Any]:
    fields: dict[str, Any] = msgpack.unpackb(tx.encode(), raw=False)
    return fields


def _pack(fields: dict[str, Any]) -> bytes:
    return codec.encode(fields)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: m.pop("fee"), "missing field fee"),
        (lambda m: m.update(extra=1), "unknown field extra"),
        (lambda m: m.update(digest=b"\x00" * 32), "unknown field digest"),
        (lambda m: m.update(amount=-1), "amount: out of range"),
        (lambda m: m.update(amount="5"), "amount: expected unsigned"),
        (lambda m: m.update(nonce=True), "nonce: expected unsigned"),
        (lambda m: m.update(to=b"\x00" * 21), "to: expected 20 bytes"),
        (lambda m: m.update(sender=b"\x00" * 31), "sender: expected 32 bytes"),
        (lambda m: m.update(signature=b"\x00" * 63), "signature: expected 64 bytes"),
        (lambda m: m.update(kind="mint"), "kind: expected one of"),
        (lambda m: m.update(kind=["transfer"]), "kind: expected one of"),
        (lambda m: m.update(chain_id=""), "chain_id"),
        (lambda m: m.update(chain_id="has space"), "chain_id"),
        (lambda m: m.update(chain_id=b"vigil"), "chain_id"),
    ],
)
def test_transfer_schema_errors(mutate: Callable[[dict[str, Any]], object], reason: str) -> None:
    m = _fields(_transfer())
    mutate(m)
    with pytest.raises(CodecError, match=reason):
        Transaction.decode(_pack(m))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: m.update(memo=b"x" * (MEMO_BYTES_MAX + 1)), "memo: longer than 128"),
        (lambda m: m.update(to=b"\x00" * 20), "unknown field to"),
        (lambda m: m.update(digest=b"\x00" * 31), "digest: expected 32 bytes"),
        (lambda m: m.update(memo="text"), "memo: expected bytes"),
    ],
)
def test_anchor_schema_errors(mutate: Callable[[dict[str, Any]], object], reason: str) -> None:
    m = _fields(_anchor())
    mutate(m)
    with pytest.raises(CodecError, match=reason):
        Transaction.decode(_pack(m))


def test_oversize_input_is_rejected() -> None:
    with pytest.raises(CodecError, match="too large"):
        Transaction.decode(b"\x00" * (TX_BYTES_MAX + 1))


def test_non_canonical_bytes_are_rejected() -> None:
    m = _fields(_transfer())
    unsorted = msgpack.packb(dict(reversed(list(m.items()))), use_bin_type=True)
    with pytest.raises(CodecError, match="non-canonical"):
        Transaction.decode(unsorted)


def test_cannot_build_mixed_kinds() -> None:
    with pytest.raises(TxError):
        make_anchor(KEY, "vigil", b"\x00" * 32, b"x" * (MEMO_BYTES_MAX + 1), 0, 0)
    tx = dataclasses.replace(_transfer(), memo=b"x")
    with pytest.raises(TxError, match="digest and memo must be empty"):
        tx.encode()
    assert not tx.verify_signature()


def test_hash_covers_signature_and_is_cached_consistently() -> None:
    tx = _transfer()
    assert tx.hash == codec.sha256(tx.encode())
    other = dataclasses.replace(tx, nonce=1)
    assert other.hash != tx.hash
    assert other.encode() != tx.encode()


def test_to_json_shapes() -> None:
    t = _transfer().to_json()
    assert t["kind"] == "transfer"
    assert t["amount"] == 5
    assert t["to"] == "0x" + "07" * 20
    assert t["from"] == "0x" + address_of(KEY.public_key).hex()
    assert "digest" not in t
    a = _anchor().to_json()
    assert a["digest"] == "0x" + "09" * 32
    assert a["memo"] == "0x6869"
    assert "amount" not in a


def test_claim_of_reads_what_the_full_decode_reads() -> None:
    """Back-pressure's cheap read (no schema check, no signature) names the same sender and
    nonce as Transaction.decode for a native tx, and nothing for bytes that do not say."""
    for tx in (
        make_transfer(KEY, "vigil-test", b"\x02" * 20, 5, 1, 7),
        make_anchor(KEY, "vigil-test", b"\x03" * 32, b"memo", 1, 2**40),
    ):
        raw = tx.encode()
        full = Transaction.decode(raw)
        assert claim_of(raw) == Claim(full.sender_address, full.nonce)
    good = msgpack.unpackb(make_transfer(KEY, "vigil-test", b"\x02" * 20, 5, 1, 7).encode())
    for bad in (
        b"",
        b"\xc1",  # never valid msgpack
        msgpack.packb([1, 2]),
        msgpack.packb({**good, "kind": "mint"}),
        msgpack.packb({**good, "sender": b"\x01" * 31}),
        msgpack.packb({**good, "nonce": -1}),
        msgpack.packb({**good, "nonce": True}),
    ):
        assert claim_of(bad) is None
