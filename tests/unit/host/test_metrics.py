"""node.host.metrics: every contract family by its exact name, bounded labels, served over HTTP."""

from __future__ import annotations

import re

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from node.host.metrics import (
    CONTRACT_FAMILIES,
    LATENCY_BUCKETS_S,
    RPC_UNKNOWN_METHOD,
    SCORE_BUCKETS,
    STORAGE_BUCKETS_S,
    Metrics,
    make_metrics_app,
    parse_families,
)

# Copied from docs/operations.md (the external contract) on purpose: the module's own list must not
# be its only check.
CONTRACT_TEXT = """
`vigil_chain_height`, `vigil_consensus_view`, `vigil_consensus_view_changes_total`,
`vigil_blocks_committed_total`, `vigil_txs_committed_total`, `vigil_block_commit_seconds`
(histogram),
`vigil_tx_commit_latency_seconds` (histogram, first seen to committed), `vigil_mempool_txs`,
`vigil_quarantine_txs`, `vigil_txs_quarantined_total`, `vigil_txs_rejected_total{reason}`,
`vigil_detector_score` (histogram), `vigil_detector_trainings_total`, `vigil_p2p_peers`,
`vigil_p2p_messages_total{direction,type}`, `vigil_rpc_requests_total{method,outcome}`,
`vigil_storage_write_seconds` (histogram).
"""
HISTOGRAMS = {
    "vigil_block_commit_seconds",
    "vigil_tx_commit_latency_seconds",
    "vigil_detector_score",
    "vigil_storage_write_seconds",
}
LABELS = {
    "vigil_txs_rejected_total": ("reason",),
    "vigil_p2p_messages_total": ("direction", "type"),
    "vigil_rpc_requests_total": ("method", "outcome"),
}


def contract_names() -> list[str]:
    return re.findall(r"`(vigil_[a-z0-9_]+)", CONTRACT_TEXT)


def text_of(metrics: Metrics) -> str:
    body, _ = metrics.render()
    return body.decode()


def test_contract_list_matches_contract_text() -> None:
    assert sorted(contract_names()) == sorted(CONTRACT_FAMILIES)
    assert len(CONTRACT_FAMILIES) == 17


def test_every_contract_family_exposed_after_construction() -> None:
    families = parse_families(text_of(Metrics()))
    for name in contract_names():
        assert name in families, name
        if name in HISTOGRAMS:
            assert families[name] == "histogram", name
        elif name.endswith("_total"):
            assert families[name] == "counter", name
        else:
            assert families[name] == "gauge", name


def test_exposed_sample_names_carry_total_suffix() -> None:
    m = Metrics()
    m.blocks_committed_total.inc()
    m.txs_committed_total.inc(3)
    m.txs_rejected_total.labels("nonce").inc()
    m.p2p_messages_total.labels("in", "prepare").inc()
    m.rpc_requests_total.labels("tx_submit", "ok").inc()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text_of(m))
        for s in fam.samples
    }
    assert samples[("vigil_blocks_committed_total", ())] == 1.0
    assert samples[("vigil_txs_committed_total", ())] == 3.0
    assert samples[("vigil_txs_rejected_total", (("reason", "nonce"),))] == 1.0
    key = ("vigil_p2p_messages_total", (("direction", "in"), ("type", "prepare")))
    assert samples[key] == 1.0
    key = ("vigil_rpc_requests_total", (("method", "tx_submit"), ("outcome", "ok")))
    assert samples[key] == 1.0
    # No "_created" noise series: one family per metric in the text format.
    assert not any(name.endswith("_created") for name, _ in samples)


def test_label_names_as_contracted() -> None:
    m = Metrics()
    m.txs_rejected_total.labels(reason="balance").inc()
    m.p2p_messages_total.labels(direction="out", type="commit").inc()
    m.rpc_requests_total.labels(method="node_status", outcome="ok").inc()
    for fam in text_string_to_metric_families(text_of(m)):
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        if name in LABELS:
            assert fam.samples, name
            for s in fam.samples:
                assert tuple(sorted(s.labels)) == LABELS[name]


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics(CollectorRegistry())
    a.chain_height.set(10)
    assert "vigil_chain_height 10.0" in text_of(a)
    assert "vigil_chain_height 0.0" in text_of(b)


def test_histogram_buckets_span_the_values() -> None:
    assert STORAGE_BUCKETS_S[0] == pytest.approx(0.0001)
    assert LATENCY_BUCKETS_S[-1] >= 30.0
    assert SCORE_BUCKETS[-1] == 1.0
    assert all(0.0 < b <= 1.0 for b in SCORE_BUCKETS)
    m = Metrics()
    m.storage_write_seconds.observe(0.00005)
    m.tx_commit_latency_seconds.observe(12.0)
    text = text_of(m)
    assert 'vigil_storage_write_seconds_bucket{le="0.0001"} 1.0' in text
    assert 'vigil_tx_commit_latency_seconds_bucket{le="10.0"} 0.0' in text
    assert 'vigil_tx_commit_latency_seconds_bucket{le="30.0"} 1.0' in text


def test_observe_rpc_bounds_method_label() -> None:
    m = Metrics()
    for i in range(50):
        m.observe_rpc(f"attacker_method_{i}", "invalid", 0.001)
    m.observe_rpc("tx_get", "bogus-outcome")
    methods = {
        s.labels["method"]
        for fam in text_string_to_metric_families(text_of(m))
        if fam.name == "vigil_rpc_requests"
        for s in fam.samples
    }
    assert methods == {RPC_UNKNOWN_METHOD, "tx_get"}
    assert 'vigil_rpc_requests_total{method="unknown",outcome="invalid"} 50.0' in text_of(m)
    assert 'vigil_rpc_requests_total{method="tx_get",outcome="error"} 1.0' in text_of(m)


def test_frame_counts_add_up_per_direction_and_type() -> None:
    m = Metrics()
    for _ in range(3):
        m.count_frame("in", "prepare", 100)
    m.count_frame("out", "txs", 5000)
    m.count_dropped_frame("txs")
    m.count_dropped_frame("txs")
    text = text_of(m)
    assert 'vigil_p2p_messages_total{direction="in",type="prepare"} 3.0' in text
    assert 'vigil_p2p_messages_total{direction="out",type="txs"} 1.0' in text
    assert 'vigil_p2p_bytes_total{direction="in"} 300.0' in text
    assert 'vigil_p2p_bytes_total{direction="out"} 5000.0' in text
    assert 'vigil_p2p_dropped_total{type="txs"} 2.0' in text


def test_observe_committed_updates_chain_families() -> None:
    m = Metrics()
    m.observe_committed(height=5, view=2, txs=40, block_seconds=0.2)
    m.observe_committed(height=6, view=2, txs=0)
    families = {f.name: f for f in text_string_to_metric_families(text_of(m))}
    value = {s.name: s.value for f in families.values() for s in f.samples if not s.labels}
    assert value["vigil_chain_height"] == 6.0
    assert value["vigil_consensus_view"] == 2.0
    assert value["vigil_blocks_committed_total"] == 2.0
    assert value["vigil_txs_committed_total"] == 40.0
    assert value["vigil_block_commit_seconds_count"] == 1.0
    assert value["vigil_block_txs_count"] == 2.0


def test_view_and_mempool_helpers() -> None:
    m = Metrics()
    m.set_view(3, is_primary=True)
    m.set_mempool(txs=7, size_bytes=1400)
    text = text_of(m)
    assert "vigil_consensus_view 3.0" in text
    assert "vigil_consensus_is_primary 1.0" in text
    assert "vigil_mempool_txs 7.0" in text
    assert "vigil_mempool_bytes 1400.0" in text
    m.set_view(4, is_primary=False)
    assert "vigil_consensus_is_primary 0.0" in text_of(m)


def test_time_storage_write_observes_once() -> None:
    m = Metrics()
    with m.time_storage_write():
        pass
    assert "vigil_storage_write_seconds_count 1.0" in text_of(m)


def test_set_info_labels() -> None:
    m = Metrics()
    m.set_info(node_id=3, chain_id="vigil-local", version="0.1.0")
    assert 'vigil_node_info{chain_id="vigil-local",node="3",version="0.1.0"} 1.0' in text_of(m)


async def test_metrics_app_serves_text_format() -> None:
    m = Metrics()
    m.chain_height.set(42)
    async with TestClient(TestServer(make_metrics_app(m))) as client:
        for path in ("/metrics", "/"):
            resp = await client.get(path)
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            families = parse_families(await resp.text())
            assert set(CONTRACT_FAMILIES) <= set(families)
        resp = await client.get("/metrics")
        assert "vigil_chain_height 42.0" in await resp.text()
        assert (await client.get("/nope")).status == 404
