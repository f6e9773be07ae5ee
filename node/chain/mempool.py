"""Transactions waiting to be ordered: admission rules, per-sender nonce order, FIFO across senders.

Admission (after the caller decoded the tx and checked its signature off the loop): chain id,
size, not already known, nonce not behind the account, no second tx with the same nonce, balance
covers amount + fee of everything the sender has pending, and the count and byte limits
(``mempool_full`` when reached). Selection for a block walks senders in arrival order and takes
each sender's txs in nonce order from the next nonce the chain will accept, skipping txs already
placed in uncommitted proposals (in flight). After each committed block the mempool drops what
the block included and rechecks the touched senders against the new state.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from node.chain.ledger import Account
from node.chain.tx import TX_BYTES_MAX, Claim, Transaction
from node.errors import (
    MEMPOOL_FULL,
    TX_BALANCE,
    TX_DUPLICATE,
    TX_INVALID,
    TX_NONCE,
    VigilError,
)

NONCE_AHEAD_MAX = 1000  # a tx this far ahead of its account is refused rather than parked
RUNNABLE_SCAN_MAX = 100_000  # ready txs ``has_runnable`` looks at (above the default txs_max)
# A tx parked behind a missing nonce this long is dropped (``nonce_gap``): its predecessor was
# lost (accepted by a node killed before gossiping it) or will never come, and nothing else would
# ever report it. Gossip to reconnecting peers fills gaps left by partitions well before this.
NONCE_GAP_TIMEOUT_S = 30.0

ReadAccount = Callable[[bytes], Account | None]


@dataclass(slots=True)
class Entry:
    tx: Transaction
    hash: bytes
    sender: bytes  # address
    size: int
    first_seen_s: float  # loop clock, for the commit-latency metric
    order: int  # arrival order, FIFO across senders


class Mempool:
    def __init__(
        self, chain_id: str, txs_max: int, bytes_max: int, read_account: ReadAccount
    ) -> None:
        self.chain_id = chain_id
        self.txs_max = txs_max
        self.bytes_max = bytes_max
        self._read_account = read_account
        self._entries: dict[bytes, Entry] = {}
        self._by_sender: dict[bytes, dict[int, Entry]] = {}
        # amount + fee of each sender's pending txs (the balance rule; kept, not summed per tx)
        self._spend: dict[bytes, int] = {}
        self._ready: OrderedDict[bytes, None] = OrderedDict()  # not in flight, arrival order
        self._inflight: set[bytes] = set()
        self._bytes = 0
        self._order = itertools.count()

    # --- queries --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._entries

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, tx_hash: bytes) -> Entry | None:
        return self._entries.get(tx_hash)

    def entries(self, limit: int) -> list[Entry]:
        """Up to ``limit`` entries in arrival order (oldest first)."""
        return list(itertools.islice(self._entries.values(), limit))

    def pending_nonces(self, sender: bytes) -> list[int]:
        """Nonces of ``sender``'s pending txs, ascending (eth_getTransactionCount "pending")."""
        return sorted(self._by_sender.get(sender, {}))

    def fills_gap(self, tx: Transaction | Claim) -> bool:
        """Whether ``tx``'s sender has a later nonce pending (parked behind this one)."""
        pending = self._by_sender.get(tx.sender_address)
        return pending is not None and max(pending) > tx.nonce

    def would_park(self, tx: Transaction | Claim) -> bool:
        """Whether ``tx`` would wait behind a missing nonce of its sender (it cannot run
        until an earlier tx arrives)."""
        return tx.nonce > self.first_gap(tx.sender_address)

    def first_gap(self, sender: bytes, after: int | None = None) -> int:
        """The first nonce of ``sender`` neither used by the chain nor pending here: its txs
        with a higher nonce wait behind it. ``after``: the first such nonce above it."""
        nonce = self._next_nonce(sender) if after is None else after + 1
        pending = self._by_sender.get(sender)
        if pending:
            while nonce in pending:
                nonce += 1
        return nonce

    def oldest_age_s(self, now_s: float) -> float:
        """How long the oldest pending tx has waited (0 when empty): entries are in
        arrival order.
        """
        oldest = next(iter(self._entries.values()), None)
        return 0.0 if oldest is None else now_s - oldest.first_seen_s

    def backlog(self, now_s: float, scan_max: int = RUNNABLE_SCAN_MAX) -> tuple[float, int]:
        """(How long the oldest tx that can run has waited, how many older txs cannot run).

        A tx can run when its nonce follows the account's without a gap (in flight or not);
        the age is 0 when none is found among the ``scan_max`` oldest. Txs parked behind a
        missing nonce, or waiting behind a tx the detector holds, are not a commit backlog:
        they cannot commit however fast the chain goes, and counting them (by age or by
        number) pushed every client back for as long as one sender's tx was held. They pile
        up at the front (the oldest), so the count of those skipped is most of them.
        """
        first_gap: dict[bytes, int] = {}
        for skipped, entry in enumerate(itertools.islice(self._entries.values(), scan_max)):
            gap = first_gap.get(entry.sender)
            if gap is None:
                gap = first_gap[entry.sender] = self.first_gap(entry.sender)
            if entry.tx.nonce < gap:
                return now_s - entry.first_seen_s, skipped
        return 0.0, min(len(self._entries), scan_max)

    def oldest_runnable_age_s(self, now_s: float, scan_max: int = RUNNABLE_SCAN_MAX) -> float:
        """The first half of ``backlog``."""
        return self.backlog(now_s, scan_max)[0]

    def crossed_ages(self, since_s: float, now_s: float, limit: int) -> list[Entry]:
        """Txs not in a proposal and not behind a nonce gap whose age passed 1, 2, 4, 8... s
        between ``since_s`` and ``now_s``: oldest first, at most ``limit``.

        Entries are kept in arrival order, so the walk stops at the first one younger than a
        second.
        """
        out: list[Entry] = []
        gaps: dict[bytes, int] = {}  # sender -> the first nonce missing from its chain here
        for entry in self._entries.values():
            before, after = since_s - entry.first_seen_s, now_s - entry.first_seen_s
            if after < 1.0:
                break
            # int(age).bit_length() is 0 below 1 s, then 1 + floor(log2(age)): it grows by one
            # exactly when the age passes a power of two.
            crossed = int(after).bit_length() > int(max(before, 0.0)).bit_length()
            if not crossed or entry.hash not in self._ready:
                continue
            # A tx behind a nonce gap is not sent: no primary can propose it before the gap
            # fills, and the filler's own gossip makes it runnable everywhere. Sent anyway, it
            # bounced: it expires here as nonce_gap after 30 s (and leaves the seen-cache), a
            # peer sends it back, it is verified, screened and parked again (160,000 such
            # expiries per node in 200 s at 1,500 tx/s offered).
            gap = gaps.get(entry.sender)
            if gap is None:
                gap = gaps[entry.sender] = self.first_gap(entry.sender)
            if entry.tx.nonce > gap:
                continue
            out.append(entry)
            if len(out) >= limit:
                break
        return out

    def has_ready(self) -> bool:
        return bool(self._ready)

    def has_runnable(self, scan_max: int = RUNNABLE_SCAN_MAX) -> bool:
        """Whether some tx not yet proposed could run now (its nonce is the sender's next).

        Txs behind a nonce gap do not count: a primary cannot propose them, so they must not
        arm the backups' request timers (that would trigger view changes forever). Each sender
        is looked at once, however many txs it has waiting: thousands of txs parked behind
        held ones sit at the front (the oldest), and a scan that gave up after 2,000 of them
        and assumed work set off a view change every request timeout on an idle cluster
        until they expired.
        """
        looked: set[bytes] = set()
        # Newest first: under load the txs just admitted can run and end the walk at once,
        # while the ones that cannot (parked, waiting behind holds) are the old ones.
        for n, tx_hash in enumerate(reversed(self._ready)):
            if n >= scan_max:
                return True  # beyond the mempool's own size: assume work
            sender = self._entries[tx_hash].sender
            if sender in looked:
                continue
            looked.add(sender)
            nonce = self._next_nonce(sender)
            pending = self._by_sender[sender]
            while nonce in pending and pending[nonce].hash in self._inflight:
                nonce += 1
            if nonce in pending and pending[nonce].hash in self._ready:
                return True
        return False

    # --- admission ------------------------------------------------------------------------

    def check(self, tx: Transaction, tx_hash: bytes) -> None:
        """Raise VigilError when ``tx`` cannot enter; the mempool is not changed."""
        if not tx.for_chain(self.chain_id):
            raise VigilError(TX_INVALID, f"wrong chain id {tx.chain_id!r}")
        size = tx.size_bytes
        if size > TX_BYTES_MAX:
            raise VigilError(TX_INVALID, "transaction too large")
        if tx_hash in self._entries:
            raise VigilError(TX_DUPLICATE, "transaction already pending")
        sender = tx.sender_address
        account = self._read_account(sender) or Account(0, 0)
        if tx.nonce < account.nonce:
            raise VigilError(
                TX_NONCE, f"nonce {tx.nonce} already used (account at {account.nonce})"
            )
        if tx.nonce > account.nonce + NONCE_AHEAD_MAX:
            raise VigilError(TX_NONCE, f"nonce {tx.nonce} too far ahead of {account.nonce}")
        pending = self._by_sender.get(sender, {})
        if tx.nonce in pending:
            raise VigilError(TX_NONCE, f"nonce {tx.nonce} already pending for this sender")
        spend = self._spend.get(sender, 0)
        if spend + tx.amount + tx.fee > account.balance:
            raise VigilError(TX_BALANCE, "balance does not cover amount + fee of pending txs")
        if len(self._entries) >= self.txs_max or self._bytes + size > self.bytes_max:
            raise VigilError(MEMPOOL_FULL, "mempool full, retry later")

    def add(self, tx: Transaction, tx_hash: bytes, now_s: float) -> Entry:
        """Check then insert; raises VigilError with the reason when refused."""
        self.check(tx, tx_hash)
        entry = Entry(tx, tx_hash, tx.sender_address, tx.size_bytes, now_s, next(self._order))
        self._entries[tx_hash] = entry
        self._by_sender.setdefault(entry.sender, {})[tx.nonce] = entry
        self._spend[entry.sender] = self._spend.get(entry.sender, 0) + tx.amount + tx.fee
        self._ready[tx_hash] = None
        self._bytes += entry.size
        return entry

    # --- block building -------------------------------------------------------------------

    def select(self, txs_max: int) -> list[Transaction]:
        """Up to ``txs_max`` txs in an order the ledger will execute, marked in flight."""
        out: list[Transaction] = []
        expected: dict[bytes, int] = {}
        for tx_hash in list(self._ready):
            if len(out) >= txs_max:
                break
            entry = self._entries[tx_hash]
            if entry.sender in expected:
                continue  # this sender's runnable chain was already taken below
            nonce = self._next_nonce(entry.sender)
            pending = self._by_sender[entry.sender]
            while len(out) < txs_max and nonce in pending:
                e = pending[nonce]
                if e.hash in self._ready:
                    out.append(e.tx)
                    self._mark_inflight(e.hash)
                nonce += 1
            expected[entry.sender] = nonce
        return out

    def _next_nonce(self, sender: bytes) -> int:
        account = self._read_account(sender)
        return account.nonce if account is not None else 0

    def _mark_inflight(self, tx_hash: bytes) -> None:
        self._ready.pop(tx_hash, None)
        self._inflight.add(tx_hash)

    def mark_inflight(self, hashes: Iterable[bytes]) -> None:
        """Txs placed in a proposal (ours or a validated one): not proposable again for now."""
        for h in hashes:
            if h in self._entries:
                self._mark_inflight(h)

    def set_inflight(self, hashes: Iterable[bytes]) -> None:
        """Make exactly ``hashes`` (txs in uncommitted proposals) in flight; others become ready.

        Called after a view change: proposals of the old view may never commit.
        """
        wanted = {h for h in hashes if h in self._entries}
        back = [h for h in self._inflight if h not in wanted]
        self._inflight = wanted
        for h in wanted:
            self._ready.pop(h, None)
        if back:
            for h in back:
                self._ready[h] = None
            # Restore arrival order so FIFO across senders still holds.
            ordered = sorted(self._ready, key=lambda h: self._entries[h].order)
            self._ready = OrderedDict.fromkeys(ordered)

    # --- parked txs -----------------------------------------------------------------------

    def expire_gaps(
        self,
        now_s: float,
        age_s: float = NONCE_GAP_TIMEOUT_S,
        keep: Callable[[bytes], bool] = lambda sender: False,
    ) -> list[Entry]:
        """Drop txs older than ``age_s`` that wait behind a missing nonce; returns them.

        Senders for which ``keep`` is true are left alone (their missing nonce is a tx the
        detector holds here: its fate decides theirs). Cheap when nothing is old: entries are
        kept in arrival order, so one look at the oldest decides. Only senders with an old entry
        read their account.
        """
        oldest = next(iter(self._entries.values()), None)
        if oldest is None or now_s - oldest.first_seen_s < age_s:
            return []
        senders = {
            e.sender
            for e in self._entries.values()
            if now_s - e.first_seen_s >= age_s and not keep(e.sender)
        }
        out: list[Entry] = []
        for sender in senders:
            pending = self._by_sender.get(sender, {})
            nonce = self.first_gap(sender)
            out.extend(
                e for n, e in pending.items() if n > nonce and now_s - e.first_seen_s >= age_s
            )
        for entry in out:
            self._remove(entry.hash)
        return out

    # --- after a commit -------------------------------------------------------------------

    def _remove(self, tx_hash: bytes) -> Entry | None:
        entry = self._entries.pop(tx_hash, None)
        if entry is None:
            return None
        self._ready.pop(tx_hash, None)
        self._inflight.discard(tx_hash)
        self._bytes -= entry.size
        pending = self._by_sender.get(entry.sender)
        if pending is not None and pending.pop(entry.tx.nonce, None) is not None:
            self._spend[entry.sender] -= entry.tx.amount + entry.tx.fee
        if pending is not None and not pending:
            del self._by_sender[entry.sender]
            self._spend.pop(entry.sender, None)
        return entry

    def remove(self, tx_hash: bytes) -> Entry | None:
        return self._remove(tx_hash)

    # --- waiting behind a held tx (the detector's quarantine) -------------------------------

    def later(self, sender: bytes, nonce: int) -> list[Entry]:
        """The sender's pending txs with a nonce above ``nonce``, in nonce order."""
        pending = self._by_sender.get(sender, {})
        return [pending[n] for n in sorted(pending) if n > nonce]

    def has_nonce(self, sender: bytes, nonce: int) -> bool:
        return nonce in self._by_sender.get(sender, {})

    def drop_after(self, sender: bytes, nonce: int) -> list[Entry]:
        """Drop the sender's txs above ``nonce`` (its tx at ``nonce`` will never commit: they
        could never run). Txs already placed in a proposal stay: that proposal decides them."""
        out = [e for e in self.later(sender, nonce) if e.hash not in self._inflight]
        for e in out:
            self._remove(e.hash)
        return out

    def on_committed(
        self, tx_hashes: Iterable[bytes], senders: Iterable[bytes]
    ) -> tuple[list[Entry], list[tuple[Entry, str]]]:
        """Drop committed txs, then recheck ``senders`` against the new state.

        Returns (entries that were committed, (entries dropped as no longer valid, reason)).
        """
        committed = [e for e in (self._remove(h) for h in tx_hashes) if e is not None]
        dropped: list[tuple[Entry, str]] = []
        for sender in set(senders):
            pending = self._by_sender.get(sender)
            if not pending:
                continue
            account = self._read_account(sender) or Account(0, 0)
            spend = 0
            for nonce in sorted(pending):
                entry = pending[nonce]
                if nonce < account.nonce:
                    dropped.append((entry, "bad_nonce"))
                    continue
                spend += entry.tx.amount + entry.tx.fee
                if spend > account.balance and entry.hash not in self._inflight:
                    dropped.append((entry, "insufficient_balance"))
                    spend -= entry.tx.amount + entry.tx.fee
        for entry, _ in dropped:
            self._remove(entry.hash)
        return committed, dropped
