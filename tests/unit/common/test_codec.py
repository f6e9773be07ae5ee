"""The canonical codec: one encoding per value, and garbage raises CodecError only."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import codec
from common.codec import CodecError

scalars = (
    st.integers(min_value=-(2**63), max_value=codec.U64_MAX)
    | st.binary(max_size=64)
    | st.text(max_size=32)
    | st.booleans()
    | st.none()
)
trees = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


@given(trees)
def test_round_trip(value: object) -> None:
    data = codec.encode(value)
    assert codec.decode(data) == value
    assert codec.encode(codec.decode(data)) == data


@given(st.dictionaries(st.text(max_size=8), st.integers(0, 1000), min_size=2, max_size=6))
def test_map_order_does_not_change_encoding(d: dict[str, int]) -> None:
    reversed_d = dict(reversed(list(d.items())))
    assert codec.encode(d) == codec.encode(reversed_d)


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_random_bytes_raise_only_codec_error(data: bytes) -> None:
    try:
        codec.decode(data)
    except CodecError:
        pass


def test_unsorted_map_is_rejected() -> None:
    data = msgpack.packb({"b": 1, "a": 2})
    with pytest.raises(CodecError, match="non-canonical"):
        codec.decode(data)


def test_non_shortest_integer_is_rejected() -> None:
    data = b"\xcd\x00\x05"  # uint16 holding 5, whose shortest form is a fixint
    with pytest.raises(CodecError, match="non-canonical"):
        codec.decode(data)


def test_str_and_bin_are_distinct() -> None:
    assert codec.decode(codec.encode(b"ab")) == b"ab"
    assert codec.decode(codec.encode("ab")) == "ab"
    assert codec.encode(b"ab") != codec.encode("ab")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\xcb" + b"\x00" * 8, "float"),  # float64
        (b"\xd4\x01\x00", "malformed"),  # ext type
        (b"\x81\x01\x02", "malformed"),  # int map key
        (b"\x92\x01", "malformed"),  # truncated array
        (b"\x01\x02", "malformed"),  # trailing bytes
        (b"\xc4\xff", "malformed"),  # bin claiming more than there is
        (b"\xa2\xff\xfe", "malformed"),  # invalid utf-8
        (b"\xdd\xff\xff\xff\xff", "malformed"),  # huge array length
    ],
)
def test_malformed_inputs(data: bytes, reason: str) -> None:
    with pytest.raises(CodecError, match=reason):
        codec.decode(data)


def test_encode_rejects_unencodable_values() -> None:
    with pytest.raises(CodecError):
        codec.encode(1.5)
    with pytest.raises(CodecError):
        codec.encode({1: 2})
    with pytest.raises(CodecError):
        codec.encode(2**64)


def test_too_deep_nesting_is_rejected() -> None:
    value: object = 1
    for _ in range(codec.MAX_DEPTH + 2):
        value = [value]
    with pytest.raises(CodecError, match="deep"):
        codec.encode(value)
    with pytest.raises(CodecError):
        codec.decode(msgpack.packb(value))


def test_oversize_input_is_rejected() -> None:
    with pytest.raises(CodecError, match="too large"):
        codec.decode(codec.encode(b"x" * 100), max_bytes=50)


def test_struct_schema_errors_name_the_field() -> None:
    schema = codec.struct({"a": codec.uint(10), "b": codec.raw(2)})
    assert codec.decode_struct(codec.encode({"a": 3, "b": b"xy"}), schema) == {"a": 3, "b": b"xy"}
    for bad, reason in [
        ({"a": 3}, "missing field b"),
        ({"a": 3, "b": b"xy", "c": 1}, "unknown field c"),
        ({"a": 11, "b": b"xy"}, "a: out of range"),
        ({"a": True, "b": b"xy"}, "a: expected unsigned"),
        ({"a": 1, "b": "xy"}, "b: expected bytes"),
        ({"a": 1, "b": b"xyz"}, "b: expected 2 bytes"),
    ]:
        with pytest.raises(CodecError, match=reason):
            codec.decode_struct(codec.encode(bad), schema)


@pytest.mark.parametrize(
    "value",
    [
        {"balance": 0, "nonce": 0},
        {"balance": 2**64 - 1, "nonce": -(2**63)},
        {"tx_hash": b"\x01" * 32, "index": 7, "ok": True, "reason": ""},
        {"a": None, "b": False, "c": "x"},
        {},
    ],
)
def test_encode_flat_is_encode_for_maps_of_scalars(value: dict[str, object]) -> None:
    assert codec.encode_flat(value) == codec.encode(value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"balance": 2**64, "nonce": 0}, "integer out of range"),
        ({"balance": -(2**63) - 1}, "integer out of range"),
        ({"balance": 1.5}, "type float has no canonical encoding"),
        ({"nested": [1, 2.0]}, "type float has no canonical encoding"),
        ({1: 2}, "map key is not a string"),
        ({"a": 1, b"k": 2**64}, "map key is not a string"),
        ({str(i): i for i in range(1_001)}, "map too large"),
    ],
)
def test_encode_flat_refuses_what_encode_refuses(value: dict[object, object], reason: str) -> None:
    for encoder in (codec.encode, codec.encode_flat):
        with pytest.raises(CodecError) as caught:
            encoder(value)
        assert caught.value.reason == reason


wild = st.recursive(
    scalars | st.floats() | st.integers(min_value=-(2**70), max_value=2**70),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.integers(0, 9) | st.binary(max_size=2), inner)
    ),
    max_leaves=12,
)


@given(wild)
@settings(max_examples=400, deadline=None)
def test_encode_flat_agrees_with_encode_on_any_tree(value: object) -> None:
    """Any value a caller might pass, not only maps of scalars: the same bytes or the same error."""
    try:
        expected: bytes | str = codec.encode(value)
    except CodecError as exc:
        expected = exc.reason
    try:
        got: bytes | str = codec.encode_flat(value)
    except CodecError as exc:
        got = exc.reason
    assert got == expected
