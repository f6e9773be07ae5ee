"""What the Ethereum JSON-RPC face (node/api/eth.py) reads from a running node.

Plain chain objects out (blocks, receipts, txs); node/api/ethjson.py shapes them for wallets.
Multi-key LevelDB reads run in a worker thread, as in service_impl. Block hash -> height comes
from storage's block-hash index (docs/storage.md, prefix ``H``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from node.api.eth import BlockView, TxView
from node.chain.chain import Chain
from node.chain.genesis import Genesis
from node.chain.ledger import Receipt
from node.chain.tx import Transaction
from node.errors import NOT_READY, VigilError


class EthBackendImpl:
    """Narrow dependencies (callables into the runtime), so this module imports no host code."""

    def __init__(
        self,
        chain: Callable[[], Chain | None],
        genesis: Genesis,
        pending_nonces: Callable[[bytes], list[int]],
        pending_tx: Callable[[bytes], Transaction | None],
        held_tx: Callable[[bytes], Transaction | None],
        submit: Callable[[bytes], Awaitable[dict[str, Any]]],
        syncing: Callable[[], bool],
    ) -> None:
        self._get_chain = chain
        self.genesis = genesis
        self._pending_nonces = pending_nonces
        self._pending_tx = pending_tx
        self._held_tx = held_tx
        self._submit = submit
        self._syncing = syncing

    @property
    def _chain(self) -> Chain:
        chain = self._get_chain()
        if chain is None:
            raise VigilError(NOT_READY, "node is starting")
        return chain

    def chain_text(self) -> str:
        return self.genesis.chain_id

    def head(self) -> int:
        return self._chain.height

    def syncing(self) -> bool:
        return bool(self._syncing())

    def account(self, address: bytes) -> tuple[int, int]:
        acct = self._chain.read_account(address)
        return (acct.balance, acct.nonce) if acct is not None else (0, 0)

    def pending_nonce(self, address: bytes) -> int:
        _, nonce = self.account(address)
        for n in self._pending_nonces(address):
            if n == nonce:
                nonce += 1
        return nonce

    def is_committed(self, tx_hash: bytes) -> bool:
        return self._chain.is_committed(tx_hash)

    def _block_view(self, height: int) -> BlockView | None:
        chain = self._chain
        if not 0 <= height <= chain.height:
            return None
        block = chain.get_block(height)
        if block is None:
            return None
        receipts: list[Receipt | None] = []
        for tx_hash in block.tx_hashes:
            raw = chain.store.get_receipt(tx_hash)
            receipts.append(Receipt.decode(raw) if raw is not None else None)
        validators = self.genesis.validators
        p = block.header.proposer
        miner = validators[p].address if 0 <= p < len(validators) else b"\x00" * 20
        return BlockView(block, tuple(receipts), miner)

    async def block(self, height: int) -> BlockView | None:
        return await asyncio.to_thread(self._block_view, height)

    async def blocks(self, lo: int, hi: int) -> list[BlockView]:
        """Blocks lo..hi (inclusive, clipped to the chain) in one worker-thread call."""

        def read() -> list[BlockView]:
            views = (self._block_view(h) for h in range(max(lo, 0), hi + 1))
            return [v for v in views if v is not None]

        return await asyncio.to_thread(read)

    def _height_of(self, block_hash: bytes) -> int | None:
        chain = self._chain
        height = chain.store.height_of(block_hash)
        if height is not None:
            return height
        genesis = chain.header(0)  # the genesis header is derived, not stored under the index
        return 0 if genesis is not None and genesis.hash == block_hash else None

    async def height_of(self, block_hash: bytes) -> int | None:
        return await asyncio.to_thread(self._height_of, block_hash)

    def _committed(self, tx_hash: bytes) -> TxView | None:
        chain = self._chain
        loc = chain.store.get_tx_location(tx_hash)
        if loc is None:
            return None
        view = self._block_view(loc[0])
        if view is None or loc[1] >= len(view.block.txs):
            return None
        return TxView(view.block.txs[loc[1]], view, loc[1])

    async def tx(self, tx_hash: bytes) -> TxView | None:
        """A committed tx with its block, or a pending or held one (block None), or None."""
        pending = self._pending_tx(tx_hash)
        if pending is not None:
            return TxView(pending, None, None)
        found = await asyncio.to_thread(self._committed, tx_hash)
        if found is not None:
            return found
        held = self._held_tx(tx_hash)
        if held is not None:
            return TxView(held, None, None)
        return None

    async def submit(self, raw: bytes) -> str:
        """Admission as for tx_submit; the status (pending or quarantined) of the tx."""
        result = await self._submit(raw)
        return str(result["status"])
