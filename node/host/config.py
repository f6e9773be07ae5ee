"""One frozen ``NodeConfig`` read from a TOML file and checked at start-up.

Every key is documented in docs/config.md. A wrong or unknown key stops the node with a
``ConfigError`` naming the key (``rpc.port: expected an integer in 1..65535``), so a typo never
silently falls back to a default. Nothing else in the node reads the environment except
``VIGIL_ADMIN_TOKEN`` here, which lets operators keep the token out of the file.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from common.crypto import SigningKey, from_hex


class ConfigError(ValueError):
    """A configuration problem, naming the offending key."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    # [node]
    index: int
    data_dir: Path
    genesis_file: Path
    key_file: Path
    # [p2p]
    p2p_host: str = "127.0.0.1"
    p2p_port: int = 26600
    p2p_msg_bytes_max: int = 16 * 1024 * 1024
    p2p_send_queue_max: int = 4096
    p2p_reconnect_min_ms: int = 200
    p2p_reconnect_max_ms: int = 5000
    p2p_handshake_timeout_ms: int = 5000
    p2p_request_timeout_ms: int = 5000
    # [rpc]
    rpc_host: str = "127.0.0.1"
    rpc_port: int = 26700
    admin_token: str = ""
    rpc_body_bytes_max: int = 4 * 1024 * 1024
    rpc_batch_max: int = 1000
    # [metrics]
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 26800
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
    # [block]
    block_txs_max: int = 2000
    block_interval_ms: int = 0
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
    },
    "rpc": {
        "host": ("rpc_host", lambda b: _str()),
        "port": ("rpc_port", lambda b: _PORT),
        "admin_token": ("admin_token", lambda b: _str()),
        "max_body_bytes": ("rpc_body_bytes_max", lambda b: _POS),
        "max_batch": ("rpc_batch_max", lambda b: _POS),
    },
    "metrics": {
        "host": ("metrics_host", lambda b: _str()),
        "port": ("metrics_port", lambda b: _PORT),
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
    },
    "block": {
        "txs_max": ("block_txs_max", lambda b: _int(1, 4096)),
        "interval_ms": ("block_interval_ms", lambda b: _int(0, 60_000)),
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
_REQUIRED = ("node.index", "node.data_dir", "node.genesis", "node.key_file")


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
    for name, f in (("node.genesis", cfg.genesis_file), ("node.key_file", cfg.key_file)):
        if not f.is_file():
            raise ConfigError(f"{name}: no such file {f}")
    return cfg


def load_validator_key(path: Path) -> SigningKey:
    """The validator's key file: JSON ``{"seed": "0x<32 bytes>", "public_key": "0x.."}``."""
    try:
        data = json.loads(path.read_text())
        key = SigningKey(from_hex(data["seed"], 32))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"node.key_file: cannot load a validator key from {path}: {exc}"
        ) from None
    if "public_key" in data and from_hex(data["public_key"], 32) != key.public_key:
        raise ConfigError("node.key_file: public_key does not match the seed")
    return key
