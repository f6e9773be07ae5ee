"""Operator commands of the ``vigil`` console script: ``vigil admin quarantine ...`` and
``vigil admin detector [explain HASH]``.

The admin token comes from env ``VIGIL_ADMIN_TOKEN`` or ``--token-file F`` (a file readable by its
owner only: a group- or world-readable file is refused). It is never printed. Every failure
(bad hash, wrong token, node down) is one line ``vigil: error: ...`` and exit 1. Tables by
default, ``--json`` for scripts. ``explain --db DIR --config FILE`` is the offline form: it reads a
stopped node's database and rebuilds the model from its chain alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from common.crypto import from_hex
from node.tools.client import AsyncClient, RpcError
from node.tools.wallet import CliError, _guard, _rpc_url

TOKEN_ENV = "VIGIL_ADMIN_TOKEN"


def read_token(args: argparse.Namespace) -> str:
    """The admin token from ``--token-file`` (owner-only) or env VIGIL_ADMIN_TOKEN."""
    path = getattr(args, "token_file", None)
    if path:
        p = Path(path).expanduser()
        try:
            mode = p.stat().st_mode
        except OSError as exc:
            raise CliError(f"token file {p}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CliError(
                f"token file {p}: readable by group or others (mode {stat.S_IMODE(mode):o});"
                f" chmod 600 {p}"
            )
        token = p.read_text().strip()
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise CliError(f"no admin token: set {TOKEN_ENV} or give --token-file F (mode 0600)")
    return token


def _hash(text: str) -> bytes:
    try:
        return from_hex(text, 32)
    except ValueError as exc:
        raise CliError(f"hash {text!r}: {exc} (32 bytes, 0x + 64 hex)") from None


async def _call(args: argparse.Namespace, method: str, *params: Any, admin: bool = True) -> Any:
    token = read_token(args) if admin else None
    async with AsyncClient(_rpc_url(args), admin_token=token) as c:
        try:
            return await c.call(method, list(params) if params else None)
        except RpcError as exc:
            if exc.name == "unauthorized":
                raise CliError("the node refused the admin token (wrong token?)") from None
            if exc.name == "not_found":
                raise CliError(exc.message) from None
            raise


def _run(args: argparse.Namespace, method: str, *params: Any, admin: bool = True) -> Any:
    return asyncio.run(_call(args, method, *params, admin=admin))


def _short(h: str) -> str:
    return h[:10] + ".." + h[-6:] if len(h) > 20 else h


def _table(rows: list[list[str]], head: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(line.format(*r) for r in [head, *rows])


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


# --- handlers ----------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    rows = _run(args, "quarantine_list", args.limit)
    text = _table(
        [
            [
                r["hash"],
                f"{r['score']:.4f}",
                f"{r['threshold']:.4f}",
                str(r.get("amount", "")),
                "; ".join(r.get("reasons") or []),
            ]
            for r in rows
        ],
        ["hash", "score", "threshold", "amount", "reasons"],
    )
    _print(args, rows, text if rows else "quarantine is empty")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    r = _run(args, "quarantine_show", "0x" + _hash(args.hash).hex())
    lines = [f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in r.items()]
    _print(args, r, "\n".join(lines))
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    r = _run(args, "quarantine_release", "0x" + _hash(args.hash).hex())
    _print(args, r, f"released {r['hash']}: {r['status']}")
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    r = _run(args, "quarantine_reject", "0x" + _hash(args.hash).hex())
    _print(args, r, f"rejected {r['hash']}: {r.get('reason')}")
    return 0


def cmd_detector(args: argparse.Namespace) -> int:
    s = _run(args, "detector_status", admin=False)  # public: no token needed
    q = s.get("score_quantiles") or {}
    drift = s.get("drift_psi") or {}

    def fmt(v: object) -> str:
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [
        f"enabled: {s.get('enabled')}  warm: {s.get('warm')}  model: v{s.get('model_version')}"
        f" {s.get('model_id')}",
        f"trained at height {s.get('trained_at_height')} on {s.get('trained_rows')} rows,"
        f" {fmt(s.get('model_age_blocks'))} blocks ago; window {s.get('training_window')}",
        f"threshold {fmt(s.get('threshold'))}  contamination {s.get('contamination')}",
        f"scores p50/p90/p99: {fmt(q.get('p50'))} / {fmt(q.get('p90'))} / {fmt(q.get('p99'))}",
        f"held now {s.get('quarantined')}, ever {s.get('quarantined_total')};"
        f" holds last minute {s.get('holds_last_minute')} (warn above"
        f" {s.get('hold_rate_warn_per_min')}), budget {s.get('hold_budget_per_min')} senders/min,"
        f" overflows {s.get('budget_overflows')}",
        f"drift (PSI, warn above {s.get('drift_warn_psi')}):",
        *(f"  {name:<18} {value:.4f}" for name, value in drift.items()),
    ]
    _print(args, s, "\n".join(lines))
    return 0


def _explain_text(r: dict[str, Any]) -> str:
    rec, got = r["recorded"], r["rebuilt"]
    return "\n".join(
        [
            f"tx {r['hash']}",
            f"model {r['model_id']} (window {r['training_window']})",
            f"rebuilt from the chain: {r['rebuilt_model_id']}"
            f" ({'same model' if r['same_model'] else 'DIFFERENT model'})",
            f"score recorded {rec['score']!r}, rebuilt {got['score']!r}"
            f" ({'same' if r['same_score'] else 'DIFFERENT'}); threshold {got['threshold']!r}",
            f"reasons recorded: {'; '.join(rec['reasons'])}",
            f"reasons rebuilt:  {'; '.join(got['reasons'])}"
            f" ({'same' if r['same_reasons'] else 'DIFFERENT'})",
            "features: " + ", ".join(f"{k}={v:.4g}" for k, v in r["features"].items()),
        ]
    )


def cmd_explain(args: argparse.Namespace) -> int:
    tx_hash = _hash(args.hash)
    if args.db:
        r = explain_offline(
            Path(args.db),
            Path(args.config) if args.config else None,
            tx_hash,
            Path(args.record) if args.record else None,
        )
    else:
        r = _run(args, "detector_explain", "0x" + tx_hash.hex())
    _print(args, r, _explain_text(r))
    return 0 if r["same_model"] and r["same_score"] else 1


def explain_offline(
    db: Path, config: Path | None, tx_hash: bytes, record: Path | None = None
) -> dict[str, Any]:
    """Read a stopped node's database: the quarantine record (or ``record``, the JSON of
    ``quarantine show --json`` from any node), the chain, and rebuild."""
    from node.chain.chain import Chain
    from node.chain.genesis import Genesis
    from node.chain.tx import Transaction
    from node.detect.quarantine import Held, decode_record
    from node.errors import VigilError
    from node.host.config import load_config
    from node.host.screening import explain_record, held_from_show, split_config
    from storage.db import StorageError, Store

    if config is None:
        raise CliError("explain --db needs --config FILE (the node's config: genesis, detector)")
    cfg = load_config(str(config))
    det_cfg, _ = split_config(cfg.detector)
    genesis = Genesis.load(cfg.genesis_file)
    try:
        store = Store(str(db))
    except StorageError as exc:
        raise CliError(f"{db}: {exc} (is the node still running?)") from None
    try:
        if record is not None:
            shown = json.loads(record.read_text())
            if "audit" not in shown:
                raise CliError(f"{record}: no audit record (not from quarantine show --json?)")
            held = held_from_show(Transaction.decode(bytes.fromhex(shown["raw"][2:])), shown)
            if held.hash != tx_hash:
                raise CliError(f"{record}: a record of another transaction")
        else:
            raw = dict(store.quarantine_items()).get(tx_hash)
            if raw is None:
                raise CliError("no quarantine record of this transaction in that database")
            rec = decode_record(tx_hash, raw)
            held = rec if isinstance(rec, Held) else rec.held
        chain = Chain(store, genesis)
        chain.load()
        try:
            return explain_record(chain, [a for a, _ in genesis.balances], det_cfg, held)
        except VigilError as exc:
            raise CliError(exc.message) from None
    finally:
        store.close()


# --- parser ------------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--rpc", help="node RPC URL (env VIGIL_RPC)")
    p.add_argument(
        "--token-file", metavar="F", help=f"admin token file, mode 0600 (or {TOKEN_ENV})"
    )
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    return p


def register(subparsers: Any) -> None:
    admin = subparsers.add_parser("admin", help="operator commands (admin token)")
    sub = admin.add_subparsers(dest="admin_cmd", metavar="COMMAND", required=True)
    q = sub.add_parser("quarantine", help="held transactions")
    qs = q.add_subparsers(dest="quarantine_cmd", metavar="COMMAND", required=True)
    lst = qs.add_parser("list", parents=[_common()], help="list held txs")
    lst.add_argument("--limit", type=int, default=100, help="at most (default %(default)s)")
    lst.set_defaults(func=_guard(cmd_list))
    for name, fn, text in (
        ("show", cmd_show, "one record, held or rejected"),
        ("release", cmd_release, "release into the mempool"),
        ("reject", cmd_reject, "reject for good (its waiting txs fail too)"),
    ):
        p = qs.add_parser(name, parents=[_common()], help=text)
        p.add_argument("hash")
        p.set_defaults(func=_guard(fn))
    det = sub.add_parser("detector", parents=[_common()], help="status, thresholds, drift")
    det.set_defaults(func=_guard(cmd_detector))
    ds = det.add_subparsers(dest="detector_cmd", metavar="COMMAND")
    ex = ds.add_parser("explain", parents=[_common()], help="rebuild a hold's model and score")
    ex.add_argument("hash")
    ex.add_argument("--db", help="offline: a stopped node's database directory")
    ex.add_argument("--config", help="offline: that node's config file")
    ex.add_argument(
        "--record", help="offline: the hold as `quarantine show --json` printed it (any node)"
    )
    ex.set_defaults(func=_guard(cmd_explain))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vigil")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
