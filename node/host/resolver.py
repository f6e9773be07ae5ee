"""Transactions behind proposals: validation of proposed blocks, tx lookup and peer fetches.

A PRE-PREPARE carries tx hashes only (docs/architecture.md). A backup resolves them from its
mempool, fetches the missing ones from the proposer (or any peer) in one request, verifies their
signatures off the loop, then applies the block validity rules. Resolved tx lists are kept per
digest until their seq commits, so the commit path needs no second lookup. The hashes in
uncommitted proposals are "in flight": they may not appear in another uncommitted proposal.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from common import codec
from common.codec import CodecError, sha256
from consensus.api import NULL_DIGEST, Reproposed
from node.chain.block import BLOCK_TXS_MAX, Proposal
from node.chain.chain import PROPOSAL_TXS_KEY
from node.chain.ledger import BlockInvalid, check_block_stateless, check_proposal
from node.chain.mempool import Mempool
from node.chain.tx import Transaction, tx_hash_of
from node.host.admission import checked_txs
from node.host.ports import Arrivals, ChainReader, PeerRequester
from node.host.signals import ProposalBodies
from node.net.p2p import PeerError

log = logging.getLogger(__name__)

STATUS_CACHE_MAX = 100_000
# Meta key of the tx bodies of a proposal we voted for or made: written before the vote leaves,
# so a cluster that crashes between commit and execution can still execute (hashes alone in the
# consensus log would not be enough). Deleted in the block's own commit batch.


def proposal_txs_key(digest: bytes) -> bytes:
    return PROPOSAL_TXS_KEY + digest


FETCH_RETRY_S = 0.2
# How long a backup waits for txs of a proposal that are in the batch its admission is checking
# (node/host/admission.py ``settled``) before it checks them itself; a batch is at most 512 txs.
ARRIVAL_WAIT_S = 0.5


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    """The settings the resolver checks proposals and serves peers with (node/host/config.py)."""

    index: int  # ours: the proposer of our proposals
    chain_id: str
    primary: Callable[[int], int]  # view -> its primary (consensus ConsensusConfig.primary)
    block_txs_max: int
    catchup_batch_blocks: int
    msg_bytes_max: int
    timeout_s: float  # a request to one peer


class TxResolver:
    def __init__(
        self,
        cfg: ResolverConfig,
        mempool: Mempool,
        chain: ChainReader,
        p2p: PeerRequester,
        bodies: ProposalBodies,
    ) -> None:
        self._cfg = cfg
        self._mempool = mempool
        self._chain = chain
        self._p2p = p2p
        self._bodies = bodies  # proposal txs, durable with the driver's write before the vote
        self._timeout_s = cfg.timeout_s
        # seq -> (digest, tx hashes, view) of proposals we made or validated, not yet committed.
        # The view matters: a proposal of an older view may never commit (a NEW-VIEW can put
        # another payload or a null request at its seq), so it must not block a newer view.
        self._uncommitted: dict[int, tuple[bytes, tuple[bytes, ...], int]] = {}
        self._resolved: dict[bytes, tuple[Transaction, ...]] = {}  # digest -> txs
        # digest -> seq it was proposed or fetched for: every seq at or below a commit is done
        # with, so _resolved stays bounded (superseded and forged entries never commit).
        self._seq_of: dict[bytes, int] = {}
        # Every tx of a body in _resolved whose signature was checked here: our proposals and
        # the proposals we validated (from the mempool, our admission queue or a peer, each
        # verified). Bodies of blocks fetched by catch-up are not: their certificates are
        # checked by the core only after they are added, so a faulty peer could slip a tx
        # with a bad signature in under a made-up certificate (``_unchecked``).
        self._by_hash: dict[bytes, Transaction] = {}
        self._unchecked: set[bytes] = set()  # digests in _resolved whose txs are not in _by_hash
        self.status: OrderedDict[bytes, tuple[str, str]] = OrderedDict()  # hash -> status, reason
        # The highest view we entered: a record of an older view arriving late (a validation
        # that finished after the view change) would hold its txs in flight for nothing.
        self._view = 0
        self._live: frozenset[bytes] | None = None  # uncommitted_hashes(), None when stale
        self.arrivals: Arrivals | None = None  # the admission, set by the wiring

    # --- bookkeeping ------------------------------------------------------------------------

    def uncommitted_hashes(self) -> frozenset[bytes]:
        """Every tx hash in an uncommitted proposal we know of (cached until records change:
        admission asks for every batch it admits)."""
        if self._live is None:
            self._live = frozenset(h for _, hashes, _ in self._uncommitted.values() for h in hashes)
        return self._live

    def in_flight(self, hashes: Iterable[bytes]) -> list[bytes]:
        """Those of ``hashes`` that sit in an uncommitted proposal of the current view."""
        live = self.uncommitted_hashes()
        return [h for h in hashes if h in live]

    def _record(self, seq: int, digest: bytes, txs: tuple[Transaction, ...], view: int) -> bool:
        """Note a proposal we made or validated: its txs are in flight. False if stale.

        A record of a view older than the one we are in is dropped (its seq may never commit:
        a NEW-VIEW re-proposed or null-filled it, and ``on_view_change`` already ran), and so is
        one that would replace a record of a newer view at the same seq.
        """
        known = self._uncommitted.get(seq)
        if view < self._view or (known is not None and known[2] > view):
            self._add(digest, txs, seq)  # the bodies may still be needed if it commits
            return False
        hashes = tuple(tx.hash for tx in txs)
        self._uncommitted[seq] = (digest, hashes, view)
        self._live = None
        self._add(digest, txs, seq)
        self._mempool.mark_inflight(hashes)
        return True

    def on_view_change(self, view: int, reproposed: Sequence[Reproposed]) -> list[Transaction]:
        """Entered ``view``: forget in-flight records of older views, keep the NEW-VIEW's.

        Records of older views would otherwise hold their txs "in flight" (so a new primary never
        proposes them) and make us refuse the new primary's proposals of the same txs as replays,
        while their seq may never commit: that stalled a cluster after two view changes.
        ``reproposed`` are the NEW-VIEW's PRE-PREPAREs (``ViewChanged.reproposed``); their txs
        stay in flight, so the new primary's duplicates are still refused.
        Tx bodies stay cached by digest: an old-view payload may still commit.

        Returns the txs of the abandoned proposals (older views, not re-proposed): the caller
        puts back into the mempool those it does not hold, so that whichever node is primary
        now can propose them (a tx may have reached us only inside a proposal).
        """
        head = self._chain.height
        self._view = max(self._view, view)
        dropped = [r for s, r in self._uncommitted.items() if r[2] < view and s > head]
        self._uncommitted = {s: r for s, r in self._uncommitted.items() if r[2] >= view}
        self._live = None
        for pp in reproposed:
            if pp.seq <= head or pp.digest == NULL_DIGEST or not pp.payload:
                continue
            try:
                hashes = Proposal.decode(pp.payload).tx_hashes
            except CodecError:
                continue
            self._uncommitted[pp.seq] = (pp.digest, tuple(hashes), view)
            self._live = None
        live = self.uncommitted_hashes()
        abandoned: dict[bytes, Transaction] = {}
        for _, hashes, _ in dropped:
            for h in hashes:
                tx = self._by_hash.get(h)
                if tx is not None and h not in live:
                    abandoned[h] = tx
        return list(abandoned.values())

    def _persist(self, seq: int, digest: bytes, txs: tuple[Transaction, ...]) -> None:
        """Hand the txs to the driver's next log write, which precedes our message for them."""
        data = codec.encode([tx.encode() for tx in txs])
        self._bodies.add(seq, proposal_txs_key(digest), data)

    def _stored(self, digest: bytes) -> tuple[Transaction, ...] | None:
        chain = self._chain
        raw = chain.store.meta_get(proposal_txs_key(digest))
        if raw is None:
            return None
        try:
            return tuple(Transaction.decode(r) for r in codec.decode(raw))
        except (CodecError, TypeError):
            return None

    async def proposal(
        self, view: int, seq: int, txs: list[Transaction], timestamp_ms: int
    ) -> bytes:
        """The payload the primary proposes for ``seq`` (its txs go with the driver's write that
        precedes the PRE-PREPARE)."""
        p = Proposal(seq, self._cfg.index, timestamp_ms, tuple(tx.hash for tx in txs))
        payload = p.encode()
        self._record(seq, sha256(payload), tuple(txs), view)  # stale: the core drops it too
        self._persist(seq, sha256(payload), tuple(txs))
        return payload

    def _add(
        self, digest: bytes, txs: tuple[Transaction, ...], seq: int, checked: bool = True
    ) -> None:
        """Keep a body for ``digest``; ``checked``: its txs' signatures were verified here."""
        if not checked and digest in self._resolved and digest not in self._unchecked:
            return  # already held, checked
        self._resolved[digest] = txs
        self._seq_of[digest] = max(seq, self._seq_of.get(digest, 0))
        if not checked:
            self._unchecked.add(digest)
            return
        self._unchecked.discard(digest)
        for tx in txs:
            self._by_hash[tx.hash] = tx

    def committed(self, seq: int, digest: bytes) -> bool:
        """Forget what ``seq`` (and anything below) needed; True if our record for seq lost."""
        superseded = seq in self._uncommitted and self._uncommitted[seq][0] != digest
        done = [digest] + [self._uncommitted.pop(s)[0] for s in list(self._uncommitted) if s <= seq]
        self._live = None
        done += [d for d, s in self._seq_of.items() if s <= seq]
        gone: set[bytes] = set()
        for d in done:
            self._seq_of.pop(d, None)
            self._unchecked.discard(d)
            for tx in self._resolved.pop(d, ()):
                self._by_hash.pop(tx.hash, None)
                gone.add(tx.hash)
        if gone:  # a tx may also sit in a live proposal (re-proposed in a later view)
            for d, txs in self._resolved.items():
                if d in self._unchecked:
                    continue
                for tx in txs:
                    if tx.hash in gone:
                        self._by_hash[tx.hash] = tx
        return superseded

    def known(self, tx_hash: bytes) -> bool:
        return tx_hash in self._by_hash

    def verified(self, tx_hash: bytes) -> Transaction | None:
        """A tx of a proposal body we hold whose signature was checked here: admission need
        not check it again."""
        return self._by_hash.get(tx_hash)

    def add_fetched(
        self, txs: dict[bytes, tuple[Transaction, ...]], seqs: dict[bytes, int]
    ) -> None:
        """Txs of fetched blocks by payload digest; ``seqs`` gives each digest's seq. Kept for
        their commit only (``for_commit`` by digest, once the core has checked the certificate):
        their signatures are not checked, so they serve no lookup by hash."""
        for digest, block_txs in txs.items():
            self._add(digest, block_txs, seqs.get(digest, self._chain.height + 1), checked=False)

    def dropped(self, tx_hash: bytes, reason: str) -> None:
        self._set_status(tx_hash, "rejected", reason)

    def _set_status(self, tx_hash: bytes, status: str, reason: str) -> None:
        self.status[tx_hash] = (status, reason)
        if len(self.status) > STATUS_CACHE_MAX:
            self.status.popitem(last=False)

    # --- lookups ----------------------------------------------------------------------------

    def lookup(self, tx_hash: bytes) -> Transaction | None:
        entry = self._mempool.get(tx_hash)
        return entry.tx if entry is not None else self._by_hash.get(tx_hash)

    async def _fetch(self, hashes: list[bytes], peers: list[int]) -> dict[bytes, Transaction]:
        """Ask peers (in order) for txs; returns the verified ones found."""
        found: dict[bytes, Transaction] = {}
        for peer in peers:
            missing = [h for h in hashes if h not in found]
            if not missing:
                break
            try:
                body = await self._p2p.request(
                    peer, "get_txs", {"hashes": missing}, self._timeout_s
                )
            except PeerError:
                continue
            raws = body.get("txs")
            if not isinstance(raws, list):
                continue
            wanted = set(missing)
            found.update(
                await _verified(
                    [r for r in raws if isinstance(r, bytes) and tx_hash_of(r) in wanted]
                )
            )
        return found

    async def _resolve(
        self, hashes: tuple[bytes, ...], first_peer: int | None
    ) -> list[Transaction | None]:
        """The txs of a proposal: from the mempool or our proposal bodies; those in the batch
        our admission is checking, once it is done (``settled``, bounded); those still queued
        there, checked here rather than waited for (``queued``); the rest from peers (the
        proposer first)."""
        txs = [self.lookup(h) for h in hashes]
        missing = [h for h, tx in zip(hashes, txs, strict=True) if tx is None]
        arrivals = self.arrivals
        if missing and arrivals is not None:
            await arrivals.settled(missing, ARRIVAL_WAIT_S)  # the batch being admitted only
            pairs = zip(hashes, txs, strict=True)
            txs = [self.lookup(h) if tx is None else tx for h, tx in pairs]
            missing = [h for h, tx in zip(hashes, txs, strict=True) if tx is None]
            queued = arrivals.queued(missing)
            if queued:
                found = await _verified(list(queued.values()))
                txs = [
                    tx if tx is not None else found.get(h)
                    for h, tx in zip(hashes, txs, strict=True)
                ]
                missing = [h for h, tx in zip(hashes, txs, strict=True) if tx is None]
        if missing:
            peers = self._p2p.peers()
            if first_peer is not None and first_peer in peers:
                peers = [first_peer] + [p for p in peers if p != first_peer]
            found = await self._fetch(missing, peers)
            txs = [
                tx if tx is not None else found.get(h) for h, tx in zip(hashes, txs, strict=True)
            ]
        return txs

    # --- validation and commit --------------------------------------------------------------

    def _moot(self, view: int, seq: int) -> bool:
        """Whether a verdict for (view, seq) no longer matters: the seq is already executed
        here, or we left ``view``. The core ignores such a verdict (or it changes nothing), so it
        must neither be logged as an invalid proposal nor leave an in-flight record behind.
        """
        return seq <= self._chain.height or view < self._view

    async def validate(self, view: int, seq: int, digest: bytes, payload: bytes) -> bool:
        """The Verdict for a proposed payload (docs/architecture.md, execution rule).

        Resolving txs may wait for a fetch from the primary. Meanwhile the seq may commit here
        (2f+1 others voted it) and be executed, or a view change may pass: its txs then look
        "already committed" or the record looks stale. Both used to end as a false
        ``proposal_invalid reason=replay`` (issue 11): such a verdict is moot and is not logged.
        """
        cfg = self._cfg
        if digest == NULL_DIGEST or not payload:
            return digest == NULL_DIGEST and not payload
        try:
            proposal = check_proposal(payload, seq, cfg.primary(view), cfg.block_txs_max)
            txs = await self._resolve(proposal.tx_hashes, proposal.proposer)
            if self._moot(view, seq):
                return await self._moot_verdict(seq, digest)
            check_block_stateless(
                proposal,
                txs,
                cfg.chain_id,
                is_committed=self._chain.is_committed,
                verify_signatures=False,  # mempool and fetched txs were verified on the way in
            )
            mine = set(proposal.tx_hashes)
            for other, (_, hashes, rec_view) in self._uncommitted.items():
                # Only records of this view count: older ones may be superseded (on_view_change).
                if other != seq and rec_view >= view and mine.intersection(hashes):
                    raise BlockInvalid("replay", f"tx already proposed at seq {other}")
        except BlockInvalid as exc:
            if exc.reason == "replay" and self._moot(view, seq):  # executed here meanwhile
                return await self._moot_verdict(seq, digest)
            log.warning(
                "proposal_invalid",
                extra={"seq": seq, "view": view, "reason": exc.reason, "detail": exc.detail},
            )
            return False
        resolved = tuple(tx for tx in txs if tx is not None)
        self._record(seq, digest, resolved, view)
        self._persist(seq, digest, resolved)
        return True

    async def _moot_verdict(self, seq: int, digest: bytes) -> bool:
        """Whether ``digest`` is what we executed at ``seq`` (False for a view we left: the
        core ignores that verdict anyway). Nothing is recorded in flight."""
        chain = self._chain
        if seq > chain.height:
            return False
        header = await asyncio.to_thread(chain.header, seq)
        return header is not None and header.payload_digest == digest

    async def for_commit(self, seq: int, digest: bytes, payload: bytes) -> tuple[Transaction, ...]:
        """The txs of a committed payload; fetched from peers until found (they must exist)."""
        if not payload:
            return ()
        cached = self._resolved.get(digest)
        if cached is not None:
            return cached
        stored = await asyncio.to_thread(self._stored, digest)
        if stored is not None:
            return stored
        proposal = Proposal.decode(payload)
        while True:
            txs = await self._resolve(proposal.tx_hashes, proposal.proposer)
            if all(tx is not None for tx in txs):
                return tuple(tx for tx in txs if tx is not None)
            log.warning("commit_txs_missing", extra={"seq": seq})
            await asyncio.sleep(FETCH_RETRY_S)

    # --- serving peers ----------------------------------------------------------------------

    async def serve_get_txs(self, body: dict[str, Any]) -> dict[str, Any]:
        hashes = body.get("hashes")
        if not isinstance(hashes, list) or len(hashes) > BLOCK_TXS_MAX:
            return {"error": "bad_request"}
        out: list[bytes] = []
        missing: list[bytes] = []
        for h in hashes:
            if not isinstance(h, bytes):
                continue
            tx = self.lookup(h)
            if tx is not None:
                out.append(tx.encode())
            else:
                missing.append(h)
        if missing:
            out.extend(await asyncio.to_thread(self._committed_txs, missing))
        return {"txs": out}

    def _committed_txs(self, hashes: list[bytes]) -> list[bytes]:
        """Encoded committed txs by hash (worker thread): each block read and decoded once."""
        chain = self._chain
        wanted: dict[int, list[int]] = {}
        for h in hashes:
            loc = chain.store.get_tx_location(h)
            if loc is not None:
                wanted.setdefault(loc[0], []).append(loc[1])
        out: list[bytes] = []
        for height, indexes in wanted.items():
            raws = chain.tx_raws(height)
            if raws is not None:
                out.extend(raws[i] for i in indexes if i < len(raws))
        return out

    async def serve_get_blocks(self, body: dict[str, Any]) -> dict[str, Any]:
        start, end = body.get("from"), body.get("to")
        if not isinstance(start, int) or not isinstance(end, int) or start < 1 or end < start:
            return {"error": "bad_request"}
        chain = self._chain
        # Clamp to what exists: a range of 2**63 blocks reads at most one batch of real ones.
        end = min(end, start + self._cfg.catchup_batch_blocks - 1, chain.height)
        if end < start:
            return {"entries": []}
        budget = self._cfg.msg_bytes_max // 2

        def read() -> list[list[Any]]:
            out: list[list[Any]] = []
            size = 0
            for height, block, cert in chain.store.blocks(start, end):
                size += len(block) + len(cert) + 16
                if out and size > budget:
                    break
                out.append([height, block, cert])
            return out

        return {"entries": await asyncio.to_thread(read)}


async def _verified(raws: list[bytes]) -> dict[bytes, Transaction]:
    """The raw txs that decode and carry a valid signature, by hash."""
    return {tx.hash: tx for tx in await checked_txs(raws) if isinstance(tx, Transaction)}
