"""The double-sign guard (node/host/signguard.py): refuses what could equivocate, survives a
database restore, and stops a node whose guard file is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.crypto import SigningKey
from consensus import messages as cmsg
from node.host.signguard import GuardError, Signed, SignGuard, describe

KEY = SigningKey(b"\x07" * 32)
A, B = b"\xaa" * 32, b"\xbb" * 32


def _guard(tmp_path: Path) -> SignGuard:
    return SignGuard.open(tmp_path / "sign_guard.json", KEY.public_key, fresh=True)


def test_resend_allowed_conflict_refused(tmp_path: Path) -> None:
    g = _guard(tmp_path)
    assert g.admit([Signed("prepare", 2, 10, A)]) == [None]
    assert g.admit([Signed("prepare", 2, 10, A)]) == [None]  # the same message again
    assert g.admit([Signed("prepare", 2, 10, B)]) == ["conflicting_digest"]
    assert g.admit([Signed("prepare", 1, 11, A)]) == ["view_below_signed"]
    # Pipelined seqs may be signed out of order within a view.
    assert g.admit([Signed("commit", 2, 12, A), Signed("commit", 2, 11, B)]) == [None, None]


def test_restored_old_database_next_to_newer_guard_cannot_equivocate(tmp_path: Path) -> None:
    g = _guard(tmp_path)
    g.admit([Signed("pre_prepare", 3, 40, A), Signed("commit", 3, 40, A)])
    g.admit([Signed("view_change", 4, 0, A)])
    # The database is restored to an older state; the process restarts with the guard file.
    again = SignGuard.open(tmp_path / "sign_guard.json", KEY.public_key, fresh=False)
    assert again.admit([Signed("pre_prepare", 3, 40, B)]) == ["conflicting_digest"]
    assert again.admit([Signed("commit", 3, 41, B)]) == ["view_below_signed"]
    assert again.admit([Signed("view_change", 4, 0, B)]) == ["conflicting_digest"]
    assert again.admit([Signed("prepare", 5, 41, B)]) == [None]


def test_pruned_records_leave_a_floor(tmp_path: Path) -> None:
    g = _guard(tmp_path)
    for seq in range(1, 1100):
        g.admit([Signed("checkpoint", 0, seq, A)])
    assert len([k for k in g.signed if k[0] == "checkpoint"]) <= 1024
    assert g.admit([Signed("checkpoint", 0, 5, B)]) == ["at_or_below_floor"]


def test_lost_guard_file_stops_a_node_with_a_database(tmp_path: Path) -> None:
    with pytest.raises(GuardError, match="missing but the database exists"):
        SignGuard.open(tmp_path / "sign_guard.json", KEY.public_key, fresh=False)
    _guard(tmp_path)
    other = SigningKey(b"\x08" * 32).public_key
    with pytest.raises(GuardError, match="another validator key"):
        SignGuard.open(tmp_path / "sign_guard.json", other, fresh=False)


def test_describe_reads_only_our_own_messages() -> None:
    mine = cmsg.sign(cmsg.Prepare(1, 2, A, 0), KEY, "vigil")
    theirs = cmsg.sign(cmsg.Prepare(1, 2, A, 1), KEY, "vigil")
    assert describe(cmsg.encode(mine), 0, 1 << 20) == Signed("prepare", 1, 2, A)
    assert describe(cmsg.encode(theirs), 0, 1 << 20) is None
    assert describe(b"garbage", 0, 1 << 20) is None
