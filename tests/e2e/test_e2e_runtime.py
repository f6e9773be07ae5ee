"""End to end: real `vigil node` processes, real sockets, real LevelDB (tests/cluster_util.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from node.tools.client import RpcError
from tests.cluster_util import Load, LocalCluster, wait_for

pytestmark = pytest.mark.e2e


CLUSTER_OPTIONS = {"n": 4}


def _committed_all(c: LocalCluster, node: int, hashes: list[str]) -> bool:
    for i in range(0, len(hashes), 100):
        chunk = hashes[i : i + 100]
        answers = c.rpc_batch(node, [("tx_get", [h]) for h in chunk])
        if any(a.get("result", {}).get("status") != "committed" for a in answers):
            return False
    return True


def _heads_agree(c: LocalCluster, nodes: list[int]) -> int:
    """Wait until ``nodes`` share one height, then check every block hash agrees; the height."""

    def same() -> int | None:
        heights = {c.height(i) for i in nodes}
        return heights.pop() if len(heights) == 1 else None

    height = wait_for("nodes at one height", same, deadline_s=60)
    for start in range(1, height + 1, 200):
        heights = list(range(start, min(height, start + 199) + 1))
        per_node = []
        for i in nodes:
            answers = c.rpc_batch(i, [("block_get", [h]) for h in heights])
            per_node.append([a["result"]["hash"] for a in answers])
        for other in per_node[1:]:
            assert other == per_node[0], "two nodes disagree on a block"
    return int(height)


def _tx_in_chain(c: LocalCluster, node: int, tx_hash: str) -> None:
    tx = c.rpc(node, "tx_get", [tx_hash])
    assert tx["status"] == "committed"
    block = c.rpc(node, "block_get", [tx["height"]])
    assert block["tx_hashes"][tx["index"]] == tx_hash


def test_four_nodes_commit_500_transfers(cluster: LocalCluster) -> None:
    c = cluster
    senders = 100
    raws_by_node: dict[int, list[bytes]] = {i: [] for i in range(4)}
    n_tx = 0
    for round_ in range(5):
        for k in range(senders):
            raws_by_node[n_tx % 4].append(c.transfer(k, c.address(k + 1), amount=10 + round_))
            n_tx += 1
    hashes: list[str] = []
    for node, raws in raws_by_node.items():
        for i in range(0, len(raws), 50):
            for a in c.submit(node, raws[i : i + 50]):
                assert a.get("result", {}).get("status") == "pending", a
                hashes.append(a["result"]["hash"])
    assert len(hashes) == 500
    wait_for("500 txs committed", lambda: _committed_all(c, 2, hashes), deadline_s=90)
    height = _heads_agree(c, [0, 1, 2, 3])
    assert height >= 1
    heads = {c.rpc(i, "block_get", ["latest"])["hash"] for i in range(4)}
    assert len(heads) == 1
    addresses = [c.address(k) for k in range(senders + 1)]
    balances = [c.balances(i, addresses) for i in range(4)]
    assert all(b == balances[0] for b in balances[1:])
    # sender k paid 5 transfers (10..14) + 5 fees and received k-1's 5 transfers (if k >= 1)
    b = balances[0]
    start = 10**12
    assert b[c.address(0)] == start - 60 - 5
    assert b[c.address(50)] == start - 60 - 5 + 60
    assert b[c.address(senders)] == start + 60
    for h in hashes[::25]:
        _tx_in_chain(c, 0, h)


async def _garbage(url: str) -> tuple[bool, aiohttp.WSMsgType]:
    async with aiohttp.ClientSession() as s, s.ws_connect(url + "/p2p", ssl=False) as ws:
        await ws.send_bytes(b"\xc1\xff garbage that is not msgpack")
        async with asyncio.timeout(10):
            msg = await ws.receive()
        result = ws.closed, msg.type
    # A TLS transport finishes closing a moment after its session (aiohttp's documented graceful
    # shutdown): let it, or the loop ends with the transport open (an unclosed-resource warning).
    await asyncio.sleep(0.25)
    return result


def test_garbage_on_p2p_port_is_closed_and_node_serves_on(cluster: LocalCluster) -> None:
    c = cluster
    closed, kind = asyncio.run(_garbage(c.cluster.p2p_url(1)))
    assert closed, kind
    assert kind in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    before = c.height(1)
    hashes = [a["result"]["hash"] for a in c.submit(1, [c.transfer(150, c.address(151))])]
    wait_for("commit after garbage", lambda: _committed_all(c, 1, hashes), deadline_s=30)
    assert c.height(1) > before
    assert c.health(1)["peers"] == 3


def _status_everywhere(c: LocalCluster, tx_hash: str) -> list[str]:
    out = []
    for i in range(4):
        try:
            out.append(c.tx_status(i, tx_hash))
        except RpcError:
            out.append("unknown")
    return out


def test_no_accepted_tx_stranded_gossip_after_reconnect_and_nonce_gap(
    cluster: LocalCluster,
) -> None:
    """Issue 11 #3 on real processes. (a) A tx admitted while a link is down reaches that peer
    when it reconnects (gossip is not relayed; before, a primary that missed it never proposed
    it). (b) A tx parked behind a nonce nobody has is reported rejected (``nonce_gap``) on every
    node within the timeout, instead of staying pending forever.
    """
    from node.chain.mempool import NONCE_GAP_TIMEOUT_S
    from node.chain.tx import make_transfer
    from node.tools import devnet

    c = cluster
    key, to = devnet.bench_key(180), c.address(181)
    second = make_transfer(key, devnet.CHAIN_ID, to, 1, 1, 1).encode()  # nonce 0 comes later
    c.stop(3)
    wait_for("node 3 gone from node 1's peers", lambda: c.health(1)["peers"] == 2)
    [answer] = c.submit(1, [second])
    assert answer["result"]["status"] == "pending", answer
    second_hash = answer["result"]["hash"]
    c.start(3)
    c.wait_connected(3)
    wait_for(
        "the parked tx re-gossiped to the node that was down",
        lambda: _status_everywhere(c, second_hash) == ["pending"] * 4,
        deadline_s=15,
    )
    first = make_transfer(key, devnet.CHAIN_ID, to, 1, 1, 0).encode()
    [answer] = c.submit(3, [first])
    assert answer["result"]["status"] == "pending", answer
    wait_for(
        "both committed everywhere",
        lambda: _status_everywhere(c, second_hash) == ["committed"] * 4,
        deadline_s=30,
    )
    # (b) nonce 7 of another account, whose nonces 0-6 never come: rejected, on every node.
    gap = make_transfer(devnet.bench_key(182), devnet.CHAIN_ID, to, 1, 1, 7).encode()
    [answer] = c.submit(0, [gap])
    gap_hash = answer["result"]["hash"]
    wait_for(
        "the gapped tx pending everywhere",
        lambda: _status_everywhere(c, gap_hash) == ["pending"] * 4,
        deadline_s=10,
    )
    wait_for(
        "the gapped tx rejected everywhere",
        lambda: _status_everywhere(c, gap_hash) == ["rejected"] * 4,
        deadline_s=NONCE_GAP_TIMEOUT_S + 10,
        every_s=1.0,
    )
    assert {c.rpc(i, "tx_get", [gap_hash]).get("reason") for i in range(4)} == {"nonce_gap"}


def test_kill_backup_then_primary_view_change_and_catch_up(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, n=4) as c, Load(c, range(0, 80)) as load:
        c.wait_height(0, 3)
        status = c.rpc(0, "node_status")
        primary = status["primary"]
        backup = (primary + 1) % 4
        c.kill(backup)
        load.avoid(backup)
        live = [i for i in range(4) if i != backup]
        h = c.height(live[0])
        c.wait_height(live[0], h + 3, deadline_s=60)
        c.start(backup)
        load.allow(backup)
        c.wait_height(backup, c.height(primary), deadline_s=60)

        view = c.rpc(backup, "node_status")["view"]
        h = max(c.height(i) for i in range(4))
        load.avoid(primary)
        c.kill(primary)
        killed_at = time.monotonic()
        others = [i for i in range(4) if i != primary]
        # In-flight blocks of the old view may still commit; wait for one of a newer view.
        wait_for(
            "a block committed in a new view",
            lambda: c.rpc(others[0], "block_get", ["latest"])["view"] > view,
            deadline_s=60,
            every_s=0.02,
        )
        resumed_s = time.monotonic() - killed_at
        new_view = c.rpc(others[0], "node_status")["view"]
        assert new_view > view
        h = c.height(others[0])
        print(f"\nprimary kill -> next commit: {resumed_s:.2f} s (view {view} -> {new_view})")
        c.wait_height(others[0], h + 4, deadline_s=60)
        c.start(primary)
        load.allow(primary)
        c.wait_height(primary, h + 4, deadline_s=60)
        load.stop()
        height = _heads_agree(c, [0, 1, 2, 3])
        assert height >= h + 4
        assert load.accepted
        _tx_in_chain(c, primary, load.accepted[0])


def test_node_down_1000_blocks_catches_up(tmp_path: Path) -> None:
    # 1000 txs submitted at once to a chain of one-tx blocks: back-pressure off (it is what
    # this test would otherwise meet: docs/performance.md, admission back-pressure).
    overrides = {
        "block": {"txs_max": 1},
        "consensus": {"pipeline_depth": 8},
        "mempool": {"backlog_ms": 0},
    }
    with LocalCluster(tmp_path, n=4, overrides=overrides, bench_accounts=250) as c:
        c.stop(3)
        raws_by_node: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
        for _ in range(4):
            for k in range(250):
                raws_by_node[k % 3].append(c.transfer(k, c.address(k + 1)))
        last: list[str] = []
        for node, raws in raws_by_node.items():
            for i in range(0, len(raws), 100):
                answers = c.submit(node, raws[i : i + 100])
                assert all("result" in a for a in answers), answers[:3]
                last = [a["result"]["hash"] for a in answers]
        target = c.wait_height(0, 1000, deadline_s=240)
        assert target >= 1000
        started = time.monotonic()
        c.start(3)
        c.wait_height(3, target, deadline_s=120)
        took = time.monotonic() - started
        print(f"\ncatch-up: {target} blocks in {took:.2f} s = {target / took:.0f} blocks/s")
        _heads_agree(c, [0, 1, 2, 3])
        _tx_in_chain(c, 3, last[-1])


def test_kill_all_during_load_and_restart(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, n=4) as c:
        with Load(c, range(0, 80)) as load:
            c.wait_height(0, 5, deadline_s=60)
            committed_before = [h for h in load.accepted[:200] if _committed_all(c, 0, [h])]
            for i in range(4):
                c.kill(i)
        assert committed_before
        c.start_all()
        height_before = max(c.height(i) for i in range(4))
        raws = [c.transfer(190, c.address(191))]
        hashes = [a["result"]["hash"] for a in c.submit(2, raws)]
        wait_for("commit after restart", lambda: _committed_all(c, 0, hashes), deadline_s=60)
        assert c.height(0) > height_before
        _heads_agree(c, [0, 1, 2, 3])
        for i in range(4):
            assert _committed_all(c, i, committed_before)


def _ready(c: LocalCluster, i: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(c.cluster.rpc_url(i) + "/ready", timeout=5) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError:
        return False


def test_restarted_laggard_syncs_while_idle_then_primary_kill_resumes(tmp_path: Path) -> None:
    """Regression: a node restarted 1-3 blocks behind (and in an old view) on an idle cluster
    stayed there, answered 200 on /ready, and once the primary died the cluster stalled."""
    with LocalCluster(tmp_path, n=4) as c:
        hashes = [
            a["result"]["hash"]
            for a in c.submit(1, [c.transfer(k, c.address(k + 1)) for k in range(5)])
        ]
        wait_for("first commit", lambda: _committed_all(c, 1, hashes))
        lagger = c.rpc(1, "node_status")["primary"]
        c.kill(lagger)
        others = [i for i in range(4) if i != lagger]
        h0 = c.height(others[0])
        c.submit(others[0], [c.transfer(k, c.address(k + 1)) for k in range(10, 15)])
        wait_for(
            "a block of a new view", lambda: c.rpc(others[0], "block_get", ["latest"])["view"] > 0
        )
        hashes = [
            a["result"]["hash"]
            for a in c.submit(others[1], [c.transfer(k, c.address(k + 1)) for k in range(20, 25)])
        ]
        wait_for("commits without the lagger", lambda: _committed_all(c, others[1], hashes))
        target = c.height(others[1])
        assert target >= h0 + 2
        c.start(lagger)  # now behind in height and in view, and nothing is submitted
        c.wait_height(lagger, target, deadline_s=30)
        view = c.rpc(others[0], "node_status")["view"]
        wait_for(
            "lagger in the cluster's view", lambda: c.rpc(lagger, "node_status")["view"] == view
        )
        wait_for("lagger ready", lambda: _ready(c, lagger))

        primary = c.rpc(others[0], "node_status")["primary"]
        assert primary != lagger
        c.kill(primary)
        killed_at = time.monotonic()
        live = [i for i in range(4) if i != primary]
        hashes = [
            a["result"]["hash"]
            for a in c.submit(live[0], [c.transfer(k, c.address(k + 1)) for k in range(30, 35)])
        ]
        wait_for(
            "commits after the second primary died",
            lambda: _committed_all(c, lagger, hashes),
            deadline_s=60,
        )
        print(f"\nsecond primary kill -> txs committed: {time.monotonic() - killed_at:.2f} s")
        assert _heads_agree(c, live) > target
