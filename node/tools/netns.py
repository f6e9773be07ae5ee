"""Network namespaces for the fault lab: a bridge, one namespace and address per validator.

Layout of one lab (``run_id`` is random, so parallel labs never share a name)::

    bridge vnl<run_id>            10.77.<k>.1/24 in the root namespace (the relays listen here)
    namespace vigil-nl-<run_id>-<i>   eth0 = 10.77.<k>.<10+i>/24, lo up; validator i runs inside

``<k>`` is the lowest third octet no other lab (and no interface) uses, chosen under a file
lock. Only addresses inside 10.77.0.0/16 on bridges the lab made are ever configured or used.
Each lab writes ``STATE_DIR/<run_id>.json`` naming its owner pid; ``clean_stale`` removes the
namespaces and bridges of labs whose owner died without tearing down.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

STATE_DIR = Path("/run/vigil-netlab")
NS_PREFIX = "vigil-nl-"
SUBNET_PREFIX = "10.77."
NFT_TABLE = "vigil_netlab"


class NetnsError(RuntimeError):
    """A namespace, link or address could not be set up."""


def _run(
    *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(args), capture_output=True, text=True, input=stdin, timeout=30, check=False
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def unsupported_reason() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "the fault lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the fault lab needs root (ip netns, veth, bridge)"
    if shutil.which("ip") is None:
        return "the fault lab needs the `ip` command (iproute2)"
    probe = f"{NS_PREFIX}probe-{os.getpid()}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


def nft_available() -> bool:
    """Whether nftables works here (the binary and the kernel's nf_tables)."""
    if shutil.which("nft") is None:
        return False
    return _run("nft", "list", "tables", check=False).returncode == 0


@dataclass(frozen=True, slots=True)
class Net:
    run_id: str
    octet: int
    n: int

    @property
    def bridge(self) -> str:
        return f"vnl{self.run_id}"

    @property
    def gateway(self) -> str:
        return f"{SUBNET_PREFIX}{self.octet}.1"

    def ns(self, i: int) -> str:
        return f"{NS_PREFIX}{self.run_id}-{i}"

    def ip(self, i: int) -> str:
        return f"{SUBNET_PREFIX}{self.octet}.{10 + i}"

    def veth(self, i: int) -> str:
        return f"vnl{self.run_id}h{i}"

    @property
    def state_file(self) -> Path:
        return STATE_DIR / f"{self.run_id}.json"


def _octets_in_use() -> set[int]:
    used = set()
    out = _run("ip", "-4", "-o", "addr", "show", check=False).stdout
    for word in out.split():
        if word.startswith(SUBNET_PREFIX):
            with contextlib.suppress(ValueError, IndexError):
                used.add(int(word.split(".")[2]))
    for f in STATE_DIR.glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            used.add(int(json.loads(f.read_text())["octet"]))
    return used


def create(n: int) -> Net:
    """Make the bridge and n namespaces with their addresses; tears down what it made on error."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        free = [k for k in range(256) if k not in _octets_in_use()]
        if not free:
            raise NetnsError("no free 10.77.<k>.0/24 subnet for another lab")
        net = Net(secrets.token_hex(3), free[0], n)
        state = {"owner_pid": os.getpid(), "octet": net.octet, "n": n, "run_id": net.run_id}
        net.state_file.write_text(json.dumps(state) + "\n")
    try:
        _run("ip", "link", "add", net.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{net.gateway}/24", "dev", net.bridge)
        _run("ip", "link", "set", net.bridge, "up")
        for i in range(n):
            ns, peer = net.ns(i), f"vnl{net.run_id}p{i}"
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", net.veth(i), "type", "veth", "peer", "name", peer)
            _run("ip", "link", "set", peer, "netns", ns)
            _run("ip", "link", "set", net.veth(i), "master", net.bridge)
            _run("ip", "link", "set", net.veth(i), "up")
            _run("ip", "-n", ns, "link", "set", peer, "name", "eth0")
            _run("ip", "-n", ns, "addr", "add", f"{net.ip(i)}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
    except BaseException:
        destroy(net)
        raise
    return net


def add_bridge_address(net: Net, address: str) -> None:
    """One more address of the lab's subnet on its bridge (where a relay can listen)."""
    if not address.startswith(f"{SUBNET_PREFIX}{net.octet}."):
        raise NetnsError(f"{address} is not in the lab's subnet")
    _run("ip", "addr", "add", f"{address}/24", "dev", net.bridge)


def readdress(net: Net, i: int, old: str, new: str) -> None:
    """Validator i's namespace leaves ``old`` for ``new`` (same lab subnet)."""
    if not new.startswith(f"{SUBNET_PREFIX}{net.octet}."):
        raise NetnsError(f"{new} is not in the lab's subnet")
    # Old first: deleting a subnet's primary address also deletes its secondaries.
    _run("ip", "-n", net.ns(i), "addr", "del", f"{old}/24", "dev", "eth0")
    _run("ip", "-n", net.ns(i), "addr", "add", f"{new}/24", "dev", "eth0")


def kill_namespace_pids(ns: str) -> None:
    """SIGKILL whatever still runs inside a namespace (a node the lab lost track of)."""
    out = _run("ip", "netns", "pids", ns, check=False).stdout
    for word in out.split():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(word), signal.SIGKILL)


def destroy(net: Net) -> None:
    """Remove the lab's namespaces (killing anything left inside), its bridge and state file."""
    for i in range(net.n):
        kill_namespace_pids(net.ns(i))
        _run("ip", "netns", "del", net.ns(i), check=False)
        _run("ip", "link", "del", net.veth(i), check=False)  # gone with the namespace, normally
    _run("ip", "link", "del", net.bridge, check=False)
    with contextlib.suppress(FileNotFoundError):
        net.state_file.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale() -> list[str]:
    """Tear down labs whose owner process is gone; returns their run ids."""
    cleaned = []
    for f in sorted(STATE_DIR.glob("*.json")):
        try:
            state = json.loads(f.read_text())
            net = Net(str(state["run_id"]), int(state["octet"]), int(state["n"]))
            owner = int(state["owner_pid"])
        except (OSError, ValueError, KeyError):
            continue
        if not _alive(owner):
            destroy(net)
            cleaned.append(net.run_id)
    return cleaned


def set_loss(net: Net, i: int, loss: float, ports: list[int]) -> None:
    """Real packet loss with nftables inside namespace i, on TCP traffic to/from ``ports``.

    Drops each matching packet with probability ``loss`` in both directions (the node's P2P
    port and the relays it dials). RPC from the test runner uses another port and is spared.
    """
    ns = net.ns(i)
    _run("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", NFT_TABLE, check=False)
    if loss <= 0:
        return
    per_10k = round(loss * 10_000)
    port_set = "{ " + ", ".join(str(p) for p in sorted(set(ports))) + " }"
    drop = f"numgen random mod 10000 < {per_10k} drop"
    script = "\n".join(
        [
            f"table inet {NFT_TABLE} {{",
            "  chain output {",
            "    type filter hook output priority 0; policy accept;",
            f"    tcp dport {port_set} {drop}",
            f"    tcp sport {port_set} {drop}",
            "  }",
            "  chain input {",
            "    type filter hook input priority 0; policy accept;",
            f"    tcp dport {port_set} {drop}",
            f"    tcp sport {port_set} {drop}",
            "  }",
            "}",
            "",
        ]
    )
    _run("ip", "netns", "exec", ns, "nft", "-f", "-", stdin=script)
