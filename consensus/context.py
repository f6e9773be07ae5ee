"""What every part of a replica shares and nobody else changes: configuration, signing, the clock
and the count of dropped messages."""

from __future__ import annotations

from common.crypto import SigningKey
from consensus import messages as m
from consensus.api import Action, ConsensusConfig, Dropped


class Context:
    """Static configuration plus the two things every transition touches: time and drops."""

    def __init__(self, config: ConsensusConfig, quorum: int, verify: m.Verify, now_ms: int):
        assert 1 <= quorum <= config.n
        self.cfg = config
        self.me = config.index
        self.quorum = quorum  # 2f+1 (a hook: tests build replicas with a wrong one)
        self.verify = verify
        self._key = SigningKey(config.seed)
        self._now_ms = now_ms
        self._dropped: dict[str, int] = {}

    @property
    def now_ms(self) -> int:
        return self._now_ms

    def advance(self, now_ms: int) -> None:
        """Time only moves forward, whatever the host's clock says."""
        self._now_ms = max(self._now_ms, now_ms)

    @property
    def dropped_counts(self) -> dict[str, int]:
        return dict(self._dropped)

    def drop(self, out: list[Action], reason: str, sender: int | None = None) -> None:
        """A message that does not count: say why (``Dropped``) and count it."""
        self._dropped[reason] = self._dropped.get(reason, 0) + 1
        out.append(Dropped(reason, sender))

    def vote(self, msg: m.MessageT) -> m.MessageT:
        """``msg`` signed by this replica."""
        return m.sign(msg, self._key, self.cfg.chain_id)

    def primary(self, view: int) -> int:
        return self.cfg.primary(view)
