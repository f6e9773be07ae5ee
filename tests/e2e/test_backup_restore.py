"""``vigil db backup`` of a running validator under load, and ``vigil db restore`` of that (older)
backup next to its newer double-sign guard: the node catches up, agrees on every block hash, and
never signs anything that conflicts with what it signed before the restore.

Real processes: a 4-node cluster, the CLI run as operators run it (docs/deploy.md, "Backups").
Prints one JSON transcript (heights, backup and restore answers, catch-up time, guard refusals).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from node.host.signguard import SignGuard
from tests.cluster_util import Load, LocalCluster, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NODE = 2  # a backup (not the first primary), restored while the others go on
MORE_BLOCKS = 8  # blocks the node signs after the backup, before it is stopped


def vigil(*argv: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "node.tools.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


def _guard(path: Path) -> dict[tuple[str, int, int], str]:
    return {key: digest.hex() for key, digest in SignGuard.load(path).signed.items()}


def test_backup_running_validator_restore_older_next_to_newer_guard(tmp_path: Path) -> None:
    transcript: dict[str, Any] = {}
    with LocalCluster(tmp_path, n=4, bench_accounts=41) as c:
        home = c.cluster.node_dir(NODE)
        backup = tmp_path / "backup-1"
        with Load(c, range(0, 40, 2), batch=10, pause_s=0.1) as load:
            c.wait_height(NODE, 3)
            rc, out, err = vigil("db", "backup", "--home", str(home), str(backup))
            assert rc == 0, err
            taken = json.loads(out)
            transcript["backup"] = taken
            assert taken["online"] is True
            assert taken["path"] == str(backup)
            assert (backup / "CURRENT").is_file()
            # A second backup to the same place is refused in one line, nothing overwritten.
            rc, _, err = vigil("db", "backup", "--home", str(home), str(backup))
            assert rc == 1
            assert err == f"vigil db backup: {backup} already exists"
            # The node goes on signing well past the backup.
            c.wait_height(NODE, taken["height"] + MORE_BLOCKS)
            # Restore refuses while the node runs.
            rc, _, err = vigil("db", "restore", "--home", str(home), str(backup))
            assert rc == 1
            assert err.endswith("the node is running; stop it before restoring")
            load.avoid(NODE)
            c.stop(NODE)
            stopped_at = c.height(0)
            guard_path = home / "sign_guard.json"
            guard_before = _guard(guard_path)
            top_seq = max(s for (k, _, s) in guard_before if k == "commit")
            assert top_seq > taken["height"], "the guard is not newer than the backup"
            rc, out, err = vigil("db", "restore", "--home", str(home), str(backup))
            assert rc == 0, err
            restored = json.loads(out)
            transcript["restore"] = restored
            assert restored["height"] == taken["height"]
            assert restored["guard_kept"] == str(guard_path)
            assert Path(restored["previous_kept_at"]).is_dir()
            t0 = time.monotonic()
            c.start(NODE)
            load.allow(NODE)
            target = max(c.height(i) for i in range(4) if i != NODE)
            c.wait_height(NODE, target, deadline_s=60)
            caught_up_s = round(time.monotonic() - t0, 2)
            # It commits new blocks with the others again (not only catch-up).
            c.wait_height(NODE, target + 3, deadline_s=60)
        final = wait_for(
            "equal heights",
            lambda: len(hs := {c.height(i) for i in range(4)}) == 1 and hs.pop(),
            deadline_s=30,
        )
        per_node = [
            [a["result"]["hash"] for a in c.rpc_batch(i, [("block_get", [h]) for h in heights])]
            for i in range(4)
            for heights in [list(range(1, final + 1))]
        ]
        hashes = {h: {per_node[i][h - 1] for i in range(4)} for h in range(1, final + 1)}
        divergent = [h for h, hs in hashes.items() if len(hs) != 1]
        guard_after = _guard(guard_path)
        conflicts = [k for k, d in guard_before.items() if k in guard_after and guard_after[k] != d]
        log = c.log(NODE)
        refusals = [json.loads(x)["reason"] for x in log.splitlines() if "double_sign_refused" in x]
        transcript.update(
            {
                "stopped_at_height": stopped_at,
                "guard_top_commit_seq_before_restore": top_seq,
                "caught_up_s": caught_up_s,
                "final_height": final,
                "heights_compared": len(hashes),
                "divergent_heights": divergent,
                "guard_conflicts": conflicts,
                "guard_refusals": refusals,
                "accepted_txs": len(load.accepted),
            }
        )
    print(json.dumps(transcript))
    assert divergent == []
    assert conflicts == []
    assert final > top_seq
