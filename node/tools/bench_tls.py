"""``scripts/bench_tls``: what TLS on the P2P links costs, in node CPU per committed tx.

Runs the same load (``scripts/bench``'s open-loop signed transfers) against a fresh local cluster
with TLS links and one with ``p2p.insecure = true``, alternating ``--rounds`` times, and reads
each node process's CPU time (user + system, /proc/<pid>/stat) around the load. Prints one JSON
object: per mode and round the bench result plus ``cpu_s`` per node and ``cpu_ms_per_tx`` per
node (node CPU / committed txs), and the ratio TLS / insecure of the mean per-node CPU per tx.
Linux only (/proc). RPC stays plain HTTP in both modes: only the validator links differ.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from node.tools import devnet
from node.tools.bench import Bench, _wait_connected

TICKS_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_S


def _ports(n: int) -> list[devnet.Ports]:
    socks = [socket.socket() for _ in range(3 * n)]
    for sk in socks:
        sk.bind(("127.0.0.1", 0))
    p = [sk.getsockname()[1] for sk in socks]
    for sk in socks:
        sk.close()
    return [devnet.Ports(*p[3 * i : 3 * i + 3]) for i in range(n)]


def run_mode(insecure: bool, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vigil-bench-tls-") as tmp:
        cluster = devnet.init_cluster(
            Path(tmp) / "cluster",
            _ports(args.nodes),
            overrides={"p2p": {"insecure": insecure}},
        )
        pids = [devnet.start_node(cluster, i) for i in range(cluster.n)]
        try:
            _wait_connected(cluster)
            before = [cpu_s(p) for p in pids]
            result = asyncio.run(Bench(cluster, args).run())
            spent = [round(cpu_s(p) - b, 2) for p, b in zip(pids, before, strict=True)]
        finally:
            devnet.stop_nodes(cluster, list(range(cluster.n)))
    committed = max(int(result["committed"]), 1)
    per_tx = [round(1000 * s / committed, 3) for s in spent]
    return {
        "mode": "insecure" if insecure else "tls",
        **result,
        "cpu_s": spent,
        "cpu_ms_per_tx": per_tx,
        "cpu_ms_per_tx_mean": round(statistics.fmean(per_tx), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench_tls")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rate", default="500", help="tx/s, or max")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    args.eth_share, args.eth_accounts = 0.0, 0
    runs = []
    for _ in range(args.rounds):
        for insecure in (False, True):
            runs.append(run_mode(insecure, args))
            print(json.dumps(runs[-1]), file=sys.stderr)

    def mean(mode: str) -> float:
        return statistics.fmean(r["cpu_ms_per_tx_mean"] for r in runs if r["mode"] == mode)

    tls, plain = mean("tls"), mean("insecure")
    print(
        json.dumps(
            {
                "nodes": args.nodes,
                "rate": args.rate,
                "duration_s": args.duration,
                "runs": runs,
                "tls_cpu_ms_per_tx_per_node": round(tls, 3),
                "insecure_cpu_ms_per_tx_per_node": round(plain, 3),
                "ratio_tls_over_insecure": round(tls / plain, 3) if plain else None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
