"""A local cluster on 127.0.0.1: directory layout, keys, genesis, configs and node processes.

Used by ``scripts/cluster``, ``scripts/bench`` and the end-to-end tests (tests/cluster_util.py).
Layout of a cluster directory::

    cluster.json          n, chain id, ports, the admin token file
    genesis.json          validators and funded accounts
    admin_token           bearer token of the admin RPC methods (mode 0600)
    wallets/wallet{k}.json   funded demo wallets (key files, mode 0600)
    node{i}/              node i's home, made by ``vigil init`` (node/tools/hostsetup.py):
                          config.toml, key.json, tls/, validator.txt
    node{i}/db/           LevelDB; node{i}/sign_guard.json; node{i}/node.log; node{i}/pid

Bench accounts: ``bench_key(k)`` derives a key from a public seed string, and genesis funds the
first ``bench_accounts`` of them, so a load generator can sign without any key files. These keys
are public: a local test network only.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.crypto import SigningKey, address_of, to_hex
from node.tools import genesis_cmd, hostsetup
from node.tools.keyfile import load_key, save_key

CHAIN_ID = "vigil-local"
WALLET_BALANCE = 10**12
BENCH_BALANCE = 10**12
DEMO_WALLETS = 4
BENCH_ACCOUNTS = 1000
# `scripts/cluster up`'s heartbeat ([block] empty_interval_ms): an idle local chain still makes a
# block every 2 s, as Besu's QBFT/IBFT default block period, so wallets that wait for the head to
# advance (ethers' tx.wait(), MetaMask) work. Tests' clusters leave it off unless they ask.
DEVNET_EMPTY_INTERVAL_MS = 2000


def bench_key(k: int) -> SigningKey:
    return SigningKey(hashlib.sha256(f"vigil-bench-account-{k}".encode()).digest())


def bench_eth_key(k: int) -> bytes:
    """A public secp256k1 key for Ethereum-signed bench load (a local test network only)."""
    return hashlib.sha256(f"vigil-bench-eth-account-{k}".encode()).digest()


@dataclass(frozen=True, slots=True)
class Ports:
    p2p: int
    rpc: int
    metrics: int


@dataclass(frozen=True, slots=True)
class Cluster:
    root: Path
    n: int
    ports: tuple[Ports, ...]
    admin_token: str
    hosts: tuple[str, ...] = ()
    tls: bool = True

    def node_dir(self, i: int) -> Path:
        return self.root / f"node{i}"

    def host(self, i: int) -> str:
        return self.hosts[i] if self.hosts else "127.0.0.1"

    def rpc_url(self, i: int) -> str:
        return f"http://{self.host(i)}:{self.ports[i].rpc}"

    def metrics_url(self, i: int) -> str:
        return f"http://{self.host(i)}:{self.ports[i].metrics}/metrics"

    def p2p_url(self, i: int) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host(i)}:{self.ports[i].p2p}"

    def log_path(self, i: int) -> Path:
        return self.node_dir(i) / "node.log"

    def pid_path(self, i: int) -> Path:
        return self.node_dir(i) / "pid"

    def wallet_paths(self) -> list[Path]:
        return sorted((self.root / "wallets").glob("wallet*.json"))

    @staticmethod
    def load(root: Path) -> Cluster:
        meta = json.loads((root / "cluster.json").read_text())
        return Cluster(
            root=root,
            n=meta["n"],
            ports=tuple(Ports(**p) for p in meta["ports"]),
            admin_token=(root / "admin_token").read_text().strip(),
            hosts=tuple(meta.get("hosts", ())),
            tls=bool(meta.get("tls", False)),
        )


def base_ports(base: int, n: int) -> list[Ports]:
    return [Ports(base + i, base + 100 + i, base + 200 + i) for i in range(n)]


def render_config(sections: dict[str, dict[str, Any]]) -> str:
    return hostsetup.render_config(sections, commented=False)


def _write_private(path: Path, text: str) -> None:
    hostsetup.write_private(path, text)


def init_cluster(
    root: Path,
    ports: list[Ports],
    *,
    overrides: dict[str, dict[str, Any]] | None = None,
    bench_accounts: int = BENCH_ACCOUNTS,
    host: str = "127.0.0.1",
    hosts: list[str] | None = None,
) -> Cluster:
    """Create a fresh cluster directory the operators' way; refuses an existing one.

    Each node is made by ``vigil init``'s function (its own key, TLS certificate and config),
    the genesis by ``vigil genesis``'s from the lines init printed, and every config lists those
    lines as ``p2p.peers``. Keys are plain (a local test network); links are TLS unless the
    overrides set ``p2p.insecure``. ``hosts`` gives each node its own address (the fault lab).
    """
    n = len(ports)
    if (root / "cluster.json").exists():
        raise FileExistsError(f"{root} already holds a cluster")
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(24)
    _write_private(root / "admin_token", token + "\n")
    homes = []
    for i in range(n):
        h = hosts[i] if hosts is not None else host
        ovr: dict[str, dict[str, Any]] = {
            "rpc": {"host": h},
            "metrics": {"host": h},
        }
        for name, table in (overrides or {}).items():
            ovr.setdefault(name, {}).update(table)
        homes.append(
            hostsetup.init_home(
                root / f"node{i}",
                host=h,
                p2p_port=ports[i].p2p,
                rpc_port=ports[i].rpc,
                metrics_port=ports[i].metrics,
                plain_key=True,
                admin_token=token,
                overrides=ovr,
            )
        )
    draft = genesis_cmd.new_draft(CHAIN_ID)
    for home in homes:
        draft = genesis_cmd.add_validator(draft, home.line)
    for k in range(DEMO_WALLETS):
        wkey = SigningKey(secrets.token_bytes(32))
        save_key(root / "wallets" / f"wallet{k}.json", wkey)
        draft = genesis_cmd.add_balance(
            draft, to_hex(address_of(wkey.public_key)), str(WALLET_BALANCE)
        )
    balances = dict(
        (to_hex(address_of(bench_key(k).public_key)), BENCH_BALANCE) for k in range(bench_accounts)
    )
    draft["balances"] = sorted(
        [*draft["balances"], *({"address": a, "amount": v} for a, v in balances.items())],
        key=lambda b: bytes.fromhex(b["address"][2:]),
    )
    genesis_cmd.save_draft(root / "genesis.json", draft)
    for home in homes:
        hostsetup.set_peers(home, [h.line for h in homes], genesis="../genesis.json")
    host_list = [hosts[i] if hosts is not None else host for i in range(n)]
    tls = not bool((overrides or {}).get("p2p", {}).get("insecure", False))
    meta = {
        "n": n,
        "chain_id": CHAIN_ID,
        "ports": [{"p2p": p.p2p, "rpc": p.rpc, "metrics": p.metrics} for p in ports],
        "bench_accounts": bench_accounts,
        "hosts": host_list,
        "tls": tls,
    }
    (root / "cluster.json").write_text(json.dumps(meta, indent=2) + "\n")
    return Cluster(root, n, tuple(ports), token, tuple(host_list), tls)


def wallet_keys(cluster: Cluster) -> list[SigningKey]:
    return [load_key(p) for p in cluster.wallet_paths()]


# --- processes ----------------------------------------------------------------------------


def read_pid(cluster: Cluster, i: int) -> int | None:
    try:
        pid = int(cluster.pid_path(i).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if is_running(pid) else None


# Popen objects of nodes this process started: kept so they are reaped (not warned about) and
# polled instead of signalled.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def is_running(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        done = 0
    return done == 0


def start_node(cluster: Cluster, i: int, python: str | None = None) -> int:
    """Start node i in its own session, logging to node{i}/node.log; returns the pid."""
    running = read_pid(cluster, i)
    if running is not None:
        return running
    d = cluster.node_dir(i)
    log = open(cluster.log_path(i), "ab")  # noqa: SIM115 - handed to the child
    env = dict(os.environ)
    env.pop("VIGIL_ADMIN_TOKEN", None)
    proc = subprocess.Popen(
        [
            python or sys.executable,
            "-m",
            "node.tools.cli",
            "node",
            "--config",
            str(d / "config.toml"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=str(Path(__file__).resolve().parent.parent),
        env=env,
        start_new_session=True,
    )
    log.close()
    _CHILDREN[proc.pid] = proc
    cluster.pid_path(i).write_text(f"{proc.pid}\n")
    return proc.pid


def signal_node(cluster: Cluster, i: int, sig: signal.Signals) -> int | None:
    pid = read_pid(cluster, i)
    if pid is not None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return None
    return pid


def stop_node(cluster: Cluster, i: int, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; waits until the process is gone."""
    pid = signal_node(cluster, i, signal.SIGTERM)
    if pid is None:
        return
    deadline = time.monotonic() + grace_s
    while is_running(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + grace_s
        time.sleep(0.05)


def stop_nodes(cluster: Cluster, indexes: list[int], grace_s: float = 10.0) -> None:
    """SIGTERM all at once, then wait for each (SIGKILL after the grace period)."""
    for i in indexes:
        signal_node(cluster, i, signal.SIGTERM)
    for i in indexes:
        stop_node(cluster, i, grace_s)


def kill_node(cluster: Cluster, i: int) -> None:
    pid = signal_node(cluster, i, signal.SIGKILL)
    if pid is None:
        return
    deadline = time.monotonic() + 10
    while is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
