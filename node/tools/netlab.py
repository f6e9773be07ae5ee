"""The network fault lab: real ``vigil node`` processes in network namespaces, shaped links.

    with Lab(tmp, n=4, seed=1, delay_ms=25) as lab:   # namespaces, relays, cluster, all started
        lab.rpc(0, "node_status")
        lab.partition([{0}, {1, 2, 3}]); ...; lab.heal()
        lab.cut_inbound(2)          # one-way: node 2 hears nobody, everybody hears node 2
        lab.set_loss(1, 0.05)       # 5% packet loss on node 1's links
        lab.kill(3); lab.start(3)   # SIGKILL and restart

Each validator has its own namespace and address on the lab's bridge (node/tools/netns.py). The
cluster is made the operators' way (``vigil init`` per node, ``vigil genesis``), with TLS links and
TLS RPC. Every node's ``p2p.peers`` names validator j as ``v<j>.lab:26600``; each namespace's
hosts file (``/etc/netns/<ns>/hosts``) points that name at j's relay address on the bridge, where
the relay (node/tools/relay.py) applies each directed link's delay, jitter, loss and cuts.
``move(j)`` gives validator j a new address (its config changes, genesis does not) and repoints
the name, as DNS would. Packet loss uses real drops (nftables inside
the namespace) where the kernel has nf_tables, else the relay's emulated retransmission stalls.
RPC and metrics are reached directly from the root namespace at the validator's address: the
runner is the client, not part of the faulted network. ``close()`` (and the context manager,
also on errors) kills the processes and removes the namespaces and bridge.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from node.tools import devnet, netns
from node.tools.client import Client, ClientError, RpcError
from node.tools.relay import Relay, Shaper

P2P_PORT, RPC_PORT, METRICS_PORT = 26600, 26700, 26800  # the same in every namespace
REPO_ROOT = Path(__file__).resolve().parents[2]
HTTP_TIMEOUT_S = 5.0
# Operator defaults (node/config.py) plus: detector off (the measurements had it off).
BASE_OVERRIDES: dict[str, dict[str, Any]] = {"detector": {"enabled": False}}
_TLS_CLIENT = ssl.create_default_context()
_TLS_CLIENT.check_hostname = False
_TLS_CLIENT.verify_mode = ssl.CERT_NONE  # the lab's self-signed RPC certificates
RELAY_BASE_OCTET = 100  # validator j is reached at 10.77.<k>.<100 + j> (its relay address)
MOVED_BASE_OCTET = 150  # after move(j): 10.77.<k>.<150 + j> in its namespace, relay at +50


class LabUnsupported(RuntimeError):
    """Network namespaces cannot be made here (not root, no ``ip``, not Linux)."""


def http_json(url: str, body: Any = None, timeout_s: float = HTTP_TIMEOUT_S) -> Any:
    """POST ``body`` (GET without one) through the one client; the parsed answer as sent."""
    client = Client(url, timeout_s=timeout_s, tls=_TLS_CLIENT)
    if body is None:
        return client.health(path="")
    return client.post(body)


RPC_ERRORS = (ClientError, RpcError, OSError, ValueError)


class Lab:
    def __init__(
        self,
        workdir: Path,
        n: int = 4,
        seed: int = 0,
        delay_ms: float = 25.0,
        jitter_ms: float = 0.0,
        loss_mode: str = "auto",
        overrides: dict[str, dict[str, Any]] | None = None,
        bench_accounts: int = devnet.BENCH_ACCOUNTS,
    ) -> None:
        if loss_mode not in ("auto", "nft", "user"):
            raise ValueError(f"loss_mode: expected auto, nft or user, got {loss_mode!r}")
        self.workdir = workdir
        self.n = n
        self.seed = seed
        self.delay_ms = delay_ms
        self.jitter_ms = jitter_ms
        self.loss_mode = loss_mode
        self.overrides = {k: dict(v) for k, v in BASE_OVERRIDES.items()}
        for name, table in (overrides or {}).items():
            self.overrides.setdefault(name, {}).update(table)
        self.bench_accounts = bench_accounts
        self.net: netns.Net | None = None
        self.shaper = Shaper(n, seed)
        self.relay: Relay | None = None
        self.relay_ports: list[int] = []
        self.relay_hosts: list[str] = []
        self.node_ips: list[str] = []
        self.sources: dict[str, int] = {}
        self.cluster: devnet.Cluster | None = None
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._ids = itertools.count(1)
        self._closed = False

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.start_lab()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_lab(self, wait_s: float = 60.0) -> None:
        """Namespaces, relays, a fresh cluster directory; start every node and wait connected."""
        reason = netns.unsupported_reason()
        if reason is not None:
            raise LabUnsupported(reason)
        netns.clean_stale()
        if self.loss_mode == "auto":
            self.loss_mode = "nft" if netns.nft_available() else "user"
        atexit.register(self.close)
        self.net = net = netns.create(self.n)
        self.relay = Relay(self.shaper)
        self.node_ips = [net.ip(i) for i in range(self.n)]
        self.sources = {net.ip(i): i for i in range(self.n)}
        prefix = net.gateway.rsplit(".", 1)[0]
        self.relay_hosts = [f"{prefix}.{RELAY_BASE_OCTET + j}" for j in range(self.n)]
        for j in range(self.n):
            netns.add_bridge_address(net, self.relay_hosts[j])
            self.relay_ports.append(
                self.relay.listen(
                    j, self.relay_hosts[j], (net.ip(j), P2P_PORT), self.sources, P2P_PORT
                )
            )
        self._write_hosts()
        self.shaper.update(self.shaper.links(), delay_ms=self.delay_ms, jitter_ms=self.jitter_ms)
        self.cluster = self._make_cluster()
        for i in range(self.n):
            self.start(i, wait=False)
        for i in range(self.n):
            self.wait_for(
                f"node {i} connected to {self.n - 1} peers",
                lambda i=i: self.health(i)["peers"] >= self.n - 1,
                wait_s,
            )

    @staticmethod
    def peer_name(j: int) -> str:
        return f"v{j}.lab"

    def _write_hosts(self) -> None:
        """Each namespace's /etc/hosts (bind-mounted by ``ip netns exec``): v<j>.lab -> relay j.

        Rewritten in place (same inode), so running nodes see the change on their next lookup.
        """
        assert self.net is not None
        text = "127.0.0.1 localhost\n" + "".join(
            f"{self.relay_hosts[j]} {self.peer_name(j)}\n" for j in range(self.n)
        )
        for i in range(self.n):
            d = Path("/etc/netns") / self.net.ns(i)
            d.mkdir(parents=True, exist_ok=True)
            with open(d / "hosts", "w") as fh:
                fh.write(text)

    def _make_cluster(self) -> devnet.Cluster:
        """``vigil init`` per node at its own address, genesis by ``vigil
        genesis``, names as peers.
        """
        assert self.net is not None
        ports = [devnet.Ports(P2P_PORT, RPC_PORT, METRICS_PORT)] * self.n
        root = self.workdir / "cluster"
        overrides = {k: dict(v) for k, v in self.overrides.items()}
        # RPC over TLS too: the bridge then carries no plaintext transaction at all.
        overrides.setdefault("rpc", {}).update(
            {"tls_cert": "tls/p2p.crt", "tls_key": "tls/p2p.key"}
        )
        cluster = devnet.init_cluster(
            root,
            ports,
            overrides=overrides,
            bench_accounts=self.bench_accounts,
            hosts=[self.net.ip(i) for i in range(self.n)],
        )
        # Peers by name (each init printed its own address; the lab's network reaches it by name).
        for i in range(self.n):
            self._edit_config(i, lambda s: s["p2p"].update(peers=self._peer_lines(cluster)))
        return cluster

    def _peer_lines(self, cluster: devnet.Cluster) -> list[str]:
        lines = []
        for j in range(self.n):
            key = (cluster.node_dir(j) / "validator.txt").read_text().strip().split("@")[0]
            lines.append(f"{key}@{self.peer_name(j)}:{P2P_PORT}")
        return lines

    def _edit_config(self, i: int, change: Any) -> None:
        path = self.workdir / "cluster" / f"node{i}" / "config.toml"
        sections = tomllib.loads(path.read_text())
        change(sections)
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(devnet.render_config(sections))

    def move(self, j: int) -> str:
        """Validator j moves to a new address: stop it, readdress its namespace, change its config
        (``p2p.host``, ``rpc.host``, ``metrics.host``; genesis untouched), point ``v<j>.lab`` at
        the new place, start it. Returns the new address."""
        assert self.net is not None
        assert self.relay is not None
        self.kill(j)
        prefix = self.net.gateway.rsplit(".", 1)[0]
        new_ip = f"{prefix}.{MOVED_BASE_OCTET + j}"
        new_relay = f"{prefix}.{MOVED_BASE_OCTET + 50 + j}"
        netns.readdress(self.net, j, self.node_ips[j], new_ip)
        self.sources[new_ip] = j
        self.node_ips[j] = new_ip
        netns.add_bridge_address(self.net, new_relay)
        self.relay.listen(j, new_relay, (new_ip, P2P_PORT), self.sources, P2P_PORT)
        self.relay_hosts[j] = new_relay
        self._write_hosts()

        def readdress(s: dict[str, Any]) -> None:
            for name in ("p2p", "rpc", "metrics"):
                s[name]["host"] = new_ip

        self._edit_config(j, readdress)
        self.start(j, wait=False)
        return new_ip

    def close(self) -> None:
        """Kill every node, stop the relays, remove namespaces and bridge. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for i in list(self._procs):
            with contextlib.suppress(OSError):
                self._procs[i].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self._procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self.relay is not None:
            self.relay.close()
        if self.net is not None:
            for i in range(self.n):
                shutil.rmtree(Path("/etc/netns") / self.net.ns(i), ignore_errors=True)
            netns.destroy(self.net)
        atexit.unregister(self.close)

    # --- processes ------------------------------------------------------------------------

    def start(self, i: int, wait: bool = True, wait_s: float = 60.0) -> None:
        """Start node i inside its namespace (its log appends to node{i}/node.log)."""
        assert self.net is not None
        assert self.cluster is not None
        if self.running(i):
            return
        d = self.cluster.node_dir(i)
        env = dict(os.environ)
        env.pop("VIGIL_ADMIN_TOKEN", None)
        cmd = [
            "ip",
            "netns",
            "exec",
            self.net.ns(i),
            sys.executable,
            "-m",
            "node.tools.cli",
            "node",
        ]
        with open(self.cluster.log_path(i), "ab") as log:
            self._procs[i] = subprocess.Popen(
                [*cmd, "--config", str(d / "config.toml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(REPO_ROOT),
                env=env,
                start_new_session=True,
            )
        if wait:
            self.wait_for(f"node {i} healthy", lambda: self.health(i), wait_s)

    def running(self, i: int) -> bool:
        proc = self._procs.get(i)
        return proc is not None and proc.poll() is None

    def kill(self, i: int) -> None:
        """SIGKILL node i and reap it."""
        proc = self._procs.get(i)
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(timeout=10)

    def log(self, i: int) -> str:
        assert self.cluster is not None
        return self.cluster.log_path(i).read_text(errors="replace")

    # --- faults ---------------------------------------------------------------------------

    def _links_between(self, a: Iterable[int], b: Iterable[int]) -> list[tuple[int, int]]:
        bs = set(b)
        return [(s, d) for s in set(a) for d in bs if s != d]

    def partition(self, groups: list[set[int]]) -> None:
        """Cut every link between nodes of different groups, both ways."""
        links = [
            link for g, h in itertools.permutations(groups, 2) for link in self._links_between(g, h)
        ]
        self.shaper.update(links, cut=True)

    def cut(self, src: Iterable[int], dst: Iterable[int]) -> None:
        """One-way: bytes from any node of ``src`` to any node of ``dst`` are held."""
        self.shaper.update(self._links_between(src, dst), cut=True)

    def cut_inbound(self, i: int) -> None:
        """Node i hears nobody while everybody hears node i."""
        self.cut([j for j in range(self.n) if j != i], [i])

    def restore(self, src: Iterable[int], dst: Iterable[int]) -> None:
        """Undo ``cut(src, dst)``: bytes from ``src`` to ``dst`` flow again (held ones first)."""
        self.shaper.update(self._links_between(src, dst), cut=False)

    def heal(self) -> None:
        """Remove every cut (delays and loss stay)."""
        self.shaper.update(self.shaper.links(), cut=False)

    def set_delay(self, i: int, delay_ms: float, jitter_ms: float = 0.0) -> None:
        """Delay and jitter on every link into and out of node i."""
        links = self._links_between([i], range(self.n)) + self._links_between(range(self.n), [i])
        self.shaper.update(links, delay_ms=delay_ms, jitter_ms=jitter_ms)

    def set_loss(self, i: int, loss: float) -> None:
        """Packet loss ``loss`` (0..1) on node i's P2P traffic, both directions; 0 clears it."""
        assert self.net is not None
        if self.loss_mode == "nft":
            netns.set_loss(self.net, i, loss, [P2P_PORT, *self.relay_ports])
        else:
            links = self._links_between([i], range(self.n)) + self._links_between(
                range(self.n), [i]
            )
            self.shaper.update(links, loss=loss)

    # --- rpc ------------------------------------------------------------------------------

    def rpc_url(self, i: int) -> str:
        return f"https://{self.node_ips[i]}:{RPC_PORT}"

    def rpc(
        self, i: int, method: str, params: Any = None, timeout_s: float = HTTP_TIMEOUT_S
    ) -> Any:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params is not None:
            body["params"] = params
        answer = http_json(self.rpc_url(i), body, timeout_s)
        if "error" in answer:
            raise RpcError(answer["error"]["code"], answer["error"]["message"])
        return answer["result"]

    def rpc_batch(
        self, i: int, calls: list[tuple[str, Any]], timeout_s: float = 30.0
    ) -> list[dict[str, Any]]:
        """One JSON-RPC batch; the raw answers (``result`` or ``error``) in call order."""
        body = [
            {"jsonrpc": "2.0", "id": k, "method": m, "params": p} for k, (m, p) in enumerate(calls)
        ]
        answers = http_json(self.rpc_url(i), body, timeout_s) if calls else []
        return sorted(answers, key=lambda a: a["id"])

    def health(self, i: int) -> dict[str, Any]:
        return dict(http_json(self.rpc_url(i) + "/health", timeout_s=2.0))

    def ready(self, i: int) -> bool:
        """``/ready`` answered 200 (False on 503 or when unreachable)."""
        try:
            client = Client(self.rpc_url(i), timeout_s=2.0, tls=_TLS_CLIENT)
            return client.status_code("/ready") == 200
        except ClientError:
            return False

    def status(self, i: int) -> dict[str, Any] | None:
        """node_status, or None when the node does not answer."""
        try:
            return dict(self.rpc(i, "node_status", timeout_s=2.0))
        except RPC_ERRORS:
            return None

    @staticmethod
    def wait_for(what: str, check: Any, deadline_s: float, every_s: float = 0.1) -> Any:
        """Poll ``check()`` until truthy; AssertionError naming ``what`` at the deadline."""
        end = time.monotonic() + deadline_s
        last: Exception | None = None
        while time.monotonic() < end:
            try:
                value = check()
                if value:
                    return value
            except RPC_ERRORS as exc:
                last = exc
            time.sleep(every_s)
        raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what} ({last})")
