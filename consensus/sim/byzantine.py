"""The one byzantine validator: an honest replica whose traffic is rewritten by chosen behaviours.

Behaviours (a random subset per seed): ``silent`` (sends nothing), ``equivocate`` (as primary,
different PRE-PREPAREs to different replicas and matching votes for each; as backup, conflicting
votes), ``garbage`` (random, truncated, bit-flipped and oversize messages), ``replay`` (old
messages of anyone, its own included), ``forge`` (votes claiming other senders, bad signatures,
validly signed votes for random digests), ``bad_proposal`` (invalid payloads as primary) and
``bad_fetch`` (corrupt blocks when others fetch from it).
"""

from __future__ import annotations

import random
from dataclasses import replace

from common import codec
from common.crypto import SigningKey
from consensus import messages as m
from consensus.api import ConsensusConfig

BEHAVIOURS = ("silent", "equivocate", "garbage", "replay", "forge", "bad_proposal", "bad_fetch")
REPLAY_BUFFER_MAX = 256


class Byzantine:
    def __init__(self, config: ConsensusConfig, rng: random.Random, behaviours: frozenset[str]):
        self.cfg = config
        self.rng = rng
        self.behaviours = behaviours
        self.key = SigningKey(config.seed)
        self.seen: list[bytes] = []
        self.alternatives: list[bytes] = []  # payloads it made up; the sim host counts them valid
        self._split: dict[tuple[int, int], dict[int, bytes]] = {}  # (view, seq) -> dst -> digest

    def _others(self) -> list[int]:
        return [i for i in range(self.cfg.n) if i != self.cfg.index]

    def _sign(self, msg: m.Message) -> bytes:
        return m.encode(m.sign(msg, self.key, self.cfg.chain_id))  # type: ignore[type-var]

    def observe(self, data: bytes) -> None:
        if "replay" in self.behaviours or "forge" in self.behaviours:
            self.seen.append(data)
            if len(self.seen) > REPLAY_BUFFER_MAX:
                del self.seen[: REPLAY_BUFFER_MAX // 2]

    def outgoing(self, dst: int | None, data: bytes) -> list[tuple[int, bytes]]:
        """Rewrite one honest send (``dst`` None means broadcast) into what actually goes out."""
        if "silent" in self.behaviours:
            return []
        targets = self._others() if dst is None else [dst]
        self.observe(data)
        if "equivocate" not in self.behaviours:
            return [(t, data) for t in targets]
        try:
            msg = m.decode(data, self.cfg.payload_bytes_max, self.cfg.message_bytes_max)
        except codec.CodecError:
            return [(t, data) for t in targets]
        if isinstance(msg, m.PrePrepare) and msg.payload:
            alt_payload = codec.encode({"byzantine": self.rng.getrandbits(64), "seq": msg.seq})
            self.alternatives.append(alt_payload)
            alt = self._sign(
                replace(msg, digest=m.payload_digest(alt_payload), payload=alt_payload)
            )
            split = self._split.setdefault((msg.view, msg.seq), {})
            out = []
            for t in targets:
                use_alt = self.rng.random() < 0.5
                split[t] = m.payload_digest(alt_payload) if use_alt else msg.digest
                out.append((t, alt if use_alt else data))
            self.seen.extend([data, alt])
            return out
        if isinstance(msg, m.Prepare | m.CommitVote):
            split = self._split.get((msg.view, msg.seq), {})
            out = []
            for t in targets:
                digest = split.get(t)
                if digest is None and self.rng.random() < 0.3:
                    digest = codec.sha256(self.rng.getrandbits(64).to_bytes(8, "big"))
                if digest is not None and digest != msg.digest:
                    out.append((t, self._sign(replace(msg, digest=digest))))
                else:
                    out.append((t, data))
            return out
        return [(t, data) for t in targets]

    def malice(self) -> list[tuple[int, bytes]]:
        """Unprompted hostile traffic, called at random moments."""
        rng = self.rng
        out: list[tuple[int, bytes]] = []
        dst = rng.choice(self._others())
        if "garbage" in self.behaviours:
            choice = rng.randrange(4)
            if choice == 0:
                out.append((dst, rng.randbytes(rng.randint(0, 200))))
            elif self.seen and choice == 1:
                data = rng.choice(self.seen)
                out.append((dst, data[: rng.randrange(max(1, len(data)))]))
            elif self.seen and choice == 2:
                flipped = bytearray(rng.choice(self.seen))
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
                out.append((dst, bytes(flipped)))
            else:
                huge = b"x" * (self.cfg.payload_bytes_max + 1)
                pp = m.PrePrepare(0, 1, codec.sha256(huge), huge, self.cfg.index)
                out.append((dst, self._sign(pp)))
        if "replay" in self.behaviours and self.seen:
            out.append((dst, rng.choice(self.seen)))
        if "forge" in self.behaviours:
            view = rng.randrange(8)
            seq = rng.randint(1, 40)
            digest = codec.sha256(rng.randbytes(8))
            victim = rng.randrange(self.cfg.n)
            forged: m.Prepare | m.CommitVote
            own: m.Prepare | m.CommitVote
            if rng.random() < 0.5:
                forged = m.Prepare(view, seq, digest, victim, rng.randbytes(64))
                own = m.Prepare(view, seq, digest, self.cfg.index)
            else:
                forged = m.CommitVote(view, seq, digest, victim, rng.randbytes(64))
                own = m.CommitVote(view, seq, digest, self.cfg.index)
            out.append((dst, m.encode(forged)))
            out.append((dst, self._sign(own)))
            cp = m.Checkpoint(rng.randint(1, 10) * self.cfg.checkpoint_interval, digest, victim)
            out.append((dst, m.encode(replace(cp, sig=rng.randbytes(64)))))
        return out
