"""Real clusters for end-to-end tests: N ``vigil node`` processes on free 127.0.0.1 ports.

    with LocalCluster(tmp_path, n=4) as c:       # starts all, waits healthy and connected
        c.rpc(0, "node_status")
        c.submit_transfers(100)
        c.kill(1); c.start(1); c.wait_height(1, h)

Everything polls against generous deadlines (the CI machine is slow and shared); nothing sleeps
blindly. Other helpers' e2e tests reuse this module.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common.crypto import SigningKey, address_of
from node.chain.tx import make_transfer
from node.tools import devnet
from node.tools.client import Client, ClientError, RpcError
from node.tools.devnet import Cluster, Ports

DEADLINE_S = 60.0
ROOT = Path(__file__).resolve().parents[1]


def run_json(argv: list[str], timeout_s: float) -> dict[str, Any]:
    """Run a tool of the repo (``argv`` after this Python) from the repo's root; the one JSON
    object it printed last (scripts/bench, scripts/bench_core)."""
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=True,
    )
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(what: str, check: Any, deadline_s: float = DEADLINE_S, every_s: float = 0.1) -> Any:
    """Poll ``check()`` until it returns a truthy value; AssertionError naming
    ``what`` otherwise.
    """
    end = time.monotonic() + deadline_s
    last_exc: Exception | None = None
    while time.monotonic() < end:
        try:
            value = check()
            if value:
                return value
        except (ClientError, RpcError, OSError, KeyError, TypeError, ValueError) as exc:
            last_exc = exc
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_exc})")


class LocalCluster:
    def __init__(
        self,
        root: Path,
        n: int = 4,
        overrides: dict[str, dict[str, Any]] | None = None,
        bench_accounts: int = 200,
    ) -> None:
        p = free_ports(3 * n)
        ports = [Ports(p[3 * i], p[3 * i + 1], p[3 * i + 2]) for i in range(n)]
        base = {
            "consensus": {"request_timeout_ms": 1500, "view_change_timeout_ms": 2000},
            "p2p": {"reconnect_min_ms": 100, "reconnect_max_ms": 1000},
        }
        for name, table in (overrides or {}).items():
            base.setdefault(name, {}).update(table)
        self.cluster: Cluster = devnet.init_cluster(
            root / "cluster", ports, overrides=base, bench_accounts=bench_accounts
        )
        self.n = n
        self._nonces: dict[int, int] = {}
        self.bench_accounts = bench_accounts

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        try:
            self.start_all()
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start_all(self, wait: bool = True) -> None:
        for i in range(self.n):
            devnet.start_node(self.cluster, i)
        if wait:
            for i in range(self.n):
                self.wait_connected(i)

    def stop_all(self) -> None:
        devnet.stop_nodes(self.cluster, list(range(self.n)))

    def start(self, i: int) -> None:
        devnet.start_node(self.cluster, i)
        self.wait_healthy(i)

    def stop(self, i: int) -> None:
        devnet.stop_node(self.cluster, i)

    def kill(self, i: int) -> None:
        devnet.kill_node(self.cluster, i)

    def running(self, i: int) -> bool:
        return devnet.read_pid(self.cluster, i) is not None

    def log(self, i: int) -> str:
        return self.cluster.log_path(i).read_text(errors="replace")

    # --- rpc ------------------------------------------------------------------------------

    def client(self, i: int, admin: bool = False, timeout_s: float = 10.0) -> Client:
        """The one JSON-RPC client (node/tools/client.py), pointed at node i."""
        token = self.cluster.admin_token if admin else None
        return Client(self.cluster.rpc_url(i), admin_token=token, timeout_s=timeout_s)

    def rpc(self, i: int, method: str, params: Any = None, admin: bool = False) -> Any:
        return self.client(i, admin).call(method, params)

    def rpc_batch(self, i: int, calls: list[tuple[str, Any]]) -> list[Any]:
        """One batch request; the raw answers (``result`` or ``error`` objects), in call order."""
        body = [
            {"jsonrpc": "2.0", "id": k, "method": m, "params": p} for k, (m, p) in enumerate(calls)
        ]
        answers = self.client(i).post(body, timeout_s=30)
        return [a for a in sorted(answers, key=lambda a: a["id"])]

    def health(self, i: int) -> dict[str, Any]:
        return dict(self.client(i, timeout_s=2).health())

    def height(self, i: int) -> int:
        return int(self.rpc(i, "node_status")["height"])

    def wait_healthy(self, i: int, deadline_s: float = DEADLINE_S) -> None:
        wait_for(f"node {i} healthy", lambda: self.health(i), deadline_s)

    def wait_connected(self, i: int, deadline_s: float = DEADLINE_S) -> None:
        need = self.n - 1
        wait_for(
            f"node {i} connected to {need} peers",
            lambda: self.health(i)["peers"] >= need,
            deadline_s,
        )

    def wait_height(self, i: int, height: int, deadline_s: float = DEADLINE_S) -> int:
        return int(
            wait_for(
                f"node {i} at height {height}",
                lambda: (h := self.height(i)) >= height and h,
                deadline_s,
            )
        )

    # --- transactions ---------------------------------------------------------------------

    def account_key(self, k: int) -> SigningKey:
        return devnet.bench_key(k)

    def transfer(self, k: int, to: bytes, amount: int = 1, fee: int = 1) -> bytes:
        """A signed transfer from bench account k with its next nonce (tracked locally)."""
        nonce = self._nonces.get(k, 0)
        self._nonces[k] = nonce + 1
        return make_transfer(self.account_key(k), devnet.CHAIN_ID, to, amount, fee, nonce).encode()

    def submit(self, i: int, raws: list[bytes]) -> list[dict[str, Any]]:
        """Submit raw txs to node i in one JSON-RPC batch; returns the raw answers."""
        return self.rpc_batch(i, [("tx_submit", ["0x" + r.hex()]) for r in raws])

    def tx_status(self, i: int, tx_hash: str) -> str:
        return str(self.rpc(i, "tx_get", [tx_hash])["status"])

    def balances(self, i: int, addresses: list[bytes]) -> dict[bytes, int]:
        out = {}
        for a in addresses:
            out[a] = int(self.rpc(i, "account_get", ["0x" + a.hex()])["balance"])
        return out

    def address(self, k: int) -> bytes:
        return address_of(self.account_key(k).public_key)


class Load:
    """Background load: batches of transfers to the running nodes until stopped."""

    def __init__(self, c: LocalCluster, accounts: range, batch: int = 20, pause_s: float = 0.05):
        import threading

        self.c = c
        self.accounts = list(accounts)
        self.batch = batch
        self.pause_s = pause_s
        self.accepted: list[str] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._next = 0
        self._skip: set[int] = set()

    def avoid(self, i: int) -> None:
        self._skip.add(i)

    def allow(self, i: int) -> None:
        self._skip.discard(i)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        turn = 0
        while not self._stop.is_set():
            live = [i for i in range(self.c.n) if i not in self._skip]
            if not live:
                time.sleep(self.pause_s)
                continue
            node = live[turn % len(live)]
            turn += 1
            raws = []
            for _ in range(self.batch):
                k = self.accounts[self._next % len(self.accounts)]
                self._next += 1
                raws.append(self.c.transfer(k, self.c.address(k + 1)))
            try:
                answers = self.c.submit(node, raws)
            except (ClientError, ValueError):
                self.errors += 1
                # The node did not take them: those nonces are lost, so resync from the chain.
                self._resync(raws)
                time.sleep(self.pause_s)
                continue
            for a in answers:
                if "result" in a:
                    self.accepted.append(a["result"]["hash"])
            if any("error" in a for a in answers):
                self._resync(raws)
            time.sleep(self.pause_s)

    def _resync(self, raws: list[bytes]) -> None:
        """Reset local nonces of the senders in ``raws`` from a live node's pending view."""
        from node.chain.tx import Transaction

        senders = {Transaction.decode(r).sender for r in raws}
        for k in self.accounts:
            if self.c.account_key(k).public_key in senders:
                self.c._nonces.pop(k, None)
                for i in range(self.c.n):
                    if i in self._skip:
                        continue
                    try:
                        acct = self.c.rpc(i, "account_get", ["0x" + self.c.address(k).hex()])
                    except (ClientError, RpcError, ValueError):
                        continue
                    self.c._nonces[k] = int(acct["nonce"])
                    break
