"""The consensus driver: the task that owns the ``Replica``, and the tasks that feed its inbox.

Each task takes the narrow parts it uses (node/host/runtime.py wires them). One task owns the
replica and is fed by a bounded queue; ``step`` is never
re-entered. It drains what is queued, steps each event, then performs the collected actions in
order with one twist that keeps the rule "a Persist is durable before any later send": all
Persist records of the round are written in one durable batch first, then sends and the rest
follow in order. The same batch carries the txs of the payloads we propose or are about to
vote for (``ProposalBodies``: the resolver adds them before the event that leads to the vote),
so they are durable before the PRE-PREPARE or PREPARE for them leaves. A round whose actions
tell nobody anything (only ``Validate``, ``Dropped``, ``SetTimer``, ``RequestProposal``: a
backup's PRE-PREPARE accepted, say) writes nothing: its records are written with the next round
that sends or commits, in the same batch and before any of its actions, so the rule still holds.
Lost in a crash, such records promised nothing to anybody (a backup that has not voted may
forget a PRE-PREPARE). A backup's block costs two fsyncs and two thread hand-offs fewer.
``perform`` matches every ``Action`` type (``assert_never``): the core tells the host
everything, including the re-proposed entries of a view change (``ViewChanged.reproposed``; the
host never decodes consensus messages for its own bookkeeping). The feeders: a ticker (time
and the "pending work" flag), the proposer (our proposals when primary), validation tasks
(verdicts on the primary's proposals), the committer (``Applied(seq)`` once a block is durable,
node/host/committer.py) and the status loop and frames (``PeerStatus`` per peer status frame;
gaps the core cannot see on an idle cluster, node/net/peerwatch.py; readiness,
node/host/health.py).

The host holds nothing back and fakes nothing: CHECKPOINT votes wait for ``Applied`` inside the
core, and a replica in a stale or lone view acts on ``PeerStatus`` there (docs/consensus.md, host
contract), where the simulator exercises both rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, assert_never

from consensus.api import (
    Action,
    Applied,
    Broadcast,
    Clock,
    Commit,
    Dropped,
    Event,
    FetchBlocks,
    PeerStatus,
    Persist,
    Propose,
    RequestProposal,
    Send,
    SetTimer,
    Tick,
    Validate,
    Verdict,
    ViewChanged,
)
from consensus.replica import Replica
from node.chain.mempool import Mempool
from node.host.health import Health
from node.host.metrics import Metrics
from node.host.ports import PeerSender
from node.host.resolver import TxResolver
from node.host.signals import Head, Inbox, PendingFlag, ProposalBodies, ProposalQueue
from node.host.signguard import SignGuard, guard_round
from node.host.syncwrite import SyncWriter
from node.host.txflow import TxFlow
from node.net.peerwatch import PeerWatch

log = logging.getLogger(__name__)

ROUND_EVENTS_MAX = 256
DEFERRED_RECORDS_MAX = 256  # records held back for the next write (``_BEFORE_DURABLE``) at most
# A round whose proposal tx bodies are larger is written in the consensus-log thread, never on
# the loop (node/host/syncwrite.py); a light-load round's few bodies are written inline.
INLINE_BODIES_BYTES_MAX = 64 * 1024
# Actions that may be carried out before the round's Persist records are durable: none of them
# reaches a peer or the chain (the module docstring).
_BEFORE_DURABLE = (Persist, Validate, Dropped, SetTimer, RequestProposal)
STATUS_EVERY_S = 1.0


class ViewSource(Protocol):
    """The replica as the feeders see it: its current view, read only."""

    @property
    def view(self) -> int: ...


class LogWriter(Protocol):
    """The consensus log of storage/db.py ``Store``."""

    def log_write(
        self,
        records: Sequence[tuple[bytes, bytes | None]],
        meta: Sequence[tuple[bytes, bytes]] = (),
    ) -> None: ...


class FetchPlanner(Protocol):
    """Catch-up as the core's ``FetchBlocks`` and the peer watch drive it (node/net/catchup.py)."""

    def want(self, to_seq: int, peers: tuple[int, ...] = ()) -> None: ...


# --- the core -------------------------------------------------------------------------------


class Actions:
    """Carries out the core's actions: sends, commits, proposal requests, validations, fetches."""

    def __init__(
        self,
        *,
        index: int,
        p2p: PeerSender,
        commits: asyncio.Queue[Commit],
        proposals: ProposalQueue,
        inbox: Inbox,
        txs: TxResolver,
        flow: TxFlow,
        mempool: Mempool,
        catchup: FetchPlanner,
        metrics: Metrics,
    ) -> None:
        self.index = index
        self.p2p = p2p
        self.commits = commits
        self.proposals = proposals
        self.inbox = inbox
        self.txs = txs
        self.flow = flow
        self.mempool = mempool
        self.catchup = catchup
        self.metrics = metrics
        # Validations in progress: a strong reference, so a running check is never collected.
        self.validations: set[asyncio.Task[None]] = set()

    async def perform(self, a: Action) -> None:
        """Carry out one action of the core (its Persist records are already written).

        A full commit queue makes the driver wait (back-pressure): the committer drains it.
        """
        match a:
            case Persist():
                pass  # written above, before any send of this round
            case Send(to, data):
                self.p2p.send(to, {"t": "c", "d": data})
            case Broadcast(data):
                self.p2p.broadcast({"t": "c", "d": data})
            case Commit():
                await self.commits.put(a)
            case SetTimer():
                pass  # the ticker wakes the core every tick_ms, finer than any timer we use
            case RequestProposal(view, seq, heartbeat):
                self.proposals.request(view, seq, heartbeat)
            case Validate():
                task = asyncio.create_task(self.validate(a))
                self.validations.add(task)
                task.add_done_callback(self.validations.discard)
                task.add_done_callback(_log_failure)
            case FetchBlocks(_, to_seq, peers):
                self.catchup.want(to_seq, peers)
            case ViewChanged(view, primary, reproposed):
                log.warning("view_change", extra={"view": view, "primary": primary})
                self.metrics.view_changes_total.inc()
                self.metrics.set_view(view, is_primary=primary == self.index)
                self.proposals.clear()
                # The NEW-VIEW's PRE-PREPAREs stay in flight; proposals of older views that it
                # did not re-propose are abandoned: their txs become proposable again (and
                # re-enter the mempool if they only reached us inside a proposal).
                abandoned = self.txs.on_view_change(view, reproposed)
                self.flow.readmit(abandoned)
                self.mempool.set_inflight(self.txs.uncommitted_hashes())
            case Dropped(reason):
                self.metrics.consensus_dropped_total.labels(reason=reason).inc()
            case _:
                assert_never(a)

    async def validate(self, a: Validate) -> None:
        valid = await self.txs.validate(a.view, a.seq, a.digest, a.payload)
        await self.inbox.put(Verdict(a.view, a.seq, a.digest, valid))


class Driver:
    """The task that owns the replica: step a round of queued events, persist, then act."""

    def __init__(
        self,
        *,
        replica: Replica,
        inbox: Inbox,
        log: LogWriter,
        log_writer: SyncWriter,
        sign_guard: SignGuard | None,
        index: int,
        payload_bytes_max: int,
        actions: Actions,
        health: Health,
        metrics: Metrics,
        durable_height: Callable[[], int],
        bodies: ProposalBodies,
        now_ms: Callable[[], int],
    ) -> None:
        self.replica = replica
        self.now_ms = now_ms  # the ticker's clock (monotonic milliseconds)
        self.inbox = inbox
        self.log = log
        self.log_writer = log_writer  # the consensus log's and the guard's synced writes
        self.sign_guard = sign_guard
        self.index = index
        self.payload_bytes_max = payload_bytes_max
        self.actions = actions
        self.health = health
        self.metrics = metrics
        self.durable_height = durable_height
        self.bodies = bodies
        self._applied_fed = 0
        self._applied_at = time.monotonic()
        # Records of rounds that needed none of them durable yet (``_BEFORE_DURABLE``), oldest
        # first: written with the next round's.
        self._deferred: list[tuple[bytes, bytes | None]] = []

    def _left_view(self, ev: Event) -> None:
        """We gave up on our view: say what made us (a tick is our request timer expiring; a
        peer's message, f+1 replicas already gone), how long since our last commit, and how
        much work the inbox held, so that an operator can tell a dead primary from overload."""
        log.warning(
            "view_change_started",
            extra={
                "view": self.replica.view,
                "cause": _cause(ev),
                "since_commit_ms": round((time.monotonic() - self._applied_at) * 1000),
                "inbox": self.inbox.qsize(),
            },
        )

    def _write_log(
        self, records: list[tuple[bytes, bytes | None]], meta: list[tuple[bytes, bytes]]
    ) -> None:
        """The round's Persist records and the proposal txs waiting for them, synced in one batch
        (in the consensus-log thread)."""
        with self.metrics.time_storage_write():
            self.log.log_write(records, meta)

    def _round(self, queued: list[Event]) -> list[Event]:
        """The events of one round, in the order the core steps them.

        First a ``Clock`` with the time now: the core's clock is otherwise that of its last
        Tick, which can be a second old under load, and a request timer re-armed in the round
        would run out that much early. Then our durable head (``Applied``, when it moved), then
        the queued events but Ticks, and last one Tick if any was queued: timers are checked
        after the round's progress is in. A Tick queued ahead of a commit certificate or an
        ``Applied`` fired the request timer a moment before that progress was stepped
        (since_commit_ms of 1 at a view change under overload).
        """
        now = self.now_ms()
        events: list[Event] = [Clock(now)]
        durable = self.durable_height()
        if durable > self._applied_fed:  # also when the committer found the inbox full
            self._applied_fed = durable
            self._applied_at = time.monotonic()
            events.append(Applied(durable))
        rest = [ev for ev in queued if not isinstance(ev, Tick)]
        events += rest
        if len(rest) < len(queued):
            events.append(Tick(now))
        return events

    async def run(self) -> None:
        while True:
            queued = [await self.inbox.get()]
            while len(queued) < ROUND_EVENTS_MAX and not self.inbox.empty():
                queued.append(self.inbox.get_nowait())
            events = self._round(queued)
            actions: list[Action] = []
            for ev in events:
                was_active = self.replica.view_active
                actions.extend(self.replica.step(ev))
                if was_active and not self.replica.view_active:
                    self._left_view(ev)
            records = self._deferred
            records += [r for a in actions if isinstance(a, Persist) for r in a.records]
            self._deferred = []
            refused: set[int] = set()
            if (
                records
                and len(records) <= DEFERRED_RECORDS_MAX
                and all(isinstance(a, _BEFORE_DURABLE) for a in actions)
            ):
                self._deferred = records
            else:
                # The proposal txs of our PRE-PREPARE or PREPARE of this round were added before
                # the event that led to it (node/host/signals.py ``ProposalBodies``).
                meta = self.bodies.take(self.durable_height()) if self.bodies else []
                write = functools.partial(self._write_log, records, meta)
                refused = await guard_round(  # node/host/signguard.py: durable before it leaves
                    self.sign_guard,
                    self.log_writer,
                    self.index,
                    self.payload_bytes_max,
                    self.metrics,
                    actions,
                    before=write if records or meta else None,
                    small=sum(len(raw) for _, raw in meta) <= INLINE_BODIES_BYTES_MAX,
                )
            for a in actions:
                if refused and id(a) in refused:
                    continue  # the double-sign guard holds it back
                await self.actions.perform(a)
            self.health.on_round(self.replica.view, self.replica.view_active, time.monotonic())


# --- feeders --------------------------------------------------------------------------------


async def run_ticker(
    tick_ms: int, pending: PendingFlag, inbox: Inbox, now_ms: Callable[[], int]
) -> None:
    tick_s = tick_ms / 1000
    while True:
        await asyncio.sleep(tick_s)
        pending.update()
        with contextlib.suppress(asyncio.QueueFull):
            inbox.put_nowait(Tick(now_ms()))


class Pace:
    """How long the primary leaves between two proposals: ``[block] interval_ms``, stretched
    towards the time its recent blocks took to commit (at most ``interval_max_ms``) while the
    mempool holds less than a big block.

    Every block costs each validator ~7-10 ms of CPU whatever it holds (docs/performance.md,
    stops 13 and 28). On a lightly loaded chain the pipeline keeps several blocks of a few txs
    in flight; where four validators share two slow cores that per-block work queues behind
    itself, each round takes longer, and the txs wait longer for blocks that come more often.
    Leaving about one round between proposals lets the txs that arrive meanwhile share the next
    block: measured at 100 tx/s on such a machine, 25 ms gave ~20 blocks a second and a p50
    of 240-245 ms, 100 ms less than half as many blocks and 107-115 ms. Where a round is
    shorter than ``interval_ms`` (idle cores), nothing changes. With ``STRETCH_TXS_MAX`` or
    more txs waiting the floor applies: blocks are big, their cost is spread over many txs, and
    throughput needs the pipeline. Pure: times come in as values (``time.monotonic()`` seconds).
    """

    STRETCH_TXS_MAX = 256
    WEIGHT = 0.25  # of each new round time in the running estimate
    TRACKED_MAX = 64  # proposals awaiting their commit (a view change abandons some)

    def __init__(self, interval_ms: int, interval_max_ms: int) -> None:
        self.floor_s = interval_ms / 1000
        self.ceiling_s = max(interval_max_ms, interval_ms) / 1000
        self.round_s = self.floor_s  # running estimate: own proposal to its commit
        self._proposed: dict[int, float] = {}  # seq -> when we proposed it

    def proposed(self, seq: int, at_s: float) -> None:
        self._proposed[seq] = at_s
        if len(self._proposed) > self.TRACKED_MAX:
            del self._proposed[min(self._proposed)]

    def committed(self, height: int, at_s: float) -> None:
        """The chain reached ``height`` at ``at_s``: a round time for each own proposal below.

        Asked when the proposer next looks, with the time of the latest advance: when several
        blocks committed since, the earlier ones are timed as late as the last (an upper bound).
        """
        for seq in sorted(s for s in self._proposed if s <= height):
            sample = max(0.0, at_s - self._proposed.pop(seq))
            self.round_s += self.WEIGHT * (sample - self.round_s)

    def interval_s(self, waiting_txs: int) -> float:
        if waiting_txs >= self.STRETCH_TXS_MAX:
            return self.floor_s
        return min(self.ceiling_s, max(self.floor_s, self.round_s))


class Proposer:
    """Fills the core's proposal requests from the mempool, at most one per block interval
    (``Pace``).

    An ordinary request waits for ready txs; a heartbeat one (``RequestProposal.heartbeat``,
    the chain idle for ``[block] empty_interval_ms``) is answered with whatever is ready, if
    nothing then with a block of zero txs: valid like any other, and committed with its
    certificate, so the chain head advances (wallets wait on it, docs/rpc.md).
    """

    def __init__(
        self,
        *,
        replica: ViewSource,
        proposals: ProposalQueue,
        mempool: Mempool,
        watch: PeerWatch,
        head: Head,
        txs: TxResolver,
        inbox: Inbox,
        block_interval_ms: int,
        block_txs_max: int,
        flush_gossip: Callable[[], None],
        block_interval_max_ms: int,
    ) -> None:
        self.replica = replica
        self.proposals = proposals
        # Sends the txs that wait in node/net/gossip.py for a fuller frame now, ahead of the
        # PRE-PREPARE on each peer's ordered link: a backup then has them (or has them in its
        # admission) when the proposal names them, instead of fetching them from us.
        self.flush_gossip = flush_gossip
        self.mempool = mempool
        self.watch = watch
        self.head = head
        self.txs = txs
        self.inbox = inbox
        self.pace = Pace(block_interval_ms, block_interval_max_ms)
        self.block_txs_max = block_txs_max

    async def run(self) -> None:
        last_s = 0.0
        # The last (view, seq) answered: a heartbeat that repeats a request we filled a moment
        # ago (our Propose still on its way to the core) is not answered twice.
        answered = (-1, 0)
        queue = self.proposals
        requests = queue.requests
        while True:
            await queue.woken()
            while requests:
                view, seq = requests[0]
                stale = view != self.replica.view or seq <= self.head.height()
                if stale or (view, seq) <= answered:
                    queue.pop()
                    continue
                heartbeat = (view, seq) in queue.heartbeats
                if not heartbeat and not self.mempool.has_ready():
                    break  # woken again by admission
                if self.watch.higher_view(view):
                    break  # f+1 peers moved on: a proposal in our stale view only strands txs
                if not self.watch.quorum_listening():
                    # A PRE-PREPARE sent now reaches too few peers to commit (links drop frames
                    # for a peer not connected). The core sends a lost one again once its slot
                    # stalls (consensus/normal.py ``resend``); this keeps a primary up before
                    # its peers from proposing into that at all (a primary up 0.5 s early sent
                    # its first heartbeat to nobody: tests/e2e/test_e2e_heartbeat.py). Asked
                    # again: the next heartbeat, the next admission, or after a view change.
                    break
                self.pace.committed(self.head.height(), self.head.advanced_s)
                interval_s = self.pace.interval_s(len(self.mempool))
                wait_s = last_s + interval_s - time.monotonic()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                    continue  # state may have changed while we slept
                txs = self.mempool.select(self.block_txs_max)
                if not txs and not heartbeat:
                    break
                queue.pop()
                self.flush_gossip()
                payload = await self.txs.proposal(view, seq, txs, int(time.time() * 1000))
                last_s = time.monotonic()
                self.pace.proposed(seq, last_s)
                answered = (view, seq)
                await self.inbox.put(Propose(view, seq, payload))


# --- status and idle catch-up ---------------------------------------------------------------


class Status:
    """Our status frame every second, idle catch-up, gap expiry and readiness reports."""

    def __init__(
        self,
        *,
        replica: ViewSource,
        head: Head,
        p2p: PeerSender,
        watch: PeerWatch,
        catchup: FetchPlanner,
        mempool: Mempool,
        txs: TxResolver,
        health: Health,
        not_ready_reason: Callable[[], str | None],
        metrics: Metrics,
        holds_sender: Callable[[bytes], bool] = lambda sender: False,
        forget: Callable[[bytes], None] = lambda tx_hash: None,
    ) -> None:
        self.replica = replica
        self.head = head
        self.p2p = p2p
        self.holds_sender = holds_sender  # the detector holds one of its txs here
        self.forget = forget  # out of the gossip seen-cache
        self.watch = watch
        self.catchup = catchup
        self.mempool = mempool
        self.txs = txs
        self.health = health
        self.not_ready_reason = not_ready_reason
        self.metrics = metrics

    def frame(self) -> dict[str, Any]:
        return {"t": "status", "height": self.head.height(), "view": self.replica.view}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            self.p2p.broadcast(self.frame())
            self.check_peers()
            self.expire_gaps()
            self.metrics.set_mempool(txs=len(self.mempool), size_bytes=self.mempool.size_bytes)
            self.report_readiness()

    def expire_gaps(self) -> None:
        """Report txs stuck behind a missing nonce as rejected (``nonce_gap``), never pending
        forever. Txs waiting behind a tx held here stay: its release or rejection decides.
        An expired tx leaves the seen-cache, so its entry node's regossip (after a release at
        that node, or once the missing nonce arrives) can bring it back."""
        expired = self.mempool.expire_gaps(
            asyncio.get_running_loop().time(), keep=self.holds_sender
        )
        for entry in expired:
            self.forget(entry.hash)
            self.txs.dropped(entry.hash, "nonce_gap")
        if expired:
            self.metrics.count_rejected("nonce_gap", len(expired))
            log.warning("txs_expired", extra={"txs": len(expired), "reason": "nonce_gap"})

    def report_readiness(self) -> None:
        """Log readiness changes with their reason (node/host/health.py), set ``vigil_ready``."""
        reason = self.not_ready_reason()
        if self.health.update(reason):
            fields = {"view": self.replica.view, "height": self.head.height()}
            if reason is None:
                log.info("ready", extra=fields)
            else:
                log.warning("not_ready", extra={**fields, "reason": reason})
        self.metrics.ready.set(1 if reason is None else 0)

    def check_peers(self) -> None:
        """Close gaps the core cannot see on an idle cluster (node/net/peerwatch.py)."""
        lag = self.watch.check(self.head.height(), self.replica.view)
        if lag.fetch_to:
            log.info("behind_peers", extra={"height": self.head.height(), "to": lag.fetch_to})
            self.catchup.want(lag.fetch_to, lag.fetch_from)
        if lag.view_behind:  # the core follows on PeerStatus; this is for the operator
            log.warning("view_behind_peers", extra={"view": self.replica.view})


# --- pure helpers ---------------------------------------------------------------------------


def _cause(ev: Event) -> str:
    """What made us leave our view, for ``view_change_started``: our request timer (a Tick),
    f+1 peers already in a later view (seen as a round's Clock or status steps the core), or
    the event's kind."""
    if isinstance(ev, Tick):
        return "timer"
    if isinstance(ev, Clock | PeerStatus):
        return "peers"
    return type(ev).__name__.lower()


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task_failed", extra={"task": task.get_name()}, exc_info=task.exception())
