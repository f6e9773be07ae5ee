"""End to end: validators on both event loops (``node.event_loop``, docs/config.md) in one network.

Nodes 0 and 1 run the standard library's loop, 2 and 3 uvloop (the default): they connect over
TLS, commit the same blocks, and each logs the loop it really runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster_util import LocalCluster, wait_for

pytestmark = pytest.mark.e2e

ASYNCIO_NODES = (0, 1)


def _use_asyncio(config: Path) -> None:
    text = config.read_text()
    assert "[node]\n" in text
    config.write_text(text.replace("[node]\n", '[node]\nevent_loop = "asyncio"\n', 1))


def _started_loop(c: LocalCluster, i: int) -> str:
    for line in c.log(i).splitlines():
        if '"node_started"' in line:
            return str(json.loads(line)["event_loop"])
    raise AssertionError(f"node {i} logged no node_started")


def test_nodes_on_either_loop_agree(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, n=4, bench_accounts=40)
    for i in ASYNCIO_NODES:
        _use_asyncio(c.cluster.root / f"node{i}" / "config.toml")
    with c:
        loops = [_started_loop(c, i) for i in range(4)]
        assert loops == ["asyncio", "asyncio", "uvloop", "uvloop"]
        hashes = []
        for k in range(40):
            raw = c.transfer(k, c.address((k + 1) % 40), amount=5)
            hashes += [a["result"]["hash"] for a in c.submit(k % 4, [raw])]

        def committed() -> bool:
            return all(c.tx_status(i, h) == "committed" for i in range(4) for h in hashes)

        wait_for("40 transfers committed on every node", committed, deadline_s=60)
        height = min(c.height(i) for i in range(4))
        heads = {c.rpc(i, "block_get", [height])["hash"] for i in range(4)}
        assert len(heads) == 1
        addresses = [c.address(k) for k in range(40)]
        balances = [c.balances(i, addresses) for i in range(4)]
        assert all(b == balances[0] for b in balances[1:])
        assert balances[0][c.address(0)] == 10**12 - 1  # paid 5 + fee 1, received 5
