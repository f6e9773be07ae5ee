"""The interface between the node runtime and its RPC layer.

The runtime implements :class:`NodeService`; ``node/api/rpc.py`` and ``node/api/ws.py`` only call
it, so the
RPC layer can be tested against a fake and the runtime against no HTTP at all. Results follow the
shapes of docs/rpc.md (JSON-ready: ints, strings, ``0x`` hex, lists, dicts).
Client mistakes raise :class:`node.errors.VigilError` with a code from ``node/errors.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

Event = dict[str, Any]
"""A pushed event: ``{"type": "block", ...header json...}`` or
``{"type": "tx", "hash": "0x..", "status": ...}``."""


@runtime_checkable
class NodeService(Protocol):
    """What the RPC layer needs from a running node."""

    async def node_status(self) -> dict[str, Any]:
        """chain_id, node_id, version, height, head_hash, view, primary, is_primary, validators,
        peers, syncing."""
        ...

    async def tx_submit(self, raw: bytes) -> dict[str, Any]:
        """Admit a signed, encoded tx: ``{"hash": "0x..", "status": "pending"|"quarantined"}``."""
        ...

    async def tx_get(self, tx_hash: bytes) -> dict[str, Any]:
        """A tx's status and decoded fields; raises VigilError(NOT_FOUND)."""
        ...

    async def tx_proof(self, tx_hash: bytes) -> dict[str, Any]:
        """Merkle inclusion proof of a committed tx: height, index, tx_root, branch."""
        ...

    async def anchor_get(self, digest: bytes) -> dict[str, Any]:
        """hash, height, index, timestamp of the first committed anchor of ``digest``."""
        ...

    async def account_get(self, address: bytes) -> dict[str, Any]:
        """address, balance, nonce."""
        ...

    async def block_get(self, height: int | None) -> dict[str, Any]:
        """Header, tx_hashes and commit certificate of a block; ``None`` = latest."""
        ...

    async def account_txs(self, address: bytes, limit: int) -> dict[str, Any]:
        """The address's recent txs, newest first: its held, waiting and pending ones, then the
        committed ones found in the last ``ACCOUNT_TXS_BLOCKS_MAX`` blocks (for the console)."""
        ...

    async def cluster_status(self) -> dict[str, Any]:
        """This node's view of every genesis validator: connected, height, view, lag."""
        ...

    async def mempool_status(self) -> dict[str, Any]:
        """size, bytes, quarantined."""
        ...

    async def detector_status(self) -> dict[str, Any]:
        """Model version, trained-at height, window, threshold, score quantiles, quarantine rate."""
        ...

    async def quarantine_list(self, limit: int) -> list[dict[str, Any]]:
        """Quarantined txs with score and reasons (admin)."""
        ...

    async def quarantine_release(self, tx_hash: bytes) -> dict[str, Any]:
        """Release a quarantined tx into the mempool (admin)."""
        ...

    async def quarantine_reject(self, tx_hash: bytes) -> dict[str, Any]:
        """Drop a quarantined tx for good, recorded as rejected (admin)."""
        ...

    async def admin_db_backup(self) -> dict[str, Any]:
        """Write a consistent snapshot of the database under the data directory (admin).

        ``{"path", "height", "keys"}``: the snapshot is a LevelDB directory, made from one
        LevelDB snapshot while the node keeps running (``vigil db backup`` moves it away).
        """
        ...

    async def quarantine_show(self, tx_hash: bytes) -> dict[str, Any]:
        """One quarantine record, held or rejected, with its audit trail (admin)."""
        ...

    async def detector_explain(self, tx_hash: bytes) -> dict[str, Any]:
        """Rebuild a hold's model from the chain and score its recorded features again (admin)."""
        ...

    def health(self) -> dict[str, Any]:
        """``{"height", "syncing", "peers"}``; cheap, never blocks."""
        ...

    def ready(self) -> bool:
        """True when the node has a quorum of peers and is not behind."""
        ...

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback`` (on the loop, must not block) for each event; returns unsubscribe."""
        ...
