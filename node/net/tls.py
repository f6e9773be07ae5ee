"""TLS for validator links (and optionally RPC and metrics): certificates, contexts, bindings.

Each validator has a self-signed certificate made by ``vigil init``. No certificate authority
vouches for it: the P2P handshake binds it to the validator's genesis key instead. Both ends sign
the SHA-256 fingerprint of the acceptor's certificate as seen on *their* side of the TLS session
(RFC 5929's ``tls-server-end-point`` binding), so a relay that terminates TLS with any other
certificate makes the signatures disagree and the link is refused, and a stranger never gets past
the handshake. Expired (or not yet valid) certificates are refused on both sides.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_DAYS_DEFAULT = 3650


class TlsError(Exception):
    """A certificate or key that cannot be used; the message names the cause."""


def fingerprint(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()


def make_certificate(
    cert_path: Path,
    key_path: Path,
    common_name: str,
    days: int = CERT_DAYS_DEFAULT,
    *,
    not_before: dt.datetime | None = None,
) -> bytes:
    """Write a fresh ECDSA P-256 key (mode 0600) and its self-signed certificate; returns DER."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert.public_bytes(serialization.Encoding.DER)


def check_validity(der: bytes, what: str, now: dt.datetime | None = None) -> None:
    """Raise TlsError naming ``what`` if the certificate does not parse or is out of date."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise TlsError(f"{what}: not an X.509 certificate") from None
    now = now or dt.datetime.now(dt.UTC)
    if now > cert.not_valid_after_utc:
        raise TlsError(f"{what}: certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if now < cert.not_valid_before_utc:
        raise TlsError(
            f"{what}: certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
        )


def load_certificate_der(path: Path, what: str) -> bytes:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{what}: cannot read {path}: {exc.strerror}") from None
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise TlsError(f"{what}: {path} is not a PEM certificate") from None
    return cert.public_bytes(serialization.Encoding.DER)


def server_context(cert: Path, key: Path, what: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context for ``cert``/``key``; TlsError when they do not load or match."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise TlsError(f"{what}: cannot use {cert} with {key}: {why}") from None
    return ctx


def client_context() -> ssl.SSLContext:
    """A client context that takes any certificate: the handshake binding authenticates it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass(frozen=True, slots=True)
class P2PTls:
    """What the P2P layer needs: contexts for both directions and our certificate's binding."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    binding: bytes  # SHA-256 of our certificate (DER)


def p2p_tls(cert: Path, key: Path) -> P2PTls:
    """Load and check our P2P certificate (in date, loads with its key)."""
    der = load_certificate_der(cert, "p2p.tls_cert")
    check_validity(der, "p2p.tls_cert")
    return P2PTls(server_context(cert, key, "p2p.tls_cert"), client_context(), fingerprint(der))
