"""Chain rules: transactions, blocks, ledger, genesis, mempool. No asyncio, no aiohttp."""
