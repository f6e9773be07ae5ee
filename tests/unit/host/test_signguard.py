"""The double-sign guard (node/host/signguard.py): refuses what could equivocate, survives a
database restore, and stops a node whose guard file is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.crypto import SigningKey
from consensus import messages as cmsg
from consensus.guard import Signed, describe
from node.host.signguard import GuardError, SignGuard

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
    # A fresh VIEW-CHANGE for the view it is in may go out (a restart resends one); an older
    # database's may omit prepared certificates, which PBFT tolerates from up to f replicas.
    assert again.admit([Signed("view_change", 4, 0, B)]) == [None]
    assert again.admit([Signed("view_change", 3, 0, B)]) == ["view_below_signed"]
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


def _reopen(tmp_path: Path) -> SignGuard:
    return SignGuard.open(tmp_path / "sign_guard.json", KEY.public_key, fresh=False)


def test_appended_records_and_compactions_reload_to_the_same_state(tmp_path: Path) -> None:
    """Each round appends its records; a reload replays them through the same rule, across
    compactions, and ends with the records, floors and view floor the live guard had."""
    from node.host import signguard

    g = _guard(tmp_path)
    path = tmp_path / "sign_guard.json"
    g.admit([Signed("prepare", 1, 1, A)])
    assert path.read_text().count("\n") == 1  # head line + one appended record
    for seq in range(2, 2 * signguard.COMPACT_EVERY):
        view = 1 + seq // 500
        if seq % 500 == 0:
            assert g.admit([Signed("view_change", view, 0, A)]) == [None]
        assert g.admit([Signed("prepare", view, seq, A), Signed("commit", view, seq, B)]) == [
            None,
            None,
        ]
    assert path.read_text().count("\n") <= signguard.COMPACT_EVERY  # compacted on the way
    again = _reopen(tmp_path)
    assert again.signed == g.signed
    assert again.floors == g.floors
    assert again.view_floor == g.view_floor == 17
    assert again.floors["prepare"][1] > 6000  # records were pruned, and their floor kept
    assert again.admit([Signed("prepare", 17, 8190, B)]) == ["conflicting_digest"]
    assert again.admit([Signed("prepare", 16, 8000, B)]) == ["view_below_signed"]


def test_a_torn_last_line_is_dropped_and_anything_else_refused(tmp_path: Path) -> None:
    """A crash in mid-append leaves a partial last line: that message was never sent (the
    fsync comes first), so it is dropped; a damaged line before the end stops the node."""
    g = _guard(tmp_path)
    g.admit([Signed("prepare", 1, 1, A)])
    path = tmp_path / "sign_guard.json"
    path.write_text(path.read_text() + '\n["prepare",1,2,"aa')
    again = _reopen(tmp_path)
    assert again.signed == g.signed
    assert again.admit([Signed("prepare", 1, 2, B)]) == [None]  # the torn one is not a record
    assert again.admit([Signed("prepare", 1, 1, B)]) == ["conflicting_digest"]
    text = path.read_text().split("\n")
    path.write_text("\n".join([text[0], "garbage", *text[1:]]))
    with pytest.raises(GuardError, match="unreadable"):
        _reopen(tmp_path)


def test_a_version_1_file_still_loads(tmp_path: Path) -> None:
    import json

    path = tmp_path / "sign_guard.json"
    state = {
        "version": 1,
        "public_key": KEY.public_key.hex(),
        "view_floor": 3,
        "floors": {"prepare": [3, 7]},
        "signed": [["prepare", 3, 9, A.hex()]],
    }
    path.write_text(json.dumps(state))
    g = _reopen(tmp_path)
    assert g.admit([Signed("prepare", 3, 9, B)]) == ["conflicting_digest"]
    assert g.admit([Signed("prepare", 3, 7, B)]) == ["at_or_below_floor"]
    assert json.loads(path.read_text().split("\n")[0])["version"] == 2


def test_a_view_change_may_be_signed_again_for_its_view(tmp_path: Path) -> None:
    """After a RETRACT the core sends a fresh VIEW-CHANGE (new epoch) for the same view, and
    after a restart one with a later checkpoint: refusing them kept a retracted replica out of
    its own view change. Lower views stay refused, and the newest VIEW-CHANGE is what a
    restart remembers."""
    g = _guard(tmp_path)
    assert g.admit([Signed("view_change", 5, 0, A)]) == [None]
    assert g.admit([Signed("view_change", 5, 0, B)]) == [None]
    assert g.admit([Signed("view_change", 4, 0, B)]) == ["view_below_signed"]
    assert g.admit([Signed("prepare", 5, 9, A)]) == [None]
    assert g.admit([Signed("prepare", 5, 9, B)]) == ["conflicting_digest"]
    assert _reopen(tmp_path).signed[("view_change", 5, 0)] == B


def test_a_retract_lets_us_vote_again_in_the_view_we_return_to(tmp_path: Path) -> None:
    """A lone view change to 6 is taken back with a RETRACT to view 5 (consensus/retract.py):
    the core then votes in view 5 again. Without the RETRACT those votes stay refused, and
    the floor never drops below a view we voted in."""
    g = _guard(tmp_path)
    assert g.admit([Signed("prepare", 5, 10, A)]) == [None]
    assert g.admit([Signed("view_change", 6, 0, A)]) == [None]
    assert g.admit([Signed("prepare", 5, 11, A)]) == ["view_below_signed"]
    assert g.admit([Signed("retract", 5, 0, A)]) == [None]
    assert g.admit([Signed("prepare", 5, 11, A)]) == [None]
    assert g.admit([Signed("commit", 4, 12, A)]) == ["view_below_signed"]
    again = _reopen(tmp_path)  # replayed from the appended lines: the same floors
    assert again.view_floor == g.view_floor == 5
    assert again.admit([Signed("view_change", 6, 0, B)]) == [None]  # a later, fresh epoch
    assert again.admit([Signed("retract", 3, 1, A)]) == [None]
    assert again.view_floor == 5  # never below a view we voted in


def test_describe_reads_a_retract() -> None:
    data = cmsg.encode(cmsg.sign(cmsg.Retract(5, 2, 1), KEY, "vigil"))
    s = describe(data, 1, 1 << 20)
    assert s is not None
    assert (s.kind, s.view, s.seq) == ("retract", 5, 2)
