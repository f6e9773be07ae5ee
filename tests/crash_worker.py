"""Child process for tests/unit/storage/test_db_crash.py: commits blocks to a real LevelDB until
it is killed.

Run as ``python -m tests.crash_worker DIR``. It resumes from the stored head, so every run extends
the same chain. Shared helpers (genesis, commit) are imported by the test for verification.
"""

from __future__ import annotations

import random
import sys
import time

from common.crypto import SigningKey, address_of
from node.chain.block import Block, BlockHeader, Proposal, build_block, genesis_header
from node.chain.genesis import Genesis, Validator
from node.chain.ledger import Account, Execution, execute_block, genesis_accounts
from node.chain.tx import Transaction, make_anchor, make_transfer
from storage import Store

CHAIN = "crash-test"
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(8)]
ADDRS = [address_of(k.public_key) for k in KEYS]
GENESIS = Genesis(
    chain_id=CHAIN,
    validators=tuple(Validator(i, KEYS[i].public_key) for i in range(4)),
    balances=tuple(sorted((a, 1_000_000) for a in ADDRS)),
    timestamp_ms=1_700_000_000_000,
)
RUN_SECONDS_MAX = 60  # bounded: stops by itself if nobody kills it


def certificate_for(height: int) -> bytes:
    return b"cert-%d" % height


def commit(store: Store, block: Block, ex: Execution) -> None:
    """What node/ does after executing a committed block: one batch with everything."""
    store.commit_block(
        block.height,
        block.hash,
        block.encode(),
        certificate_for(block.height),
        [(r.tx_hash, r.encode()) for r in ex.receipts],
        {a: acct.encode() for a, acct in ex.accounts.items()},
        ex.anchors,
    )


def read_account(store: Store, address: bytes) -> Account | None:
    raw = store.get_account(address)
    return None if raw is None else Account.decode(raw)


def _txs(store: Store, rng: random.Random, accounts: dict[bytes, Account]) -> list[Transaction]:
    out: list[Transaction] = []
    nonces = {a: (accounts.get(a) or Account(0, 0)).nonce for a in ADDRS}
    for _ in range(rng.randrange(0, 60)):
        i = rng.randrange(len(KEYS))
        nonce = nonces[ADDRS[i]] + (1 if rng.random() < 0.05 else 0)  # a few bad nonces
        fee = rng.randrange(0, 5)
        if rng.random() < 0.1:
            tx = make_anchor(KEYS[i], CHAIN, bytes([rng.randrange(16)]) * 32, b"m", fee, nonce)
        else:
            amount = rng.randrange(0, 400_000)  # some overspend once balances drain
            tx = make_transfer(KEYS[i], CHAIN, rng.choice(ADDRS), amount, fee, nonce)
        if store.get_tx_location(tx.hash) is not None or tx in out:
            continue  # never re-propose a committed hash (the replay rule)
        nonces[ADDRS[i]] = nonce + 1
        out.append(tx)
    return out


def run(path: str) -> None:
    store = Store(path)
    store.initialize(
        {a: acct.encode() for a, acct in genesis_accounts(GENESIS).items()},
        {b"genesis": GENESIS.hash},
    )
    head = store.head()
    if head is None:
        prev: BlockHeader = genesis_header(GENESIS)
    else:
        raw = store.get_block(head[0])
        assert raw is not None
        prev = Block.decode(raw).header
    print("ready", flush=True)
    deadline = time.monotonic() + RUN_SECONDS_MAX
    while time.monotonic() < deadline:
        height = prev.height + 1
        rng = random.Random(height)
        accounts = {a: acct for a in ADDRS if (acct := read_account(store, a)) is not None}
        txs = _txs(store, rng, accounts)
        proposer = height % 4
        if rng.random() < 0.1:
            block = build_block(None, [], prev)
        else:
            proposal = Proposal(
                height, proposer, prev.timestamp_ms + 1000, tuple(t.hash for t in txs)
            )
            block = build_block(proposal, txs, prev)
        ex = execute_block(
            block,
            ADDRS[block.header.proposer],
            CHAIN,
            lambda a: read_account(store, a),
            store.get_anchor,
        )
        commit(store, block, ex)
        prev = block.header
    store.close()


if __name__ == "__main__":
    run(sys.argv[1])
