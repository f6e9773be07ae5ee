"""``scripts/cluster``: run a local cluster of validators (README.md, docs/operations.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from node.tools import demo, devnet
from node.tools.client import Client, ClientError, RpcError
from node.tools.devnet import Cluster
from node.tools.promconfig import write_prometheus_config

BENCH_ACCOUNTS_MAX = 100_000  # genesis funds each one; the bench presigns over all of them


def _health(c: Cluster, i: int) -> dict[str, Any] | None:
    try:
        return dict(Client(c.rpc_url(i), timeout_s=2).health())
    except (ClientError, TypeError, ValueError):
        return None


def _load(args: argparse.Namespace) -> Cluster:
    root = Path(args.dir)
    if not (root / "cluster.json").exists():
        sys.exit(f"no cluster in {root} (run: scripts/cluster up --dir {root})")
    return Cluster.load(root)


def _bench_accounts(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 2 <= n <= BENCH_ACCOUNTS_MAX:
        raise argparse.ArgumentTypeError(f"between 2 and {BENCH_ACCOUNTS_MAX}, not {n}")
    return n


def cmd_up(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if (root / "cluster.json").exists():
        c = Cluster.load(root)
        print(f"resuming the cluster in {root} ({c.n} nodes)")
    else:
        overrides = {"block": {"empty_interval_ms": args.empty_interval_ms}}
        c = devnet.init_cluster(
            root,
            devnet.base_ports(args.base_port, args.n),
            overrides=overrides,
            bench_accounts=args.bench_accounts,
        )
        try:
            write_prometheus_config(
                root / "prometheus.yml", [c.metrics_url(i) for i in range(c.n)], "vigil-local"
            )
        except OSError as exc:  # a convenience file: say so, but never block `up`
            print(f"warning: prometheus.yml not written: {exc}", file=sys.stderr)
        print(f"created a {c.n}-node cluster in {root}")
    for i in range(c.n):
        devnet.start_node(c, i)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        healths = [_health(c, i) for i in range(c.n)]
        if all(h is not None and h["peers"] >= c.n - 1 for h in healths):
            break
        dead = [i for i in range(c.n) if devnet.read_pid(c, i) is None]
        if dead:
            print(f"node(s) {dead} exited; see scripts/cluster logs {dead[0]}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    else:
        print("timed out waiting for a healthy, connected cluster", file=sys.stderr)
        return 1
    for i in range(c.n):
        print(
            f"node {i}: rpc {c.rpc_url(i)}  metrics {c.metrics_url(i)}  p2p {c.p2p_url(i)}"
            f"  log {c.log_path(i)}"
        )
    print(f"wallets: {', '.join(str(p) for p in c.wallet_paths())}")
    print(f"admin token: {c.admin_token}")
    # The fragment stays in the browser (docs/console.md); the page keeps the token in the tab.
    print(f"console: {c.rpc_url(0).rstrip('/')}/console#token={c.admin_token}")
    return 0


def _row(c: Cluster, i: int) -> dict[str, Any]:
    pid = devnet.read_pid(c, i)
    row: dict[str, Any] = {
        "index": i,
        "pid": pid,
        "running": pid is not None,
        "rpc_url": c.rpc_url(i),
        "metrics_url": c.metrics_url(i),
        "p2p_url": c.p2p_url(i),
        "height": None,
        "view": None,
        "primary": None,
        "mempool": None,
        "quarantine": None,
        "peers": None,
    }
    if pid is not None:
        try:
            s = Client(c.rpc_url(i), timeout_s=2).node_status()
            peers = s.get("peers")
            row.update(
                height=s.get("height"),
                view=s.get("view"),
                primary=s.get("primary"),
                mempool=s.get("mempool"),
                quarantine=s.get("quarantine"),
                peers=len(peers) if isinstance(peers, list) else peers,
            )
        except (ClientError, RpcError, AttributeError):
            pass
    return row


def cmd_status(args: argparse.Namespace) -> int:
    c = _load(args)
    rows = [_row(c, i) for i in range(c.n)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = [
        "index",
        "pid",
        "running",
        "height",
        "view",
        "primary",
        "mempool",
        "quarantine",
        "peers",
    ]
    table = [cols] + [["-" if r[k] is None else str(r[k]) for k in cols] for r in rows]
    widths = [max(len(line[j]) for line in table) for j in range(len(cols))]
    for line in table:
        print("  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    c = _load(args)
    devnet.stop_nodes(c, list(range(c.n)))
    print("all nodes stopped (data kept)")
    return 0


def _index(c: Cluster, i: int) -> int:
    if not 0 <= i < c.n:
        sys.exit(f"node index must be in 0..{c.n - 1}")
    return i


def cmd_stop(args: argparse.Namespace) -> int:
    c = _load(args)
    devnet.stop_node(c, _index(c, args.index))
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    c = _load(args)
    devnet.kill_node(c, _index(c, args.index))
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    c = _load(args)
    pid = devnet.start_node(c, _index(c, args.index))
    print(f"node {args.index} running, pid {pid}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    c = _load(args)
    path = c.log_path(_index(c, args.index))
    if not path.exists():
        print(f"no log yet at {path}", file=sys.stderr)
        return 1
    sys.stdout.write(path.read_text(errors="replace"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return int(demo.run(_load(args)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/cluster")
    parser.add_argument("--dir", default=".cluster", help="cluster directory (default .cluster)")
    sub = parser.add_subparsers(dest="command", required=True)
    dir_opt = argparse.ArgumentParser(add_help=False)
    dir_opt.add_argument("--dir", default=argparse.SUPPRESS, help="cluster directory")
    up = sub.add_parser("up", parents=[dir_opt], help="create or resume and start a cluster")
    up.add_argument("-n", type=int, default=4, help="validators (default 4)")
    up.add_argument("--base-port", type=int, default=26600, help="first port (default 26600)")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for health")
    up.add_argument(
        "--empty-interval-ms",
        type=int,
        default=devnet.DEVNET_EMPTY_INTERVAL_MS,
        help="a new cluster's [block] empty_interval_ms: an empty block this often when idle"
        f" (default {devnet.DEVNET_EMPTY_INTERVAL_MS}; 0: off)",
    )
    up.add_argument(
        "--bench-accounts",
        type=_bench_accounts,
        default=devnet.BENCH_ACCOUNTS,
        help="a new cluster's funded accounts for scripts/bench, one wallet each (default"
        f" {devnet.BENCH_ACCOUNTS}); more for long runs, where the detector's holds stop wallets",
    )
    up.set_defaults(func=cmd_up)
    st = sub.add_parser("status", parents=[dir_opt], help="one row per node")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    sub.add_parser("down", parents=[dir_opt], help="stop every node").set_defaults(func=cmd_down)
    for name, fn, text in (
        ("stop", cmd_stop, "SIGTERM node I"),
        ("kill", cmd_kill, "SIGKILL node I"),
        ("start", cmd_start, "start node I"),
        ("logs", cmd_logs, "print node I's log"),
    ):
        p = sub.add_parser(name, parents=[dir_opt], help=text)
        p.add_argument("index", type=int)
        p.set_defaults(func=fn)
    sub.add_parser("demo", parents=[dir_opt], help="detector demo").set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
