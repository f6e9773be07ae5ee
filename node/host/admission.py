"""The admission path: txs from RPC and gossip are batched, verified off the loop, then admitted.

Many concurrent ``tx_submit`` calls (a JSON-RPC batch, many clients) and gossip frames land in one
bounded queue. A single task takes everything queued, decodes and checks signatures of the whole
batch in a worker thread (the expensive part), then runs the cheap stateful mempool checks on the
loop, in arrival order. Between the two sits the detector hook: a micro-batch of admissible txs
is scored together; quarantined ones from this node's clients are diverted instead of entering
the mempool (txs gossiped by other validators are scored but follow their entry node's verdict).
Admitted txs from clients are queued for gossip; txs that came by gossip are not re-forwarded
(validators form a full mesh, see node/net/gossip.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

from node.chain.mempool import Mempool
from node.chain.tx import (
    TX_BYTES_MAX,
    Claim,
    Transaction,
    claim_of,
    decode_verified,
    tx_hash_of,
)
from node.errors import MEMPOOL_FULL, OVERLOADED, TX_DUPLICATE, TX_INVALID, TX_NONCE, VigilError

log = logging.getLogger(__name__)

# At most this many txs a batch. Under overload a batch of 2,048 took ~1 s of wall time (its
# signature checks in a thread, its screening on the loop), and none of its txs reached the
# mempool before the whole batch was done: the primary sat with nothing to propose, then
# proposed 2,000 txs at once that every backup had to check before voting.
BATCH_MAX = 512
# Up to this many txs are verified on the loop (~60-120 us each): a worker thread's hand-off and
# wake-up cost more than that on a lightly loaded chain, where batches are one or two txs.
INLINE_VERIFY_MAX = 2
VERIFY_NICE = 5  # niceness increment of admission's signature-check threads (lower_thread_priority)
# Back-pressure: a client's tx is refused (``mempool_full``, retry later) while the txs waiting
# here and in the mempool would take longer than BACKLOG_S to commit at the recent commit rate
# AND the oldest of them has waited BACKLOG_S already, so saturation shows as a retryable
# error at the edge, never as commit latency that reaches the PBFT request timer (2 s by
# default) and sets off a view change. A burst the chain absorbs in time is never refused, and
# gossip never is.
BACKLOG_S = 1.0
BACKLOG_TXS_MIN = 500  # allowed whatever the rate (a quiet chain has no recent rate)
RATE_WINDOW_S = 2.0  # the commit rate is an average over about this long
AGE_REFRESH_S = 0.2  # a walk past parked txs costs ~2 ms at 10,000 of them
# Clients are pushed back while the admission queue's oldest item waited longer than this. The
# queue holds 50,000 items, gossip included: at a node's few thousand admissions a second that
# is many seconds, and under sustained overload client calls waited out their timeouts there
# (the client then resends or gives up, and every later nonce of its sender parks behind the gap).
QUEUE_WAIT_MAX_S = 0.5
# For this long after back-pressure refused a client's tx, a client's tx that would wait behind
# a missing nonce of its sender is refused too (retryable), until the missing one is pending
# here. Checked as each tx of a batch enters the mempool, so a wallet's n, n + 1 sent together
# both go in. Refused txs come back in any order: under sustained overload a later nonce got in
# while its predecessor was still being pushed back, parked, and expired (``nonce_gap``, 30 s)
# just before the predecessor made it; every later tx of that sender then parked and expired in
# turn, verified, screened and gossiped by every validator (40% of the txs admitted at 1,500
# tx/s offered). Longer than a client's pause between retries (node/tools/bench.py: at most 3 s).
PRESSURE_S = 5.0
# Clients are also pushed back for LAG_HOLD_S after the event loop ran LAG_MAX_S late (node/host/
# metrics.py samples it every 0.25 s): the node, or the machine it shares, is out of CPU, and
# every hop of a PBFT round waits for it. Under overload (5,000 wallets retrying in waves at
# 1,500 tx/s offered, 2 cores) the loop ran 0.3-1.5 s late a hundred times in four minutes
# while neither queue nor backlog looked long yet, and a PRE-PREPARE left 1.4 s after its
# proposal: the backups' request timers ran out on a primary that was only starved.
LAG_MAX_S = 0.2
LAG_HOLD_S = 1.0
PUSHED_BACK = "mempool full (commit backlog), retry later"
QUEUED_NONCES_MAX = 50_000  # as many as the queue holds
PARKS = (
    "nonce {nonce} would wait behind a missing nonce of its sender and the node is under "
    "load: send the earlier transactions first, then retry"
)


@dataclass(slots=True)
class _Item:
    raw: bytes
    tx_hash: bytes  # of ``raw`` (node/chain/tx.py ``tx_hash_of``), taken once as it is queued
    origin: int | None  # peer index for gossip, None for a client
    future: asyncio.Future[dict[str, Any]] | None
    queued_s: float  # loop clock


@dataclass(frozen=True, slots=True)
class Screened:
    """The detector's verdict on one admissible tx.

    ``watch``: it would have been held, but the hold budget was spent; it passes, marked.
    ``blocked_by``: an earlier nonce of its sender is held here, so it waits behind that tx.
    """

    quarantined: bool
    score: float | None = None
    reasons: tuple[str, ...] = ()
    watch: bool = False
    blocked_by: bytes | None = None


class Screen(Protocol):
    """The admission policy hook (the detector): one verdict per tx, same order. ``local`` says
    which txs came from this node's clients (only those may be held: the entry's policy)."""

    def __call__(
        self, txs: Sequence[Transaction], local: Sequence[bool] | None = None
    ) -> Sequence[Screened]: ...


class Seen(Protocol):
    """What admission does with the seen-cache (node/net/gossip.py's ``SeenCache``)."""

    def add(self, key: bytes, /) -> object: ...

    def __contains__(self, key: bytes, /) -> bool: ...


class TxGossip(Protocol):
    """What admission uses of node/net/gossip.py's ``Gossip``: its seen-cache, and ``forward``
    for the txs of this node's clients."""

    @property
    def seen(self) -> Seen: ...

    def forward(self, raws: list[bytes]) -> None: ...


async def checked_txs(raws: list[bytes], pool: Executor | None = None) -> list[Transaction | str]:
    """``decode_verified`` in a worker thread of ``pool`` (None: the loop's default), or on
    the loop for a few txs."""
    if len(raws) <= INLINE_VERIFY_MAX:
        return decode_verified(raws)
    return await asyncio.get_running_loop().run_in_executor(pool, decode_verified, raws)


def lower_thread_priority() -> None:
    """A thread pool's initializer: this thread yields the CPU to the rest of the process.

    Admission's signature checks run in such threads (``Admission.verify_pool``): under
    overload the machine's cores go first to the event loops that run PBFT's rounds (and to a
    backup's checks of the txs a proposal names, in the default pool), so a wave of clients'
    txs slows admission (which then pushes clients back) instead of every round. Linux keeps a
    niceness per thread; elsewhere this changes nothing. The signature check itself releases
    the GIL (libsodium through cffi); the decode around it holds it for microseconds at a
    time, and a thread waiting for the GIL asks for it back after the switch interval (5 ms).
    So beside a loop that runs Python without pause a batch of 512 takes ~2.7 s instead of
    ~45 ms: admission yields to a saturated loop even more than the niceness asks. Checks in a
    worker process, or on the loop in chunks, avoid that but gained nothing on a shared 2-core
    machine (docs/performance.md, stop 22).
    """
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + VERIFY_NICE)


def submitted(tx_hash: bytes, verdict: Screened | None) -> dict[str, Any]:
    """``tx_submit``'s answer for an admitted tx: pending, or waiting behind a held tx."""
    out: dict[str, Any] = {"hash": "0x" + tx_hash.hex(), "status": "pending"}
    if verdict is not None and verdict.blocked_by is not None:
        out["status"] = "waiting"
        out["blocked_by"] = "0x" + verdict.blocked_by.hex()
    if verdict is not None and verdict.watch:
        out["watch"] = True
    return out


class Admission:
    def __init__(
        self,
        mempool: Mempool,
        gossip: TxGossip,
        is_committed: Callable[[bytes], bool],
        on_admitted: Callable[[list[Transaction]], None],
        on_quarantined: Callable[[Transaction, Screened], None],
        metrics: Any,
        queue_max: int = 50_000,
    ) -> None:
        self.mempool = mempool
        self.gossip = gossip
        self._is_committed = is_committed
        self._on_admitted = on_admitted
        self._on_quarantined = on_quarantined
        self._metrics = metrics
        # The admission queue, bounded (``queue_max``): a deque, so that its oldest item's age
        # is known at every submit, not only when a batch starts.
        self._queue: deque[_Item] = deque()
        self._queue_max = queue_max
        self._queue_ready = asyncio.Event()
        self.screen: Screen | None = None  # set by the detector wiring
        self.clock: Callable[[], float] = lambda: asyncio.get_running_loop().time()
        self.backlog_s = BACKLOG_S
        self._rate_txs_s = 0.0
        self._rate_at_s: float | None = None
        self._age_s = 0.0  # the oldest runnable tx's age at _age_at_s (0: none)
        self._parked = 0  # txs older than it that cannot run, at _age_at_s
        self._age_at_s: float | None = None
        self._pushed_at = -PRESSURE_S  # when back-pressure last refused a client's tx
        self._lagged_at = -LAG_HOLD_S  # when the event loop last ran LAG_MAX_S late
        # (sender, nonce) of client txs queued under pressure, until admission decodes them
        self._queued_nonces: set[tuple[bytes, int]] = set()
        # Hash -> (count, raw) of txs queued here or in the batch being admitted (a count: one
        # tx may come twice): a backup validating a proposal takes what it lacks from here.
        self._arriving: dict[bytes, tuple[int, bytes]] = {}
        # Hashes of the batch being admitted, and a future resolved when it is done: ``settled``.
        self._admitting: frozenset[bytes] = frozenset()
        self._batch_done: asyncio.Future[None] | None = None
        # The verified tx for a hash, if one is already known outside the mempool (the tx
        # resolver's proposal bodies): its signature is not checked a second time here.
        self.verified: Callable[[bytes], Transaction | None] = lambda tx_hash: None
        # Where signature checks run (node/host/runtime.py: threads of lower priority); None:
        # the loop's default executor.
        self.verify_pool: Executor | None = None

    def on_committed(self, txs: int) -> None:
        """A block with ``txs`` txs was committed: update the commit rate (moving average)."""
        now = self.clock()
        if self._rate_at_s is None:
            self._rate_at_s = now
            return
        dt = max(now - self._rate_at_s, 1e-3)
        self._rate_at_s = now
        weight = min(1.0, dt / RATE_WINDOW_S)
        self._rate_txs_s += weight * (txs / dt - self._rate_txs_s)

    def backlog_max(self) -> int:
        """How many txs may wait (queued + mempool) before clients are pushed back."""
        return max(BACKLOG_TXS_MIN, int(self._rate_txs_s * self.backlog_s))

    def _pushed_back(self, now: float | None = None) -> bool:
        if self.backlog_s <= 0:
            return False  # mempool.backlog_ms = 0: only the mempool's own limits apply
        # The oldest runnable tx is looked for at most every AGE_REFRESH_S (a scan past parked
        # txs), not on every one of thousands of submits a second; meanwhile it ages. Txs that
        # cannot run (parked, or waiting behind a held tx) count neither by age nor by number.
        if now is None:
            now = self.clock()
        if self.queue_wait_s(now) > QUEUE_WAIT_MAX_S:
            return True  # admission itself is behind: the chain's backlog is beside the point
        if now - self._lagged_at < LAG_HOLD_S:
            return True  # the loop itself is late: out of CPU
        if self._age_at_s is None or now - self._age_at_s >= AGE_REFRESH_S:
            self._age_at_s = now
            self._age_s, self._parked = self.mempool.backlog(now)
        waiting = len(self.mempool) - self._parked + len(self._queue)
        if waiting < self.backlog_max():
            return False
        return self._age_s > 0 and self._age_s + now - self._age_at_s >= self.backlog_s

    def _rejected(self, reason: str) -> None:
        with contextlib.suppress(Exception):
            self._metrics.count_rejected(reason)

    async def submit(self, raw: bytes) -> dict[str, Any]:
        """A client's tx: resolves to {"hash", "status"} or raises VigilError."""
        if len(raw) > TX_BYTES_MAX:
            self._rejected("tx_invalid")
            raise VigilError(TX_INVALID, f"transaction longer than {TX_BYTES_MAX} bytes")
        refusal = self._refusal(raw)
        if refusal is not None:
            # Refused before the signature check: under overload a refusal must cost little.
            self._rejected("mempool_full")
            raise VigilError(MEMPOOL_FULL, refusal, self._retry_after())
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if not self._enqueue(_Item(raw, tx_hash_of(raw), None, fut, self.clock())):
            raise VigilError(OVERLOADED, "admission queue full, retry later")
        try:
            return await fut
        finally:
            # A refusal's traceback holds this frame: were ``fut`` (which holds the refusal)
            # still in it, each refusal would be a reference cycle that only the collector's
            # rare full pass frees (thousands of them at a time under load).
            del fut

    def on_loop_lag(self, lag_s: float) -> None:
        """One sample of the event loop's lag (node/host/metrics.py ``watch_loop_lag``)."""
        if lag_s > LAG_MAX_S:
            self._lagged_at = self.clock()

    def queue_wait_s(self, now: float) -> float:
        """How long the oldest item still queued has waited (0 with none).

        Read live: a burst that lands while a batch of thousands is being admitted (a second
        or more under overload) is pushed back as soon as its head has waited too long, not
        only once the next batch starts.
        """
        queue = self._queue
        return now - queue[0].queued_s if queue else 0.0

    def _enqueue(self, item: _Item) -> bool:
        if len(self._queue) >= self._queue_max:
            return False
        self._queue.append(item)
        self._queue_ready.set()
        arriving = self._arriving
        count, _ = arriving.get(item.tx_hash, (0, b""))
        arriving[item.tx_hash] = (count + 1, item.raw)
        return True

    def _arrived(self, items: Sequence[_Item]) -> None:
        arriving = self._arriving
        for it in items:
            count, raw = arriving.pop(it.tx_hash, (1, b""))
            if count > 1:
                arriving[it.tx_hash] = (count - 1, raw)
        self._admitting = frozenset()
        done, self._batch_done = self._batch_done, None
        if done is not None and not done.done():
            done.set_result(None)

    def arriving(self, tx_hash: bytes) -> bool:
        """Whether the tx is queued here or being admitted (its signature check under way)."""
        return tx_hash in self._arriving

    async def settled(self, hashes: Sequence[bytes], timeout_s: float) -> None:
        """Wait until none of ``hashes`` is in the batch being admitted (its signature checks
        under way), at most ``timeout_s``; txs still waiting in the queue are not waited for.

        A backup validating a PRE-PREPARE asks this first: at max rate a third of a proposal's
        txs are in that batch (their gossip came just ahead), and checking them again meanwhile
        cost a second signature check each (~50 us of CPU per tx on every backup).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while any(h in self._admitting for h in hashes):
            left = deadline - loop.time()
            if left <= 0:
                return
            if self._batch_done is None:
                self._batch_done = loop.create_future()
            try:
                async with asyncio.timeout(left):
                    await asyncio.shield(self._batch_done)
            except TimeoutError:
                return

    def queued(self, hashes: Sequence[bytes]) -> dict[bytes, bytes]:
        """The raw bytes of those of ``hashes`` queued here or being admitted, unchecked.

        A backup validating a PRE-PREPARE takes the txs it lacks from here (and checks them
        itself) rather than wait for its admission to reach them or fetch them from the
        primary: under overload the queue holds thousands of txs, seconds of work, and a
        proposal that waited behind it reached the PBFT request timer (view changes from load
        alone). Admission later finds them verified (``verified``) and does not check their
        signatures again.
        """
        arriving = self._arriving
        out: dict[bytes, bytes] = {}
        for h in hashes:
            entry = arriving.get(h)
            if entry is not None:
                out[h] = entry[1]
        return out

    def _refusal(self, raw: bytes) -> str | None:
        """Why a client's unverified tx is pushed back now (None: it goes on). Its claims
        (sender, nonce) are checked by the normal path; one that does not decode is answered
        there too.

        Under pressure a tx that would park is refused here, before its signature check, unless
        its predecessor is queued (a wallet's n, n + 1 in one batch): the check as it enters
        the mempool decides those. Refused here, a parked tx costs a read of its sender and
        nonce (``claim_of``); refused there, a decode, a signature check and a screening too
        (half the throughput at 1,500 tx/s offered).
        """
        now = self.clock()
        pushed = self._pushed_back(now)
        if not pushed and now - self._pushed_at >= PRESSURE_S:
            self._queued_nonces.clear()  # a hint only: the mempool check stays authoritative
            return None  # the usual case: no decode here
        claim = claim_of(raw)
        if claim is None:
            return None  # the normal path says what is wrong with it
        refusal = self._push_back(claim, pushed, now)
        if refusal is not None:
            return refusal
        sender = claim.sender_address
        if self._parks(claim, now) and (sender, claim.nonce - 1) not in self._queued_nonces:
            return PARKS.format(nonce=claim.nonce)
        if len(self._queued_nonces) < QUEUED_NONCES_MAX:
            self._queued_nonces.add((sender, claim.nonce))
        return None

    def _push_back(self, tx: Transaction | Claim, pushed: bool, now: float) -> str | None:
        """Back-pressure on a client's tx: refuse new work, never a tx that fills a nonce gap
        (the later txs it unblocks already count in the backlog, and would otherwise wait there
        until they expire)."""
        if pushed and not self.mempool.fills_gap(tx):
            self._pushed_at = now
            return PUSHED_BACK
        return None

    def _parks(self, tx: Transaction | Claim, now: float) -> bool:
        """While pressure lasts (PRESSURE_S), whether a client's tx would wait behind a
        missing nonce of its sender; asked as it enters the mempool, after the earlier txs of
        its batch. (A tx that fills one gap but itself waits behind an earlier one is refused
        too: it cannot run either.)"""
        return now - self._pushed_at < PRESSURE_S and self.mempool.would_park(tx)

    def _retry_after(self) -> dict[str, int]:
        """The pause a pushed-back client is told to take (the error's data, as HTTP's
        Retry-After): about how long the backlog that refused it takes to commit. Clients that
        retried after 50 ms sent 5,000 refused txs a second at 1,500 tx/s offered."""
        return {"retry_after_ms": max(1, round(self.backlog_s * 1000))}

    def admit_released(self, tx: Transaction) -> dict[str, Any]:
        """A tx an operator released from the quarantine: into the mempool without screening.

        Raises VigilError (nonce, balance, full) and changes nothing when the mempool refuses it.
        """
        h = tx.hash
        self.mempool.add(tx, h, self.clock())
        self.gossip.seen.add(h)
        self._on_admitted([tx])
        return {"hash": "0x" + h.hex(), "status": "pending"}

    def gossiped(self, raws: list[Any], origin: int) -> None:
        """Txs from a peer; dropped silently when already seen or when the queue is full."""
        seen = self.gossip.seen
        now = self.clock()
        for raw in raws:
            if not isinstance(raw, bytes) or len(raw) > TX_BYTES_MAX:
                continue
            h = tx_hash_of(raw)
            if h in seen:
                continue
            if not self._enqueue(_Item(raw, h, origin, None, now)):
                self._rejected("admission_full")
                return

    async def run(self) -> None:
        while True:
            queue = self._queue
            while not queue:
                self._queue_ready.clear()
                await self._queue_ready.wait()
            items = [queue.popleft() for _ in range(min(len(queue), BATCH_MAX))]
            self._admitting = frozenset(it.tx_hash for it in items)
            try:
                await self._admit(items)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop admission for good
                log.exception("admission_failed")
                for it in items:
                    if it.future is not None and not it.future.done():
                        it.future.set_exception(VigilError(-32000, "admission failed"))
            finally:
                self._arrived(items)

    async def _checked(self, raws: list[bytes], hashes: list[bytes]) -> list[Transaction | str]:
        """Each raw tx decoded with its signature checked (or why not), in a worker thread but
        for a few; a tx already verified elsewhere (``verified``) is not checked again."""
        out: list[Transaction | str | None] = [self.verified(h) for h in hashes]
        todo = [raw for raw, tx in zip(raws, out, strict=True) if tx is None]
        checked = await checked_txs(todo, self.verify_pool)
        if len(checked) == len(out):
            return checked
        done = iter(checked)
        return [tx if tx is not None else next(done) for tx in out]

    def _fail(self, item: _Item, code: int, message: str, reason: str, data: Any = None) -> None:
        self._rejected(reason)
        if item.future is not None and not item.future.done():
            item.future.set_exception(VigilError(code, message, data))

    async def _admit(self, items: list[_Item]) -> None:
        # Cheap dedup first so replayed gossip and resubmissions skip signature checks.
        fresh: list[tuple[_Item, bytes]] = []
        for it in items:
            h = it.tx_hash
            if h in self.mempool or self._is_committed(h):
                self._fail(it, TX_DUPLICATE, "transaction already known", "tx_duplicate")
                continue
            fresh.append((it, h))
        if not fresh:
            return
        checked = await self._checked([it.raw for it, _ in fresh], [h for _, h in fresh])
        admissible: list[tuple[_Item, bytes, Transaction]] = []
        now = self.clock()
        queued = self._queued_nonces
        for (it, h), tx in zip(fresh, checked, strict=True):
            if isinstance(tx, str):
                self._fail(it, TX_INVALID, tx, "tx_invalid")
                continue
            if queued and it.origin is None:
                queued.discard((tx.sender_address, tx.nonce))
            try:
                self.mempool.check(tx, h)
            except VigilError as exc:
                if exc.code == TX_NONCE and self._is_committed(h):
                    # Committed while its signature was being checked (a backup's validation
                    # may take it from this queue): a duplicate, not a nonce the account has
                    # passed. Asked only here: the check before costs a LevelDB read per tx.
                    exc = VigilError(TX_DUPLICATE, "transaction already known")
                self._fail(it, exc.code, exc.message, exc.name)
                continue
            # No push-back here: a client's tx that got past ``_refusal`` into the queue is
            # admitted. Refused now, after its wait and its signature check, it cost all of
            # that for nothing and came back as a retry; under overload every node refused
            # the whole of its clients' batches this way, and no tx reached any mempool for
            # seconds (the primary proposed nothing, and the backups' timers ran out).
            admissible.append((it, h, tx))
        verdicts: Sequence[Screened] = ()
        if self.screen is not None and admissible:
            verdicts = self.screen(
                [tx for _, _, tx in admissible], [it.origin is None for it, _, _ in admissible]
            )
        now = self.clock()
        admitted: list[Transaction] = []
        forward: list[bytes] = []
        seen = self.gossip.seen
        for n, (it, h, tx) in enumerate(admissible):
            verdict = verdicts[n] if verdicts else None
            # Quarantine is the entry validator's policy: a tx that another validator admitted
            # from its own client is scored here (tx_get shows it) but not held. Divergent
            # holds would look like a censoring primary to the PBFT request timer and send a
            # lone replica into a view change the others never join.
            if verdict is not None and verdict.quarantined and it.origin is None:
                seen.add(h)
                self._on_quarantined(tx, verdict)
                if it.future is not None and not it.future.done():
                    it.future.set_result({"hash": "0x" + h.hex(), "status": "quarantined"})
                continue
            if it.origin is None and self._parks(tx, now):
                reason = PARKS.format(nonce=tx.nonce)
                self._fail(it, MEMPOOL_FULL, reason, "mempool_full", self._retry_after())
                continue
            try:
                self.mempool.add(tx, h, now)  # rechecked: an earlier tx of this batch may clash
            except VigilError as exc:
                # Not marked seen: the same tx gossiped again (node/host/txflow.py regossips
                # what waits too long) gets another chance once the mempool has room.
                self._fail(it, exc.code, exc.message, exc.name)
                continue
            seen.add(h)
            admitted.append(tx)
            if it.origin is None:
                forward.append(it.raw)
            if it.future is not None and not it.future.done():
                it.future.set_result(submitted(h, verdict))
        if forward:
            self.gossip.forward(forward)
        if admitted:
            self._on_admitted(admitted)
