"""The JSON-RPC method table and strict parameter parsing (named or positional).

Every parameter error raises ``VigilError(INVALID_PARAMS)`` naming the parameter and what was
expected, so a wallet author sees ``hash: expected 0x-prefixed hex of 32 bytes, got 31 bytes``
rather than a generic failure.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node.api.service import NodeService
from node.chain.tx import TX_BYTES_MAX
from node.errors import INVALID_PARAMS, VigilError

HASH_BYTES = 32
ADDRESS_BYTES = 20
QUARANTINE_LIST_MAX = 1000
QUARANTINE_LIST_DEFAULT = 100
ACCOUNT_TXS_MAX = 200
ACCOUNT_TXS_DEFAULT = 50

Parser = Callable[[Any, str], Any]


def params_error(name: str, expected: str, detail: str = "") -> VigilError:
    message = f"{name}: expected {expected}" + (f", {detail}" if detail else "")
    return VigilError(INVALID_PARAMS, message, {"param": name, "expected": expected})


def hex_bytes(size: int | None = None, size_max: int | None = None) -> Parser:
    """A ``0x`` hex string of exactly ``size`` bytes (or 1..``size_max`` bytes)."""
    if size is not None:
        expected = f"0x-prefixed hex of {size} bytes"
    else:
        expected = f"0x-prefixed hex of 1..{size_max} bytes"

    def parse(value: Any, name: str) -> bytes:
        if not isinstance(value, str):
            raise params_error(name, expected, f"got {_json_type(value)}")
        if not value.startswith(("0x", "0X")):
            raise params_error(name, expected, "missing 0x prefix")
        digits = value[2:]
        if size_max is not None and len(digits) > 2 * size_max:
            raise params_error(name, expected, f"got more than {size_max} bytes")
        if len(digits) % 2:
            raise params_error(name, expected, "odd number of hex digits")
        try:
            data = bytes.fromhex(digits)
        except ValueError:
            raise params_error(name, expected, "invalid hex digits") from None
        if size is not None and len(data) != size:
            raise params_error(name, expected, f"got {len(data)} bytes")
        if size is None and not data:
            raise params_error(name, expected, "got 0 bytes")
        return data

    return parse


def uint_param(value_max: int) -> Parser:
    expected = f"an integer 0..{value_max}"

    def parse(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise params_error(name, expected, f"got {_json_type(value)}")
        if not 0 <= value <= value_max:
            raise params_error(name, expected, f"got {value}")
        return value

    return parse


def height_param(value: Any, name: str) -> int | None:
    """A block height (non-negative integer) or ``"latest"`` (None)."""
    expected = 'a non-negative integer or "latest"'
    if value == "latest":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise params_error(name, expected, f"got {_json_type(value)}")
    if not 0 <= value < 2**63:
        raise params_error(name, expected, f"got {value}")
    return value


def _json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case dict():
            return "object"
    return type(value).__name__


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    parse: Parser
    required: bool = True
    default: Any = None


@dataclass(frozen=True, slots=True)
class Method:
    """A JSON-RPC method: the NodeService method of the same name, params in their order."""

    name: str
    params: tuple[Param, ...]
    admin: bool = False

    async def call(self, service: NodeService, args: dict[str, Any]) -> Any:
        return await getattr(service, self.name)(*(args[p.name] for p in self.params))


def bind_params(method: Method, raw: list[Any] | dict[str, Any] | None) -> dict[str, Any]:
    """Map positional or named params onto the method's parameters, parsed and checked."""
    names = [p.name for p in method.params]
    given: dict[str, Any]
    if raw is None:
        given = {}
    elif isinstance(raw, list):
        if len(raw) > len(names):
            raise VigilError(
                INVALID_PARAMS,
                f"{method.name} takes at most {len(names)} params"
                + (f" ({', '.join(names)})" if names else "")
                + f", got {len(raw)}",
            )
        given = dict(zip(names, raw, strict=False))
    else:
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise VigilError(
                INVALID_PARAMS,
                f"{unknown[0]}: unknown param of {method.name}"
                + (f" (expected {', '.join(names)})" if names else " (takes no params)"),
                {"param": unknown[0]},
            )
        given = raw
    out: dict[str, Any] = {}
    for p in method.params:
        if p.name in given:
            out[p.name] = p.parse(given[p.name], p.name)
        elif p.required:
            raise VigilError(INVALID_PARAMS, f"{p.name}: missing", {"param": p.name})
        else:
            out[p.name] = p.default
    return out


_HASH = hex_bytes(HASH_BYTES)
_NO_PARAMS: tuple[Param, ...] = ()


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("node_status", _NO_PARAMS),
        Method("tx_submit", (Param("tx", hex_bytes(size_max=TX_BYTES_MAX)),)),
        Method("tx_get", (Param("hash", _HASH),)),
        Method("tx_proof", (Param("hash", _HASH),)),
        Method("anchor_get", (Param("digest", _HASH),)),
        Method("account_get", (Param("address", hex_bytes(ADDRESS_BYTES)),)),
        Method("block_get", (Param("height", height_param, False, None),)),
        Method(
            "account_txs",
            (
                Param("address", hex_bytes(ADDRESS_BYTES)),
                Param("limit", uint_param(ACCOUNT_TXS_MAX), False, ACCOUNT_TXS_DEFAULT),
            ),
        ),
        Method("cluster_status", _NO_PARAMS),
        Method("mempool_status", _NO_PARAMS),
        Method("detector_status", _NO_PARAMS),
        Method(
            "quarantine_list",
            (Param("limit", uint_param(QUARANTINE_LIST_MAX), False, QUARANTINE_LIST_DEFAULT),),
            admin=True,
        ),
        Method("quarantine_release", (Param("hash", _HASH),), admin=True),
        Method("quarantine_reject", (Param("hash", _HASH),), admin=True),
        Method("admin_db_backup", _NO_PARAMS, admin=True),
        Method("quarantine_show", (Param("hash", _HASH),), admin=True),
        Method("detector_explain", (Param("hash", _HASH),), admin=True),
    )
}


def error_obj(code: int, message: str, data: Any = None) -> dict[str, Any]:
    """A JSON-RPC 2.0 error object."""
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return err


def response(id_: Any, *, result: Any = None, error: dict[str, Any] | None = None) -> str:
    """One JSON-RPC 2.0 response (HTTP and websocket alike), as compact JSON."""
    body: dict[str, Any] = {"jsonrpc": "2.0"}
    if error is not None:
        body["error"] = error
    else:
        body["result"] = result
    body["id"] = id_
    return _ENCODE(body)


# One encoder for every answer: json.dumps with non-default options builds a new encoder per
# call (a refusal's answer: 6.4 -> 4.3 us).
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


JSON_DEPTH_MAX = 32  # deeper request documents are refused before the parser recurses


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e400 parses to inf, which no JSON answer can carry back (an id, a param): refuse it here.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def parse_json(body: bytes) -> Any:
    """Parse a request body; ValueError for anything that is not plain, shallow JSON."""
    # Cheap C-speed bound first: with few brackets the document cannot be deep.
    if body.count(b"[") + body.count(b"{") > JSON_DEPTH_MAX:
        _check_depth_raw(body)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("body is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nesting too deep") from None
    except ValueError as exc:
        raise ValueError(str(exc).split(":")[0]) from None


# A JSON string (escapes included), or the unterminated rest of one: brackets inside never count.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENING = frozenset(b"[{")


def _check_depth_raw(body: bytes) -> None:
    """Reject bodies nested deeper than JSON_DEPTH_MAX before the parser recurses into them.

    The depth is counted before parsing, never by the parser's own recursion: a dependency may
    raise the interpreter's recursion limit (py_ecc sets 100,000), and the C parser would then
    overflow the C stack on a hostile body. Strings are cut out first (brackets inside never
    count): with no backslash in the body every quote opens or closes one, so a split does it
    at C speed; otherwise a regular expression (a batch of 19 ``tx_submit``: 80 us by the
    expression, 3 us by the split). Only the brackets left are walked in Python.
    """
    outside = _STRING.sub(b"", body) if b"\\" in body else b"".join(body.split(b'"')[::2])
    depth = 0
    for bracket in outside.translate(None, _NOT_BRACKETS):
        if bracket in _OPENING:
            depth += 1
            if depth > JSON_DEPTH_MAX:
                raise ValueError(f"nesting deeper than {JSON_DEPTH_MAX}")
        else:
            depth -= 1
