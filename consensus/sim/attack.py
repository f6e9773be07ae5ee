"""The stale NEW-VIEW attack (issue 12): what a RETRACT must withstand, played out on purpose.

A network adversary (it sees every message when it is sent, and before GST it may drop or hold
any of them) working with the one byzantine validator ``B``, the primary of ``VIEW`` (view 1;
n = 4, f = 1). Roles, drawn per seed: ``lone`` (R) and ``isolated`` (H2) are the two backups of
view 0, ``victim`` (H1) is view 0's primary. The schedule (``Faults.cuts``) leaves R alone
first: nothing reaches it for a while, it times out of view 0 and broadcasts VIEW-CHANGE(1)
(epoch 0), nobody joins, and once it hears the others again it sends RETRACT. Before GST
R's RETRACTs never reach ``isolated``, nor, with ``hold_retract`` (half of the seeds),
``victim``. Once R commits again (caught up after its return), until the attack fires:

* ``isolated`` hears nothing and is heard by nobody: it times out in view 0 and signs a
  VIEW-CHANGE(1) that lacks everything prepared in view 0 from then on;
* B helps no real view change (its own VIEW-CHANGE and NEW-VIEW stay home), sends its view-0
  COMMITs to everyone but ``victim``, and ``victim`` hears no status: R commits seqs that
  ``victim`` prepared but cannot commit (nor learn as committed);
* once R committed a seq s that ``victim`` has not, B assembles NEW-VIEW(1) from R's epoch-0
  (retracted) VIEW-CHANGE, ``isolated``'s and a VIEW-CHANGE of its own that claims nothing
  prepared, sends it to all, PRE-PREPAREs a different (valid) payload for s and the seqs after,
  and COMMITs whatever honest replicas PREPARE for them.

The adversary also learns each honest replica's commits (it could infer them from the COMMITs
it sees). After GST it drops nothing and B's own replica sends as usual again.

A correct core refuses: R voids its own retracted VIEW-CHANGE, and R returns only after 2f+1
acknowledgments, so with ``hold_retract`` it never returns before GST (nothing to lose) and
without it ``victim`` stored the RETRACT and refuses the NEW-VIEW too: B and ``isolated`` alone
cannot prepare anything in view 1. A core that returns without acknowledgments (``hold_retract``)
or counts retracted VIEW-CHANGEs (without it) lets ``victim`` and ``isolated`` enter view 1 and
commit a payload other than R's at s: an agreement violation.
"""

from __future__ import annotations

import random

from common import codec
from common.crypto import SigningKey
from consensus import messages as m
from consensus.api import ConsensusConfig
from consensus.viewchange import select

VIEW = 1  # the view whose NEW-VIEW B builds; B = primary(VIEW)
SHARE = 0.12  # of the seeds (n = 4) that play this attack instead of the random faults


class StaleNewView:
    def __init__(
        self,
        config: ConsensusConfig,
        rng: random.Random,
        *,
        lone: int,
        isolated: int,
        victim: int,
        hold_retract: bool,
    ) -> None:
        assert config.n == 4
        assert config.primary(VIEW) == config.index
        self.cfg = config
        self.rng = rng
        self.key = SigningKey(config.seed)
        self.me = config.index
        self.lone, self.isolated, self.victim = lone, isolated, victim
        self.hold_retract = hold_retract
        self.view_changes: dict[int, m.ViewChange] = {}  # sender -> its first VIEW-CHANGE(VIEW)
        self.committed: dict[int, int] = {}  # replica -> highest seq it committed
        self.retracting = False  # R sent its RETRACT: the attack is on
        self.isolating = False  # R is back and caught up: cut ``isolated`` off, starve ``victim``
        self.fired = False
        self.proposed: dict[int, bytes] = {}  # seq -> digest B pre-prepared in VIEW
        self.echoed: set[int] = set()
        self.payloads: list[bytes] = []  # made-up payloads the sim host must count valid
        self.outbox: list[tuple[int, bytes]] = []  # what B sends on its own, (dst, data)

    def _sign(self, msg: m.Message) -> bytes:
        return m.encode(m.sign(msg, self.key, self.cfg.chain_id))  # type: ignore[type-var]

    def _honest(self) -> list[int]:
        return [i for i in range(self.cfg.n) if i != self.me]

    # --- the network adversary ------------------------------------------------------------

    def observe(self, src: int, data: bytes) -> m.Message | None:
        """Every message as it is sent (before and after GST): remember what the attack uses."""
        msg = self._decode(data)
        if isinstance(msg, m.ViewChange) and msg.view == VIEW and src != self.me:
            self.view_changes.setdefault(src, msg)
            self._maybe_fire()
        elif isinstance(msg, m.Retract) and src == self.lone:
            self.retracting = True
        elif isinstance(msg, m.Prepare) and self.fired and msg.view == VIEW:
            self._echo(msg)
        return msg

    def blocks(self, src: int, dst: int, msg: m.Message | None, status: bool = False) -> bool:
        """Drop this message (``status``: a status report)? The simulator asks before GST only."""
        if isinstance(msg, m.Retract) and src == self.lone:
            return dst == self.isolated or (dst == self.victim and self.hold_retract)
        if not self.isolating:
            return False
        if src == self.me and isinstance(msg, m.ViewChange | m.NewView):
            return True  # B does not help any real view change along
        if not self.fired and self.isolated in (src, dst):
            return True
        if status:
            return dst == self.victim
        return (
            src == self.me
            and dst == self.victim
            and isinstance(msg, m.CommitVote)
            and msg.view != VIEW
        )

    def _decode(self, data: bytes) -> m.Message | None:
        try:
            return m.decode(data, self.cfg.payload_bytes_max, self.cfg.message_bytes_max)
        except codec.CodecError:
            return None

    # --- B ----------------------------------------------------------------------------------

    def on_commit(self, replica: int, seq: int) -> None:
        self.committed[replica] = max(seq, self.committed.get(replica, 0))
        if self.retracting and replica == self.lone and seq >= max(self.committed.values()):
            self.isolating = True  # R commits again, as far as anyone: start the squeeze
        self._maybe_fire()

    def _maybe_fire(self) -> None:
        if self.fired or not self.isolating:
            return
        lone_vc = self.view_changes.get(self.lone)
        other_vc = self.view_changes.get(self.isolated)
        if lone_vc is None or other_vc is None or lone_vc.epoch != 0:
            return
        s = self.committed.get(self.victim, 0) + 1
        if self.committed.get(self.lone, 0) < s:
            return
        best = max((lone_vc, other_vc), key=lambda vc: vc.stable_seq)
        own = m.sign(
            m.ViewChange(VIEW, best.stable_seq, best.stable_digest, best.stable_proof, (), self.me),
            self.key,
            self.cfg.chain_id,
        )
        chosen = sorted((lone_vc, other_vc, own), key=lambda vc: vc.sender)
        selection = select(chosen)
        if s <= selection.max_seq or s > selection.stable_seq + self.cfg.log_window:
            return
        self.fired = True
        pre_prepares = tuple(
            m.sign(m.PrePrepare(VIEW, seq, digest, payload, self.me), self.key, self.cfg.chain_id)
            for seq, digest, payload in selection.entries
        )
        nv = self._sign(m.NewView(VIEW, tuple(chosen), pre_prepares, self.me))
        sends = [nv]
        for seq in range(selection.max_seq + 1, selection.stable_seq + self.cfg.log_window + 1):
            payload = codec.encode({"stale-new-view": self.rng.getrandbits(64), "seq": seq})
            self.payloads.append(payload)
            digest = m.payload_digest(payload)
            self.proposed[seq] = digest
            sends.append(self._sign(m.PrePrepare(VIEW, seq, digest, payload, self.me)))
        self.outbox.extend((dst, data) for data in sends for dst in self._honest())

    def _echo(self, prepare: m.Prepare) -> None:
        if self.proposed.get(prepare.seq) != prepare.digest or prepare.seq in self.echoed:
            return
        self.echoed.add(prepare.seq)
        commit = self._sign(m.CommitVote(VIEW, prepare.seq, prepare.digest, self.me))
        self.outbox.extend((dst, commit) for dst in self._honest())

    def take_outbox(self) -> list[tuple[int, bytes]]:
        out, self.outbox = self.outbox, []
        return out
