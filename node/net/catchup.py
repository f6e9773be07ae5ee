"""Catch-up: fetch committed blocks with their certificates from peers and hand them to the core.

Triggered by the core's ``FetchBlocks`` and by peers' status frames showing a higher head. Blocks
come in ranges of ``batch_blocks`` from one peer at a time (hinted peers first, then any peer
known to be ahead). Before the core sees an entry we check, off the loop, that the block decodes
(its tx_root matches its txs), that the header and tx list are what the certificate names
(``header_matches_certificate``) and that heights are contiguous; the core then checks the 2f+1
signatures of each certificate before it emits the ``Commit``. Transactions of fetched blocks are
handed over with the entries, so executing them needs no further round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from common.codec import CodecError
from consensus.api import FetchedEntry
from consensus.certificate import CommitCertificate
from node.chain.block import Block, header_matches_certificate
from node.chain.tx import Transaction
from node.net.p2p import P2P, PeerError

log = logging.getLogger(__name__)

Deliver = Callable[[list[FetchedEntry], dict[bytes, tuple[Transaction, ...]]], Awaitable[None]]


ROUND_FAILURES_MAX = 20


def vouched_height(heights: Iterable[int], f: int) -> int:
    """The highest height at least f+1 peers report (so at least one honest peer has it)."""
    ordered = sorted(heights, reverse=True)
    return ordered[f] if len(ordered) > f else 0


class CatchUpError(Exception):
    pass


def check_entries(
    items: list[Any], from_seq: int
) -> tuple[list[FetchedEntry], dict[bytes, tuple[Transaction, ...]]]:
    """Decode and check a peer's ``get_blocks`` answer (blocking: run in a thread)."""
    entries: list[FetchedEntry] = []
    txs: dict[bytes, tuple[Transaction, ...]] = {}
    expected = from_seq
    for item in items:
        if not (isinstance(item, list) and len(item) == 3 and item[0] == expected):
            raise CatchUpError("entries out of order")
        _, raw_block, raw_cert = item
        if not isinstance(raw_block, bytes) or not isinstance(raw_cert, bytes):
            raise CatchUpError("entry fields are not bytes")
        try:
            block = Block.decode(raw_block)
            cert = CommitCertificate.decode(raw_cert)
        except CodecError as exc:
            raise CatchUpError(f"entry {expected}: {exc.reason}") from None
        hashes = block.tx_hashes
        if not header_matches_certificate(block.header, hashes, cert.seq, cert.digest):
            raise CatchUpError(f"entry {expected}: block does not match its certificate")
        proposal = block.proposal()
        payload = proposal.encode() if proposal is not None else b""
        entries.append(FetchedEntry(seq=expected, payload=payload, certificate=raw_cert))
        txs[cert.digest] = block.txs
        expected += 1
    return entries, txs


class CatchUp:
    def __init__(
        self,
        p2p: P2P,
        head: Callable[[], int],
        deliver: Deliver,
        wait_head: Callable[[int, float], Awaitable[bool]],
        batch_blocks: int,
        timeout_s: float,
        metrics: Any,
        f: int = 0,
    ) -> None:
        self._f = f  # how many peers may lie about their height
        self._p2p = p2p
        self._head = head
        self._deliver = deliver
        self._wait_head = wait_head
        self._batch = batch_blocks
        self._timeout_s = timeout_s
        self._metrics = metrics
        self.target = 0
        self._hints: tuple[int, ...] = ()
        self.peer_heights: dict[int, int] = {}
        self._wake = asyncio.Event()

    @property
    def syncing(self) -> bool:
        return self.target > self._head()

    def want(self, to_seq: int, peers: tuple[int, ...] = ()) -> None:
        if to_seq > self.target:
            self.target = to_seq
        if peers:
            self._hints = peers
        self._wake.set()

    def on_status(self, peer: int, height: int, slack: int) -> None:
        """A peer's head; fetch when f+1 peers are more than ``slack`` blocks ahead of ours.

        One peer alone is not believed: a faulty one reporting height 2**63 would otherwise keep
        this node "syncing" (not ready) forever, fetching blocks nobody has.
        """
        self.peer_heights[peer] = height
        vouched = vouched_height(self.peer_heights.values(), self._f)
        if vouched > self._head() + slack:
            self.want(vouched)

    def _candidates(self, next_seq: int) -> list[int]:
        connected = set(self._p2p.peers())
        ahead = sorted(
            (p for p, h in self.peer_heights.items() if h >= next_seq and p in connected),
            key=lambda p: -self.peer_heights[p],
        )
        hinted = [p for p in self._hints if p in connected and p not in ahead]
        return hinted + ahead if self._hints else ahead + hinted

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            failures = 0
            while self._head() < self.target and failures < ROUND_FAILURES_MAX:
                if not await self._one_round():
                    failures += 1
                    await asyncio.sleep(min(0.1 * failures, 1.0))
            if failures >= ROUND_FAILURES_MAX:
                # Nobody could serve the target: forget it rather than stay "syncing" for good.
                # A real gap comes back (the core's FetchBlocks, f+1 peers' status frames).
                log.warning("catchup_gave_up", extra={"height": self._head(), "to": self.target})
                self.target = self._head()
            self._set_syncing()

    def _set_syncing(self) -> None:
        try:
            self._metrics.syncing.set(1 if self.syncing else 0)
        except AttributeError:
            pass

    async def _one_round(self) -> bool:
        self._set_syncing()
        start = self._head() + 1
        end = min(self.target, start + self._batch - 1)
        for peer in self._candidates(start):
            try:
                body = await self._p2p.request(
                    peer, "get_blocks", {"from": start, "to": end}, self._timeout_s
                )
                items = body.get("entries")
                if not isinstance(items, list) or not items:
                    continue
                entries, txs = await asyncio.to_thread(check_entries, items, start)
            except (PeerError, CatchUpError) as exc:
                log.info("catchup_peer_failed", extra={"peer": peer, "error": str(exc)})
                continue
            await self._deliver(entries, txs)
            last = entries[-1].seq
            if not await self._wait_head(last, self._timeout_s * 2):
                log.warning("catchup_not_applied", extra={"peer": peer, "to": last})
                return False
            try:
                self._metrics.catchup_blocks_total.inc(len(entries))
            except AttributeError:
                pass
            return True
        return False
