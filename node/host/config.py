"""One frozen ``NodeConfig`` read from a TOML file and checked at start-up.

Every key is documented in docs/config.md. A wrong or unknown key stops the node with a
``ConfigError`` naming the key (``rpc.port: expected an integer in 1..65535``), so a typo never
silently falls back to a default. Nothing else in the node reads the environment except
``VIGIL_ADMIN_TOKEN`` and ``VIGIL_KEY_PASSPHRASE`` here, which keep secrets out of the file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from common.crypto import PUBLIC_KEY_BYTES, SigningKey, from_hex
from node.host.keyfile import KeyfileError, key_from_json, read_keyfile
from node.net.address import PeerAddress, PeerAddressError, parse_peer

PASSPHRASE_ENV = "VIGIL_KEY_PASSPHRASE"
# A validator key's passphrase: long enough to resist guessing against a stolen key file, and
# above the log redaction's minimum (node/host/logs.py SECRET_LEN_MIN = 8), so a short one is
# refused here, naming the passphrase, rather than by the redaction.
PASSPHRASE_LEN_MIN = 12
# The node's asyncio event loop: uvloop (libuv) by default, the standard library's on request.
EVENT_LOOPS = ("uvloop", "asyncio")


class ConfigError(ValueError):
    """A configuration problem, naming the offending key."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    # [node]
    data_dir: Path
    genesis_file: Path
    key_file: Path
    index: int | None = None  # None: found in genesis by the key
    passphrase_file: Path | None = None
    guard_file: Path | None = None  # None: data_dir / "sign_guard.json"
    event_loop: str = "uvloop"  # "asyncio": the standard library's loop (node/tools/cli.py)
    # [p2p]
    p2p_host: str = "127.0.0.1"
    p2p_port: int = 26600
    p2p_msg_bytes_max: int = 16 * 1024 * 1024
    p2p_send_queue_max: int = 4096
    p2p_reconnect_min_ms: int = 200
    p2p_reconnect_max_ms: int = 5000
    p2p_handshake_timeout_ms: int = 5000
    p2p_request_timeout_ms: int = 5000
    p2p_peers: tuple[PeerAddress, ...] = ()
    p2p_tls_cert: Path | None = None
    p2p_tls_key: Path | None = None
    p2p_insecure: bool = False
    # [rpc]
    rpc_host: str = "127.0.0.1"
    rpc_port: int = 26700
    admin_token: str = ""
    rpc_body_bytes_max: int = 4 * 1024 * 1024
    rpc_batch_max: int = 1000
    rpc_tls_cert: Path | None = None
    rpc_tls_key: Path | None = None
    rpc_cors_origins: tuple[str, ...] = ()
    # [metrics]
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 26800
    metrics_tls_cert: Path | None = None
    metrics_tls_key: Path | None = None
    # [consensus]
    tick_ms: int = 50
    request_timeout_ms: int = 2000
    view_change_timeout_ms: int = 4000
    checkpoint_interval: int = 16
    pipeline_depth: int = 4
    log_window: int = 64
    # [mempool]
    mempool_txs_max: int = 50_000
    mempool_bytes_max: int = 64 * 1024 * 1024
    mempool_backlog_ms: int = 1000  # admission back-pressure (node/host/admission.py); 0: off
    # [block]
    block_txs_max: int = 2000
    block_interval_ms: int = 25  # least time between two proposals (docs/config.md)
    # ... stretched up to this while blocks are small and take longer to commit (driver.py Pace)
    block_interval_max_ms: int = 100
    block_empty_interval_ms: int = 0  # heartbeat of empty blocks on an idle chain; 0: off
    # [catchup]
    catchup_batch_blocks: int = 64
    # [log]
    log_level: str = "info"
    log_format: str = "json"
    # [detector] is passed through to the detector as a read-only mapping (it owns its keys)
    detector: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def db_path(self) -> Path:
        return self.data_dir / "db"

    @property
    def guard_path(self) -> Path:
        return self.guard_file if self.guard_file is not None else self.data_dir / "sign_guard.json"


_Parser = Callable[[Any, str], Any]


def _int(lo: int, hi: int) -> _Parser:
    def parse(v: Any, key: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ConfigError(f"{key}: expected an integer in {lo}..{hi}, got {v!r}")
        return v

    return parse


def _str(choices: tuple[str, ...] = ()) -> _Parser:
    def parse(v: Any, key: str) -> str:
        if not isinstance(v, str):
            raise ConfigError(f"{key}: expected a string, got {v!r}")
        if choices and v not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {v!r}")
        return v

    return parse


def _path(base: Path) -> _Parser:
    def parse(v: Any, key: str) -> Path:
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{key}: expected a path string, got {v!r}")
        p = Path(v)
        return p if p.is_absolute() else (base / p)

    return parse


def _bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: expected true or false, got {v!r}")
    return v


def _peers(v: Any, key: str) -> tuple[PeerAddress, ...]:
    if not isinstance(v, list):
        raise ConfigError(f'{key}: expected a list of "0x<public key>@host:port" strings')
    out = []
    for i, item in enumerate(v):
        try:
            out.append(parse_peer(item))
        except PeerAddressError as exc:
            raise ConfigError(f"{key}[{i}]: {exc}") from None
    if len({p.public_key for p in out}) != len(out):
        raise ConfigError(f"{key}: the same public key is listed twice")
    return tuple(out)


def _origins(v: Any, key: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(o, str) and o for o in v):
        raise ConfigError(f'{key}: expected a list of origins like "https://wallet.example"')
    for o in v:
        if o != "*" and not o.startswith(("http://", "https://")):
            raise ConfigError(f"{key}: {o!r} is not an origin (scheme://host[:port])")
    return tuple(o.rstrip("/") for o in v)


def _off_or(lo: int, hi: int) -> _Parser:
    """0 (off), or an integer in lo..hi."""
    within = _int(lo, hi)

    def parse(v: Any, key: str) -> int:
        if v == 0 and not isinstance(v, bool):
            return 0
        try:
            value: int = within(v, key)
            return value
        except ConfigError:
            raise ConfigError(
                f"{key}: expected 0 (off) or an integer in {lo}..{hi}, got {v!r}"
            ) from None

    return parse


_PORT = _int(1, 65535)
_POS = _int(1, 2**31)
_MS = _int(1, 3_600_000)

# section -> key -> (NodeConfig field, parser factory taking the config file's directory)
_SCHEMA: dict[str, dict[str, tuple[str, Callable[[Path], _Parser]]]] = {
    "node": {
        "index": ("index", lambda b: _int(0, 1000)),
        "data_dir": ("data_dir", _path),
        "genesis": ("genesis_file", _path),
        "key_file": ("key_file", _path),
        "passphrase_file": ("passphrase_file", _path),
        "guard_file": ("guard_file", _path),
        "event_loop": ("event_loop", lambda b: _str(EVENT_LOOPS)),
    },
    "p2p": {
        "host": ("p2p_host", lambda b: _str()),
        "port": ("p2p_port", lambda b: _PORT),
        "max_msg_size": ("p2p_msg_bytes_max", lambda b: _int(64 * 1024, 256 * 1024 * 1024)),
        "send_queue_max": ("p2p_send_queue_max", lambda b: _POS),
        "reconnect_min_ms": ("p2p_reconnect_min_ms", lambda b: _MS),
        "reconnect_max_ms": ("p2p_reconnect_max_ms", lambda b: _MS),
        "handshake_timeout_ms": ("p2p_handshake_timeout_ms", lambda b: _MS),
        "request_timeout_ms": ("p2p_request_timeout_ms", lambda b: _MS),
        "peers": ("p2p_peers", lambda b: _peers),
        "tls_cert": ("p2p_tls_cert", _path),
        "tls_key": ("p2p_tls_key", _path),
        "insecure": ("p2p_insecure", lambda b: _bool),
    },
    "rpc": {
        "host": ("rpc_host", lambda b: _str()),
        "port": ("rpc_port", lambda b: _PORT),
        "admin_token": ("admin_token", lambda b: _str()),
        "max_body_bytes": ("rpc_body_bytes_max", lambda b: _POS),
        "max_batch": ("rpc_batch_max", lambda b: _POS),
        "tls_cert": ("rpc_tls_cert", _path),
        "tls_key": ("rpc_tls_key", _path),
        "cors_origins": ("rpc_cors_origins", lambda b: _origins),
    },
    "metrics": {
        "host": ("metrics_host", lambda b: _str()),
        "port": ("metrics_port", lambda b: _PORT),
        "tls_cert": ("metrics_tls_cert", _path),
        "tls_key": ("metrics_tls_key", _path),
    },
    "consensus": {
        "tick_ms": ("tick_ms", lambda b: _int(5, 10_000)),
        "request_timeout_ms": ("request_timeout_ms", lambda b: _MS),
        "view_change_timeout_ms": ("view_change_timeout_ms", lambda b: _MS),
        "checkpoint_interval": ("checkpoint_interval", lambda b: _int(1, 100_000)),
        "pipeline_depth": ("pipeline_depth", lambda b: _int(1, 1000)),
        "log_window": ("log_window", lambda b: _int(2, 1_000_000)),
    },
    "mempool": {
        "txs_max": ("mempool_txs_max", lambda b: _POS),
        "bytes_max": ("mempool_bytes_max", lambda b: _POS),
        "backlog_ms": ("mempool_backlog_ms", lambda b: _int(0, 600_000)),
    },
    "block": {
        "txs_max": ("block_txs_max", lambda b: _int(1, 4096)),
        "interval_ms": ("block_interval_ms", lambda b: _int(0, 60_000)),
        "interval_max_ms": ("block_interval_max_ms", lambda b: _int(0, 60_000)),
        "empty_interval_ms": ("block_empty_interval_ms", lambda b: _off_or(100, 3_600_000)),
    },
    "catchup": {
        "batch_blocks": ("catchup_batch_blocks", lambda b: _int(1, 1024)),
    },
    "log": {
        "level": ("log_level", lambda b: _str(("debug", "info", "warning", "error"))),
        "format": ("log_format", lambda b: _str(("json", "kv"))),
    },
}
ADMIN_TOKEN_LEN_MIN = 16
_REQUIRED = ("node.data_dir", "node.genesis", "node.key_file")


def parse_config(data: Mapping[str, Any], base_dir: Path) -> NodeConfig:
    """Build a NodeConfig from a parsed TOML mapping; relative paths are relative to base_dir."""
    kwargs: dict[str, Any] = {}
    for section, table in data.items():
        if section == "detector":
            if not isinstance(table, dict):
                raise ConfigError("detector: expected a table")
            kwargs["detector"] = MappingProxyType(dict(table))
            continue
        keys = _SCHEMA.get(section)
        if keys is None:
            raise ConfigError(f"{section}: unknown section")
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: expected a table")
        for key, value in table.items():
            spec = keys.get(key)
            if spec is None:
                raise ConfigError(f"{section}.{key}: unknown key")
            name, make = spec
            kwargs[name] = make(base_dir)(value, f"{section}.{key}")
    for req in _REQUIRED:
        section, key = req.split(".")
        if key not in data.get(section, {}):
            raise ConfigError(f"{req}: required")
    token = os.environ.get("VIGIL_ADMIN_TOKEN")
    if token:
        kwargs["admin_token"] = token
    admin = kwargs.get("admin_token", "")
    if admin and len(admin) < ADMIN_TOKEN_LEN_MIN:
        # A short bearer token is guessable, and the log redaction refuses short secrets.
        source = "VIGIL_ADMIN_TOKEN" if token else "rpc.admin_token"
        raise ConfigError(
            f"{source}: must be at least {ADMIN_TOKEN_LEN_MIN} characters (or empty to refuse"
            f" admin methods), got {len(admin)}"
        )
    cfg = NodeConfig(**kwargs)
    if cfg.p2p_reconnect_min_ms > cfg.p2p_reconnect_max_ms:
        raise ConfigError("p2p.reconnect_min_ms: larger than p2p.reconnect_max_ms")
    if cfg.log_window < 2 * cfg.checkpoint_interval:
        raise ConfigError("consensus.log_window: must be at least 2 * checkpoint_interval")
    for section in ("p2p", "rpc", "metrics"):
        cert = getattr(cfg, f"{section}_tls_cert")
        key = getattr(cfg, f"{section}_tls_key")
        if (cert is None) != (key is None):
            raise ConfigError(f"{section}.tls_cert: tls_cert and tls_key go together")
    if not cfg.p2p_insecure and cfg.p2p_tls_cert is None:
        raise ConfigError(
            "p2p.tls_cert: required (validator links use TLS); set p2p.insecure = true only for"
            " a throw-away local network"
        )
    return cfg


def load_config(path: str | Path) -> NodeConfig:
    """Read and check a TOML config file; raises ConfigError with the key at fault."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    cfg = parse_config(data, p.resolve().parent)
    files = [("node.genesis", cfg.genesis_file), ("node.key_file", cfg.key_file)]
    for section in ("p2p", "rpc", "metrics"):
        for part in ("cert", "key"):
            f = getattr(cfg, f"{section}_tls_{part}")
            if f is not None:
                files.append((f"{section}.tls_{part}", f))
    if cfg.passphrase_file is not None:
        files.append(("node.passphrase_file", cfg.passphrase_file))
    for name, f in files:
        if not f.is_file():
            raise ConfigError(f"{name}: no such file {f}")
    return cfg


def read_passphrase(cfg: NodeConfig) -> str | None:
    """The key passphrase: env ``VIGIL_KEY_PASSPHRASE``, else ``node.passphrase_file`` (0600)."""
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return check_passphrase(env, PASSPHRASE_ENV)
    if cfg.passphrase_file is None:
        return None
    return check_passphrase(
        read_secret_file(cfg.passphrase_file, "node.passphrase_file"), "node.passphrase_file"
    )


def check_passphrase(passphrase: str, source: str) -> str:
    """The passphrase, or ConfigError naming ``source`` when it is too short (never echoing it)."""
    if len(passphrase) < PASSPHRASE_LEN_MIN:
        raise ConfigError(
            f"{source}: the key passphrase must be at least {PASSPHRASE_LEN_MIN} characters,"
            f" got {len(passphrase)}"
        )
    return passphrase


def read_secret_file(path: Path, what: str) -> str:
    """A one-line secret from a file nobody but its owner may read."""
    try:
        st = path.stat()
        if st.st_mode & 0o077:
            raise ConfigError(
                f"{what}: {path} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600"
            )
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None
    if not text:
        raise ConfigError(f"{what}: {path} is empty")
    return text


def load_validator_key(path: Path, passphrase: str | None = None) -> SigningKey:
    """The validator's key file (node/tools/keyfile.py format), encrypted or plain.

    Errors never include the passphrase; a wrong one is named as such.
    """
    try:
        obj = read_keyfile(path)
        if "crypto" in obj and passphrase is None:
            raise ConfigError(
                f"node.key_file: {path} is encrypted: set {PASSPHRASE_ENV} or node.passphrase_file"
            )
        if "seed" in obj and "address" not in obj:  # the older plain {"seed", "public_key"}
            key = SigningKey(from_hex(obj["seed"], 32))
            if "public_key" in obj and from_hex(obj["public_key"], PUBLIC_KEY_BYTES) != (
                key.public_key
            ):
                raise ConfigError("node.key_file: public_key does not match the seed")
            return key
        return key_from_json(obj, passphrase)
    except KeyfileError as exc:
        raise ConfigError(f"node.key_file: {path}: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"node.key_file: cannot load a validator key from {path}: {exc}"
        ) from None
