"""Prometheus metrics of one node, served on its ``metrics_url``.

Every node owns its own ``CollectorRegistry`` (never prometheus_client's global one) so several
nodes can run in one process in tests without clashing. The metric family names (docs/operations.md)
are fixed; the extras below are what an operator needs to tell "slow" from "stuck" from "forked".

Label values stay bounded: reasons, directions, message types and RPC method names come from small
fixed sets (an unknown RPC method is counted as ``"unknown"``, since clients choose method names).
Never put tx hashes, addresses, peer ports or node-supplied strings into a label.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families

# The classic text format (what generate_latest writes); every Prometheus version scrapes it.
# prometheus_client's CONTENT_TYPE_LATEST moved to "version=1.0.0" in recent releases.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The "<name>_created" series double the exposition for no operator value (Prometheus records
# counter resets itself) and read as stray gauge families in the text format. Process-wide, which
# is what we want: a node process serves nothing else.
cast(Callable[[], None], disable_created_metrics)()  # prometheus_client leaves it untyped

# Commit latency runs from a few ms (idle cluster, one round trip) to tens of seconds (a view
# change under load); the top buckets keep a stalled cluster visible instead of lumping it in +Inf.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A LevelDB batch of one block takes 0.1 ms (empty) to tens of ms (thousands of txs, fsync).
STORAGE_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
# Isolation-forest scores lie in (0, 1]; normal txs sit around 0.4-0.6, so resolution is finest
# there and near the usual quarantine thresholds (0.6-0.8).
SCORE_BUCKETS = (
    0.1,
    0.2,
    0.3,
    0.35,
    0.4,
    0.45,
    0.5,
    0.55,
    0.6,
    0.65,
    0.7,
    0.75,
    0.8,
    0.85,
    0.9,
    0.95,
    1.0,
)
RPC_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0)
# Event-loop lag: anything above ~50 ms means the loop is being blocked (CPU work not offloaded).
LOOP_LAG_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BLOCK_TXS_BUCKETS = (0, 1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)

# RPC method names of docs/rpc.md; anything else is labelled "unknown".
RPC_METHODS = frozenset(
    {
        "node_status",
        "tx_submit",
        "tx_get",
        "tx_proof",
        "anchor_get",
        "account_get",
        "block_get",
        "mempool_status",
        "detector_status",
        "quarantine_list",
        "quarantine_release",
        "quarantine_reject",
        "quarantine_show",
        "detector_explain",
        "subscribe",
        "unsubscribe",
        "batch",
    }
)
RPC_UNKNOWN_METHOD = "unknown"
# Outcome values node/api/rpc.py uses: ok, error (application error), invalid (JSON-RPC -326xx),
# unauthorized, timeout, internal (-32603), overloaded and rejected (refused before parsing).
RPC_OUTCOMES = frozenset(
    {"ok", "error", "invalid", "unauthorized", "timeout", "internal", "overloaded", "rejected"}
)

# Every family of docs/operations.md, as exposed (counters with their _total suffix).
CONTRACT_FAMILIES = (
    "vigil_chain_height",
    "vigil_consensus_view",
    "vigil_consensus_view_changes_total",
    "vigil_blocks_committed_total",
    "vigil_txs_committed_total",
    "vigil_block_commit_seconds",
    "vigil_tx_commit_latency_seconds",
    "vigil_mempool_txs",
    "vigil_quarantine_txs",
    "vigil_txs_quarantined_total",
    "vigil_txs_rejected_total",
    "vigil_detector_score",
    "vigil_detector_trainings_total",
    "vigil_p2p_peers",
    "vigil_p2p_messages_total",
    "vigil_rpc_requests_total",
    "vigil_storage_write_seconds",
)


class Metrics:
    """All metric families of one node, registered in ``self.registry``.

    Attributes are the prometheus_client objects; callers use them directly, e.g.
    ``metrics.blocks_committed_total.inc()`` or
    ``metrics.txs_rejected_total.labels("nonce").inc()``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry

        # -- chain and consensus ------------------------------------------------------------
        self.chain_height = Gauge(
            "vigil_chain_height", "Height of the last committed block.", registry=r
        )
        self.consensus_view = Gauge("vigil_consensus_view", "Current PBFT view.", registry=r)
        self.view_changes_total = Counter(
            "vigil_consensus_view_changes",
            "View changes this node has entered (a new view installed).",
            registry=r,
        )
        self.blocks_committed_total = Counter(
            "vigil_blocks_committed",
            "Blocks committed and executed, null blocks included.",
            registry=r,
        )
        self.txs_committed_total = Counter(
            "vigil_txs_committed",
            "Transactions executed in committed blocks (skipped ones are counted as rejected).",
            registry=r,
        )
        self.block_commit_seconds = Histogram(
            "vigil_block_commit_seconds",
            "Time to apply a committed block: consensus commit to block executed and written.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.tx_commit_latency_seconds = Histogram(
            "vigil_tx_commit_latency_seconds",
            "Time from a transaction first seen by this node to its commit.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.consensus_dropped_total = Counter(
            "vigil_consensus_dropped",
            "Consensus messages the replica dropped (stale, duplicate, bad signature...).",
            ["reason"],
            registry=r,
        )
        self.is_primary = Gauge(
            "vigil_consensus_is_primary", "1 if this node is the primary of its view.", registry=r
        )
        self.block_txs = Histogram(
            "vigil_block_txs",
            "Transactions per committed block.",
            buckets=BLOCK_TXS_BUCKETS,
            registry=r,
        )
        self.syncing = Gauge(
            "vigil_syncing", "1 while the node is catching up from peers.", registry=r
        )
        self.ready = Gauge(
            "vigil_ready", "1 when /ready answers 200 (quorum of peers, not behind).", registry=r
        )
        self.catchup_blocks_total = Counter(
            "vigil_catchup_blocks", "Blocks fetched from peers and applied by catch-up.", registry=r
        )

        # -- mempool, quarantine, detector --------------------------------------------------
        self.mempool_txs = Gauge("vigil_mempool_txs", "Transactions in the mempool.", registry=r)
        self.mempool_bytes = Gauge(
            "vigil_mempool_bytes", "Encoded bytes of the transactions in the mempool.", registry=r
        )
        self.txs_regossiped_total = Counter(
            "vigil_txs_regossiped",
            "Mempool transactions sent to the peers again because they waited too long here.",
            registry=r,
        )
        self.quarantine_txs = Gauge(
            "vigil_quarantine_txs", "Transactions waiting in the quarantine.", registry=r
        )
        self.txs_quarantined_total = Counter(
            "vigil_txs_quarantined", "Transactions the detector sent to the quarantine.", registry=r
        )
        self.txs_rejected_total = Counter(
            "vigil_txs_rejected",
            "Transactions refused at admission or skipped at execution, by reason.",
            ["reason"],
            registry=r,
        )
        self.detector_score = Histogram(
            "vigil_detector_score",
            "Anomaly scores of scored transactions, in (0, 1].",
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.detector_trainings_total = Counter(
            "vigil_detector_trainings", "Detector models trained.", registry=r
        )
        self.detector_threshold = Gauge(
            "vigil_detector_threshold",
            "Score above which a transaction is quarantined.",
            registry=r,
        )
        self.detector_model_version = Gauge(
            "vigil_detector_model_version",
            "Version number of the detector model in use.",
            registry=r,
        )
        self.detector_drift_psi = Gauge(
            "vigil_detector_drift_psi",
            "Population stability index of a feature: training window vs recent scored txs.",
            ["feature"],
            registry=r,
        )
        self.detector_holds_per_minute = Gauge(
            "vigil_detector_holds_per_minute",
            "Transactions held by the detector in the last minute.",
            registry=r,
        )
        self.detector_score_quantile = Gauge(
            "vigil_detector_score_quantile",
            "Quantiles of the last 2048 scores (p50, p90, p99).",
            ["quantile"],
            registry=r,
        )
        self.detector_budget_overflows_total = Counter(
            "vigil_detector_budget_overflows",
            "Would-be holds passed as watch because the hold budget was spent.",
            registry=r,
        )
        self.detector_model_age_blocks = Gauge(
            "vigil_detector_model_age_blocks",
            "Blocks committed since the model in use was trained.",
            registry=r,
        )

        # -- p2p ----------------------------------------------------------------------------
        self.p2p_peers = Gauge(
            "vigil_p2p_peers", "Validators connected and past the handshake.", registry=r
        )
        self.p2p_messages_total = Counter(
            "vigil_p2p_messages",
            "P2P messages by direction (in/out) and message type.",
            ["direction", "type"],
            registry=r,
        )
        self.p2p_bytes_total = Counter(
            "vigil_p2p_bytes", "P2P frame bytes by direction (in/out).", ["direction"], registry=r
        )
        self.p2p_rejected_total = Counter(
            "vigil_p2p_rejected",
            "Frames or handshakes refused from peers (garbage, oversize, unknown key...).",
            ["reason"],
            registry=r,
        )
        self.p2p_dropped_total = Counter(
            "vigil_p2p_dropped",
            "Outgoing messages dropped because a peer's send queue was full.",
            ["type"],
            registry=r,
        )

        # -- rpc, storage, loop -------------------------------------------------------------
        self.rpc_requests_total = Counter(
            "vigil_rpc_requests",
            "JSON-RPC requests by method and outcome.",
            ["method", "outcome"],
            registry=r,
        )
        self.rpc_request_seconds = Histogram(
            "vigil_rpc_request_seconds",
            "JSON-RPC request handling time by method.",
            ["method"],
            buckets=RPC_BUCKETS_S,
            registry=r,
        )
        # Labelled children by (family, labels): labels() costs a few microseconds, paid
        # on every call of a JSON-RPC batch and every refused tx (thousands a second under
        # overload); the children are looked up once (``_child``).
        self._children: dict[tuple[object, ...], Any] = {}
        self.storage_write_seconds = Histogram(
            "vigil_storage_write_seconds",
            "Duration of one LevelDB write batch (a committed block or a consensus record).",
            buckets=STORAGE_BUCKETS_S,
            registry=r,
        )
        self.event_loop_lag_seconds = Histogram(
            "vigil_event_loop_lag_seconds",
            "How late a periodic asyncio wake-up fires; high values mean the loop is blocked.",
            buckets=LOOP_LAG_BUCKETS_S,
            registry=r,
        )
        self.node_info = Info("vigil_node", "Static facts about this node.", registry=r)

        # Directions are a fixed pair: make them visible from the first scrape.
        for direction in ("in", "out"):
            self.p2p_bytes_total.labels(direction)

    # -- helpers ------------------------------------------------------------------------------

    def set_info(self, *, node_id: int | str, chain_id: str, version: str) -> None:
        """Record static labels (one series per node, so bounded)."""
        self.node_info.info({"node": str(node_id), "chain_id": chain_id, "version": version})

    def observe_rpc(self, method: str, outcome: str, seconds: float | None = None) -> None:
        """Count one JSON-RPC request; unknown method names collapse to ``"unknown"``."""
        label = method if method in RPC_METHODS else RPC_UNKNOWN_METHOD
        if outcome not in RPC_OUTCOMES:
            outcome = "error"
        self._child(self.rpc_requests_total, label, outcome).inc()
        if seconds is not None:
            self._child(self.rpc_request_seconds, label).observe(seconds)

    def count_rejected(self, reason: str, n: int = 1) -> None:
        """Count ``n`` txs refused or dropped for ``reason`` (a stable error or drop name)."""
        self._child(self.txs_rejected_total, reason).inc(n)

    def count_frame(self, direction: str, kind: str, size: int) -> None:
        """One peer frame of ``size`` bytes in or out (``kind``: node/net/wire.py
        ``frame_label``). Several a block per peer: the labelled children are cached, since
        prometheus_client's ``labels()`` costs more than the count itself."""
        self._child(self.p2p_messages_total, direction, kind).inc()
        self._child(self.p2p_bytes_total, direction).inc(size)

    def count_dropped_frame(self, kind: str) -> None:
        """An outgoing frame dropped: the peer's send queue was full."""
        self._child(self.p2p_dropped_total, kind).inc()

    def _child(self, family: Any, *labels: str) -> Any:
        key = (id(family), *labels)  # the families live as long as we do
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def observe_committed(
        self, *, height: int, view: int, txs: int, block_seconds: float | None = None
    ) -> None:
        """Update the chain families after one block is committed and executed."""
        self.chain_height.set(height)
        self.consensus_view.set(view)
        self.blocks_committed_total.inc()
        if txs:
            self.txs_committed_total.inc(txs)
        self.block_txs.observe(txs)
        if block_seconds is not None:
            self.block_commit_seconds.observe(block_seconds)

    def set_view(self, view: int, *, is_primary: bool) -> None:
        """Current view and whether this node leads it (call at start-up and on
        every view change).
        """
        self.consensus_view.set(view)
        self.is_primary.set(1 if is_primary else 0)

    def set_mempool(self, *, txs: int, size_bytes: int) -> None:
        """Mempool gauges; call after admission and after each commit (commits shrink it)."""
        self.mempool_txs.set(txs)
        self.mempool_bytes.set(size_bytes)

    @contextlib.contextmanager
    def time_storage_write(self) -> Iterator[None]:
        """``with metrics.time_storage_write(): db.write(batch)`` (works inside to_thread too)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.storage_write_seconds.observe(time.perf_counter() - start)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of this registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE


def parse_families(text: str) -> dict[str, str]:
    """Exposed family name -> type of a scraped text; counters get back their ``_total``.

    prometheus_client's parser strips ``_total`` from counter family names, while the contract
    names counters with it, so compare against this mapping.
    """
    out: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        out[name] = family.type
    return out


async def watch_loop_lag(
    metrics: Metrics,
    interval_s: float = 0.25,
    on_lag: Callable[[float], None] = lambda lag_s: None,
) -> None:
    """Measure event-loop lag forever (run it as a task; cancel it on shutdown); each sample
    also goes to ``on_lag`` (admission's back-pressure, node/host/admission.py)."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval_s)
        lag_s = max(0.0, loop.time() - start - interval_s)
        metrics.event_loop_lag_seconds.observe(lag_s)
        on_lag(lag_s)


def make_metrics_app(metrics: Metrics) -> web.Application:
    """An aiohttp app serving ``GET /metrics`` (and ``/``) in the Prometheus text format."""

    async def handle(_request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    app.router.add_get("/", handle)
    return app


@contextlib.asynccontextmanager
async def serve_metrics(
    metrics: Metrics, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[web.AppRunner]:
    """Serve ``make_metrics_app`` on host:port (HTTPS with ``ssl_context``) during the block."""
    runner = web.AppRunner(make_metrics_app(metrics), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
        yield runner
    finally:
        await runner.cleanup()
