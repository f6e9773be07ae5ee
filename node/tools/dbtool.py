"""``vigil db backup --home DIR OUT`` and ``vigil db restore --home DIR BACKUP``.

Backup of a running node: the node holds the LevelDB lock, so the command asks it (admin RPC
``admin_db_backup``, token from the home's config or ``VIGIL_ADMIN_TOKEN``) to copy one LevelDB
snapshot into ``<data_dir>/backups/``, then moves that directory to OUT. A stopped node's
database is copied directly, the same way. Restore needs the node stopped: the current database
is kept aside as ``db.replaced-<time>`` and the backup copied in its place. The double-sign guard
(``sign_guard.json``) is never part of a backup and never replaced by a restore: the restored node
still refuses to sign anything it signed after the backup was taken, and catches up from its
peers (docs/deploy.md, "Backups").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from node.host.config import ConfigError, NodeConfig, load_config
from node.tools.client import Client, ClientError, RpcError
from storage.db import StorageError, Store


class DbToolError(Exception):
    pass


def _config(home: str) -> NodeConfig:
    path = Path(home) / "config.toml"
    try:
        return load_config(path)
    except ConfigError as exc:
        raise DbToolError(str(exc)) from None


def _running(cfg: NodeConfig) -> bool:
    """True when another process (the node) holds the database lock."""
    if not cfg.db_path.exists():
        raise DbToolError(f"{cfg.db_path}: no database (has this node ever run?)")
    try:
        Store(str(cfg.db_path)).close()
    except StorageError as exc:
        if "locked" in str(exc):
            return True
        raise DbToolError(str(exc)) from None
    return False


def _admin_call(cfg: NodeConfig, method: str, timeout_s: float = 600.0) -> Any:
    token = os.environ.get("VIGIL_ADMIN_TOKEN") or cfg.admin_token
    if not token:
        raise DbToolError(
            "rpc.admin_token: empty (set it or VIGIL_ADMIN_TOKEN) to back up a running node"
        )
    host = "127.0.0.1" if cfg.rpc_host in ("0.0.0.0", "::") else cfg.rpc_host
    ctx = None
    scheme = "http"
    if cfg.rpc_tls_cert is not None:
        # Pin the node's own certificate: no CA, no host name to check.
        ctx = ssl.create_default_context(cafile=str(cfg.rpc_tls_cert))
        ctx.check_hostname = False
        scheme = "https"
    url = f"{scheme}://{host}:{cfg.rpc_port}/"
    client = Client(url, admin_token=token, timeout_s=timeout_s, tls=ctx)
    try:
        return client.call(method)
    except ClientError as exc:
        raise DbToolError(f"cannot reach the running node at {url}: {exc}") from None
    except RpcError as exc:
        raise DbToolError(f"node refused {method}: {exc.message}") from None


def backup(home: str, out: str) -> dict[str, Any]:
    cfg = _config(home)
    dest = Path(out)
    if dest.exists():
        raise DbToolError(f"{dest} already exists")
    if _running(cfg):
        result = dict(_admin_call(cfg, "admin_db_backup"))
        shutil.move(result["path"], dest)
        result["path"] = str(dest)
        result["online"] = True
        return result
    with Store(str(cfg.db_path)) as store:
        head = store.head()
        keys = store.snapshot_to(str(dest))
    return {"path": str(dest), "height": head[0] if head else 0, "keys": keys, "online": False}


def restore(home: str, src: str) -> dict[str, Any]:
    cfg = _config(home)
    source = Path(src)
    if not (source / "CURRENT").is_file():
        raise DbToolError(f"{source}: not a LevelDB backup (no CURRENT file)")
    if cfg.db_path.exists() and _running(cfg):
        raise DbToolError(f"{cfg.db_path}: the node is running; stop it before restoring")
    try:
        with Store(str(source)) as s:  # a Vigil database of a supported format
            head = s.head()
    except StorageError as exc:
        raise DbToolError(f"backup {exc}") from None
    kept = None
    if cfg.db_path.exists():
        kept = cfg.db_path.with_name(f"db.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(cfg.db_path, kept)
    shutil.copytree(source, cfg.db_path)
    return {
        "restored": str(cfg.db_path),
        "height": head[0] if head else 0,
        "previous_kept_at": str(kept) if kept else None,
        "guard_kept": str(cfg.guard_path) if cfg.guard_path.exists() else None,
    }


def cmd_db(args: argparse.Namespace) -> int:
    try:
        if args.db_cmd == "backup":
            result = backup(args.home, args.out)
        else:
            result = restore(args.home, args.backup)
    except (DbToolError, StorageError, OSError) as exc:
        print(f"vigil db {args.db_cmd}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("db", help="back up or restore a node's database")
    ds = p.add_subparsers(dest="db_cmd", required=True)
    q = ds.add_parser("backup", help="consistent snapshot of a (running) node's database")
    q.add_argument("--home", required=True)
    q.add_argument("out")
    q = ds.add_parser("restore", help="replace a stopped node's database with a backup")
    q.add_argument("--home", required=True)
    q.add_argument("backup")
    p.set_defaults(func=cmd_db)
