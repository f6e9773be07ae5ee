"""Narrow views of the host's parts, as the tasks and helpers that use them see them.

Each task or helper takes only what it calls (and tests hand it small typed fakes); the real
objects (node/net/p2p.py ``P2P``, node/chain/chain.py ``Chain``, storage/db.py ``Store``)
satisfy these structurally.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from node.chain.block import Block, BlockHeader


class PeerSender(Protocol):
    """Frames out to one validator or to all (node/net/p2p.py)."""

    def send(self, to: int, msg: dict[str, Any]) -> bool: ...

    def broadcast(self, msg: dict[str, Any]) -> None: ...


class PeerRequester(Protocol):
    """Requests to peers and who is connected (node/net/p2p.py)."""

    def peers(self) -> list[int]: ...

    async def request(
        self, to: int, kind: str, body: dict[str, Any], timeout_s: float
    ) -> dict[str, Any]: ...


class Arrivals(Protocol):
    """Txs on their way into the mempool: queued for admission or in its signature check
    (node/host/admission.py ``Admission``)."""

    async def settled(self, hashes: Sequence[bytes], timeout_s: float) -> None: ...

    def queued(self, hashes: Sequence[bytes]) -> dict[bytes, bytes]: ...


class TxStore(Protocol):
    """The keys of storage/db.py ``Store`` that the tx resolver reads and writes."""

    def meta_put(self, key: bytes, value: bytes) -> None: ...

    def meta_get(self, key: bytes) -> bytes | None: ...

    def get_tx_location(self, tx_hash: bytes) -> tuple[int, int] | None: ...

    def blocks(self, from_height: int, to_height: int) -> Iterator[tuple[int, bytes, bytes]]: ...


class ChainReader(Protocol):
    """What the tx resolver reads of node/chain/chain.py ``Chain``."""

    @property
    def height(self) -> int: ...

    @property
    def store(self) -> TxStore: ...

    def is_committed(self, tx_hash: bytes) -> bool: ...

    def header(self, height: int) -> BlockHeader | None: ...

    def get_block(self, height: int) -> Block | None: ...

    def tx_raws(self, height: int) -> list[bytes] | None: ...
