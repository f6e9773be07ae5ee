"""Checking VIEW-CHANGE / NEW-VIEW messages and computing the new view's PRE-PREPAREs.

Pure functions over verified configuration (Castro and Liskov, OSDI 1999, sections 4.4-4.5, the
variant with signed messages): a prepared certificate is the primary's PRE-PREPARE signature plus
2f matching PREPARE signatures from distinct backups; the new primary re-proposes, for every seq
above the highest stable checkpoint, the prepared certificate with the highest view, and a null
request where no certificate exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from consensus.api import NULL_DIGEST, ConsensusConfig
from consensus.messages import (
    PreparedCert,
    Sigs,
    Verify,
    ViewChange,
    checkpoint_content,
    domain,
    payload_digest,
    vote_content,
)

GENESIS_CHECKPOINT = b"\x00" * 32

_CHECKPOINT_DOMAIN = domain("checkpoint")
_PRE_PREPARE_DOMAIN = domain("pre_prepare")
_PREPARE_DOMAIN = domain("prepare")


@dataclass(frozen=True, slots=True)
class Selection:
    """What a NEW-VIEW must contain, derived only from its VIEW-CHANGE set."""

    stable_seq: int
    stable_digest: bytes
    stable_proof: Sigs
    entries: tuple[tuple[int, bytes, bytes], ...]  # (seq, digest, payload), seq ascending

    @property
    def max_seq(self) -> int:
        return self.entries[-1][0] if self.entries else self.stable_seq


def checkpoint_proof_ok(
    seq: int, digest: bytes, proof: Sigs, cfg: ConsensusConfig, quorum: int, verify: Verify
) -> bool:
    """A stable checkpoint: genesis (seq 0) or ``quorum`` distinct valid CHECKPOINT signatures."""
    if seq == 0:
        return digest == GENESIS_CHECKPOINT and not proof
    if seq % cfg.checkpoint_interval != 0 or len({i for i, _ in proof}) < quorum:
        return False
    for index, sig in proof:
        if index >= cfg.n:
            return False
        content = checkpoint_content(seq, digest, index, cfg.chain_id)
        if not verify(cfg.validators[index], _CHECKPOINT_DOMAIN, content, sig):
            return False
    return True


def prepared_ok(cert: PreparedCert, cfg: ConsensusConfig, quorum: int, verify: Verify) -> bool:
    if payload_digest(cert.payload) != cert.digest or len(cert.payload) > cfg.payload_bytes_max:
        return False
    primary = cfg.primary(cert.view)
    backers = [i for i, _ in cert.prepares]
    if len(set(backers)) < quorum - 1 or primary in backers or any(i >= cfg.n for i in backers):
        return False
    content = vote_content("pre_prepare", cert.view, cert.seq, cert.digest, primary, cfg.chain_id)
    if not verify(cfg.validators[primary], _PRE_PREPARE_DOMAIN, content, cert.pre_prepare_sig):
        return False
    for index, sig in cert.prepares:
        content = vote_content("prepare", cert.view, cert.seq, cert.digest, index, cfg.chain_id)
        if not verify(cfg.validators[index], _PREPARE_DOMAIN, content, sig):
            return False
    return True


def view_change_problem(
    vc: ViewChange, cfg: ConsensusConfig, quorum: int, verify: Verify
) -> str | None:
    """Why this (signature-checked) VIEW-CHANGE is invalid, or None when it is valid."""
    if not checkpoint_proof_ok(
        vc.stable_seq, vc.stable_digest, vc.stable_proof, cfg, quorum, verify
    ):
        return "bad_view_change_checkpoint"
    seqs = [p.seq for p in vc.prepared]
    if seqs != sorted(set(seqs)):
        return "bad_view_change_order"
    for cert in vc.prepared:
        if not vc.stable_seq < cert.seq <= vc.stable_seq + cfg.log_window:
            return "bad_view_change_watermarks"
        if cert.view >= vc.view:
            return "bad_view_change_prepared_view"
        if not prepared_ok(cert, cfg, quorum, verify):
            return "bad_view_change_prepared"
    return None


def select(view_changes: Sequence[ViewChange], use_prepared: bool = True) -> Selection:
    """The NEW-VIEW content for a valid VIEW-CHANGE set (section 4.4: min-s, max-s and O).

    ``use_prepared=False`` exists only to build a deliberately broken replica in tests.
    """
    best = max(view_changes, key=lambda vc: (vc.stable_seq, vc.sender))
    low = best.stable_seq
    chosen: dict[int, PreparedCert] = {}
    for vc in view_changes:
        for cert in vc.prepared:
            if cert.seq <= low:
                continue
            current = chosen.get(cert.seq)
            if current is None or cert.view > current.view:
                chosen[cert.seq] = cert
    high = max(chosen, default=low)
    entries: list[tuple[int, bytes, bytes]] = []
    for seq in range(low + 1, high + 1):
        found = chosen.get(seq)
        if found is not None and use_prepared:
            entries.append((seq, found.digest, found.payload))
        else:
            entries.append((seq, NULL_DIGEST, b""))
    return Selection(low, best.stable_digest, best.stable_proof, tuple(entries))
