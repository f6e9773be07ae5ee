"""The node: transactions, blocks, ledger, mempool, P2P, RPC, metrics, config, CLI. All I/O lives here."""
