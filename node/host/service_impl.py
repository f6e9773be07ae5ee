"""``NodeService`` over a running node's parts (read-only views, plus submit): what the RPC layer
(node/api/rpc.py, node/api/ws.py) calls.

Reads of LevelDB go through a worker thread when they may touch more than a key or two (a block,
a proof); single-key reads are microseconds and stay on the loop. Results follow the shapes of
docs/rpc.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from common.crypto import to_hex
from common.merkle import merkle_proof
from consensus.api import ConsensusConfig
from consensus.certificate import CommitCertificate
from node import VERSION
from node.api.service import Event
from node.chain.chain import Chain
from node.chain.genesis import Genesis
from node.chain.ledger import Receipt
from node.chain.mempool import Mempool
from node.errors import NOT_FOUND, VigilError
from node.host.admission import Admission
from node.host.driver import ViewSource
from node.host.eth_backend import EthBackendImpl
from node.host.resolver import TxResolver
from node.host.screening import Screening
from node.host.signals import Subscribers
from node.net.address import PeerAddress
from node.net.catchup import CatchUp
from node.net.peerwatch import PeerWatch
from storage.db import Store

ACCOUNT_TXS_BLOCKS_MAX = 1000  # account_txs scans at most this many recent blocks (no index)


def _tx_row(tx: Any, status: str) -> dict[str, Any]:
    """A tx as account_txs lists it: its decoded fields without the signature."""
    out: dict[str, Any] = tx.to_json()
    out.pop("signature", None)
    out["status"] = status
    return out


class PeerDirectory(Protocol):
    """Who we dial and who is connected (node/net/p2p.py ``P2P``)."""

    addresses: dict[int, PeerAddress]

    def peers(self) -> list[int]: ...


class NodeServiceImpl:
    def __init__(
        self,
        *,
        genesis: Genesis,
        index: int,
        ccfg: ConsensusConfig,
        chain: Chain,
        store: Store,
        data_dir: Path,
        replica: ViewSource,
        p2p: PeerDirectory,
        catchup: CatchUp,
        watch: PeerWatch,
        mempool: Mempool,
        screening: Screening,
        admission: Admission,
        txs: TxResolver,
        subscribers: Subscribers,
        not_ready_reason: Callable[[], str | None],
    ) -> None:
        self.genesis = genesis
        self.index = index
        self.ccfg = ccfg
        self._chain = chain
        self.store = store
        self.data_dir = data_dir
        self.replica = replica
        self.p2p = p2p
        self.catchup = catchup
        self.watch = watch
        self.mempool = mempool
        self.screening = screening
        self.admission = admission
        self.txs = txs
        self.subscribers = subscribers
        self.not_ready_reason = not_ready_reason
        # What the Ethereum JSON-RPC face (node/api/eth.py) reads.
        self.eth = EthBackendImpl(
            chain=lambda: chain,
            genesis=genesis,
            pending_nonces=lambda a: mempool.pending_nonces(a),
            pending_tx=lambda h: e.tx if (e := mempool.get(h)) is not None else None,
            held_tx=lambda h: x.tx if (x := screening.quarantine.get(h)) is not None else None,
            submit=lambda raw: admission.submit(raw),
            syncing=lambda: bool(catchup.syncing),
        )

    async def node_status(self) -> dict[str, Any]:
        node, chain = self, self._chain
        view = node.replica.view
        primary = node.ccfg.primary(view)
        return {
            "chain_id": node.genesis.chain_id,
            "node_id": node.index,
            "version": VERSION,
            "height": chain.height,
            "head_hash": to_hex(chain.head.hash),
            "view": view,
            "primary": primary,
            "is_primary": primary == node.index,
            "validators": [
                {
                    "index": v.index,
                    "public_key": to_hex(v.public_key),
                    "p2p_address": str(node.p2p.addresses[v.index])
                    if v.index in node.p2p.addresses
                    else None,
                }
                for v in node.genesis.validators
            ],
            "peers": node.p2p.peers(),
            "syncing": node.catchup.syncing,
            "mempool": len(node.mempool),
            "quarantine": len(node.screening.quarantine),
        }

    async def tx_submit(self, raw: bytes) -> dict[str, Any]:
        return await self.admission.submit(raw)

    def _committed(self, tx_hash: bytes) -> dict[str, Any] | None:
        chain = self._chain
        loc = chain.store.get_tx_location(tx_hash)
        if loc is None:
            return None
        height, index = loc
        block = chain.get_block(height)
        raw_receipt = chain.store.get_receipt(tx_hash)
        if block is None or raw_receipt is None or index >= len(block.txs):
            return None
        receipt = Receipt.decode(raw_receipt)
        out = block.txs[index].to_json()
        out.update(status=receipt.status, height=height, index=index)
        if receipt.reason:
            out["reason"] = receipt.reason
        return out

    async def tx_get(self, tx_hash: bytes) -> dict[str, Any]:
        node = self
        entry = node.mempool.get(tx_hash)
        anomaly = node.screening.anomaly(tx_hash)
        scored = {"anomaly": anomaly} if anomaly is not None else {}
        if entry is not None:
            out = {
                **entry.tx.to_json(),
                "status": "pending",
                "height": None,
                "index": None,
                **scored,
            }
            blocker = node.screening.blocked_by(entry.tx)
            if blocker is not None:
                out.update(status="waiting", blocked_by=to_hex(blocker))
            return out
        found = await asyncio.to_thread(self._committed, tx_hash)
        if found is not None:
            return {**found, **scored}
        held = node.screening.tx_info(tx_hash)  # quarantined, or rejected from the quarantine
        if held is not None:
            return held
        status = node.txs.status.get(tx_hash)
        if status is not None:
            return {
                "hash": to_hex(tx_hash),
                "status": status[0],
                "reason": status[1],
                "height": None,
                "index": None,
            }
        raise VigilError(NOT_FOUND, "unknown transaction")

    def _proof(self, tx_hash: bytes) -> dict[str, Any]:
        chain = self._chain
        loc = chain.store.get_tx_location(tx_hash)
        block = chain.get_block(loc[0]) if loc is not None else None
        if loc is None or block is None:
            raise VigilError(NOT_FOUND, "transaction not committed")
        hashes = block.tx_hashes
        return {
            "hash": to_hex(tx_hash),
            "height": loc[0],
            "index": loc[1],
            "tx_root": to_hex(block.header.tx_root),
            "branch": [to_hex(b) for b in merkle_proof(hashes, loc[1])],
            "size": len(hashes),
        }

    async def tx_proof(self, tx_hash: bytes) -> dict[str, Any]:
        return await asyncio.to_thread(self._proof, tx_hash)

    def _anchor(self, digest: bytes) -> dict[str, Any]:
        chain = self._chain
        tx_hash = chain.read_anchor(digest)
        loc = chain.store.get_tx_location(tx_hash) if tx_hash is not None else None
        header = chain.header(loc[0]) if loc is not None else None
        if tx_hash is None or loc is None or header is None:
            raise VigilError(NOT_FOUND, "no committed anchor of this digest")
        return {
            "hash": to_hex(tx_hash),
            "height": loc[0],
            "index": loc[1],
            "timestamp": header.timestamp_ms,
            "digest": to_hex(digest),
        }

    async def anchor_get(self, digest: bytes) -> dict[str, Any]:
        return await asyncio.to_thread(self._anchor, digest)

    async def account_get(self, address: bytes) -> dict[str, Any]:
        acct = self._chain.read_account(address)
        return {
            "address": to_hex(address),
            "balance": acct.balance if acct else 0,
            "nonce": acct.nonce if acct else 0,
        }

    def _block(self, height: int | None) -> dict[str, Any]:
        chain = self._chain
        h = chain.height if height is None else height
        if h < 0 or h > chain.height:
            raise VigilError(NOT_FOUND, f"no block at height {h}")
        block = chain.get_block(h)
        if block is None:
            raise VigilError(NOT_FOUND, f"no block at height {h}")
        raw_cert = chain.store.get_certificate(h) if h > 0 else None
        decoded = CommitCertificate.decode(raw_cert) if raw_cert is not None else None
        # The header's view is the view of the certificate this node stores (it is not hashed:
        # other nodes may hold a certificate of another view for the same block).
        return {
            **block.header.to_json(decoded.view if decoded is not None else 0),
            "tx_hashes": [to_hex(x) for x in block.tx_hashes],
            "certificate": decoded.to_json() if decoded is not None else None,
        }

    async def block_get(self, height: int | None) -> dict[str, Any]:
        return await asyncio.to_thread(self._block, height)

    def _account_committed(self, address: bytes, limit: int) -> list[dict[str, Any]]:
        chain = self._chain
        out: list[dict[str, Any]] = []
        low = max(1, chain.height - ACCOUNT_TXS_BLOCKS_MAX + 1)
        for height in range(chain.height, low - 1, -1):
            block = chain.get_block(height)
            if block is None:
                continue
            for index in range(len(block.txs) - 1, -1, -1):
                tx = block.txs[index]
                if tx.sender_address != address and not (
                    tx.kind == "transfer" and tx.to == address
                ):
                    continue
                raw_receipt = chain.store.get_receipt(tx.hash)
                receipt = Receipt.decode(raw_receipt) if raw_receipt is not None else None
                row = _tx_row(tx, receipt.status if receipt is not None else "committed")
                row.update(height=height, index=index, timestamp=block.header.timestamp_ms)
                if receipt is not None and receipt.reason:
                    row["reason"] = receipt.reason
                out.append(row)
                if len(out) >= limit:
                    return out
        return out

    async def account_txs(self, address: bytes, limit: int) -> dict[str, Any]:
        node = self
        screening = node.screening
        rows: list[dict[str, Any]] = []
        for held in screening.quarantine.held():
            if held.sender == address:
                row = _tx_row(held.tx, "quarantined")
                row.update(quarantined_at_ms=held.since_ms, anomaly=held.anomaly())
                rows.append(row)
        for entry in node.mempool.later(address, -1):
            row = _tx_row(entry.tx, "pending")
            blocker = screening.blocked_by(entry.tx)
            if blocker is not None:
                row.update(status="waiting", blocked_by=to_hex(blocker))
            rows.append(row)
        rows.sort(key=lambda r: -int(r["nonce"]))
        rows = rows[:limit]
        committed = await asyncio.to_thread(self._account_committed, address, limit - len(rows))
        return {
            "address": to_hex(address),
            "txs": rows + committed,
            "blocks_scanned": min(self._chain.height, ACCOUNT_TXS_BLOCKS_MAX),
        }

    async def cluster_status(self) -> dict[str, Any]:
        node, chain = self, self._chain
        view = node.replica.view
        peers = set(node.p2p.peers())
        ready = self.ready()
        rows: list[dict[str, Any]] = []
        for v in node.genesis.validators:
            row: dict[str, Any] = {"index": v.index, "public_key": to_hex(v.public_key)}
            if v.index == node.index:
                row.update(
                    self=True,
                    connected=True,
                    height=chain.height,
                    view=view,
                    ready=ready,
                    syncing=bool(node.catchup.syncing),
                    peers=len(peers),
                )
            else:
                # What the peer's last status frame said (node/net/peerwatch.py); nothing once
                # the connection is gone.
                connected = v.index in peers
                row.update(
                    self=False,
                    connected=connected,
                    height=node.watch.heights.get(v.index) if connected else None,
                    view=node.watch.views.get(v.index) if connected else None,
                )
            h = row["height"]
            row["lag"] = chain.height - h if isinstance(h, int) else None
            rows.append(row)
        return {
            "chain_id": node.genesis.chain_id,
            "node_id": node.index,
            "height": chain.height,
            "view": view,
            "primary": node.ccfg.primary(view),
            "f": node.ccfg.f,
            "validators": rows,
        }

    async def mempool_status(self) -> dict[str, Any]:
        m = self.mempool
        return {
            "size": len(m),
            "bytes": m.size_bytes,
            "quarantined": len(self.screening.quarantine),
        }

    async def detector_status(self) -> dict[str, Any]:
        return self.screening.status()

    async def quarantine_list(self, limit: int) -> list[dict[str, Any]]:
        return self.screening.listing(limit)

    async def quarantine_release(self, tx_hash: bytes) -> dict[str, Any]:
        return self.screening.release(tx_hash)

    async def quarantine_reject(self, tx_hash: bytes) -> dict[str, Any]:
        return self.screening.reject(tx_hash)

    async def admin_db_backup(self) -> dict[str, Any]:
        node = self
        name = f"backup-{time.strftime('%Y%m%dT%H%M%S')}-{self._chain.height}"
        dest = node.data_dir / "backups" / name
        store = node.store

        def snapshot() -> tuple[int, int]:
            keys = store.snapshot_to(str(dest))
            # The height the snapshot holds (blocks commit while it is taken), read from it.
            with Store(str(dest)) as copy:
                head = copy.head()
            return keys, head[0] if head else 0

        keys, height = await asyncio.to_thread(snapshot)
        return {"path": str(dest), "height": height, "keys": keys}

    async def quarantine_show(self, tx_hash: bytes) -> dict[str, Any]:
        return self.screening.show(tx_hash)

    async def detector_explain(self, tx_hash: bytes) -> dict[str, Any]:
        return await self.screening.explain(tx_hash)

    def health(self) -> dict[str, Any]:
        node = self
        return {
            "height": self._chain.height,
            "syncing": node.catchup.syncing,
            "peers": len(node.p2p.peers()),
        }

    def ready(self) -> bool:
        return self.not_ready_reason() is None

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        return self.subscribers.subscribe(callback)
