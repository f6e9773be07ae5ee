"""docs/deploy.md's four-host walkthrough, run by the CLI exactly as written, one network
namespace per host (node/tools/netns.py: own address on a bridge; ``v<i>.example.net`` resolved
through each namespace's hosts file).

Per host: ``vigil init`` with a 0600 passphrase file (inside the host's namespace). The genesis
maker: ``vigil genesis new / add-validator`` (the four printed lines) ``/ add-balance / show /
hash``. Per host again: copy genesis.json in, compare ``vigil genesis hash``, put the four lines
into ``p2p.peers``, ``vigil node --config`` (TLS links). Then a transfer is sent with ``vigil
wallet send --wait`` on one host and seen committed on every host. Prints the transcript (the
commands and their output, shortened) that docs/deploy.md quotes. Skipped without root/netns.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from node.tools import netns

T = TypeVar("T")

pytestmark = [pytest.mark.e2e, pytest.mark.netlab]

REPO = Path(__file__).resolve().parents[2]
_BIN = Path(sys.executable).parent / "vigil"
VIGIL = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "node.tools.cli"]
N = 4
CHAIN = "walkthrough-1"
PASSPHRASE = "a long passphrase for host {i}"
HEALTH = (
    "import json, urllib.request as u;"
    "o = u.build_opener(u.ProxyHandler({}));"
    "print(o.open('http://127.0.0.1:26700/health', timeout=2).read().decode())"
)


class Hosts:
    """The four hosts (namespaces) and a transcript of what was run on them."""

    def __init__(self, net: netns.Net, root: Path) -> None:
        self.net = net
        self.root = root
        self.transcript: list[str] = []
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def name(self, i: int) -> str:
        return f"v{i}.example.net"

    def home(self, i: int) -> Path:
        return self.root / f"v{i}" / "var-lib-vigil"

    def run(self, host: int | None, *argv: str, show: str | None = None) -> str:
        """Run ``vigil argv`` on ``host`` (None: the genesis maker's machine); stdout."""
        prefix = ["ip", "netns", "exec", self.net.ns(host)] if host is not None else []
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
        proc = subprocess.run(
            [*prefix, *VIGIL, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env=env,
            check=False,
        )
        where = f"{self.name(host)}$" if host is not None else "genesis-maker$"
        shown = show if show is not None else " ".join(argv)
        out = (proc.stdout + proc.stderr).strip()
        short = "\n".join(line[:110] for line in out.splitlines()[:12])
        self.transcript.append(f"{where} vigil {shown}\n{short}".rstrip())
        assert proc.returncode == 0, f"vigil {' '.join(argv)}: {proc.stderr}"
        return proc.stdout.strip()

    def health(self, i: int) -> dict[str, object] | None:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.net.ns(i), sys.executable, "-c", HEALTH],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def connected_to_all(self, i: int) -> bool:
        s = self.health(i)
        return s is not None and s["peers"] == N - 1

    def start(self, i: int) -> None:
        config = self.home(i) / "config.toml"
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
        with open(self.home(i) / "node.log", "ab") as log:
            self.procs[i] = subprocess.Popen(
                ["ip", "netns", "exec", self.net.ns(i), *VIGIL, "node", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=env,
                start_new_session=True,
            )
        self.transcript.append(f"{self.name(i)}$ vigil node --config {config.name}   # (systemd)")

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(OSError):
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def wait_for(what: str, check: Callable[[], T], deadline_s: float) -> T:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def four_hosts(root: Path) -> Iterator[Hosts]:
    netns.clean_stale()
    net = netns.create(N)
    hosts = Hosts(net, root)
    try:
        names = "".join(f"{net.ip(j)} {hosts.name(j)}\n" for j in range(N))
        for i in range(N):
            d = Path("/etc/netns") / net.ns(i)
            d.mkdir(parents=True, exist_ok=True)
            (d / "hosts").write_text("127.0.0.1 localhost\n" + names)
        yield hosts
    finally:
        hosts.stop()
        for i in range(N):
            shutil.rmtree(Path("/etc/netns") / net.ns(i), ignore_errors=True)
        netns.destroy(net)


def test_four_host_walkthrough_by_cli(tmp_path: Path) -> None:
    reason = netns.unsupported_reason()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")
    t0 = time.monotonic()
    with four_hosts(tmp_path) as h:
        # 1. On each host: vigil init (passphrase in a 0600 file).
        lines = []
        for i in range(N):
            secret = tmp_path / f"v{i}" / "passphrase"
            secret.parent.mkdir(parents=True)
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(PASSPHRASE.format(i=i) + "\n")
            home = h.home(i)
            lines.append(
                h.run(
                    i,
                    *("init", "--home", str(home), "--host", h.name(i), "--listen", "0.0.0.0"),
                    *("--passphrase-file", str(secret)),
                    show=f"init --home /var/lib/vigil --host {h.name(i)} --listen 0.0.0.0"
                    " --passphrase-file /etc/vigil/passphrase",
                )
            )
            assert lines[-1].endswith(f"@{h.name(i)}:26600")
            assert "crypto" in (home / "key.json").read_text()
        # 2. The genesis maker.
        g = tmp_path / "genesis.json"
        wallet = tmp_path / "wallet.json"
        h.run(
            None,
            "genesis",
            "new",
            "--chain-id",
            CHAIN,
            "--out",
            str(g),
            show=f"genesis new --chain-id {CHAIN} --out genesis.json",
        )
        h.run(
            None,
            "genesis",
            "add-validator",
            str(g),
            *lines,
            show="genesis add-validator genesis.json "
            + " ".join(x[:10] + "...@" + x.split("@")[1] for x in lines),
        )
        address = h.run(
            None, "wallet", "new", "--wallet", str(wallet), show="wallet new --wallet wallet.json"
        )
        h.run(
            None,
            "genesis",
            "add-balance",
            str(g),
            address,
            "1000000000",
            show=f"genesis add-balance genesis.json {address} 1000000000",
        )
        shown = json.loads(h.run(None, "genesis", "show", str(g), show="genesis show genesis.json"))
        assert shown["validators"] == N
        assert shown["f"] == 1
        ghash = h.run(None, "genesis", "hash", str(g), show="genesis hash genesis.json")
        # 3. On each host: genesis in, hash checked, peers in config, start.
        peers = "peers = [\n" + "".join(f'    "{x}",\n' for x in lines) + "]"
        for i in range(N):
            home = h.home(i)
            shutil.copyfile(g, home / "genesis.json")
            got = h.run(
                i,
                "genesis",
                "hash",
                str(home / "genesis.json"),
                show="genesis hash /var/lib/vigil/genesis.json",
            )
            assert got == ghash
            cfg = home / "config.toml"
            text = cfg.read_text()
            assert "peers = []" in text
            assert "insecure = false" in text
            cfg.write_text(text.replace("peers = []", peers))
        h.transcript.append("(each host: p2p.peers = the four lines, in config.toml)")
        for i in range(N):
            h.start(i)
        for i in range(N):
            wait_for(
                f"{h.name(i)} connected to 3 peers",
                functools.partial(h.connected_to_all, i),
                45,
            )
        # 4. A transfer, committed, seen on every host.
        to = "0x" + "11" * 20
        h.run(
            1,
            "wallet",
            "send",
            "--wallet",
            str(wallet),
            "--to",
            to,
            "--amount",
            "5",
            "--wait",
            show=f"wallet send --wallet wallet.json --to {to} --amount 5 --wait",
        )
        out = h.run(
            3,
            *("wallet", "balance", "--wallet", str(wallet), "--address", to),
            show=f"wallet balance --address {to}",
        )
        assert json.loads(out)["balance"] == 5
        heights = [h.health(i) for i in range(N)]
        assert all(x is not None and int(str(x["height"])) >= 1 for x in heights), heights
        h.transcript.append(f"health on each host: {json.dumps(heights)}")
        for i in range(N):
            log = (h.home(i) / "node.log").read_text()
            assert "p2p_insecure" not in log
            assert log.count("peer_connected") >= N - 1
    h.transcript.append(f"# walkthrough took {time.monotonic() - t0:.1f} s")
    print("\n".join(h.transcript))
