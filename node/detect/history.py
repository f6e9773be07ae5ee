"""The detector's view of the chain: bounded per-sender and chain summaries, and raw feature rows.

Summaries are folded from committed blocks only (block timestamps, executed txs), so every honest
node holds the same history at a height. Txs admitted here but not yet committed form a
short-lived pending overlay that scoring also sees, so a burst is visible before it commits.
A tx's row is built from the sender's summary as it stood before the tx: ml/ turns the raw
columns into features (``ml.features.feature_rows``) and never sees a transaction.
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict, deque
from collections.abc import Collection, Sequence
from dataclasses import replace
from itertools import islice
from typing import Any, NamedTuple, Protocol

from ml.arrays import FloatArray
from ml.features import (
    FANOUT_WINDOW_MS,
    NEW_PAYEE_WINDOW_MS,
    RATE_WINDOW_MS,
    ChainHistory,
    SenderHistory,
    TxFacts,
    feature_rows,
)

SENDER_AMOUNTS_MAX = 32  # the sender's median is over its last this-many transfers
SENDER_EVENTS_MAX = 64  # timestamps/receivers kept per sender for rate and fan-out
SENDER_RECEIVERS_MAX = 256  # receivers a sender has paid, most recent kept
CHAIN_RECENT_MAX = 2048  # transfers behind the chain's median amount and fee
PENDING_SENDERS_MAX = 10_000
PACE_EVENTS_MAX = 200_000  # txs remembered for the network's pace (the last RATE_WINDOW_MS)
# The shared "no recent receivers" of a row: most senders have none in the fan-out window, and
# not making a set for each of them is measurable on the admission path. Never added to.
_EMPTY: set[bytes] = set()

RawRow = tuple[float, float, float, float, float, float, float, float, float, float]
BLOCK_INTERVALS_MAX = 64  # recent block intervals behind the chain's block interval


class TxLike(Protocol):
    """What the detector reads from a node.tx.Transaction."""

    @property
    def kind(self) -> str: ...
    @property
    def nonce(self) -> int: ...
    @property
    def fee(self) -> int: ...
    @property
    def to(self) -> bytes: ...
    @property
    def amount(self) -> int: ...
    @property
    def hash(self) -> bytes: ...
    @property
    def sender_address(self) -> bytes: ...


class HeaderLike(Protocol):
    @property
    def height(self) -> int: ...
    @property
    def timestamp_ms(self) -> int: ...


class BlockLike(Protocol):
    @property
    def header(self) -> HeaderLike: ...
    @property
    def txs(self) -> Sequence[TxLike]: ...


class TxContext(NamedTuple):
    """What a tx's reasons need besides its features, captured when it was scored."""

    amount: int
    fee: int
    is_anchor: bool
    timestamp_ms: int
    nonce: int
    tx_count: int
    median_amount: float | None
    last_timestamp_ms: int | None
    rate_timestamps_ms: tuple[int, ...]  # sorted; every event at or after now - RATE_WINDOW_MS
    recent_receivers: int
    next_nonce: int
    recent_new_payees: int = 0  # receivers new to the sender in NEW_PAYEE_WINDOW_MS, before this

    def facts(self) -> TxFacts:
        return TxFacts(self.amount, self.fee, self.is_anchor, self.timestamp_ms, self.nonce)

    def sender(self) -> SenderHistory:
        return SenderHistory(
            self.tx_count,
            self.median_amount,
            self.last_timestamp_ms,
            self.rate_timestamps_ms,
            self.recent_receivers,
            self.next_nonce,
            self.recent_new_payees,
        )


class _Account:
    __slots__ = (
        "amounts",
        "last_ms",
        "median",
        "news",
        "next_nonce",
        "ordered",
        "receivers",
        "recv_counts",
        "recvs",
        "times",
        "tx_count",
    )

    def __init__(self) -> None:
        self.tx_count = 0
        self.amounts: deque[int] = deque(maxlen=SENDER_AMOUNTS_MAX)
        self.median = math.nan  # of ``amounts``, kept on commit so scoring need not sort
        # The sender's recent events as three columns, appended together (so aligned): the
        # time, the receiver (b"" for an anchor) and whether it was the sender's first payment
        # to it. Columns, not one deque of tuples, so that a window of them is a slice found by
        # bisection and read at C speed (``TxHistory._raw``).
        self.times: deque[int] = deque(maxlen=SENDER_EVENTS_MAX)
        self.recvs: deque[bytes] = deque(maxlen=SENDER_EVENTS_MAX)
        self.news: deque[bool] = deque(maxlen=SENDER_EVENTS_MAX)
        # How often each receiver occurs in ``recvs``: its distinct receivers without building a
        # set of up to SENDER_EVENTS_MAX per scored tx, when they all fall in the fan-out window.
        self.recv_counts: dict[bytes, int] = {}
        # Event times never went down (block times normally do not): ``times`` is then sorted,
        # and each window of it is found by bisection.
        self.ordered = True
        self.receivers: OrderedDict[bytes, None] = OrderedDict()
        self.last_ms: int | None = None
        self.next_nonce = 0

    def add_event(self, timestamp_ms: int, receiver: bytes, new: bool) -> None:
        times = self.times
        if times and timestamp_ms < times[-1]:
            self.ordered = False
        times.append(timestamp_ms)
        recvs, counts = self.recvs, self.recv_counts
        if len(recvs) == recvs.maxlen:  # the oldest event leaves with this append
            gone = recvs[0]
            left = counts[gone] - 1
            if left:
                counts[gone] = left
            else:
                del counts[gone]
        recvs.append(receiver)
        counts[receiver] = counts.get(receiver, 0) + 1
        self.news.append(new)


class _Pending(NamedTuple):
    """A tx admitted here and not yet committed (a tuple: made once per scored tx)."""

    tx_hash: bytes
    timestamp_ms: int
    receiver: bytes
    nonce: int
    new: bool  # the sender had not paid this receiver before


class Pace:
    """The network's pace: txs per active sender over the last ``RATE_WINDOW_MS``.

    A sender's rate and gap are judged against it (ml/features.py), so that a load increase
    every sender shares does not look like each of them misbehaving. Events arrive in about
    time order (block times, admission times); older ones leave from the front.
    """

    __slots__ = ("_capped", "_counts", "_events", "_new", "_short", "_short_counts", "_short_new")

    def __init__(self) -> None:
        self._events: deque[tuple[int, bytes, bool]] = deque()
        self._counts: dict[bytes, int] = {}
        # The last NEW_PAYEE_WINDOW_MS alone: its txs, senders, and txs to a new receiver.
        self._short: deque[tuple[int, bytes, bool]] = deque()
        self._short_counts: dict[bytes, int] = {}
        self._short_new = 0
        # Sum over senders of min(count, SENDER_EVENTS_MAX): a sender's own recent count is read
        # from at most that many events, so the pace it is compared with is capped alike (else
        # at a pace above the cap every sender looks slower than the network).
        self._capped = 0
        self._new = 0  # txs in the window that paid a receiver new to their sender

    def add(self, timestamp_ms: int, sender: bytes, new: bool = False) -> None:
        self._events.append((timestamp_ms, sender, new))
        count = self._counts.get(sender, 0)
        self._counts[sender] = count + 1
        self._capped += count < SENDER_EVENTS_MAX
        self._new += new
        self._short.append((timestamp_ms, sender, new))
        self._short_counts[sender] = self._short_counts.get(sender, 0) + 1
        self._short_new += new
        if len(self._short) > PACE_EVENTS_MAX:
            self._pop_short()
        if len(self._events) > PACE_EVENTS_MAX:
            self._pop()

    def _pop(self) -> None:
        _, sender, new = self._events.popleft()
        self._new -= new
        self._capped -= self._counts[sender] <= SENDER_EVENTS_MAX
        left = self._counts[sender] - 1
        if left:
            self._counts[sender] = left
        else:
            del self._counts[sender]

    def _pop_short(self) -> None:
        _, sender, new = self._short.popleft()
        self._short_new -= new
        left = self._short_counts[sender] - 1
        if left:
            self._short_counts[sender] = left
        else:
            del self._short_counts[sender]

    def rate(self, now_ms: int) -> float | None:
        """Mean txs (at most SENDER_EVENTS_MAX each) per sender active in ``(now - RATE_WINDOW_MS,
        now]``; None when none was."""
        horizon = now_ms - RATE_WINDOW_MS
        events = self._events
        while events and events[0][0] <= horizon:
            self._pop()
        if not self._counts:
            return None
        return self._capped / len(self._counts)

    def new_rate(self, now_ms: int) -> float | None:
        """Txs to a receiver new to their sender, per sender active, in NEW_PAYEE_WINDOW_MS: the
        higher of that window's own ratio and the RATE_WINDOW_MS ratio scaled down to it (the
        short window alone is noisy when few senders are active); None when none was."""
        long = self.rate(now_ms)
        horizon = now_ms - NEW_PAYEE_WINDOW_MS
        short = self._short
        while short and short[0][0] <= horizon:
            self._pop_short()
        if long is None or not self._short_counts:
            return None
        scaled = self._new / len(self._counts) * NEW_PAYEE_WINDOW_MS / RATE_WINDOW_MS
        return max(self._short_new / len(self._short_counts), scaled)


class MedianWindow:
    """The last ``size`` values and their median, kept sorted as they come and go.

    ``statistics.median`` of a 2,048-value window sorted it again for every block: ~0.25 ms a
    window, twice per block, a few per cent of a validator's CPU at light load (many small
    blocks). Here a value costs two bisections and a C-level list shift; the median is exactly
    ``statistics.median``'s (the middle value, or the mean of the two middle ones).
    """

    def __init__(self, size: int) -> None:
        self._order: deque[int] = deque(maxlen=size)  # arrival order, oldest first
        self._sorted: list[int] = []

    def __len__(self) -> int:
        return len(self._order)

    def append(self, value: int) -> None:
        order = self._order
        if len(order) == order.maxlen:
            del self._sorted[bisect_left(self._sorted, order[0])]
        order.append(value)
        insort(self._sorted, value)

    def median(self) -> float | None:
        ranked = self._sorted
        n = len(ranked)
        if n == 0:
            return None
        if n % 2:
            return float(ranked[n // 2])
        return float((ranked[n // 2 - 1] + ranked[n // 2]) / 2)


def _lru_touch(table: OrderedDict[bytes, Any], key: bytes, value: Any, cap: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > cap:
        table.popitem(last=False)


class TxHistory:
    """Bounded-memory history: senders (least recent evicted), addresses seen, chain medians."""

    def __init__(self, accounts_max: int, addresses_max: int, pending_ttl_ms: int) -> None:
        self.accounts_max = accounts_max
        self.addresses_max = addresses_max
        self.pending_ttl_ms = pending_ttl_ms
        self.chain = ChainHistory()  # as of the last observed block
        self.committed_txs = 0
        self._accounts: OrderedDict[bytes, _Account] = OrderedDict()
        self._addresses: OrderedDict[bytes, None] = OrderedDict()
        self._pending: OrderedDict[bytes, deque[_Pending]] = OrderedDict()
        self._chain_amounts = MedianWindow(CHAIN_RECENT_MAX)
        self._chain_fees = MedianWindow(CHAIN_RECENT_MAX)
        self._committed_pace = Pace()  # block times of committed txs
        self._admitted_pace = Pace()  # admission times of txs scored here
        self._last_block_ms: int | None = None
        self._intervals = MedianWindow(BLOCK_INTERVALS_MAX)

    def note_addresses(self, addresses: Sequence[bytes]) -> None:
        """Addresses known before any block (genesis accounts) are not "never seen"."""
        for a in addresses:
            _lru_touch(self._addresses, a, None, self.addresses_max)

    def observe_block(
        self, block: BlockLike, receipts_ok: Sequence[bool] | None = None
    ) -> FloatArray | None:
        """Fold a committed block in; the feature rows of its executed txs (None: there are none).

        Each row sees its sender's history as of the tx before it, and the chain summary as of
        the block before this one.
        """
        now = block.header.timestamp_ms
        if receipts_ok is not None and len(receipts_ok) != len(block.txs):
            raise ValueError("receipts_ok must have one entry per tx in the block")
        raws: list[RawRow] = []
        for i, tx in enumerate(block.txs):
            sender = tx.sender_address
            self._forget_pending(sender, tx.hash)
            if receipts_ok is not None and not receipts_ok[i]:
                continue  # skipped by execution: no state change, not ordinary traffic either
            acct = self._accounts.get(sender)
            raw, _, paid = self._raw(tx, acct, (), now, with_context=False)
            raws.append(raw)
            self._apply(tx, sender, acct, now, not paid)
            self._committed_pace.add(now, sender, not paid)
        # The network's pace at the block's time, this block included (as scoring counts the
        # batch being scored): committed history only, so every node builds the same rows.
        pace = self._committed_pace
        rows = (
            feature_rows(
                raws,
                replace(self.chain, sender_rate=pace.rate(now), new_payee_rate=pace.new_rate(now)),
            )
            if raws
            else None
        )
        if not block.txs:
            # An empty block (the heartbeat of an idle chain, `[block] empty_interval_ms`, or a
            # null block) says nothing about the resolution of tx times: counted, a stream of
            # them would set the gap floor to the heartbeat period for the first blocks of load.
            return rows
        if self._last_block_ms is not None:
            self._intervals.append(max(0, now - self._last_block_ms))
        self._last_block_ms = now if self._last_block_ms is None else max(now, self._last_block_ms)
        interval = self._intervals.median()
        self.chain = ChainHistory(
            median_amount=self._chain_amounts.median(),
            median_fee=self._chain_fees.median(),
            block_interval_s=None if interval is None else interval / 1000.0,
        )
        return rows

    def scoring_chain(self, now_ms: int) -> ChainHistory:
        """The chain summary for scoring at ``now_ms``, with the network's pace right now: the
        higher of the committed and the admitted pace (either may lag: blocks behind a load
        increase, admissions after a restart)."""
        paces = (self._committed_pace, self._admitted_pace)
        rates = [r for r in (p.rate(now_ms) for p in paces) if r is not None]
        # New payees: committed only, as the training rows see them. Admitted txs include the
        # would-be holds, and a fan-out must not raise the rate it is judged against.
        return replace(
            self.chain,
            sender_rate=max(rates) if rates else None,
            new_payee_rate=self._committed_pace.new_rate(now_ms),
        )

    def admit(
        self, txs: Sequence[TxLike], now_ms: int, rows: bool
    ) -> tuple[list[RawRow], list[tuple[Any, ...]]]:
        """Each tx joins its sender's pending history. With ``rows``, also its raw row and the
        fields of its ``TxContext``, as seen just before it joined (empty lists without)."""
        raws: list[RawRow] = []
        contexts: list[tuple[Any, ...]] = []
        accounts = self._accounts
        for tx in txs:
            sender = tx.sender_address
            pending = self._pending_of(sender, now_ms)
            acct = accounts.get(sender)
            to = b"" if tx.kind != "transfer" else tx.to
            if rows:
                raw, context, paid = self._raw(tx, acct, pending, now_ms)
                raws.append(raw)
                contexts.append(context)
            else:
                paid = not to or (acct is not None and to in acct.receivers)
                paid = paid or any(p.receiver == to for p in pending)
            tx_hash = tx.hash
            # A re-delivered tx counts once.
            if not pending or all(p.tx_hash != tx_hash for p in pending):
                pending.append(_Pending(tx_hash, now_ms, to, tx.nonce, not paid))
                self._admitted_pace.add(now_ms, sender, not paid)
        return raws, contexts

    def _apply(self, tx: TxLike, sender: bytes, acct: _Account | None, now: int, new: bool) -> None:
        if acct is None:
            acct = _Account()
        _lru_touch(self._accounts, sender, acct, self.accounts_max)
        _lru_touch(self._addresses, sender, None, self.addresses_max)
        acct.tx_count += 1
        acct.last_ms = now
        acct.next_nonce = max(acct.next_nonce, tx.nonce + 1)
        self._chain_fees.append(tx.fee)
        self.committed_txs += 1
        if tx.kind == "transfer":
            acct.amounts.append(tx.amount)
            acct.median = float(statistics.median(acct.amounts))
            acct.add_event(now, tx.to, new)
            _lru_touch(acct.receivers, tx.to, None, SENDER_RECEIVERS_MAX)
            _lru_touch(self._addresses, tx.to, None, self.addresses_max)
            self._chain_amounts.append(tx.amount)
        else:
            acct.add_event(now, b"", False)

    def _forget_pending(self, sender: bytes, tx_hash: bytes) -> None:
        queue = self._pending.get(sender)
        if queue is None:
            return
        if queue and queue[0].tx_hash == tx_hash:
            queue.popleft()  # the usual case, txs commit in nonce order; a hash is queued once
        else:
            kept = [p for p in queue if p.tx_hash != tx_hash]
            if len(kept) != len(queue):
                queue.clear()
                queue.extend(kept)
        if not queue:
            del self._pending[sender]

    def _pending_of(self, sender: bytes, now_ms: int) -> deque[_Pending]:
        table = self._pending
        queue = table.get(sender)
        if queue is None:
            queue = deque(maxlen=SENDER_EVENTS_MAX)
            table[sender] = queue
            if len(table) > PENDING_SENDERS_MAX:
                table.popitem(last=False)
            return queue
        table.move_to_end(sender)
        expired = now_ms - self.pending_ttl_ms
        while queue and queue[0].timestamp_ms < expired:
            queue.popleft()
        return queue

    def _raw(
        self,
        tx: TxLike,
        acct: _Account | None,
        pending: Sequence[_Pending],
        now: int,
        with_context: bool = True,
    ) -> tuple[RawRow, tuple[Any, ...], bool]:
        """The tx's ml.features.RAW_COLUMNS as seen at ``now`` (committed history plus
        ``pending``), the fields of its ``TxContext`` (a plain tuple: cheaper to make, and
        most are never read; ``()`` without ``with_context``), and whether the sender paid this
        receiver before (anchors: True). Called once per scored and per committed tx, so it
        touches only the sender's recent events."""
        is_anchor = tx.kind != "transfer"
        to = b"" if is_anchor else tx.to
        rate_from = now - RATE_WINDOW_MS
        new_from = now - NEW_PAYEE_WINDOW_MS
        fanout_from = now - FANOUT_WINDOW_MS
        horizon = min(rate_from, fanout_from)
        last: int | None = None
        rate_ts: list[int] = []  # at or after rate_from, for the reasons
        recent = 0  # in [rate_from, now], for the feature
        new_payees = 0  # first payments to a receiver in [rate_from, now]
        # The distinct receivers in the fan-out window: ``fan`` from the committed events (may
        # hold b"", an anchor's), ``extra`` from the pending txs and not in ``fan``.
        fan: Collection[bytes] = _EMPTY
        extra: set[bytes] = _EMPTY
        if acct is not None and acct.times:
            times = acct.times
            if acct.ordered:
                # Sorted times: each window is a slice, found by bisection (the scan below gives
                # the same answer, event by event; tests/unit/detect/test_history.py).
                last = times[-1]
                n = len(times)
                i_rate = bisect_left(times, rate_from)
                j_now = n if last <= now else bisect_right(times, now)
                if i_rate < n:
                    if with_context:
                        rate_ts = list(islice(times, i_rate, None))
                    recent = max(0, j_now - i_rate)
                    i_new = bisect_left(times, new_from, i_rate)
                    if i_new < j_now:
                        new_payees = sum(islice(acct.news, i_new, j_now))
                i_fan = bisect_left(times, fanout_from)
                if i_fan == 0:  # every event is in the window
                    fan = acct.recv_counts
                elif i_fan < n:
                    fan = set(islice(acct.recvs, i_fan, None))
            else:
                last = max(times)
                distinct: set[bytes] = _EMPTY
                for t, r, new in zip(times, acct.recvs, acct.news, strict=True):
                    if t < horizon:
                        continue
                    if r and t >= fanout_from:
                        if distinct is _EMPTY:
                            distinct = set()
                        distinct.add(r)
                    if t >= rate_from:
                        rate_ts.append(t)
                        recent += t <= now
                        new_payees += new and new_from <= t <= now
                fan = distinct
        next_nonce = acct.next_nonce if acct is not None else 0
        paid = acct is not None and not is_anchor and to in acct.receivers
        for p in pending:
            t = p.timestamp_ms
            last = t if last is None else max(last, t)
            next_nonce = max(next_nonce, p.nonce + 1)
            if p.receiver == to and not is_anchor:
                paid = True
            if t >= horizon:
                if p.receiver and t >= fanout_from and p.receiver not in fan:
                    if extra is _EMPTY:
                        extra = set()
                    extra.add(p.receiver)
                if t >= rate_from:
                    rate_ts.append(t)
                    recent += t <= now
                    new_payees += p.new and new_from <= t <= now
        receivers = len(fan) - (b"" in fan) + len(extra)
        if is_anchor:
            novelty = 0.0
            fanout = receivers
        else:
            novelty = 0.0 if paid else 1.0 if to in self._addresses else 2.0
            receivers -= to != b"" and (to in fan or to in extra)  # b"": an anchor's, never counted
            fanout = receivers + (not paid)
        median = acct.median if acct is not None else math.nan
        raw = (
            float(tx.amount),
            median,
            float(tx.fee),
            math.nan if last is None else (now - last) / 1000.0,
            float(min(recent, SENDER_EVENTS_MAX)),
            novelty,
            float(fanout),
            float(tx.nonce - next_nonce),
            1.0 if is_anchor else 0.0,
            float(new_payees + (not paid and not is_anchor)),
        )
        if not with_context:
            return raw, (), paid or is_anchor
        context = (
            tx.amount,
            tx.fee,
            is_anchor,
            now,
            tx.nonce,
            acct.tx_count if acct is not None else 0,
            None if math.isnan(median) else median,
            last,
            tuple(sorted(rate_ts)) if rate_ts else (),
            receivers,
            next_nonce,
            new_payees,
        )
        return raw, context, paid or is_anchor
