"""Typed fakes of the host's narrow dependencies (node/host/ports.py, txflow.py, driver.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from common.codec import sha256
from node.chain.block import Block, BlockHeader
from node.chain.ledger import Account
from node.chain.mempool import Mempool
from node.chain.tx import Transaction
from node.host.resolver import ResolverConfig, TxResolver
from node.host.signals import ProposalBodies

CHAIN = "vigil"


class FakeStore:
    """The keys the resolver uses; ``blocks`` records the ranges read."""

    def __init__(self) -> None:
        self.meta: dict[bytes, bytes] = {}
        self.reads: list[tuple[int, int]] = []

    def meta_put(self, key: bytes, value: bytes) -> None:
        self.meta[key] = value

    def meta_get(self, key: bytes) -> bytes | None:
        return self.meta.get(key)

    def get_tx_location(self, tx_hash: bytes) -> tuple[int, int] | None:
        return None

    def blocks(self, from_height: int, to_height: int) -> Iterator[tuple[int, bytes, bytes]]:
        self.reads.append((from_height, to_height))
        return iter(())


class FakeChain:
    """A chain of headers only: what commits here, at which seq, with which payload digest."""

    def __init__(self, height: int = 0) -> None:
        self.height = height
        self.committed: dict[bytes, int] = {}
        self.headers: dict[int, BlockHeader] = {}
        self.store = FakeStore()

    def is_committed(self, tx_hash: bytes) -> bool:
        return tx_hash in self.committed

    def commit(self, seq: int, payload: bytes, txs: list[Transaction]) -> None:
        self.height = seq
        self.headers[seq] = BlockHeader(seq, b"\x00" * 32, b"\x00" * 32, 0, 0, sha256(payload))
        for tx in txs:
            self.committed[tx.hash] = seq

    def header(self, height: int) -> BlockHeader | None:
        return self.headers.get(height)

    def get_block(self, height: int) -> Block | None:
        return None

    def tx_raws(self, height: int) -> list[bytes] | None:
        return None

    def read_account(self, address: bytes) -> Account | None:
        return Account(10**9, len(self.committed))


class FakeP2P:
    """Serves ``get_txs`` from ``txs``; ``on_request`` runs first (to commit meanwhile, ...)."""

    def __init__(self, txs: dict[bytes, Transaction] | None = None) -> None:
        self.txs = txs or {}
        self.on_request: Callable[[], Awaitable[None] | None] = lambda: None
        self.sent: list[tuple[int, dict[str, Any]]] = []
        self.broadcasts: list[dict[str, Any]] = []
        self.requested: list[bytes] = []  # every hash asked for by get_txs

    def peers(self) -> list[int]:
        return [0, 1, 2, 3]

    async def request(
        self, to: int, kind: str, body: dict[str, Any], timeout_s: float
    ) -> dict[str, Any]:
        self.requested.extend(body["hashes"])
        pending = self.on_request()
        if pending is not None:
            await pending
        return {"txs": [self.txs[h].encode() for h in body["hashes"] if h in self.txs]}

    def send(self, to: int, msg: dict[str, Any]) -> bool:
        self.sent.append((to, msg))
        return True

    def broadcast(self, msg: dict[str, Any]) -> None:
        self.broadcasts.append(msg)


class FakeScreening:
    """Nothing held, nothing known: the mempool side's view of the screening."""

    def known(self, tx_hash: bytes) -> bool:
        return False

    def blocked_by(self, tx: Transaction) -> bytes | None:
        return None


def resolver_config(index: int = 0, **changes: Any) -> ResolverConfig:
    base: dict[str, Any] = {
        "index": index,
        "chain_id": CHAIN,
        "primary": lambda view: view % 4,
        "block_txs_max": 100,
        "catchup_batch_blocks": 64,
        "msg_bytes_max": 1 << 20,
        "timeout_s": 1.0,
    }
    base.update(changes)
    return ResolverConfig(**base)


def mempool_of(chain: FakeChain) -> Mempool:
    return Mempool(CHAIN, 1000, 10**7, chain.read_account)


def resolver(
    chain: FakeChain,
    p2p: FakeP2P | None = None,
    mempool: Mempool | None = None,
    index: int = 0,
    **changes: Any,
) -> TxResolver:
    """A resolver over a real mempool (of ``chain``'s accounts) and the fakes."""
    pool = mempool if mempool is not None else mempool_of(chain)
    return TxResolver(
        resolver_config(index, **changes), pool, chain, p2p or FakeP2P(), ProposalBodies()
    )


class FakeCatchUp:
    """Records what the core and the peer watch asked catch-up to fetch."""

    def __init__(self) -> None:
        self.wanted: list[tuple[int, tuple[int, ...]]] = []

    def want(self, to_seq: int, peers: tuple[int, ...] = ()) -> None:
        self.wanted.append((to_seq, peers))
