"""SIGTERM under load: the node exits by itself, cleanly and soon, and its DB reopens at once."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from node.tools import devnet
from storage.db import Store
from tests.cluster_util import Load, LocalCluster, wait_for

pytestmark = pytest.mark.e2e

EXIT_DEADLINE_S = 10.0  # before `cluster down` would SIGKILL it (devnet grace period)


def test_sigterm_under_load_exits_cleanly_and_db_reopens(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, n=4) as c:
        with Load(c, range(0, 100), batch=40, pause_s=0.02) as load:
            wait_for("load commits", lambda: c.height(0) >= 3, deadline_s=60)
            for victim in (1, 0):  # a backup, then the primary of view 0
                load.avoid(victim)
                pid = devnet.read_pid(c.cluster, victim)
                assert pid is not None
                proc = devnet._CHILDREN[pid]
                started = time.monotonic()
                devnet.signal_node(c.cluster, victim, signal.SIGTERM)
                rc = proc.wait(timeout=30)
                took_s = time.monotonic() - started
                print(json.dumps({"node": victim, "sigterm_exit_s": round(took_s, 2)}))
                assert rc == 0
                assert took_s < EXIT_DEADLINE_S
                log = c.log(victim)
                assert '"event":"node_stopped"' in log
                assert "Traceback" not in log
                # Closed cleanly: the LevelDB lock is free right away and the head is readable.
                with Store(str(c.cluster.node_dir(victim) / "db")) as store:
                    head = store.head()
                assert head is not None
                assert head[0] >= 1
                c.start(victim)
                load.allow(victim)
        top = max(c.height(i) for i in range(4))
        for i in range(4):
            c.wait_height(i, top)
