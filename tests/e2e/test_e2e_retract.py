"""A lone view change taken back on a real cluster (consensus/retract.py), through the real host
and its double-sign guard (node/host/signguard.py).

Node 3 holds a tx while the other three are frozen (SIGSTOP): its request timer fires and it
starts a view change nobody joins. Once they are back (still in view 0) it sends a RETRACT,
returns to view 0 with 2f+1 acknowledgements, and must vote there again. The guard had refused
those votes ("view_below_signed": it had signed a VIEW-CHANGE for view 1) and any fresh
VIEW-CHANGE for its view ("conflicting_digest"): the replica was back in name only.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from node.tools import devnet
from tests.cluster_util import LocalCluster, wait_for

LONE = 3


def _view(c: LocalCluster, i: int) -> int:
    view = c.rpc(i, "node_status")["view"]
    assert isinstance(view, int)
    return view


def test_a_lone_view_change_is_retracted_and_the_replica_votes_again(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, n=4) as c:
        first = c.submit(0, [c.transfer(0, c.address(1))])[0]["result"]["hash"]
        wait_for("a first commit", lambda: c.tx_status(LONE, first) == "committed")
        others = [i for i in range(4) if i != LONE]
        pids = [devnet.read_pid(c.cluster, i) for i in others]
        assert all(p is not None for p in pids)
        for p in pids:
            assert p is not None
            os.kill(p, signal.SIGSTOP)
        try:
            held = c.submit(LONE, [c.transfer(1, c.address(2))])[0]["result"]["hash"]
            wait_for("node 3 in a view change alone", lambda: _view(c, LONE) >= 1, 30)
        finally:
            for p in pids:
                assert p is not None
                os.kill(p, signal.SIGCONT)
        wait_for("node 3 back in view 0", lambda: _view(c, LONE) == 0, 60)
        assert [_view(c, i) for i in others] == [0, 0, 0]
        wait_for("its tx committed", lambda: c.tx_status(LONE, held) == "committed", 30)
        # Votes from node 3 again: every block from now on needs them or 3 others; freeze one
        # of the others so that 2f+1 = 3 includes node 3.
        stopped = devnet.read_pid(c.cluster, 2)
        assert stopped is not None
        os.kill(stopped, signal.SIGSTOP)
        try:
            later = c.submit(0, [c.transfer(0, c.address(1))])[0]["result"]["hash"]
            wait_for("a commit with node 3's votes", lambda: c.tx_status(0, later) == "committed")
        finally:
            os.kill(stopped, signal.SIGCONT)
        assert _view(c, LONE) == 0
        log = c.log(LONE)
        assert '"event":"view_change"' in log  # it did leave view 0
        assert "double_sign_refused" not in log
