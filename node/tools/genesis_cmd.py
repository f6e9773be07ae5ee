"""``vigil genesis new|add-validator|add-balance|show|hash``: assemble a genesis from public keys.

The genesis maker collects the line ``vigil init`` printed on each host and runs::

    vigil genesis new --chain-id mainnet-1 --out genesis.json
    vigil genesis add-validator genesis.json 0x<key>@v1.example.net:26600   # once per host
    vigil genesis add-balance genesis.json 0x<address> 1000000
    vigil genesis show genesis.json          # checks it all, warns when n != 3f+1
    vigil genesis hash genesis.json          # operators compare this before starting

Until it has a validator the file is a draft (``show`` says so). Every command checks its input
and the whole file before writing, and replaces the file atomically: a refused command leaves
it as it was, with one line on stderr naming the cause.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from common import codec
from common.crypto import ADDRESS_BYTES, PUBLIC_KEY_BYTES, from_hex, is_strong_public_key, to_hex
from node.chain.genesis import FORMAT_VERSION, VALIDATORS_MAX, Genesis, GenesisError
from node.net.address import PeerAddressError, parse_peer


def new_draft(chain_id: str, timestamp_ms: int | None = None) -> dict[str, Any]:
    draft = {
        "version": FORMAT_VERSION,
        "chain_id": chain_id,
        "timestamp_ms": int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
        "validators": [],
        "balances": [],
    }
    _check_draft(draft)
    return draft


def _check_draft(draft: dict[str, Any]) -> None:
    """A draft is a genesis that may still lack validators; GenesisError otherwise."""
    probe = dict(draft)
    if not probe.get("validators"):  # check everything else against one placeholder key
        placeholder = "0x" + "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
        probe["validators"] = [{"index": 0, "public_key": placeholder}]
    Genesis.from_json(probe)


def load_draft(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except OSError as exc:
        raise GenesisError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise GenesisError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise GenesisError(f"{path}: expected a JSON object")
    try:
        _check_draft(obj)
    except GenesisError as exc:
        raise GenesisError(f"{path}: {exc}") from None
    return obj


def save_draft(path: Path, draft: dict[str, Any]) -> None:
    """Check, then replace the file atomically (a refused change writes nothing)."""
    _check_draft(draft)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(draft, indent=2) + "\n")
    os.replace(tmp, path)


def validator_key(text: str) -> bytes:
    """A validator's public key from an init line (``0x<key>@host:port``) or a bare ``0x<key>``."""
    if "@" in text:
        try:
            return parse_peer(text).public_key
        except PeerAddressError as exc:
            raise GenesisError(f"validator: {exc}") from None
    try:
        key = from_hex(text, PUBLIC_KEY_BYTES)
    except ValueError as exc:
        raise GenesisError(f"validator {text!r}: public key: {exc}") from None
    if not is_strong_public_key(key):
        raise GenesisError(f"validator {text!r}: not a usable Ed25519 public key")
    return key


def add_validator(draft: dict[str, Any], text: str) -> dict[str, Any]:
    key = validator_key(text)
    validators = list(draft["validators"])
    if any(from_hex(v["public_key"], PUBLIC_KEY_BYTES) == key for v in validators):
        raise GenesisError(f"validator {to_hex(key)}: already in genesis (duplicate key)")
    if len(validators) >= VALIDATORS_MAX:
        raise GenesisError(f"validators: at most {VALIDATORS_MAX}")
    validators.append({"index": len(validators), "public_key": to_hex(key)})
    return {**draft, "validators": validators}


def add_balance(draft: dict[str, Any], address_text: str, amount_text: str) -> dict[str, Any]:
    try:
        address = from_hex(address_text, ADDRESS_BYTES)
    except ValueError as exc:
        raise GenesisError(f"address {address_text!r}: {exc}") from None
    if not amount_text.isdigit():
        raise GenesisError(f"amount {amount_text!r}: expected a positive integer (smallest unit)")
    amount = int(amount_text)
    if not 0 < amount <= codec.U64_MAX:
        raise GenesisError(f"amount {amount_text}: expected 1..2**64-1")
    balances = list(draft["balances"])
    if any(b["address"].lower() == to_hex(address) for b in balances):
        raise GenesisError(f"address {to_hex(address)}: already funded")
    balances.append({"address": to_hex(address), "amount": amount})
    balances.sort(key=lambda b: from_hex(b["address"], ADDRESS_BYTES))
    total = sum(b["amount"] for b in balances)
    if total > codec.U64_MAX:
        raise GenesisError("balances: total supply would exceed 2**64 - 1")
    return {**draft, "balances": balances}


def fault_warning(n: int) -> str | None:
    """PBFT tolerates f = (n-1)//3 faults; n other than 3f+1 pays for validators it cannot use."""
    f = (n - 1) // 3
    if n == 3 * f + 1:
        return None
    return (
        f"warning: {n} validators tolerate f={f} faulty, the same as {3 * f + 1}; "
        f"use 3f+1 validators (4, 7, 10, ...)"
    )


def cmd_genesis(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        if args.genesis_cmd == "new":
            if path.exists() and not args.force:
                raise GenesisError(f"{path} already exists (use --force to replace it)")
            save_draft(path, new_draft(args.chain_id, args.timestamp_ms))
            print(f"wrote {path}: chain {args.chain_id}, no validators yet", file=sys.stderr)
            return 0
        draft = load_draft(path)
        if args.genesis_cmd == "add-validator":
            for line in args.validator:
                draft = add_validator(draft, line)
            save_draft(path, draft)
            n = len(draft["validators"])
            print(f"{path}: {n} validator(s)", file=sys.stderr)
            warning = fault_warning(n)
            if warning and n >= 4:
                print(warning, file=sys.stderr)
            return 0
        if args.genesis_cmd == "add-balance":
            save_draft(path, add_balance(draft, args.address, args.amount))
            return 0
        if not draft["validators"]:
            raise GenesisError(f"{path}: a draft without validators (vigil genesis add-validator)")
        genesis = Genesis.from_json(draft)
        if args.genesis_cmd == "hash":
            print(to_hex(genesis.hash))
            return 0
        n = len(genesis.validators)
        print(
            json.dumps(
                {
                    "version": FORMAT_VERSION,
                    "chain_id": genesis.chain_id,
                    "hash": to_hex(genesis.hash),
                    "validators": n,
                    "f": (n - 1) // 3,
                    "quorum": 2 * ((n - 1) // 3) + 1,
                    "accounts": len(genesis.balances),
                    "total_supply": genesis.total_supply,
                    "timestamp_ms": genesis.timestamp_ms,
                },
                indent=2,
            )
        )
        warning = fault_warning(n)
        if warning:
            print(warning, file=sys.stderr)
        return 0
    except GenesisError as exc:
        print(f"vigil genesis {args.genesis_cmd}: {exc}", file=sys.stderr)
        return 2


def register(sub: Any) -> None:
    p = sub.add_parser("genesis", help="assemble and check a genesis file from validator lines")
    gs = p.add_subparsers(dest="genesis_cmd", required=True)
    q = gs.add_parser("new", help="start a genesis draft")
    q.add_argument("--chain-id", required=True)
    q.add_argument("--timestamp-ms", type=int)
    q.add_argument("--out", dest="file", default="genesis.json")
    q.add_argument("--force", action="store_true")
    q = gs.add_parser("add-validator", help="add validators by the lines vigil init printed")
    q.add_argument("file")
    q.add_argument("validator", nargs="+", help="0x<key>@host:port or 0x<key>")
    q = gs.add_parser("add-balance", help="fund an address")
    q.add_argument("file")
    q.add_argument("address")
    q.add_argument("amount")
    for name, what in (("show", "check and summarise"), ("hash", "print the genesis hash")):
        q = gs.add_parser(name, help=what)
        q.add_argument("file")
    p.set_defaults(func=cmd_genesis)
