"""Wallet commands of the ``vigil`` console script: keygen, wallet ..., verify, tx.

``register(subparsers)`` adds them to node/tools/cli.py's parser; each sets ``func`` to a handler
returning the exit code. Every failure a user can cause (unreachable node, wrong key file or
passphrase, rejected tx, failed proof) prints one line ``vigil: error: ...`` and exits 1; a
traceback would be a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.crypto import SigningKey, address_of, from_hex, to_hex
from node.chain.genesis import Genesis, GenesisError
from node.chain.tx import make_anchor, make_transfer
from node.tools.client import DEFAULT_RPC_URL, AsyncClient, ClientError, RpcError
from node.tools.keyfile import KeyfileError, is_encrypted, load_key, read_keyfile, save_key
from node.tools.proofs import ProofError, verify_anchor_tx, verify_tx_inclusion

DEFAULT_WALLET = Path("~/.vigil/wallet.json")
DEFAULT_FEE = 1
Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


def _guard(fn: Callable[[argparse.Namespace], int | None]) -> Handler:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args) or 0
        except RpcError as exc:
            _fail(f"node refused: {exc.message} ({exc.name}, code {exc.code})")
        except (CliError, ClientError, KeyfileError, GenesisError) as exc:
            _fail(str(exc))
        except ProofError as exc:
            _fail(f"verification FAILED: {exc.reason}")
        except OSError as exc:
            _fail(f"{exc.filename or 'I/O'}: {exc.strerror or exc}")
        except ValueError as exc:  # includes CodecError: a value that cannot be encoded
            _fail(str(exc))
        except KeyboardInterrupt:
            return 130
        return 1

    return run


def _fail(message: str) -> None:
    print(f"vigil: error: {message}", file=sys.stderr)


def _rpc_url(args: argparse.Namespace) -> str:
    return args.rpc or os.environ.get("VIGIL_RPC") or DEFAULT_RPC_URL


def _wallet_path(args: argparse.Namespace) -> Path:
    return Path(args.wallet).expanduser()


def _passphrase(args: argparse.Namespace, *, confirm: bool = False) -> str:
    var = getattr(args, "passphrase_env", None)
    if var:
        value = os.environ.get(var)
        if value is None:
            raise CliError(f"environment variable {var} (--passphrase-env) is not set")
        return value
    if not sys.stdin.isatty():
        raise CliError("key file is encrypted: give the passphrase with --passphrase-env VAR")
    first = getpass.getpass("passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise CliError("passphrases differ")
    return first


def _load_wallet(args: argparse.Namespace) -> SigningKey:
    path = _wallet_path(args)
    obj = read_keyfile(path)
    passphrase = _passphrase(args) if is_encrypted(obj) else None
    return load_key(path, passphrase)


def _new_key(args: argparse.Namespace, path: Path) -> SigningKey:
    key = SigningKey(os.urandom(32))
    encrypt = bool(getattr(args, "passphrase_env", None) or getattr(args, "encrypt", False))
    passphrase = _passphrase(args, confirm=True) if encrypt else None
    save_key(path, key, passphrase, force=args.force)
    return key


# --- handlers ----------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    if args.out:
        key = _new_key(args, Path(args.out).expanduser())
        print(
            json.dumps(
                {
                    "public_key": to_hex(key.public_key),
                    "address": to_hex(address_of(key.public_key)),
                    "file": str(args.out),
                }
            )
        )
    else:
        key = SigningKey(os.urandom(32))
        pub = key.public_key
        print(
            json.dumps(
                {
                    "public_key": to_hex(pub),
                    "address": to_hex(address_of(pub)),
                    "seed": to_hex(key.seed),
                }
            )
        )
    return 0


def cmd_wallet_new(args: argparse.Namespace) -> int:
    path = _wallet_path(args)
    key = _new_key(args, path)
    print(to_hex(address_of(key.public_key)))
    print(f"wallet written to {path} (mode 0600)", file=sys.stderr)
    return 0


def cmd_wallet_address(args: argparse.Namespace) -> int:
    obj = read_keyfile(_wallet_path(args))
    address = obj.get("address")
    if not isinstance(address, str):
        raise KeyfileError(f"{_wallet_path(args)}: not a vigil key file (no address)")
    print(address)
    return 0


def cmd_wallet_balance(args: argparse.Namespace) -> int:
    if args.address:
        address = _parse_address(args.address)
    else:
        address = from_hex(str(read_keyfile(_wallet_path(args)).get("address", "")), 20)

    async def run() -> dict[str, Any]:
        async with AsyncClient(_rpc_url(args)) as c:
            return dict(await c.account_get(address))

    acct = asyncio.run(run())
    print(json.dumps(acct))
    return 0


def _parse_address(text: str) -> bytes:
    try:
        return from_hex(text, 20)
    except ValueError as exc:
        raise CliError(f"address {text!r}: {exc} (20 bytes)") from None


async def _submit(args: argparse.Namespace, build: Callable[[str, int], Any]) -> int:
    """Fetch chain id and nonce, sign with ``build(chain_id, nonce)``, submit, maybe wait."""
    async with AsyncClient(_rpc_url(args), timeout_s=args.timeout) as c:
        status = await c.node_status()
        chain_id = str(status.get("chain_id"))
        if args.nonce is not None:
            nonce = args.nonce
        else:
            acct: dict[str, Any] = dict(await c.account_get(args.sender_address))
            nonce = int(acct.get("pending_nonce", acct["nonce"]))
        tx = build(chain_id, nonce)
        result = await c.tx_submit(tx.encode())
        print(result["hash"])
        print(f"status: {result['status']}", file=sys.stderr)
        why = why_waiting(dict(result))
        if why:
            print(why, file=sys.stderr)
        if not args.wait or result["status"] == "quarantined":
            return 0
        info = await c.wait_tx(tx.hash, timeout_s=args.timeout)
        print(f"status: {info.get('status')} at height {info.get('height')}", file=sys.stderr)
        if info.get("status") != "committed":
            reason = info.get("reason") or info.get("error") or "rejected"
            raise CliError(f"transaction {result['hash']} was rejected: {reason}")
    return 0


def cmd_wallet_send(args: argparse.Namespace) -> int:
    to = _parse_address(args.to)
    if args.amount < 0 or args.fee < 0:
        raise CliError("amount and fee must be non-negative integers")
    key = _load_wallet(args)
    args.sender_address = address_of(key.public_key)
    return asyncio.run(
        _submit(
            args, lambda chain, nonce: make_transfer(key, chain, to, args.amount, args.fee, nonce)
        )
    )


def file_digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.digest()


def cmd_wallet_anchor(args: argparse.Namespace) -> int:
    digest = file_digest(Path(args.file))
    memo = args.memo.encode()
    if len(memo) > 128:
        raise CliError("memo: at most 128 bytes")
    key = _load_wallet(args)
    args.sender_address = address_of(key.public_key)
    print(f"sha256: {to_hex(digest)}", file=sys.stderr)
    return asyncio.run(
        _submit(args, lambda chain, nonce: make_anchor(key, chain, digest, memo, args.fee, nonce))
    )


def _validators_from_status(status: dict[str, Any]) -> list[bytes]:
    out = []
    for v in status.get("validators") or []:
        text = v.get("public_key") if isinstance(v, dict) else v
        try:
            out.append(from_hex(str(text), 32))
        except ValueError:
            raise CliError("node_status.validators: not a list of 32-byte public keys") from None
    if not out:
        raise CliError("node_status lists no validators; give --genesis FILE")
    return out


async def verify_file(client: AsyncClient, path: Path, genesis: Genesis | None) -> dict[str, Any]:
    """Prove that ``path``'s SHA-256 is anchored on chain; raises ProofError if anything is off."""
    digest = file_digest(path)
    try:
        anchor = await client.anchor_get(digest)
    except RpcError as exc:
        if exc.name == "not_found":
            raise CliError(f"no anchor of sha256 {to_hex(digest)} on this chain") from None
        raise
    tx_hash = from_hex(anchor["hash"], 32)
    verify_anchor_tx(dict(await client.tx_get(tx_hash)), tx_hash, digest)
    proof: dict[str, Any] = dict(await client.tx_proof(tx_hash))
    block: dict[str, Any] = dict(await client.block_get(int(proof["height"])))
    if genesis is not None:
        validators, chain_id = list(genesis.validator_keys()), genesis.chain_id
    else:
        status: dict[str, Any] = dict(await client.node_status())
        validators, chain_id = _validators_from_status(status), str(status.get("chain_id"))
    verify_tx_inclusion(tx_hash, proof, block, validators, chain_id)
    cert = block.get("certificate") or {}
    signers = len(cert.get("commits", [])) if isinstance(cert, dict) else None
    return {
        "file": str(path),
        "sha256": to_hex(digest),
        "tx": anchor["hash"],
        "height": proof["height"],
        "block": block.get("hash", (block.get("header") or {}).get("hash")),
        "timestamp": anchor.get("timestamp"),
        "signers": signers,
        "validators": len(validators),
    }


def cmd_verify(args: argparse.Namespace) -> int:
    genesis = Genesis.load(args.genesis) if args.genesis else None
    if genesis is None:
        print(
            "warning: trusting the node's validator list; pass --genesis FILE for a trust anchor",
            file=sys.stderr,
        )

    async def run() -> dict[str, Any]:
        async with AsyncClient(_rpc_url(args)) as c:
            return await verify_file(c, Path(args.file), genesis)

    r = asyncio.run(run())
    print(
        f"verified: {r['file']} sha256 {r['sha256']} anchored by tx {r['tx']} in block "
        f"{r['height']} ({r['block']}), certificate signed by {r['signers']} of "
        f"{r['validators']} validators"
    )
    return 0


def cmd_tx(args: argparse.Namespace) -> int:
    try:
        tx_hash = from_hex(args.hash, 32)
    except ValueError as exc:
        raise CliError(f"hash {args.hash!r}: {exc}") from None

    async def run() -> dict[str, Any]:
        async with AsyncClient(_rpc_url(args)) as c:
            return dict(await c.tx_get(tx_hash))

    info = asyncio.run(run())
    print(json.dumps(info, indent=2))
    why = why_waiting(info)
    if why:
        print(why, file=sys.stderr)
    return 0


def why_waiting(info: dict[str, Any]) -> str | None:
    """One line on why a tx is not moving: held by the detector, or waiting behind a held tx."""
    status = info.get("status")
    if status == "waiting":
        return (
            f"waiting: an earlier transaction of this sender, {info.get('blocked_by')}, is held"
            " by the anomaly detector; this one runs if an operator releases that one, and fails"
            " if it is rejected or expires"
        )
    if status == "quarantined":
        reasons = "; ".join((info.get("anomaly") or {}).get("reasons") or [])
        return f"quarantined by the anomaly detector, waiting for an operator: {reasons}".rstrip(
            ": "
        )
    if status == "rejected" and str(info.get("reason", "")).startswith("blocked_tx_"):
        return f"rejected: {info.get('reason')} (an earlier tx of this sender will never commit)"
    return None


# --- parser ------------------------------------------------------------------------------------


def _common(rpc: bool = True, wallet: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    if rpc:
        p.add_argument("--rpc", help=f"node RPC URL (env VIGIL_RPC, default {DEFAULT_RPC_URL})")
    if wallet:
        p.add_argument(
            "--wallet", default=str(DEFAULT_WALLET), help="key file (default %(default)s)"
        )
        p.add_argument("--passphrase-env", metavar="VAR", help="read the passphrase from env VAR")
    return p


def _tx_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fee", type=int, default=DEFAULT_FEE, help="fee (default %(default)s)")
    p.add_argument("--nonce", type=int, help="override the nonce (default: from the node)")
    p.add_argument("--wait", action="store_true", help="wait until committed or rejected")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default %(default)s)")


def register(subparsers: Any) -> None:
    """Add keygen, wallet, verify and tx to the ``vigil`` parser's subparsers."""
    keygen = subparsers.add_parser("keygen", help="generate an Ed25519 key")
    keygen.add_argument("--out", help="write a key file (mode 0600) instead of printing the seed")
    keygen.add_argument("--force", action="store_true", help="overwrite --out")
    keygen.add_argument(
        "--passphrase-env", metavar="VAR", help="encrypt with the passphrase in VAR"
    )
    keygen.add_argument("--encrypt", action="store_true", help="prompt for a passphrase")
    keygen.set_defaults(func=_guard(cmd_keygen))

    wallet = subparsers.add_parser("wallet", help="wallet commands")
    ws = wallet.add_subparsers(dest="wallet_cmd", metavar="COMMAND", required=True)
    new = ws.add_parser("new", parents=[_common(False, True)], help="create a wallet key file")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    new.add_argument("--encrypt", action="store_true", help="prompt for a passphrase")
    new.set_defaults(func=_guard(cmd_wallet_new))
    addr = ws.add_parser("address", parents=[_common(False, True)], help="print the address")
    addr.set_defaults(func=_guard(cmd_wallet_address))
    bal = ws.add_parser("balance", parents=[_common(True, True)], help="balance and nonce")
    bal.add_argument("--address", help="another account's address")
    bal.set_defaults(func=_guard(cmd_wallet_balance))
    send = ws.add_parser("send", parents=[_common(True, True)], help="send a transfer")
    send.add_argument("--to", required=True, help="recipient address (0x + 40 hex)")
    send.add_argument("--amount", type=int, required=True, help="amount in the smallest unit")
    _tx_options(send)
    send.set_defaults(func=_guard(cmd_wallet_send))
    anchor = ws.add_parser("anchor", parents=[_common(True, True)], help="anchor a file's SHA-256")
    anchor.add_argument("file")
    anchor.add_argument("--memo", default="", help="short note, at most 128 bytes")
    _tx_options(anchor)
    anchor.set_defaults(func=_guard(cmd_wallet_anchor))

    verify = subparsers.add_parser("verify", parents=[_common()], help="verify a file's anchor")
    verify.add_argument("file")
    verify.add_argument("--genesis", help="genesis file: the trusted validator set")
    verify.set_defaults(func=_guard(cmd_verify))

    tx = subparsers.add_parser("tx", parents=[_common()], help="show a transaction")
    tx.add_argument("hash")
    tx.set_defaults(func=_guard(cmd_tx))


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (tests, or before node/tools/cli.py wires ``register``)."""
    parser = argparse.ArgumentParser(prog="vigil")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
