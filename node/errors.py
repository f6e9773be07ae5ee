"""Stable error codes for everything a client or peer can get wrong.

As in h11, "they sent garbage" is not "we have a bug": bad input raises a ``VigilError`` with a code
from this table, which the RPC layer maps to a JSON-RPC error and the P2P layer to a counted reject
(a peer that keeps sending garbage is disconnected).
"""

from __future__ import annotations

from typing import Any

# JSON-RPC 2.0 standard errors
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# Application errors, -32000..-32099 (documented in docs/rpc.md)
SERVER_ERROR = -32000  # generic: the node cannot serve this right now
TX_INVALID = -32001  # does not decode, bad signature, wrong chain id, oversize
TX_NONCE = -32002  # nonce already used (behind the account) or too far ahead
TX_BALANCE = -32003  # balance does not cover amount + fee
MEMPOOL_FULL = -32004  # mempool count or byte limit reached; retry later
NOT_FOUND = -32005  # no such tx, block, anchor or quarantined entry
UNAUTHORIZED = -32006  # admin method without a valid bearer token
TX_DUPLICATE = -32007  # already known (pending, quarantined or committed)
OVERLOADED = -32008  # too many requests or connections; retry later
TIMEOUT = -32009  # the request took longer than the per-request timeout
NOT_READY = -32010  # node is starting or catching up

ERROR_NAMES = {
    SERVER_ERROR: "server_error",
    TX_INVALID: "tx_invalid",
    TX_NONCE: "tx_nonce",
    TX_BALANCE: "tx_balance",
    MEMPOOL_FULL: "mempool_full",
    NOT_FOUND: "not_found",
    UNAUTHORIZED: "unauthorized",
    TX_DUPLICATE: "tx_duplicate",
    OVERLOADED: "overloaded",
    TIMEOUT: "timeout",
    NOT_READY: "not_ready",
}


class VigilError(Exception):
    """An error caused by input we were given, with a stable code and a message safe to show."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    @property
    def name(self) -> str:
        return ERROR_NAMES.get(self.code, "error")
