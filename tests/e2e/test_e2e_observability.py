"""Observability on a real 4-node cluster: metrics scraped and parsed, /ready, logs.

One cluster for the whole module (start-up is the expensive part); the steps run in order and each
leaves every node running again: commits move the metrics, killing the primary raises
view_changes_total, stopping peers drops p2p_peers and turns /ready to 503, and the run's logs
never contain the admin token.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.host.metrics import CONTRACT_FAMILIES, parse_families
from node.tools.client import RpcError
from tests.cluster_util import LocalCluster, wait_for

pytestmark = pytest.mark.e2e

N = 4
CLUSTER_OPTIONS = {"n": N, "bench_accounts": 64}
# More than 2 * consensus.pipeline_depth (default 4), so a node that missed them must catch up.
CATCHUP_BLOCKS = 10


def scrape(c: LocalCluster, i: int) -> str:
    with urllib.request.urlopen(c.cluster.metrics_url(i), timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return str(resp.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """Value of one exposed sample (exact name, exact labels); KeyError if absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise KeyError(f"{name}{labels}")


def metric(c: LocalCluster, i: int, name: str, **labels: str) -> float:
    return sample(scrape(c, i), name, **labels)


def ready_status(c: LocalCluster, i: int) -> int:
    """HTTP status of GET /ready, after checking the body says the same."""
    try:
        with urllib.request.urlopen(c.cluster.rpc_url(i) + "/ready", timeout=3) as resp:
            status, body = int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            status, body = int(exc.code), json.loads(exc.read())
    assert body["ready"] is (status == 200), (status, body)
    return status


def submit(c: LocalCluster, node: int, senders: range) -> list[str]:
    answers = c.submit(node, [c.transfer(k, c.address(k + 1)) for k in senders])
    hashes = [a["result"]["hash"] for a in answers if "result" in a]
    assert len(hashes) == len(senders), answers
    return hashes


def all_committed(c: LocalCluster, node: int, hashes: list[str]) -> bool:
    answers = c.rpc_batch(node, [("tx_get", [h]) for h in hashes])
    return all(a.get("result", {}).get("status") == "committed" for a in answers)


def quiet_height(c: LocalCluster, i: int) -> int:
    """node_status height, once metrics and status agree across a scrape (no commit in between)."""

    def agree() -> tuple[int] | None:
        before = c.height(i)
        scraped = metric(c, i, "vigil_chain_height")
        after = c.height(i)
        return (before,) if before == after == scraped else None  # a tuple: height 0 is falsy

    (height,) = wait_for(f"node {i} metrics agree with node_status", agree, deadline_s=30)
    return int(height)


def test_1_every_node_exposes_every_contract_family(cluster: LocalCluster) -> None:
    for i in range(N):
        families = parse_families(scrape(cluster, i))
        missing = set(CONTRACT_FAMILIES) - set(families)
        assert not missing, f"node {i} lacks {sorted(missing)}"
        assert families["vigil_block_commit_seconds"] == "histogram"
        assert families["vigil_txs_committed_total"] == "counter"
        assert families["vigil_chain_height"] == "gauge"
        assert metric(cluster, i, "vigil_p2p_peers") == N - 1


def test_2_height_and_txs_move_with_commits_and_agree(cluster: LocalCluster) -> None:
    c = cluster
    before = [quiet_height(c, i) for i in range(N)]
    txs_before = [metric(c, i, "vigil_txs_committed_total") for i in range(N)]
    try:  # the series appears with the first frame of its type
        gossip_in = metric(c, 3, "vigil_p2p_messages_total", direction="in", type="txs")
    except KeyError:
        gossip_in = 0.0
    hashes = submit(c, 1, range(0, 30)) + submit(c, 2, range(30, 40))
    wait_for("40 txs committed on node 0", lambda: all_committed(c, 0, hashes))
    for i in range(N):
        wait_for(f"node {i} executed the 40 txs", lambda i=i: all_committed(c, i, hashes))
        height = quiet_height(c, i)
        assert height > before[i]
        text = scrape(c, i)
        assert sample(text, "vigil_chain_height") == height
        # Fresh processes since genesis: one blocks_committed per height.
        assert sample(text, "vigil_blocks_committed_total") == height
        assert sample(text, "vigil_txs_committed_total") == txs_before[i] + 40
        assert sample(text, "vigil_consensus_view") == c.rpc(i, "node_status")["view"]
    # The counter equals what the chain itself holds.
    height = quiet_height(c, 0)
    blocks = c.rpc_batch(0, [("block_get", [h]) for h in range(1, height + 1)])
    in_chain = sum(len(b["result"]["tx_hashes"]) for b in blocks)
    assert metric(c, 0, "vigil_txs_committed_total") == in_chain
    # Node 3 had the 40 txs from the gossip of nodes 1 and 2: at least a frame from each.
    assert metric(c, 3, "vigil_p2p_messages_total", direction="in", type="txs") >= gossip_in + 2
    text = scrape(c, 3)
    assert sample(text, "vigil_p2p_bytes_total", direction="in") > 0
    assert sample(text, "vigil_p2p_messages_total", direction="out", type="commit") >= 1
    # Node 1 admitted 30 from RPC: their first-seen -> commit latencies are recorded.
    assert metric(c, 1, "vigil_tx_commit_latency_seconds_count") >= 30
    assert metric(c, 0, "vigil_block_commit_seconds_count") >= 1


def test_3_view_changes_rise_after_primary_is_killed(cluster: LocalCluster) -> None:
    c = cluster
    status = c.rpc(0, "node_status")
    primary = int(status["primary"])
    others = [i for i in range(N) if i != primary]
    changes_before = {i: metric(c, i, "vigil_consensus_view_changes_total") for i in others}
    view_before = int(status["view"])
    c.kill(primary)
    # A request the dead primary never orders makes the backups' timers fire.
    hashes = submit(c, others[0], range(40, 50))
    for i in others:
        wait_for(
            f"node {i} counted a view change",
            lambda i=i: metric(c, i, "vigil_consensus_view_changes_total") > changes_before[i],
        )
        assert metric(c, i, "vigil_consensus_view") > view_before
    wait_for("commits resume after the view change", lambda: all_committed(c, others[0], hashes))
    c.start(primary)
    # More blocks than the commit pipeline covers: the restarted node must fetch them by catch-up.
    for k in range(50, 50 + CATCHUP_BLOCKS):
        one = submit(c, others[0], range(k, k + 1))
        wait_for(f"tx {k} committed", lambda h=one: all_committed(c, others[0], h))
    target = c.height(others[0])
    c.wait_height(primary, target)
    assert metric(c, primary, "vigil_catchup_blocks_total") > 0
    assert metric(c, primary, "vigil_chain_height") >= target
    for i in range(N):
        c.wait_connected(i)
    view_logs = [
        json.loads(line)
        for i in others
        for line in c.log(i).splitlines()
        if '"event":"view_change"' in line
    ]
    assert view_logs
    assert all(r["level"] == "warning" for r in view_logs)


def test_4_peers_drop_and_ready_follows_quorum(cluster: LocalCluster) -> None:
    c = cluster
    watcher, rest = 0, [1, 2, 3]
    # node 0 was restarted by the previous test and is 503 while it rejoins the current view
    wait_for("node 0 ready", lambda: ready_status(c, watcher) == 200)
    c.stop(rest[0])
    for i in (watcher, *rest[1:]):
        wait_for(
            f"node {i} sees {N - 2} peers", lambda i=i: metric(c, i, "vigil_p2p_peers") == N - 2
        )
    # Three of four is still a quorum: node 0 stays ready.
    assert ready_status(c, watcher) == 200
    for i in rest[1:]:
        c.stop(i)
    wait_for("node 0 sees no peers", lambda: metric(c, watcher, "vigil_p2p_peers") == 0)
    wait_for("/ready 503 without peers", lambda: ready_status(c, watcher) == 503)
    wait_for("vigil_ready 0", lambda: metric(c, watcher, "vigil_ready") == 0)
    assert c.health(watcher)["peers"] == 0  # /health still answers 200 while not ready
    for i in rest:
        c.start(i)
    wait_for("/ready 200 after peers return", lambda: ready_status(c, watcher) == 200)
    wait_for("node 0 sees all peers", lambda: metric(c, watcher, "vigil_p2p_peers") == N - 1)
    wait_for("vigil_ready 1", lambda: metric(c, watcher, "vigil_ready") == 1)


def test_5_logs_are_structured_and_hold_no_admin_token(cluster: LocalCluster) -> None:
    c = cluster
    token = c.cluster.admin_token
    assert len(token) >= 16
    # Push the token through the node in ways a careless log line would echo it.
    c.rpc(0, "quarantine_list", {"limit": 5}, admin=True)
    body = {"jsonrpc": "2.0", "id": 1, "method": "quarantine_list", "params": {}}
    req = urllib.request.Request(
        c.cluster.rpc_url(1),
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}x"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert "error" in json.loads(resp.read())
    with pytest.raises(RpcError):
        c.rpc(2, "tx_get", [token])
    with pytest.raises(RpcError):
        c.rpc(3, f"no_such_method_{token}")
    # Every line so far (start-ups, commits, view change, stops) of every node.
    for i in range(N):
        text = c.log(i)
        assert token not in text, f"node {i} logged the admin token"
        events = []
        for line in text.splitlines():
            if line.strip():
                record = json.loads(line)  # one JSON object per line, nothing else
                assert {"ts", "level", "logger", "event"} <= set(record)
                events.append(record)
        committed = [r for r in events if r["event"] == "block_committed"]
        assert committed, f"node {i} logged no block_committed"
        assert {"height", "txs", "view", "ms", "resolve_ms", "write_ms"} <= set(committed[-1])
        for r in committed:  # the parts fit in the whole
            assert 0 <= r["resolve_ms"] + r["write_ms"] <= r["ms"] + 0.2, r
        assert not [r for r in events if r["level"] == "info" and r["event"] == "tx_admitted"]
