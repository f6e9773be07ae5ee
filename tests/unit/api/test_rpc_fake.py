"""A fake NodeService for the RPC conformance tests (no node, no storage), plus a smoke test."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from common.codec import CodecError
from common.crypto import SigningKey, address_of, to_hex
from node.api.service import NodeService
from node.chain.tx import Transaction, make_transfer
from node.errors import NOT_FOUND, TX_BALANCE, TX_INVALID, VigilError

CHAIN_ID = "vigil-test"


class FakeService:
    """Answers every NodeService method from memory; knobs for slow, failing and event cases."""

    def __init__(self) -> None:
        self.txs: dict[bytes, Transaction] = {}
        self.callbacks: list[Callable[[dict[str, Any]], None]] = []
        self.slow_s = 0.0
        self.crash = False
        self.is_ready = True
        self.height = 7
        self.calls: list[tuple[str, Any]] = []

    async def node_status(self) -> dict[str, Any]:
        return {
            "chain_id": CHAIN_ID,
            "node_id": 0,
            "version": "0.1.0",
            "height": self.height,
            "head_hash": to_hex(b"\x11" * 32),
            "view": 0,
            "primary": 0,
            "is_primary": True,
            "validators": [],
            "peers": 3,
            "syncing": False,
        }

    async def tx_submit(self, raw: bytes) -> dict[str, Any]:
        try:
            tx = Transaction.decode(raw)
        except CodecError as exc:
            raise VigilError(TX_INVALID, f"tx does not decode: {exc.reason}") from None
        if not tx.verify_signature():
            raise VigilError(TX_INVALID, "bad signature")
        if tx.amount > 1000:
            raise VigilError(TX_BALANCE, "balance does not cover amount + fee")
        self.txs[tx.hash] = tx
        return {"hash": to_hex(tx.hash), "status": "pending"}

    async def tx_get(self, tx_hash: bytes) -> dict[str, Any]:
        tx = self.txs.get(tx_hash)
        if tx is None:
            raise VigilError(NOT_FOUND, "no such transaction")
        return {**tx.to_json(), "status": "pending", "height": None, "index": None}

    async def tx_proof(self, tx_hash: bytes) -> dict[str, Any]:
        raise VigilError(NOT_FOUND, "transaction not committed")

    async def anchor_get(self, digest: bytes) -> dict[str, Any]:
        raise VigilError(NOT_FOUND, "no anchor of this digest")

    async def account_get(self, address: bytes) -> dict[str, Any]:
        return {"address": to_hex(address), "balance": 1000, "nonce": 0}

    async def block_get(self, height: int | None) -> dict[str, Any]:
        h = self.height if height is None else height
        if h > self.height:
            raise VigilError(NOT_FOUND, f"no block at height {h}")
        return {"height": h, "hash": to_hex(bytes([h]) * 32), "tx_hashes": []}

    async def account_txs(self, address: bytes, limit: int) -> dict[str, Any]:
        self.calls.append(("account_txs", (address, limit)))
        return {"address": to_hex(address), "txs": [], "blocks_scanned": self.height}

    async def cluster_status(self) -> dict[str, Any]:
        return {"chain_id": CHAIN_ID, "node_id": 0, "height": self.height, "validators": []}

    async def mempool_status(self) -> dict[str, Any]:
        if self.crash:
            raise RuntimeError("secret internal detail /etc/passwd")
        return {"size": len(self.txs), "bytes": 0, "quarantined": 0}

    async def detector_status(self) -> dict[str, Any]:
        if self.slow_s:
            await asyncio.sleep(self.slow_s)
        return {"model_version": 1, "threshold": 0.7}

    async def quarantine_list(self, limit: int) -> list[dict[str, Any]]:
        self.calls.append(("quarantine_list", limit))
        return [{"hash": to_hex(b"\x22" * 32), "score": 0.9, "reasons": ["amount"]}][:limit]

    async def quarantine_release(self, tx_hash: bytes) -> dict[str, Any]:
        self.calls.append(("quarantine_release", tx_hash))
        return {"hash": to_hex(tx_hash), "status": "pending"}

    async def quarantine_reject(self, tx_hash: bytes) -> dict[str, Any]:
        self.calls.append(("quarantine_reject", tx_hash))
        return {"hash": to_hex(tx_hash), "status": "rejected"}

    async def admin_db_backup(self) -> dict[str, Any]:
        self.calls.append(("admin_db_backup", b""))
        return {"path": "/tmp/backup", "height": self.height}

    async def quarantine_show(self, tx_hash: bytes) -> dict[str, Any]:
        return {"hash": to_hex(tx_hash), "state": "held"}

    async def detector_explain(self, tx_hash: bytes) -> dict[str, Any]:
        return {"hash": to_hex(tx_hash), "same_score": True}

    def health(self) -> dict[str, Any]:
        return {"height": self.height, "syncing": False, "peers": 3}

    def ready(self) -> bool:
        return self.is_ready

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        self.callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self.callbacks:
                self.callbacks.remove(callback)

        return unsubscribe

    def emit(self, event: dict[str, Any]) -> None:
        for cb in list(self.callbacks):
            cb(event)


def signed_transfer(nonce: int = 0, seed: bytes = b"\x01" * 32) -> Transaction:
    key = SigningKey(seed)
    to = address_of(SigningKey(b"\x02" * 32).public_key)
    return make_transfer(key, CHAIN_ID, to, amount=5, fee=1, nonce=nonce)


def test_fake_service_satisfies_the_protocol() -> None:
    assert isinstance(FakeService(), NodeService)
