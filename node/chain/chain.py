"""The committed chain of one node: its head, and the execution and storage of committed payloads.

``apply`` runs in a worker thread (it is the CPU and disk part of a commit): it builds the block
every replica derives from the payload (prev_hash from our own head), executes it with the
ledger against the stored state, and writes block, certificate, receipts, accounts, anchors and
head in ONE LevelDB batch. Only the committer task calls ``apply``, so reads of the head and the
state inside it are consistent.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from common import codec
from common.codec import CodecError
from consensus.api import NULL_DIGEST, Commit
from node.chain.block import (
    BLOCK_BYTES_MAX,
    BLOCK_SCHEMA,
    BLOCK_VERSION,
    Block,
    BlockHeader,
    Proposal,
    build_block,
    genesis_header,
)
from node.chain.genesis import Genesis
from node.chain.ledger import Account, Execution, execute_block, genesis_accounts
from node.chain.tx import Transaction
from storage.db import Store

GENESIS_META_KEY = b"genesis_hash"
# Meta key prefix of the tx bodies of a proposal this node voted for or made
# (node/host/resolver.py).
PROPOSAL_TXS_KEY = b"ptx"
# Decoded recent blocks kept for reads (block_get, tx_get, peers' get_txs): bounded by their txs.
BLOCK_CACHE_TXS_MAX = 20_000
BLOCK_CACHE_BLOCKS_MAX = 256
# Accounts read through this chain (mempool checks, execution, account_get); dropped when full.
ACCOUNT_CACHE_MAX = 200_000


class ChainError(Exception):
    """The local database does not belong to this genesis, or a commit is out of order."""


@dataclass(frozen=True, slots=True)
class Applied:
    block: Block
    execution: Execution
    write_s: float


class Chain:
    def __init__(self, store: Store, genesis: Genesis) -> None:
        self.store = store
        self.genesis = genesis
        self.head: BlockHeader = genesis_header(genesis)
        self._genesis_accounts = genesis_accounts(genesis)
        # Committed blocks never change: recent ones stay decoded (height -> block).
        self._blocks: OrderedDict[int, Block] = OrderedDict()
        self._blocks_txs = 0
        # State reads come from the loop (admission) and the write thread (execution); only
        # ``apply`` changes accounts. A reader that missed the cache stores what it read from
        # LevelDB only if no commit happened meanwhile (``_generation``), so a value read just
        # before a commit can never overwrite the committed one.
        self._accounts: dict[bytes, Account | None] = {}
        self._generation = 0
        self._lock = threading.Lock()

    @property
    def height(self) -> int:
        return self.head.height

    def load(self) -> None:
        """Check the database belongs to this genesis and read the head (blocking)."""
        stored = self.store.meta_get(GENESIS_META_KEY)
        if stored is None:
            if self.store.head() is not None:
                raise ChainError("database has blocks but no genesis hash")
            self.store.meta_put(GENESIS_META_KEY, self.genesis.hash)
        elif stored != self.genesis.hash:
            raise ChainError("database was created for a different genesis")
        head = self.store.head()
        if head is not None:
            raw = self.store.get_block(head[0])
            if raw is None:
                raise ChainError(f"head block {head[0]} missing")
            try:
                self.head = Block.decode(raw).header
            except CodecError as exc:
                raise ChainError(
                    f"head block {head[0]} does not decode ({exc.reason}): written by an older "
                    f"block format? This node writes block version {BLOCK_VERSION}; start it on "
                    "an empty data directory and let it catch up from its peers"
                ) from None

    # --- state reads (thread safe: plyvel reads) ------------------------------------------

    def read_account(self, address: bytes) -> Account | None:
        try:
            return self._accounts[address]
        except KeyError:
            pass
        generation = self._generation
        raw = self.store.get_account(address)
        # Genesis balances are not written to the database; they are the base state.
        account = Account.decode(raw) if raw is not None else self._genesis_accounts.get(address)
        with self._lock:
            if generation == self._generation:
                if len(self._accounts) >= ACCOUNT_CACHE_MAX:
                    self._accounts.clear()
                self._accounts[address] = account
        return account

    def read_anchor(self, digest: bytes) -> bytes | None:
        return self.store.get_anchor(digest)

    def is_committed(self, tx_hash: bytes) -> bool:
        return self.store.get_tx_location(tx_hash) is not None

    def get_block(self, height: int) -> Block | None:
        if height == 0:
            return Block(genesis_header(self.genesis), ())
        block = self._blocks.get(height)
        if block is not None:
            return block
        raw = self.store.get_block(height)
        if raw is None:
            return None
        block = Block.decode(raw)
        self._keep(block)
        return block

    def _keep(self, block: Block) -> None:
        """Cache a committed block (any thread: the dict is only changed under the lock)."""
        with self._lock:
            if block.height in self._blocks:
                return
            self._blocks[block.height] = block
            self._blocks_txs += len(block.txs)
            while len(self._blocks) > 1 and (
                self._blocks_txs > BLOCK_CACHE_TXS_MAX or len(self._blocks) > BLOCK_CACHE_BLOCKS_MAX
            ):
                _, old = self._blocks.popitem(last=False)
                self._blocks_txs -= len(old.txs)

    def tx_raws(self, height: int) -> list[bytes] | None:
        """The encoded txs of a committed block, in order (for peers' ``get_txs``)."""
        block = self._blocks.get(height)
        if block is not None:
            return [tx.encode() for tx in block.txs]
        raw = self.store.get_block(height)
        if raw is None:
            return None
        # The raw tx bytes are in the block: no per-tx decode for a peer that decodes them.
        m = codec.decode_struct(raw, BLOCK_SCHEMA, BLOCK_BYTES_MAX)
        return list(m["txs"])

    def header(self, height: int) -> BlockHeader | None:
        block = self.get_block(height)
        return block.header if block is not None else None

    # --- commit ---------------------------------------------------------------------------

    def build(self, seq: int, payload: bytes, txs: Sequence[Transaction]) -> Block:
        if seq != self.head.height + 1:
            raise ChainError(f"commit of seq {seq} on head {self.head.height}")
        proposal = Proposal.decode(payload) if payload else None
        return build_block(proposal, txs, self.head)

    def apply(
        self,
        seq: int,
        digest: bytes,
        payload: bytes,
        certificate: bytes,
        txs: Sequence[Transaction],
    ) -> Applied:
        """Build, execute and durably write the block of ``seq`` (blocking; worker thread).

        The block depends only on what was agreed (payload, txs, our chain below); the commit
        view is in ``certificate``, stored beside the block and never hashed into it.
        """
        block = self.build(seq, payload, txs)
        if (digest == NULL_DIGEST) != (not payload):
            raise ChainError(f"seq {seq}: payload and digest disagree about a null block")
        proposer = self.genesis.validators[block.header.proposer].address
        execution = execute_block(
            block, proposer, self.genesis.chain_id, self.read_account, self.read_anchor
        )
        started = time.perf_counter()
        self.store.commit_block(
            height=block.height,
            block_hash=block.hash,
            block=block.encode(),
            certificate=certificate,
            txs=[(r.tx_hash, r.encode()) for r in execution.receipts],
            accounts={a: acct.encode() for a, acct in execution.accounts.items()},
            anchors=dict(execution.anchors),
            extra={
                PROPOSAL_TXS_KEY + digest: None
            },  # the proposal's tx bodies are in the block now
        )
        with self._lock:
            self._generation += 1
            for address, account in execution.accounts.items():
                self._accounts[address] = account
        self.head = block.header
        self._keep(block)
        return Applied(block, execution, time.perf_counter() - started)

    def apply_commit(self, commit: Commit, txs: Sequence[Transaction]) -> Applied:
        """``apply`` for a core ``Commit``: its view goes to the stored certificate only."""
        return self.apply(commit.seq, commit.digest, commit.payload, commit.certificate, txs)
