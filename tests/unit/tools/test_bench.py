"""The bench driver's helpers (node/tools/bench.py)."""

from __future__ import annotations

from pathlib import Path


def test_bench_skips_nodes_marked_down() -> None:
    import argparse

    from node.tools.bench import Bench
    from node.tools.devnet import Cluster

    # Only the node count matters here: no directory, no ports.
    cluster = Cluster(root=Path("/nonexistent"), n=4, ports=(), admin_token="")
    b = Bench(cluster, argparse.Namespace())
    assert b._live(1) == 1
    b._mark_down(1)
    b._mark_down(2)
    assert b._live(1) == 3
    for i in (0, 3):
        b._mark_down(i)
    assert b._live(0) is None
