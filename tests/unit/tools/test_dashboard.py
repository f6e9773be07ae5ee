"""The Grafana dashboard in deploy/grafana: valid dashboard JSON whose queries use real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from node.host.metrics import Metrics, parse_families

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "vigil-dashboard.json"
PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "heatmap", "table", "bargauge", "text"}
# What issue 7 asks the dashboard to show, as one metric each panel set must query.
REQUIRED_METRICS = {
    "vigil_chain_height",
    "vigil_txs_committed_total",
    "vigil_tx_commit_latency_seconds_bucket",
    "vigil_block_commit_seconds_bucket",
    "vigil_consensus_view_changes_total",
    "vigil_mempool_txs",
    "vigil_quarantine_txs",
    "vigil_detector_score_bucket",
    "vigil_p2p_peers",
    "vigil_rpc_requests_total",
}
METRIC_NAME = re.compile(r"\bvigil_[a-z0-9_]+")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def exposed_series_names() -> set[str]:
    """Every series name Metrics can expose: families plus histogram/summary/info suffixes."""
    families = parse_families(Metrics().render()[0].decode())
    names: set[str] = set()
    for name, kind in families.items():
        names.add(name)
        if kind == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count"}
    return names


def all_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_top_level_schema(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"]
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"])
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    assert isinstance(dashboard["panels"], list)
    assert dashboard["panels"]
    assert "id" not in dashboard or dashboard["id"] is None  # import assigns the id
    assert set(dashboard["time"]) == {"from", "to"}


def test_datasource_is_a_template_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${datasource}"
            for name in METRIC_NAME.findall(v["definition"]):
                assert name in exposed_series_names()


def test_panels_well_formed(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) and i > 0 for i in ids)
    for panel in dashboard["panels"]:
        assert panel["type"] in PANEL_TYPES
        assert panel["title"]
        grid = panel["gridPos"]
        assert set(grid) >= {"h", "w", "x", "y"}
        assert grid["x"] + grid["w"] <= 24
        assert grid["h"] > 0
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids))


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not (cells & mine), panel["title"]
        cells |= mine


def test_every_expr_uses_only_defined_metrics(dashboard: dict[str, Any]) -> None:
    known = exposed_series_names()
    used: set[str] = set()
    for expr in all_exprs(dashboard):
        names = set(METRIC_NAME.findall(expr))
        assert names, expr
        assert names <= known, (expr, names - known)
        used |= names
        # Cheap PromQL sanity: balanced brackets and quotes.
        for open_, close in ("()", "{}", "[]"):
            assert expr.count(open_) == expr.count(close), expr
        assert expr.count('"') % 2 == 0, expr
    assert used >= REQUIRED_METRICS, REQUIRED_METRICS - used


def test_latency_panels_use_histogram_quantile(dashboard: dict[str, Any]) -> None:
    exprs = all_exprs(dashboard)
    for family in ("vigil_tx_commit_latency_seconds", "vigil_block_commit_seconds"):
        quantiles = {
            float(m.group(1))
            for e in exprs
            if f"{family}_bucket" in e
            for m in [re.search(r"histogram_quantile\(([\d.]+),", e)]
            if m
        }
        assert {0.5, 0.99} <= quantiles, family


def test_counters_only_used_through_rate_or_increase(dashboard: dict[str, Any]) -> None:
    families = parse_families(Metrics().render()[0].decode())
    counters = {n for n, k in families.items() if k == "counter"}
    buckets = {n + "_bucket" for n, k in families.items() if k == "histogram"}
    for expr in all_exprs(dashboard):
        for name in set(METRIC_NAME.findall(expr)) & (counters | buckets):
            assert re.search(rf"(rate|increase)\({name}\b", expr), (name, expr)
