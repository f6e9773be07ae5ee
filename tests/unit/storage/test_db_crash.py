"""Crash safety: a child committing blocks is SIGKILLed at random; every reopen is consistent.

After each kill the test reopens the LevelDB directory and checks that the head names a complete
block and nothing beyond it exists, that the chain links, that the tx index and receipts match a
replay of every block from genesis, and that the stored balances equal the replayed ones.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from node.chain.block import Block, genesis_header
from node.chain.ledger import Account, Receipt, execute_block, genesis_accounts
from storage import Store
from tests.crash_worker import ADDRS, CHAIN, GENESIS, certificate_for

ROOT = Path(__file__).resolve().parents[3]
KILLS = 20


class Verifier:
    """Replays the chain incrementally, remembering what it already checked."""

    def __init__(self) -> None:
        self.accounts = dict(genesis_accounts(GENESIS))
        self.anchors: dict[bytes, bytes] = {}
        self.header = genesis_header(GENESIS)
        self.block_bytes: dict[int, bytes] = {}

    def check(self, store: Store) -> int:
        head = store.head()
        if head is None:
            assert store.get_block(1) is None
            return 0
        height, head_hash = head
        assert height >= self.header.height, "head went backwards"
        assert store.get_block(height + 1) is None, "a block beyond the head"
        assert store.get_certificate(height + 1) is None
        assert store.height_of(head_hash) == height
        for h, raw in self.block_bytes.items():  # earlier blocks never change
            assert store.get_block(h) == raw
        for h, raw, cert in store.blocks(self.header.height + 1, height):
            block = Block.decode(raw)
            assert h == block.height == self.header.height + 1
            assert block.header.prev_hash == self.header.hash
            assert cert == certificate_for(h)
            ex = execute_block(
                block, ADDRS[block.header.proposer], CHAIN, self.accounts.get, self.anchors.get
            )
            for i, receipt in enumerate(ex.receipts):
                assert store.get_tx_location(receipt.tx_hash) == (h, i)
                stored = store.get_receipt(receipt.tx_hash)
                assert stored is not None
                assert Receipt.decode(stored) == receipt
            self.accounts.update(ex.accounts)
            self.anchors.update(ex.anchors)
            self.header = block.header
            self.block_bytes[h] = raw
        assert self.header.height == height
        assert self.header.hash == head_hash
        stored_accounts = {a: Account.decode(v) for a, v in store.accounts()}
        assert stored_accounts == self.accounts
        assert sum(a.balance for a in stored_accounts.values()) == GENESIS.total_supply
        for digest, tx_hash in self.anchors.items():
            assert store.get_anchor(digest) == tx_hash
        return height


def test_sigkill_at_random_moments_never_leaves_a_partial_block(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    rng = random.Random(20240601)
    verifier = Verifier()
    heights = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_worker", path],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.02, 0.35))  # the kill moment is the point, not a wait
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=30)
            assert child.stdout is not None
            child.stdout.close()
        with Store(path) as store:
            heights.append(verifier.check(store))
    assert heights == sorted(heights)
    assert heights[-1] > KILLS  # the chain really grew across the kills
