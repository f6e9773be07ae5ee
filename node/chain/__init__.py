"""Chain rules: transactions, blocks, ledger, genesis, mempool. No asyncio, no aiohttp."""

from node.chain import ethtx as _ethtx  # registers the Ethereum wire formats with tx.decode

__all__ = ["_ethtx"]
