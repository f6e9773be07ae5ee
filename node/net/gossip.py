"""Transaction gossip: admitted txs go to every peer once, many per frame.

Validators form a full mesh, so a tx is forwarded by the node that admitted it from a client and
not relayed again by the peers that receive it: each tx crosses each link once, unless lost. A
peer that missed it gets it later: on demand, when a proposal names it and the backup fetches
the missing hashes from the primary; when the link comes back (the whole mempool is sent); and
when the tx has waited in our mempool past 1, 2, 4... s (node/host/txflow.py ``regossip_stale``:
a primary whose full admission queue dropped it would otherwise never propose it). The
seen-cache (bounded, oldest evicted) lets a node drop gossip it already processed without
decoding or verifying it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Sender(Protocol):
    def peers(self) -> list[int]: ...

    def send(self, to: int, msg: dict[str, Any]) -> bool: ...


class SeenCache:
    """A bounded set of recently seen tx hashes (insertion order eviction)."""

    def __init__(self, size_max: int) -> None:
        self._size_max = size_max
        self._items: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        return key in self._items

    def add(self, key: bytes) -> bool:
        """Insert; False when it was already there."""
        if key in self._items:
            return False
        self._items[key] = None
        if len(self._items) > self._size_max:
            self._items.popitem(last=False)
        return True

    def discard(self, key: bytes) -> None:
        """Forget ``key``: a tx dropped here may be accepted again when it comes back."""
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class Gossip:
    """Batches outgoing txs per peer and flushes every ``flush_ms`` or when a batch is full."""

    def __init__(
        self,
        sender: Sender,
        n_validators: int,
        batch_txs_max: int = 1000,
        flush_ms: int = 5,
        seen_max: int = 200_000,
    ) -> None:
        self._sender = sender
        self._batch_max = batch_txs_max
        self._flush_s = flush_ms / 1000
        self.seen = SeenCache(seen_max)
        self._out: list[bytes] = []
        self._wake = asyncio.Event()
        self._n = n_validators
        self._sent_s = 0.0  # when the last frame left (monotonic)

    def forward(self, raws: list[bytes]) -> None:
        """Queue txs (raw encodings) for every connected peer.

        On a quiet link (nothing sent for a flush interval) they leave at once, in the same
        loop step that admitted them: ahead of a PRE-PREPARE naming them, which would otherwise
        overtake them and make every backup fetch them from the primary. Under load they are
        collected for a flush interval into bigger frames, unless a proposal names them first:
        the proposer then calls ``flush`` before its PRE-PREPARE leaves.
        """
        now = time.monotonic()
        if not self._out and now - self._sent_s >= self._flush_s:
            self._sent_s = now
            self._send(raws)
            return
        self._out.extend(raws)
        self._wake.set()

    def flush(self) -> None:
        """Send what waits for a fuller frame now (a primary, before its PRE-PREPARE)."""
        if self._out:
            out, self._out = self._out, []
            self._sent_s = time.monotonic()
            self._send(out)

    def _send(self, out: list[bytes]) -> None:
        for i in range(0, len(out), self._batch_max):
            msg = {"t": "txs", "txs": out[i : i + self._batch_max]}
            for peer in self._sender.peers():
                with contextlib.suppress(Exception):
                    self._sender.send(peer, msg)

    async def run(self) -> None:
        """Flush loop; runs until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            # A short wait collects more txs into the same frame under load.
            await asyncio.sleep(self._flush_s)
            self.flush()
