"""``vigil init``: one validator's home on its own host (key, TLS certificate, commented config).

    vigil init --home /var/lib/vigil --host v1.example.net
    -> 0x<validator public key>@v1.example.net:26600

The printed line is all the genesis maker needs from this host (``vigil genesis add-validator
LINE``), and the same line goes into every node's ``p2p.peers``. Layout of the home::

    config.toml        commented node config (docs/config.md); mode 0600
    key.json           validator key (node/host/keyfile.py), scrypt + AES-GCM unless --plain-key
    tls/p2p.crt, .key  self-signed certificate, bound to the key by the P2P handshake
    validator.txt      the printed line
    genesis.json       not made here: copy the network's genesis in before starting
    db/, sign_guard.json   made by the node (chain database, double-sign guard)

The passphrase comes from env ``VIGIL_KEY_PASSPHRASE`` or a 0600 file; it is never written to the
config, logs or argv of child processes.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.crypto import SigningKey, to_hex
from node.host.config import PASSPHRASE_ENV, ConfigError, check_passphrase, read_secret_file
from node.host.keyfile import KeyfileError, save_key
from node.net.address import is_host
from node.net.tls import CERT_DAYS_DEFAULT, make_certificate

DEFAULT_P2P_PORT, DEFAULT_RPC_PORT, DEFAULT_METRICS_PORT = 26600, 26700, 26800

# One comment per key: the config an operator opens explains itself (docs/config.md has all).
_COMMENTS: dict[str, str] = {
    "node.data_dir": "chain database (db/) and the double-sign guard (sign_guard.json)",
    "node.genesis": "the network's genesis file: copy it here from the genesis maker",
    "node.key_file": "validator key; encrypted unless made with --plain-key",
    "node.passphrase_file": "0600 file holding the key passphrase (else env VIGIL_KEY_PASSPHRASE)",
    "p2p.host": "address to listen on for other validators",
    "p2p.port": "validators dial this port (open it to the other validators only)",
    "p2p.peers": 'every validator as "0x<key>@host:port" (the lines vigil init printed); host'
    " names are resolved on every dial",
    "p2p.tls_cert": "self-signed; bound to the validator key by the P2P handshake",
    "p2p.tls_key": "private key of the certificate (mode 0600)",
    "p2p.insecure": "true: plain ws:// links, no TLS (throw-away local networks only)",
    "rpc.host": "JSON-RPC listen address (wallets, vigil CLI); 127.0.0.1 keeps it local",
    "rpc.admin_token": "bearer token of admin methods; empty refuses them (or env"
    " VIGIL_ADMIN_TOKEN)",
    "rpc.cors_origins": 'browser wallets allowed to call the RPC, e.g. ["https://wallet.example"]',
    "metrics.host": "Prometheus /metrics listen address",
}


class InitError(Exception):
    """``vigil init`` cannot proceed; nothing was written."""


@dataclass(frozen=True, slots=True)
class InitResult:
    home: Path
    public_key: bytes
    line: str  # 0x<public key>@host:port
    sections: dict[str, dict[str, Any]]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list | tuple):
        if not v:
            return "[]"
        return "[\n" + "".join(f"    {_toml_value(x)},\n" for x in v) + "]"
    return json.dumps(str(v))


def render_config(sections: dict[str, dict[str, Any]], commented: bool = True) -> str:
    lines: list[str] = []
    if commented:
        lines += ["# Vigil node config (docs/config.md lists every key).", ""]
    for name, table in sections.items():
        lines.append(f"[{name}]")
        for k, v in table.items():
            note = _COMMENTS.get(f"{name}.{k}")
            if commented and note:
                lines.append(f"# {note}")
            lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (mode 0600), also when it already existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def init_home(
    home: Path,
    *,
    host: str,
    listen: str | None = None,
    p2p_port: int = DEFAULT_P2P_PORT,
    rpc_port: int = DEFAULT_RPC_PORT,
    metrics_port: int = DEFAULT_METRICS_PORT,
    passphrase: str | None = None,
    passphrase_file: Path | None = None,
    plain_key: bool = False,
    admin_token: str | None = None,
    insecure: bool = False,
    cert_days: int = CERT_DAYS_DEFAULT,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> InitResult:
    """Make a validator home; refuses a home that already has a key or config."""
    if passphrase is None and not plain_key:
        raise InitError(
            f"no passphrase for the validator key: set {PASSPHRASE_ENV}, or --passphrase-file F"
            " (mode 0600), or --plain-key for an unencrypted key"
        )
    for name in ("key.json", "config.toml"):
        if (home / name).exists():
            raise InitError(f"{home / name} already exists: this home is initialised")
    if not is_host(host):
        raise InitError(f"--host: {host!r} is not a host name or address")
    for name, port in (("--p2p-port", p2p_port), ("--rpc-port", rpc_port)):
        if not 1 <= port <= 65535:
            raise InitError(f"{name}: expected 1..65535, got {port}")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = SigningKey(secrets.token_bytes(32))
    try:
        save_key(home / "key.json", key, None if plain_key else passphrase)
    except KeyfileError as exc:
        raise InitError(str(exc)) from None
    make_certificate(
        home / "tls" / "p2p.crt",
        home / "tls" / "p2p.key",
        f"vigil-validator-{key.public_key.hex()[:16]}",
        cert_days,
    )
    listen_host = listen or host
    node: dict[str, Any] = {"data_dir": ".", "genesis": "genesis.json", "key_file": "key.json"}
    if passphrase_file is not None:
        node["passphrase_file"] = str(passphrase_file.resolve())
    sections: dict[str, dict[str, Any]] = {
        "node": node,
        "p2p": {
            "host": listen_host,
            "port": p2p_port,
            "peers": [],
            "tls_cert": "tls/p2p.crt",
            "tls_key": "tls/p2p.key",
            "insecure": insecure,
        },
        "rpc": {
            "host": "127.0.0.1",
            "port": rpc_port,
            "admin_token": admin_token if admin_token is not None else secrets.token_hex(24),
            "cors_origins": [],
        },
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "log": {"level": "info", "format": "json"},
    }
    for name, table in (overrides or {}).items():
        sections.setdefault(name, {}).update(table)
    write_private(home / "config.toml", render_config(sections))
    line = f"{to_hex(key.public_key)}@{host}:{p2p_port}"
    (home / "validator.txt").write_text(line + "\n")
    return InitResult(home, key.public_key, line, sections)


def set_peers(result: InitResult, lines: list[str], genesis: str | None = None) -> None:
    """Rewrite the home's config with ``p2p.peers`` (and the genesis path) filled in."""
    sections = {k: dict(v) for k, v in result.sections.items()}
    sections["p2p"]["peers"] = list(lines)
    if genesis is not None:
        sections["node"]["genesis"] = genesis
    write_private(result.home / "config.toml", render_config(sections))


def cmd_init(args: argparse.Namespace) -> int:
    passphrase: str | None = None
    pfile = Path(args.passphrase_file) if args.passphrase_file else None
    try:
        if pfile is not None:
            passphrase = check_passphrase(
                read_secret_file(pfile, "--passphrase-file"), "--passphrase-file"
            )
        elif not args.plain_key:
            passphrase = os.environ.get(PASSPHRASE_ENV) or None
            if passphrase is not None:
                check_passphrase(passphrase, PASSPHRASE_ENV)
        result = init_home(
            Path(args.home),
            host=args.host,
            listen=args.listen,
            p2p_port=args.p2p_port,
            rpc_port=args.rpc_port,
            metrics_port=args.metrics_port,
            passphrase=passphrase,
            passphrase_file=pfile,
            plain_key=args.plain_key,
            insecure=args.insecure,
            cert_days=args.cert_days,
        )
    except (InitError, ConfigError) as exc:
        print(f"vigil init: {exc}", file=sys.stderr)
        return 2
    print(
        f"initialised {result.home} (key {'plain' if args.plain_key else 'encrypted'});"
        " give this line to the genesis maker:",
        file=sys.stderr,
    )
    print(result.line)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("init", help="make this host's validator key, certificate and config")
    p.add_argument("--home", required=True, help="directory for the node's files")
    p.add_argument("--host", required=True, help="address or DNS name peers should dial")
    p.add_argument("--listen", help="listen address for P2P (default: --host)")
    p.add_argument("--p2p-port", type=int, default=DEFAULT_P2P_PORT)
    p.add_argument("--rpc-port", type=int, default=DEFAULT_RPC_PORT)
    p.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    p.add_argument(
        "--passphrase-file", help=f"0600 file with the passphrase (else ${PASSPHRASE_ENV})"
    )
    p.add_argument("--plain-key", action="store_true", help="store the key unencrypted")
    p.add_argument("--insecure", action="store_true", help="plain ws:// P2P (local tests only)")
    p.add_argument("--cert-days", type=int, default=CERT_DAYS_DEFAULT)
    p.set_defaults(func=cmd_init)
