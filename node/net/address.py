"""Peer addresses from a node's config: ``0x<validator public key>@host:port``.

The public key names which genesis validator is expected at that address (as CometBFT's
``id@host:port``), so the list's order does not matter and a typo in the key is caught at start.
The host may be a DNS name: it is resolved again on every dial, so a validator that moves to
another address is found once its name points there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.crypto import PUBLIC_KEY_BYTES, from_hex, is_strong_public_key, to_hex

_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]+\]")


class PeerAddressError(ValueError):
    """A peer address that does not parse; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class PeerAddress:
    public_key: bytes
    host: str  # a DNS name, an IPv4 address or a bracketed IPv6 address
    port: int

    def url(self, tls: bool) -> str:
        return f"{'wss' if tls else 'ws'}://{self.host}:{self.port}/p2p"

    def __str__(self) -> str:
        return f"{to_hex(self.public_key)}@{self.host}:{self.port}"


def is_host(host: str) -> bool:
    return bool(_HOST_RE.fullmatch(host))


def parse_peer(text: object) -> PeerAddress:
    if not isinstance(text, str):
        raise PeerAddressError('expected a string "0x<public key>@host:port"')
    if "://" in text:
        raise PeerAddressError(
            f"{text!r}: no scheme here (write 0x<public key>@host:port; TLS or not is p2p.insecure)"
        )
    key_hex, at, hostport = text.partition("@")
    if not at:
        raise PeerAddressError(f"{text!r}: expected 0x<public key>@host:port")
    try:
        key = from_hex(key_hex, PUBLIC_KEY_BYTES)
    except ValueError as exc:
        raise PeerAddressError(f"{text!r}: public key: {exc}") from None
    if not is_strong_public_key(key):
        raise PeerAddressError(f"{text!r}: public key is not a usable Ed25519 key")
    host, colon, port_text = hostport.rpartition(":")
    if not colon or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise PeerAddressError(f"{text!r}: expected host:port with a port in 1..65535")
    if not _HOST_RE.fullmatch(host):
        raise PeerAddressError(f"{text!r}: {host!r} is not a host name or address")
    return PeerAddress(key, host, int(port_text))
