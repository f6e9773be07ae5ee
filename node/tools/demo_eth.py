"""The Ethereum-wallet part of ``scripts/cluster demo``: what MetaMask or ethers would do.

A fresh secp256k1 account is funded by a native transfer, sends 1 coin to a native address,
anchors a document's SHA-256 at the anchor address and finds it with eth_getLogs; then a tx
signed for another chain id is refused with the message a wallet shows. Everything goes through
the Ethereum JSON-RPC methods of the same endpoint; the detector screens these txs too.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any

from node.chain.ethtx import (
    ANCHOR_ADDRESS,
    WEI_PER_UNIT,
    eth_address,
    eth_chain_id,
    sign_dynamic_fee,
)
from node.tools import devnet
from node.tools.client import Client, RpcError

DEADLINE_S = 60.0
FUND_UNITS = 10 * 10**9  # 10 coins in the wallet's 18 decimals


def _coins(wei: int) -> str:
    return f"{wei / 10**18:.6f}"


def fund_eth_account(url: str, fund: Callable[[bytes, int], str]) -> bytes:
    """A fresh secp256k1 key funded by a native transfer, sent before the detector is warm (a
    large payment to a never-seen address is exactly what a warm detector holds)."""
    key = secrets.token_bytes(32)
    h = fund(eth_address(key), FUND_UNITS)
    c = Client(url, timeout_s=30)
    _wait(lambda: c.call("tx_get", [h])["status"] in ("committed", "quarantined", "rejected"))
    return key


def run_eth_part(url: str, key: bytes, native_to: bytes) -> None:
    c = Client(url, timeout_s=30)
    chain = int(c.call("eth_chainId"), 16)
    me = "0x" + eth_address(key).hex()
    print()
    print(f"== Ethereum wallet (chain id {chain}, as MetaMask would use it)")
    balance = int(c.call("eth_getBalance", [me, "latest"]), 16)
    print(f"account {me} funded by a native transfer: {_coins(balance)}")

    def send(raw: bytes, label: str) -> dict[str, Any] | None:
        try:
            tx_hash = c.call("eth_sendRawTransaction", ["0x" + raw.hex()])
        except RpcError as exc:
            print(f"{label}: refused, {exc.code} {exc.message}")
            return None
        status = _wait(lambda: _settled(c, tx_hash))
        if status != "committed":
            info = c.call("tx_get", [tx_hash])
            reasons = "; ".join((info.get("anomaly") or {}).get("reasons", []))
            print(f"{label}: {tx_hash[:12]} {status} (no receipt) {reasons}")
            return None
        r = c.call("eth_getTransactionReceipt", [tx_hash])
        gas, price = int(r["gasUsed"], 16), int(r["effectiveGasPrice"], 16)
        print(
            f"{label}: {tx_hash[:12]} status {r['status']} gasUsed {gas} x {price} wei"
            f" = fee {_coins(gas * price)}"
        )
        return dict(r)

    nonce = int(c.call("eth_getTransactionCount", [me, "pending"]), 16)
    send(sign_dynamic_fee(key, chain, nonce, native_to, 10**18), "1 coin to a native address")
    digest = hashlib.sha256(b"vigil demo document " + secrets.token_bytes(8)).digest()
    nonce = int(c.call("eth_getTransactionCount", [me, "pending"]), 16)
    r = send(sign_dynamic_fee(key, chain, nonce, ANCHOR_ADDRESS, 0, digest + b"demo"), "anchor")
    if r is not None:
        logs = c.call(
            "eth_getLogs",
            [
                {
                    "fromBlock": "0x0",
                    "address": "0x" + ANCHOR_ADDRESS.hex(),
                    "topics": ["0x" + digest.hex()],
                }
            ],
        )
        print(
            f"eth_getLogs(topic = digest 0x{digest.hex()[:12]}..): {len(logs)} log(s)"
            f" in block {int(logs[0]['blockNumber'], 16)}"
        )
    print(f"balance now {_coins(int(c.call('eth_getBalance', [me, 'latest']), 16))}")
    wrong = sign_dynamic_fee(key, 1, nonce + 1, native_to, WEI_PER_UNIT)
    try:
        c.call("eth_sendRawTransaction", ["0x" + wrong.hex()])
        print("signed for chain id 1: accepted (unexpected)")
    except RpcError as exc:
        print(f"signed for chain id 1: refused, {exc.code} {exc.message}")
    assert chain == eth_chain_id(devnet.CHAIN_ID)


def _settled(c: Client, tx_hash: str) -> str | None:
    status = str(c.call("tx_get", [tx_hash])["status"])
    return status if status in ("committed", "quarantined", "rejected") else None


def _wait(check: Callable[[], Any]) -> Any:
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    return "pending"
