"""One canonical msgpack encoding for every hashed or signed value.

Values are plain trees of ``int``, ``bytes``, ``str``, ``bool``, ``None``, ``list`` and ``dict``
with ``str`` keys. Canonical means: maps sorted by the UTF-8 bytes of their keys, integers and
lengths in msgpack's shortest form, ``bin`` for bytes and ``str`` for text, no floats, no
extension types. :func:`decode` re-encodes what it read and rejects the input unless the bytes
are identical, so one value has exactly one encoding and a hash names one value.

Schemas (:func:`struct` and the checks beside it) check field names, types and sizes so that
decoding rejects unknown or missing fields, wrong types and oversize values with a
:class:`CodecError` and nothing else.

The bytes come from msgspec: its MessagePack encoder with ``order="sorted"`` writes exactly the
canonical form above (sorted str keys compare by code point, which is UTF-8 byte order; shortest
integers and headers; bin for bytes), byte-identical to msgpack-python on the test vectors, and
encodes and decodes several times faster. msgspec would also accept floats, integer map keys and
extension types, so :func:`_check_tree` keeps refusing those, on both sides. Where a schema
check follows (:func:`decode_struct`, :func:`decode_for_schema`) or came first
(:func:`encode_checked`), the tree walk is skipped: every schema check below accepts only ints,
bytes, str, lists and str-keyed maps of known fields, so it refuses floats, extension types and
integer keys by itself, and the schema walk was the second walk of the same tree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

U64_MAX = 2**64 - 1
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 16
MAX_ARRAY_ITEMS = 1_000_000
MAX_MAP_ITEMS = 1_000

_ENCODER = msgspec.msgpack.Encoder(order="sorted")
_DECODER = msgspec.msgpack.Decoder()


class CodecError(ValueError):
    """Bytes or a value that do not follow the canonical encoding or a schema."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_tree(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise CodecError("nesting too deep")
    if isinstance(value, bool) or value is None or isinstance(value, bytes | str):
        return
    if isinstance(value, int):
        if not -(2**63) <= value <= U64_MAX:
            raise CodecError("integer out of range")
        return
    if isinstance(value, list | tuple):
        if len(value) > MAX_ARRAY_ITEMS:
            raise CodecError("array too long")
        for item in value:
            _check_tree(item, depth + 1)
        return
    if isinstance(value, dict):
        if len(value) > MAX_MAP_ITEMS:
            raise CodecError("map too large")
        for key, item in value.items():
            if not isinstance(key, str):
                raise CodecError("map key is not a string")
            _check_tree(item, depth + 1)
        return
    raise CodecError(f"type {type(value).__name__} has no canonical encoding")


def encode(value: Any) -> bytes:
    """The canonical bytes of a value tree."""
    _check_tree(value)
    return _ENCODER.encode(value)


def encode_flat(value: Any) -> bytes:
    """:func:`encode` of a map of plain scalars (a ledger record made per tx): the same checks in
    one loop instead of a walk. Anything else goes through the walk, which says what is wrong."""
    if type(value) is not dict or len(value) > MAX_MAP_ITEMS:
        return encode(value)
    for key, item in value.items():
        kind = type(item)
        if type(key) is not str:
            _check_tree(value)
            break
        if kind is int:
            if not -(2**63) <= item <= U64_MAX:
                raise CodecError("integer out of range")
        elif kind is not bytes and kind is not str and kind is not bool:
            _check_tree(value)
            break
    return _ENCODER.encode(value)


def encode_checked(value: Any) -> bytes:
    """:func:`encode` of a value that a schema check (below) just accepted: no second walk."""
    return _ENCODER.encode(value)


def _decode_raw(data: bytes, max_bytes: int) -> tuple[Any, bytes]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError("input is not bytes")
    data = bytes(data)
    if len(data) > max_bytes:
        raise CodecError("message too large")
    if not data:
        raise CodecError("empty input")
    try:
        value = _DECODER.decode(data)
    except RecursionError:
        raise CodecError("nesting too deep") from None
    except Exception as exc:  # noqa: BLE001 - the decoder raises several types for garbage
        raise CodecError(f"malformed msgpack: {type(exc).__name__}") from None
    return value, data


def decode(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode canonical bytes into a value tree; anything else raises CodecError."""
    value, data = _decode_raw(data, max_bytes)
    try:
        _check_tree(value)  # floats, ext types, integer keys: valid msgpack, not canonical here
    except CodecError as exc:
        raise CodecError(f"malformed msgpack: {exc.reason}") from None
    if _ENCODER.encode(value) != data:
        raise CodecError("non-canonical encoding")
    return value


def peek(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode without the canonical checks, for a hint read from bytes that a full
    :func:`decode` checks later (a value tree of any msgpack types); CodecError on garbage."""
    return _decode_raw(data, max_bytes)[0]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --- schema checks ---------------------------------------------------------------------------

Check = Callable[[Any, str], Any]


def uint(max_value: int = U64_MAX) -> Check:
    def check(v: Any, name: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise CodecError(f"{name}: expected unsigned integer")
        if not 0 <= v <= max_value:
            raise CodecError(f"{name}: out of range 0..{max_value}")
        return v

    return check


def raw(size: int | None = None, max_size: int | None = None) -> Check:
    def check(v: Any, name: str) -> bytes:
        if not isinstance(v, bytes):
            raise CodecError(f"{name}: expected bytes")
        if size is not None and len(v) != size:
            raise CodecError(f"{name}: expected {size} bytes, got {len(v)}")
        if max_size is not None and len(v) > max_size:
            raise CodecError(f"{name}: longer than {max_size} bytes")
        return v

    return check


def text(max_size: int) -> Check:
    def check(v: Any, name: str) -> str:
        if not isinstance(v, str):
            raise CodecError(f"{name}: expected string")
        if len(v.encode()) > max_size:
            raise CodecError(f"{name}: longer than {max_size} bytes")
        return v

    return check


def one_of(*choices: str) -> Check:
    def check(v: Any, name: str) -> str:
        if v not in choices:
            raise CodecError(f"{name}: expected one of {', '.join(choices)}")
        return str(v)

    return check


def list_of(item: Check, max_items: int) -> Check:
    def check(v: Any, name: str) -> list[Any]:
        if not isinstance(v, list):
            raise CodecError(f"{name}: expected list")
        if len(v) > max_items:
            raise CodecError(f"{name}: more than {max_items} items")
        return [item(x, f"{name}[{i}]") for i, x in enumerate(v)]

    return check


def struct(fields: Mapping[str, Check]) -> Check:
    """A map with exactly these keys."""
    keys = frozenset(fields)
    items = tuple(fields.items())

    def check(v: Any, name: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise CodecError(f"{name}: expected map")
        if v.keys() != keys:
            missing = sorted(keys - set(v))
            if missing:
                raise CodecError(f"{name}: missing field {missing[0]}")
            unknown = sorted(set(v) - keys, key=lambda k: (not isinstance(k, str), repr(k)))
            raise CodecError(f"{name}: unknown field {unknown[0]}")
        if not name:  # top level: field names are the keys (no f-string per field)
            return {k: c(v[k], k) for k, c in items}
        return {k: c(v[k], f"{name}.{k}") for k, c in items}

    return check


def decode_for_schema(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """:func:`decode` for a caller that checks the value against a schema before any use.

    The value may hold floats, extension types or integer keys until that check refuses them;
    the canonical (byte-identical re-encoding) check is done here.
    """
    value, data = _decode_raw(data, max_bytes)
    try:
        canonical = _ENCODER.encode(value) == data
    except Exception as exc:  # noqa: BLE001 - whatever msgspec refuses to re-encode is malformed
        raise CodecError(f"malformed msgpack: {type(exc).__name__}") from None
    if not canonical:
        raise CodecError("non-canonical encoding")
    return value


def check_schema(value: Any, schema: Check) -> Any:
    """Run a schema check on an untrusted value: any failure is a CodecError."""
    try:
        return schema(value, "")
    except CodecError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. unhashable or unorderable garbage
        raise CodecError(f"malformed value: {type(exc).__name__}") from None


def decode_struct(data: bytes, schema: Check, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode canonical bytes and check them against a schema built from the helpers above."""
    return check_schema(decode_for_schema(data, max_bytes), schema)
