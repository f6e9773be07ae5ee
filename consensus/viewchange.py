"""Checking VIEW-CHANGE / NEW-VIEW messages and computing the new view's PRE-PREPAREs.

Pure functions over verified configuration (Castro and Liskov, OSDI 1999, sections 4.4-4.5, the
variant with signed messages): a prepared certificate is the primary's PRE-PREPARE signature plus
2f matching PREPARE signatures from distinct backups; the new primary re-proposes, for every seq
above the highest stable checkpoint, the prepared certificate with the highest view, and a null
request where no certificate exists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from consensus.api import NULL_DIGEST, ConsensusConfig
from consensus.messages import (
    NewView,
    PreparedCert,
    Sigs,
    Verify,
    ViewChange,
    checkpoint_content,
    domain,
    payload_digest,
    signing_content,
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


def new_view_problem(
    nv: NewView,
    cfg: ConsensusConfig,
    quorum: int,
    verify: Verify,
    checked: Callable[[ViewChange], bool],
    void: Callable[[ViewChange], bool],
    use_prepared: bool = True,
) -> Selection | str:
    """The selection of a valid NEW-VIEW (section 4.4: its PRE-PREPAREs recomputed from its
    VIEW-CHANGEs), else the reason it is invalid. ``checked``: a VIEW-CHANGE already verified
    here; ``void``: one its sender retracted (we promised to refuse it)."""
    if nv.sender != cfg.primary(nv.view):
        return "not_primary"
    senders = [vc.sender for vc in nv.view_changes]
    if (
        len(set(senders)) != len(senders)
        or len(senders) < quorum
        or any(vc.view != nv.view or vc.sender >= cfg.n for vc in nv.view_changes)
    ):
        return "bad_new_view"
    for vc in nv.view_changes:
        if void(vc):
            return "retracted_view_change"
        if checked(vc):
            continue
        content = signing_content(vc, cfg.chain_id)
        if not verify(cfg.validators[vc.sender], domain(vc.kind), content, vc.sig):
            return "bad_new_view"
        if view_change_problem(vc, cfg, quorum, verify) is not None:
            return "bad_new_view"
    selection = select(list(nv.view_changes), use_prepared)
    if [(pp.seq, pp.digest, pp.payload) for pp in nv.pre_prepares] != list(selection.entries):
        return "bad_new_view"
    for pp in nv.pre_prepares:
        if pp.view != nv.view or pp.sender != nv.sender:
            return "bad_new_view"
        content = signing_content(pp, cfg.chain_id)
        if not verify(cfg.validators[pp.sender], domain(pp.kind), content, pp.sig):
            return "bad_new_view"
    return selection


class ViewChangeVotes:
    """The highest-view VIEW-CHANGE per sender, and what 2f+1 or f+1 of them say."""

    def __init__(self) -> None:
        self._by_sender: dict[int, ViewChange] = {}

    def get(self, sender: int) -> ViewChange | None:
        return self._by_sender.get(sender)

    def put(self, vc: ViewChange) -> None:
        self._by_sender[vc.sender] = vc

    def remove(self, sender: int) -> None:
        del self._by_sender[sender]

    def stale(self, vc: ViewChange) -> str | None:
        """Why ``vc`` adds nothing to what its sender already told us, or None."""
        known = self._by_sender.get(vc.sender)
        if known is not None and (known.view, known.epoch) >= (vc.view, vc.epoch):
            return "duplicate" if known == vc else "old_view"
        return None

    def support(self, view: int) -> int:
        """Senders that gave up on views below ``view`` (a VIEW-CHANGE for it or later)."""
        return sum(1 for vc in self._by_sender.values() if vc.view >= view)

    def vouched_view(self, above: int, f: int, me: int) -> int | None:
        """The highest view above ``above`` that f+1 other senders ask for (else None)."""
        higher = sorted(
            (v.view for s, v in self._by_sender.items() if s != me and v.view > above),
            reverse=True,
        )
        return higher[f] if len(higher) > f else None

    def others_for(self, view: int, me: int) -> list[ViewChange]:
        """Other senders' VIEW-CHANGEs for exactly ``view``, by sender."""
        return [vc for s, vc in sorted(self._by_sender.items()) if vc.view == view and s != me]
