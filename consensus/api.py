"""The consensus core's interface: configuration, events the host feeds in, actions it performs.

Shaped after etcd-io/raft's Step/Ready: the host (node/ or the simulator) calls
``Replica.step(event)`` and performs the returned actions *in order*. A ``Persist`` must be durable
before any later ``Send``/``Broadcast`` in the same list leaves the process, so a vote is never
sent before it is on disk.

The core orders opaque payloads. A payload's digest is ``sha256(payload)``. The payload of a
*null* request (gaps filled by a NEW-VIEW) is ``b""`` with digest ``NULL_DIGEST``; the host commits
it as an empty block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NULL_DIGEST = b"\x00" * 32


@dataclass(frozen=True, slots=True)
class ConsensusConfig:
    """Static configuration of one replica. ``validators`` are Ed25519 public keys; index = id."""

    validators: tuple[bytes, ...]
    index: int
    seed: bytes  # this replica's 32-byte Ed25519 seed (signing is pure computation)
    chain_id: str = "vigil"
    checkpoint_interval: int = 16  # K: a CHECKPOINT every K seqs
    pipeline_depth: int = 4  # seqs the primary may have in flight beyond the last commit
    log_window: int = 64  # high watermark = stable checkpoint + log_window (>= 2K)
    request_timeout_ms: int = 2000  # view change when pending work makes no progress this long
    view_change_timeout_ms: int = 4000  # base of the exponential back-off between views
    # Heartbeat: an idle primary asks for a (possibly empty) block when none was committed or
    # proposed for this long; 0 = off (an idle chain stays still). Never arms a request timer.
    empty_interval_ms: int = 0
    payload_bytes_max: int = 4 * 1024 * 1024
    message_bytes_max: int = 8 * 1024 * 1024

    @property
    def n(self) -> int:
        return len(self.validators)

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def quorum(self) -> int:
        return 2 * self.f + 1

    def primary(self, view: int) -> int:
        return view % self.n


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    """The clock, as a value. The host ticks periodically and at every ``SetTimer`` deadline."""

    now_ms: int


@dataclass(frozen=True, slots=True)
class Clock:
    """The time when the host starts a round of other events: the clock moves on, no timer is
    checked (the next ``Tick`` checks them), and nothing else is looked at: what the new time
    changes (a heartbeat due, peers ahead for long enough) shows at the next event's step.

    Without it the core's clock is that of its last ``Tick``, and under load a tick can be a
    second old when a round is stepped: a request timer armed then (``Applied`` restarts it)
    ran out that much early in real time. Checking timers here instead would be wrong the
    other way: a deadline that passed while the host was busy would fire before the round's
    own events (a commit certificate, an ``Applied``) showed the progress that resets it.
    """

    now_ms: int


@dataclass(frozen=True, slots=True)
class Received:
    """Raw bytes of a consensus message from authenticated validator ``sender``."""

    sender: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Pending:
    """The host has (``True``) or no longer has (``False``) transactions waiting to be ordered.

    Pending work arms the request timer on backups and lets the primary ask for proposals.
    """

    pending: bool


@dataclass(frozen=True, slots=True)
class Propose:
    """The host's payload for a ``RequestProposal(view, seq)`` (primary only)."""

    view: int
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Verdict:
    """The host's answer to ``Validate``: whether the payload is a valid block for ``seq``."""

    view: int
    seq: int
    digest: bytes
    valid: bool


@dataclass(frozen=True, slots=True)
class FetchedEntry:
    seq: int
    payload: bytes
    certificate: bytes  # canonical encoding of a CommitCertificate


@dataclass(frozen=True, slots=True)
class Fetched:
    """Committed entries the host fetched from peers after a ``FetchBlocks``;
    checked by the core.
    """

    entries: tuple[FetchedEntry, ...]


@dataclass(frozen=True, slots=True)
class Applied:
    """The host's block for ``seq`` (and every seq below it) is durable.

    The core sends its CHECKPOINT for a seq only once that seq is applied, so a checkpoint never
    becomes stable (and the log below it collected) while the block behind it could still be lost.
    """

    seq: int


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """Validator ``sender`` says it has committed ``height`` and works in ``view``.

    Sent over an authenticated link but not signed: a hint the core may act on (fetch, leave a
    view nobody joined), never evidence that changes what is safe.
    """

    sender: int
    height: int
    view: int


Event = Tick | Clock | Received | Pending | Propose | Verdict | Fetched | Applied | PeerStatus


# --- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    to: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send to every other validator."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Persist:
    """Write these records atomically to the consensus log (value ``None`` deletes the key).

    Must be durable before any later Send/Broadcast of the same step leaves the process.
    """

    records: tuple[tuple[bytes, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class Commit:
    """``payload`` is committed at ``seq``; the host executes it (in seq order, as emitted)."""

    seq: int
    view: int
    digest: bytes
    payload: bytes
    certificate: bytes  # canonical encoding of a CommitCertificate


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Tick the core again no later than ``at_ms``."""

    at_ms: int


@dataclass(frozen=True, slots=True)
class RequestProposal:
    """This replica is primary with room in the pipeline: build a payload for ``seq``.

    ``heartbeat``: the chain has been idle for ``empty_interval_ms``; answer now with whatever
    is ready, possibly nothing (a valid block of zero txs). It may repeat an earlier, still
    unanswered request for the same ``(view, seq)``: that one may now be answered empty too.
    """

    view: int
    seq: int
    heartbeat: bool = False


@dataclass(frozen=True, slots=True)
class Validate:
    """Check ``payload`` as a block for ``seq`` and answer with a ``Verdict``."""

    view: int
    seq: int
    digest: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class FetchBlocks:
    """Others are ahead: fetch committed entries ``from_seq..to_seq`` (inclusive) with certificates.

    ``peers`` are validators known to hold them (a hint, best first).
    """

    from_seq: int
    to_seq: int
    peers: tuple[int, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Reproposed:
    """One PRE-PREPARE of a NEW-VIEW: the host learns which payloads are in flight again."""

    seq: int
    digest: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class ViewChanged:
    """This replica entered ``view`` (NEW-VIEW accepted or sent), re-proposing ``reproposed``.

    The re-proposed payloads are accepted without a ``Validate``; the host uses them to know
    which transactions are in flight, and never needs to decode the NEW-VIEW itself.
    """

    view: int
    primary: int
    reproposed: tuple[Reproposed, ...] = ()


@dataclass(frozen=True, slots=True)
class Dropped:
    """A message that did not count, and why (a stable, bounded reason string for metrics)."""

    reason: str
    sender: int | None = None


Action = (
    Send
    | Broadcast
    | Persist
    | Commit
    | SetTimer
    | RequestProposal
    | Validate
    | FetchBlocks
    | ViewChanged
    | Dropped
)
