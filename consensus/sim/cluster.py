"""One seed of the deterministic simulator: n replicas, a fake host each, faults, invariants.

Everything random is drawn from ``random.Random(seed)``; time is virtual. The fake host does
what node/host does: it answers ``RequestProposal`` with a small random payload (registered as
valid), ``Validate`` with ``valid=True`` exactly for registered payloads, ``FetchBlocks`` from a
peer's durable ledger; it executes each ``Commit`` into a block (``block_id``) and makes it
durable ``durable_ms_max`` later, and only then feeds ``Applied``; it broadcasts its status
(durable height, view) every ``STATUS_MS`` and feeds what it hears as ``PeerStatus``. It keeps
``Persist`` records in a dict that survives crashes; a crash loses the rest of the replica and
every block not yet durable. Invariants are checked as actions happen; liveness after GST.

In ``HEARTBEAT_SEEDS`` of the seeds (drawn from a generator of their own, so the other seeds run
exactly as before) the heartbeat is on (``empty_interval_ms``) and the workload comes and goes:
idle and busy phases for the whole cluster. A busy phase gives each host txs for 1-8 payloads
(``Pending(True)``); a host that runs dry says ``Pending(False)``. Like node/host's proposer, a
dry host holds ordinary ``RequestProposal``s (in order) until work comes, and answers a
heartbeat one at once, with an empty block (a payload of no txs) if it has nothing.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from common import codec
from common.crypto import SigningKey, verify
from consensus import messages as m
from consensus.api import (
    NULL_DIGEST,
    Action,
    Applied,
    Broadcast,
    Clock,
    Commit,
    ConsensusConfig,
    Event,
    FetchBlocks,
    Fetched,
    FetchedEntry,
    PeerStatus,
    Pending,
    Persist,
    Propose,
    Received,
    RequestProposal,
    Send,
    SetTimer,
    Tick,
    Validate,
    Verdict,
)
from consensus.certificate import CommitCertificate, verify_certificate
from consensus.guard import SignRule, describe
from consensus.replica import Replica
from consensus.sim.attack import SHARE as ATTACK_SHARE
from consensus.sim.attack import VIEW as ATTACK_VIEW
from consensus.sim.attack import StaleNewView
from consensus.sim.byzantine import BEHAVIOURS, Byzantine
from consensus.sim.network import Faults, Network

TICK_MS = 100
STATUS_MS = 50  # node/host/driver.py: every 1 s against a 4 s view-change timeout, same ratio
LIVENESS_BLOCKS = 3  # after GST every honest replica commits this many new blocks ...
LIVENESS_BOUND_MS = 30_000  # ... within this much simulated time
SIM_CONFIG = {
    "checkpoint_interval": 4,
    "pipeline_depth": 4,
    "log_window": 16,
    "request_timeout_ms": 150,
    "view_change_timeout_ms": 200,
    "payload_bytes_max": 1024,
    "message_bytes_max": 256 * 1024,
}

HEARTBEAT_SEEDS = 0.3  # the fraction of seeds with the heartbeat on and an intermittent workload
HEARTBEAT_MS = (20, 120)  # empty_interval_ms, drawn per seed (the request timeout is 150 ms)
IDLE_MS = (100, 1500)  # an idle phase of the workload, drawn per phase
BUSY_MS = (50, 500)  # a busy one
BUSY_PAYLOADS = (1, 8)  # the txs a host gets in a busy phase, in payloads

LONE_BOUND_MS = 2 * SIM_CONFIG["view_change_timeout_ms"]  # alone in a view change, at most

ReplicaFactory = Callable[..., Replica]
BlockId = Callable[[Commit, bytes], bytes]

GENESIS_BLOCK_ID = b"\x00" * 32


# The double-sign rule every honest replica's host applies (tests swap in broken ones).
guard_rule: Callable[[], SignRule] = SignRule


def block_id(c: Commit, prev: bytes) -> bytes:
    """The id of the block the host builds from ``c``: a function of what was agreed only.

    ``sha256("vigil-sim-block/v1" || seq (8 bytes BE) || prev || digest || sha256(payload))``.
    Agreed: the seq, the payload (and so its digest; a null block is ``b""`` with
    ``NULL_DIGEST``), and the previous block's id. Not agreed, so never hashed: ``c.view`` and
    ``c.certificate`` (PBFT replicas may commit one seq in different views, with different
    certificates). node/'s block header must follow the same rule: everything in it comes from
    the payload, the height and ``prev_hash`` (a null block from the height and ``prev_hash``).
    """
    return codec.sha256(
        b"vigil-sim-block/v1" + c.seq.to_bytes(8, "big") + prev + c.digest + codec.sha256(c.payload)
    )


def validator_seed(index: int) -> bytes:
    return hashlib.sha256(b"vigil-sim-validator" + index.to_bytes(2, "big")).digest()


@dataclass(frozen=True, slots=True)
class SeedResult:
    seed: int
    safety_violations: tuple[str, ...]
    liveness_failure: str | None
    blocks_committed: int
    view_changes: int  # highest view any honest replica reached
    trace_hash: str
    sim_ms: int


@dataclass(slots=True)
class Node:
    index: int
    honest: bool
    config: ConsensusConfig
    replica: Replica | None = None
    epoch: int = 0
    records: dict[bytes, bytes] = field(default_factory=dict)
    ledger: list[FetchedEntry] = field(default_factory=list)  # durable blocks
    block_ids: list[bytes] = field(default_factory=list)  # executed blocks (durable or not)
    unflushed: list[FetchedEntry] = field(default_factory=list)  # executed, not yet durable
    durable_at_ms: int = 0
    timers: set[int] = field(default_factory=set)
    held: list[tuple[int, int]] = field(default_factory=list)  # requests waiting for work
    budget: int = 0  # payloads of txs left in this busy phase (heartbeat seeds)
    # node/host/signguard.py's rule over what this replica signed; a file there, so it
    # survives crashes here too
    guard: SignRule = field(default_factory=lambda: guard_rule())


class VerifyCache:
    """Every receiver checks the same broadcast signature; the simulator checks it once."""

    def __init__(self) -> None:
        self._known: dict[tuple[bytes, bytes, bytes, bytes], bool] = {}

    def __call__(self, key: bytes, domain: bytes, message: bytes, sig: bytes) -> bool:
        k = (key, domain, message, sig)
        ok = self._known.get(k)
        if ok is None:
            ok = self._known[k] = verify(key, domain, message, sig)
        return ok


class Simulation:
    def __init__(
        self,
        seed: int,
        n: int = 4,
        factory: ReplicaFactory = Replica,
        block_id: BlockId = block_id,
    ) -> None:
        self.seed = seed
        self.block_id = block_id
        self.rng = random.Random(seed)
        self.factory = factory
        self.faults = Faults.draw(self.rng, n)
        self.net = Network(self.rng, self.faults)
        self.verify = VerifyCache()
        # The heartbeat seeds' own generator: the main one draws exactly what it drew before.
        self.workload = random.Random(f"vigil-sim-heartbeat/{seed}")
        self.heartbeat = self.workload.random() < HEARTBEAT_SEEDS
        interval = self.workload.randint(*HEARTBEAT_MS) if self.heartbeat else 0
        self.busy = not self.heartbeat  # without the heartbeat the hosts always have work
        validators = tuple(SigningKey(validator_seed(i)).public_key for i in range(n))
        self.byz_index = self.rng.randrange(n) if self.rng.random() < 0.85 else None
        self.nodes = [
            Node(
                i,
                i != self.byz_index,
                ConsensusConfig(
                    validators,
                    i,
                    validator_seed(i),
                    empty_interval_ms=interval,
                    **SIM_CONFIG,  # type: ignore[arg-type]
                ),
            )
            for i in range(n)
        ]
        self.byzantine: Byzantine | None = None
        if self.byz_index is not None:
            picked = [b for b in BEHAVIOURS if self.rng.random() < 0.4]
            if "silent" in picked and self.rng.random() < 0.5:
                picked = ["silent"]
            self.byzantine = Byzantine(
                self.nodes[self.byz_index].config,
                random.Random(self.rng.getrandbits(64)),
                frozenset(picked),
            )
        self.attack: StaleNewView | None = None
        attack_rng = random.Random(f"vigil-sim-stale-new-view/{seed}")
        if n == 4 and attack_rng.random() < ATTACK_SHARE:
            self._stage_attack(attack_rng)
        self.valid_payloads: set[bytes] = set()
        self.committed: dict[int, bytes] = {}
        self.blocks: dict[int, bytes] = {}  # height -> block id of the first honest replica
        self.lone_since: dict[int, int] = {}
        self.lone: str | None = None
        self.votes: dict[tuple[int, str, int, int], bytes] = {}
        self.violations: list[str] = []
        self.trace = hashlib.sha256()
        self.gst_heights: dict[int, int] | None = None

    def _stage_attack(self, rng: random.Random) -> None:
        """This seed plays the stale NEW-VIEW attack (consensus/sim/attack.py) instead of the
        faults drawn above: its own rng, so every other seed runs exactly as before."""
        n = len(self.nodes)
        byz = ATTACK_VIEW % n  # the primary of view 1
        victim = 0  # the primary of view 0
        lone, isolated = rng.sample([i for i in range(n) if i not in (byz, victim)], 2)
        start = rng.randint(40, 150)
        end = start + rng.randint(350, 450)
        self.faults = Faults(
            gst_ms=end + rng.randint(350, 600),
            loss=0.0,
            duplicate=0.0,
            delay_ms_max=rng.choice([5, 10, 20]),
            spike=0.0,
            partitions=(),
            crashes=(),
            mid_step_crash=0.0,
            cuts=((start, end, frozenset(range(n)) - {lone}, frozenset({lone})),),
            durable_ms_max=rng.choice([0, 2, 10]),
        )
        self.net = Network(self.rng, self.faults)
        self.byz_index = byz
        for node in self.nodes:
            node.honest = node.index != byz
        config = self.nodes[byz].config
        self.byzantine = Byzantine(config, random.Random(rng.getrandbits(64)), frozenset())
        self.attack = StaleNewView(
            config,
            random.Random(rng.getrandbits(64)),
            lone=lone,
            isolated=isolated,
            victim=victim,
            hold_retract=rng.random() < 0.5,
        )

    # --- running ----------------------------------------------------------------------------

    def run(self) -> SeedResult:
        net = self.net
        for node in self.nodes:
            self._start(node)
        for at_ms, index, down_ms in self.faults.crashes:
            net.schedule(at_ms, index, "crash", down_ms)
        net.schedule(self.faults.gst_ms, -1, "gst")
        if self.byzantine is not None:
            net.schedule(self.rng.randint(1, 50), -1, "malice")
        net.schedule(STATUS_MS, -1, "status_round")
        if self.heartbeat:
            net.schedule(self.workload.randint(*IDLE_MS), -1, "workload")
        deadline = self.faults.gst_ms + LIVENESS_BOUND_MS
        liveness: str | None = None
        while not self.violations:
            event = net.pop()
            if event is None or event.at_ms > deadline:
                liveness = self._liveness_problem()
                break
            if self.lone is not None:
                liveness = self.lone
                break
            self._handle(event.node, event.kind, event.data)
            if self.gst_heights is not None and self._live():
                break
        honest = [n for n in self.nodes if n.honest]
        return SeedResult(
            seed=self.seed,
            safety_violations=tuple(self.violations),
            liveness_failure=None if self.violations else liveness,
            blocks_committed=max(len(n.ledger) for n in honest),
            view_changes=max(n.replica.view for n in honest if n.replica is not None),
            trace_hash=self.trace.hexdigest(),
            sim_ms=net.now_ms,
        )

    def _handle(self, index: int, kind: str, data: object) -> None:
        net = self.net
        self.trace.update(f"{net.now_ms}/{index}/{kind};".encode())
        if kind == "gst":
            for node in self.nodes:
                if node.replica is None:
                    self._start(node)
            self.gst_heights = {n.index: len(n.ledger) for n in self.nodes if n.honest}
            return
        if kind == "status_round":
            self._status_round()
            net.schedule(net.now_ms + STATUS_MS, -1, "status_round")
            return
        if kind == "workload":
            self._workload()
            return
        if kind == "malice":
            assert self.byzantine is not None
            for dst, payload in self.byzantine.malice():
                net.send(self.byz_index or 0, dst, payload)
            net.schedule(net.now_ms + self.rng.randint(5, 100), -1, "malice")
            return
        node = self.nodes[index]
        if kind == "crash":
            assert isinstance(data, int)
            if node.replica is not None and net.now_ms < self.faults.gst_ms:
                self._crash(node, data)
            return
        if kind == "restart":
            if node.replica is None and data == node.epoch:
                self._start(node)
            return
        if node.replica is None:
            return
        if kind == "msg":
            assert isinstance(data, tuple)
            src, payload = data
            self.trace.update(codec.sha256(payload))
            if self.byzantine is not None and index == self.byz_index:
                self.byzantine.observe(payload)
            self._step(node, Received(src, payload))
        elif kind == "status":
            assert isinstance(data, tuple)
            src, (height, view) = data
            self._step(node, PeerStatus(src, height, view))
        elif kind == "durable":
            assert isinstance(data, tuple)
            epoch, seq = data
            if epoch == node.epoch:
                self._make_durable(node, seq)
        elif kind == "tick":
            if data is None:
                node.timers.discard(net.now_ms)
            elif data != node.epoch:
                return  # the periodic tick of an earlier incarnation
            else:
                net.schedule(net.now_ms + TICK_MS, index, "tick", node.epoch)
            self._step(node, Tick(net.now_ms))
        else:
            assert isinstance(data, tuple)
            epoch, event = data
            if epoch == node.epoch:
                self._step(node, event)

    def _start(self, node: Node) -> None:
        node.epoch += 1
        node.timers.clear()
        node.replica = self.factory(
            node.config,
            random.Random(self.rng.getrandbits(64)),
            records=sorted(node.records.items()),
            committed_seq=len(node.ledger),
            now_ms=self.net.now_ms,
            verify=self.verify,
        )
        self.net.schedule(self.net.now_ms + TICK_MS, node.index, "tick", node.epoch)
        node.held.clear()
        node.budget = 0  # restarted with an empty mempool (heartbeat seeds; unused otherwise)
        for event in (Pending(not self.heartbeat), Tick(self.net.now_ms)):
            if node.replica is not None:  # a mid-step crash may hit right away
                self._step(node, event)

    def _crash(self, node: Node, down_ms: int) -> None:
        node.replica = None
        node.epoch += 1
        node.unflushed.clear()  # not yet durable: lost with the process
        node.held.clear()
        del node.block_ids[len(node.ledger) :]
        restart_ms = min(self.net.now_ms + down_ms, self.faults.gst_ms)
        self.net.schedule(restart_ms, node.index, "restart", node.epoch)

    def _step(self, node: Node, event: Event) -> None:
        assert node.replica is not None
        if not isinstance(event, Tick | Clock):
            # The host's clock at the start of a round (here each event is a round of its own),
            # as node/host/driver.py feeds it: between ticks the core's time is not stale.
            self._step(node, Clock(self.net.now_ms))
            if node.replica is None:
                return  # crashed in that step
        actions = node.replica.step(event)
        stop = len(actions)
        if (
            actions
            and self.net.now_ms < self.faults.gst_ms
            and self.rng.random() < self.faults.mid_step_crash
        ):
            stop = self.rng.randrange(len(actions))
        for action in actions[:stop]:
            self._perform(node, action)
        if stop < len(actions):
            self._crash(node, self.rng.randint(5, 200))

    def _host_reply(self, node: Node, delay_ms_max: int, event: Event) -> None:
        at = self.net.now_ms + self.rng.randint(1, delay_ms_max)
        self.net.schedule(at, node.index, "host", (node.epoch, event))

    def _perform(self, node: Node, action: Action) -> None:
        net = self.net
        match action:
            case Persist(records):
                for key, value in records:
                    if value is None:
                        node.records.pop(key, None)
                    else:
                        node.records[key] = value
            case Send(to, data):
                if self._guarded(node, data):
                    self._watch_votes(node, data)
                    self._transmit(node, to, data)
            case Broadcast(data):
                if self._guarded(node, data):
                    self._watch_votes(node, data)
                    self._transmit(node, None, data)
            case Commit():
                self._on_commit(node, action)
            case SetTimer(at_ms):
                if at_ms not in node.timers:
                    node.timers.add(at_ms)
                    net.schedule(at_ms, node.index, "tick", None)
            case RequestProposal(view, seq, heartbeat):
                if not self.heartbeat:
                    self._propose(node, view, seq, txs=True)
                elif heartbeat:
                    if (view, seq) in node.held:
                        node.held.remove((view, seq))
                    self._propose(node, view, seq, txs=self._take(node))
                elif node.held or node.budget <= 0:
                    node.held.append((view, seq))  # node/host's proposer waits for txs
                else:
                    self._propose(node, view, seq, txs=self._take(node))
            case Validate(view, seq, digest, payload):
                if self.byzantine is not None:
                    self.valid_payloads.update(self.byzantine.alternatives)
                    self.byzantine.alternatives.clear()
                valid = payload in self.valid_payloads
                self._host_reply(node, 5, Verdict(view, seq, digest, valid))
            case FetchBlocks(from_seq, to_seq, peers):
                self._fetch(node, from_seq, to_seq, peers)
            case _:
                pass

    def _take(self, node: Node) -> bool:
        """One payload of txs from the host's budget; False (an empty block) if it has none."""
        if node.budget <= 0:
            return False
        node.budget -= 1
        if node.budget == 0:
            self._host_reply(node, 5, Pending(False))  # node/host's PendingFlag: dry
        return True

    def _propose(self, node: Node, view: int, seq: int, txs: bool) -> None:
        """The host's payload: a few txs, or none (an empty block)."""
        payload = codec.encode({"seq": seq, "txs": [self.rng.randbytes(32)] if txs else []})
        if self.byzantine is not None and not node.honest:
            if "bad_proposal" in self.byzantine.behaviours and self.rng.random() < 0.5:
                payload = b"garbage" + self.rng.randbytes(8)
            else:
                self.valid_payloads.add(payload)
        else:
            self.valid_payloads.add(payload)
        self._host_reply(node, 5, Propose(view, seq, payload))

    def _workload(self) -> None:
        """The next phase: every host's ``Pending`` follows; held requests are filled."""
        self.busy = not self.busy
        phase = BUSY_MS if self.busy else IDLE_MS
        self.net.schedule(self.net.now_ms + self.workload.randint(*phase), -1, "workload")
        for node in self.nodes:
            if node.replica is None:
                continue
            node.budget = self.workload.randint(*BUSY_PAYLOADS) if self.busy else 0
            self._step(node, Pending(self.busy))
            while node.held and node.budget > 0 and node.replica is not None:
                view, seq = node.held.pop(0)
                self._propose(node, view, seq, txs=self._take(node))

    def _transmit(self, node: Node, to: int | None, data: bytes) -> None:
        if not node.honest and self.byzantine is not None:
            sends = self.byzantine.outgoing(to, data)
        else:
            targets = [i for i in range(len(self.nodes)) if i != node.index] if to is None else [to]
            sends = [(dst, data) for dst in targets]
        attack = self.attack
        if attack is not None:
            msg = attack.observe(node.index, data)
            if self.net.now_ms < self.faults.gst_ms:
                sends = [(d, p) for d, p in sends if not attack.blocks(node.index, d, msg)]
        for dst, payload in sends:
            self.net.send(node.index, dst, payload)
        self._attack_sends()

    def _attack_sends(self) -> None:
        """What the stale NEW-VIEW attacker sends on its own (consensus/sim/attack.py)."""
        attack = self.attack
        if attack is None or not attack.outbox:
            return
        self.valid_payloads.update(attack.payloads)
        for dst, payload in attack.take_outbox():
            self.net.send(attack.me, dst, payload)

    def _fetch(self, node: Node, from_seq: int, to_seq: int, peers: tuple[int, ...]) -> None:
        candidates = [
            n
            for n in self.nodes
            if n.index != node.index
            and n.replica is not None
            and not self.net.partitioned(node.index, n.index)
        ]
        entries: tuple[FetchedEntry, ...] = ()
        if candidates:
            source = self.rng.choice(candidates)
            entries = tuple(source.ledger[from_seq - 1 : to_seq])
            bad = self.byzantine is not None and "bad_fetch" in self.byzantine.behaviours
            if entries and not source.honest and bad:
                first = entries[0]
                forged = FetchedEntry(
                    first.seq, b"forged" + self.rng.randbytes(4), first.certificate
                )
                entries = (forged, *entries[1:])
        self._host_reply(node, 20, Fetched(entries))

    # --- invariants -------------------------------------------------------------------------

    def _make_durable(self, node: Node, seq: int) -> None:
        while node.unflushed and node.unflushed[0].seq <= seq:
            node.ledger.append(node.unflushed.pop(0))
        self._step(node, Applied(len(node.ledger)))

    def _guarded(self, node: Node, data: bytes) -> bool:
        """The real host's double-sign guard: it drops what it refuses. For an honest replica a
        refusal is a violation: the core signed something the guard forbids, and on a real
        network that replica would be silently muted (as a retracted replica once was)."""
        if not node.honest:
            return True
        signed = describe(data, node.index, node.config.payload_bytes_max)
        [why], _ = node.guard.decide([signed])
        if why is None or signed is None:
            return True
        self.violations.append(
            f"guard: replica {node.index} {signed.kind} view {signed.view} seq {signed.seq}: {why}"
        )
        return False

    def _watch_votes(self, node: Node, data: bytes) -> None:
        """No honest replica sends two different PRE-PREPAREs/PREPAREs/COMMITs for a (view, seq),
        nor a CHECKPOINT for a block its host has not made durable."""
        if not node.honest:
            return
        cfg = node.config
        msg = m.decode(data, cfg.payload_bytes_max, cfg.message_bytes_max)
        if isinstance(msg, m.Checkpoint) and msg.seq > len(node.ledger):
            self.violations.append(
                f"checkpoint: replica {node.index} seq {msg.seq} durable {len(node.ledger)}"
            )
        if isinstance(msg, m.PrePrepare | m.Prepare | m.CommitVote):
            key = (node.index, msg.kind, msg.view, msg.seq)
            known = self.votes.setdefault(key, msg.digest)
            if known != msg.digest:
                self.violations.append(f"equivocation: replica {node.index} {key[1:]}")
        elif isinstance(msg, m.NewView):
            for pp in msg.pre_prepares:
                key = (node.index, pp.kind, pp.view, pp.seq)
                if self.votes.setdefault(key, pp.digest) != pp.digest:
                    self.violations.append(f"equivocation: replica {node.index} {key[1:]}")

    def _status_round(self) -> None:
        """Every host broadcasts (durable height, view), as node/host/driver.py's status loop."""
        for node in self.nodes:
            r = node.replica
            if r is None:
                continue
            status = (len(node.ledger), r.view)
            if self.byzantine is not None and not node.honest:
                if "silent" in self.byzantine.behaviours:
                    continue
                if "forge" in self.byzantine.behaviours and self.rng.random() < 0.5:
                    status = (
                        max(0, status[0] + self.rng.randint(-2, 6)),
                        max(0, status[1] + self.rng.randint(-1, 2)),
                    )
            for dst in range(len(self.nodes)):
                if dst == node.index:
                    continue
                if (
                    self.attack is not None
                    and self.net.now_ms < self.faults.gst_ms
                    and self.attack.blocks(node.index, dst, None, status=True)
                ):
                    continue
                self.net.send(node.index, dst, status, kind="status")
        if self.gst_heights is not None:
            self._check_lone()

    def _on_commit(self, node: Node, c: Commit) -> None:
        if c.seq != len(node.block_ids) + 1:
            if node.honest:
                self.violations.append(f"order: replica {node.index} seq {c.seq}")
            return
        prev = node.block_ids[-1] if node.block_ids else GENESIS_BLOCK_ID
        node.block_ids.append(self.block_id(c, prev))
        node.unflushed.append(FetchedEntry(c.seq, c.payload, c.certificate))
        # Blocks become durable in order, some time after execution (node/host/committer.py).
        at = max(
            node.durable_at_ms, self.net.now_ms + self.rng.randint(0, self.faults.durable_ms_max)
        )
        node.durable_at_ms = at
        self.net.schedule(at, node.index, "durable", (node.epoch, c.seq))
        self.trace.update(f"commit/{node.index}/{c.seq}/".encode() + c.digest)
        if self.attack is not None and node.honest:
            self.attack.on_commit(node.index, c.seq)
            self._attack_sends()
        if not node.honest:
            return
        known = self.committed.setdefault(c.seq, c.digest)
        if known != c.digest:
            self.violations.append(f"agreement: seq {c.seq} replica {node.index}")
        if self.blocks.setdefault(c.seq, node.block_ids[-1]) != node.block_ids[-1]:
            self.violations.append(f"block: height {c.seq} replica {node.index}")
        null = c.payload == b"" and c.digest == NULL_DIGEST
        if not null and (
            m.payload_digest(c.payload) != c.digest or c.payload not in self.valid_payloads
        ):
            self.violations.append(f"validity: seq {c.seq} replica {node.index}")
        try:
            cert = CommitCertificate.decode(c.certificate)
        except codec.CodecError:
            self.violations.append(f"certificate: seq {c.seq} undecodable")
            return
        cfg = node.config
        if (cert.seq, cert.digest, cert.view) != (
            c.seq,
            c.digest,
            c.view,
        ) or not verify_certificate(cert, cfg.validators, cfg.chain_id, self.verify):
            self.violations.append(f"certificate: seq {c.seq} replica {node.index}")

    def _laggards(self) -> list[int]:
        """Honest replicas active in a view below another honest replica's active view.

        Committing is not enough: such a replica can follow by catch-up alone and never vote,
        which leaves the cluster one failure from a stall. (A replica that ran *ahead* into a
        view change is fine: its VIEW-CHANGE stays on record for the next one, section 4.5.2.)
        """
        active = [
            (n.index, n.replica.view)
            for n in self.nodes
            if n.honest and n.replica is not None and n.replica.view_active
        ]
        top = max((v for _, v in active), default=0)
        return [i for i, v in active if v < top]

    def _alone(self) -> dict[int, str]:
        """Honest replicas in a view change that 2f other honest replicas, active in one lower
        view, did not join (they need not: they commit without it)."""
        f = (len(self.nodes) - 1) // 3
        up = [n for n in self.nodes if n.honest and n.replica is not None]
        found: dict[int, str] = {}
        for node in up:
            r = node.replica
            assert r is not None
            if r.view_active:
                continue
            views = [
                o.replica.view
                for o in up
                if o is not node and o.replica is not None and o.replica.view_active
            ]
            lower = [v for v in set(views) if v < r.view and views.count(v) >= 2 * f]
            if lower:
                found[node.index] = f"{node.index}:view {r.view} while others in {max(lower)}"
        return found

    def _check_lone(self) -> None:
        """Back in the common view within ``LONE_BOUND_MS`` of GST (or of going alone)."""
        assert self.faults.gst_ms <= self.net.now_ms
        alone = self._alone()
        for index in list(self.lone_since):
            if index not in alone:
                del self.lone_since[index]
        for index, what in sorted(alone.items()):
            since = self.lone_since.setdefault(index, self.net.now_ms)
            if self.net.now_ms - since > LONE_BOUND_MS and self.lone is None:
                self.lone = f"alone for {self.net.now_ms - since} ms: {what}"

    def _live(self) -> bool:
        assert self.gst_heights is not None
        return (
            not self._laggards()
            and not self._alone()
            and all(
                len(self.nodes[i].ledger) >= h + LIVENESS_BLOCKS
                for i, h in self.gst_heights.items()
            )
        )

    def _liveness_problem(self) -> str | None:
        if self.gst_heights is None or self._live():
            return None
        stuck = [
            f"{i}:{len(self.nodes[i].ledger)}/{h + LIVENESS_BLOCKS}"
            for i, h in self.gst_heights.items()
            if len(self.nodes[i].ledger) < h + LIVENESS_BLOCKS
        ]
        stale = [f"{i}:view" for i in self._laggards()]
        alone = [f"{what}" for what in self._alone().values()]
        return "no progress after GST: " + ",".join(stuck + stale + alone)


def run_seed(
    seed: int, nodes: int = 4, factory: ReplicaFactory = Replica, block_id: BlockId = block_id
) -> SeedResult:
    return Simulation(seed, nodes, factory, block_id).run()
