"""`vigil node --config` refuses a bad set-up with one line naming the problem, never a traceback.

Real subprocesses of the console entry point (``python -m node.tools.cli``); each case is one start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from node.tools import devnet
from node.tools.client import Client
from tests.cluster_util import free_ports, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _run(config: Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("VIGIL_ADMIN_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "node.tools.cli", "node", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
        env=env,
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """The process failed with one ``vigil node:`` line naming the problem (after any log lines:
    the node logs to stderr as JSON once logging is set up)."""
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if not ln.startswith("{")]
    assert len(errors) == 1, proc.stderr
    line = errors[0]
    assert line == lines[-1], proc.stderr
    assert line.startswith("vigil node: "), line
    for w in words:
        assert w in line, line
    return line


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> devnet.Cluster:
    p = free_ports(12)
    ports = [devnet.Ports(p[3 * i], p[3 * i + 1], p[3 * i + 2]) for i in range(4)]
    return devnet.init_cluster(tmp_path_factory.mktemp("cfg") / "c", ports, bench_accounts=4)


def _variant(c: devnet.Cluster, name: str, text: str) -> Path:
    path = c.node_dir(0) / f"{name}.toml"
    path.write_text(text)
    return path


def _config(c: devnet.Cluster) -> str:
    return (c.node_dir(0) / "config.toml").read_text()


def test_missing_file(tmp_path: Path) -> None:
    _one_line_error(_run(tmp_path / "nope.toml"), "nope.toml", "cannot read")


@pytest.mark.parametrize(
    ("name", "edit", "words"),
    [
        ("bad_toml", lambda t: t + "\n[p2p\nport = = 3\n", ("not valid TOML",)),
        ("unknown_key", lambda t: t.replace("[rpc]", "[rpc]\nprot = 5"), ("rpc.prot", "unknown")),
        ("unknown_section", lambda t: t + "\n[rcp]\nport = 5\n", ("rcp", "unknown section")),
        ("wrong_type", lambda t: t.replace("[p2p]", '[p2p]\nsend_queue_max = "lots"'), ("p2p",)),
        (
            "bad_genesis",
            lambda t: t.replace("../genesis.json", "missing.json"),
            ("node.genesis",),
        ),
        ("bad_key", lambda t: t.replace('"key.json"', '"../genesis.json"'), ("node.key_file",)),
    ],
)
def test_bad_config_file(
    cluster: devnet.Cluster, name: str, edit: Callable[[str], str], words: tuple[str, ...]
) -> None:
    config = _variant(cluster, name, edit(_config(cluster)))
    _one_line_error(_run(config), *words)


def test_port_in_use(cluster: devnet.Cluster, tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        text = (
            _config(cluster)
            .replace(f"port = {cluster.ports[0].rpc}", f"port = {port}")
            .replace('data_dir = "."', f'data_dir = "{tmp_path}"')
        )
        _one_line_error(
            _run(_variant(cluster, "busy_port", text)),
            f"rpc.port: cannot listen on 127.0.0.1:{port}",
            "in use",
        )
    finally:
        busy.close()


def test_unwritable_data_dir(cluster: devnet.Cluster, tmp_path: Path) -> None:
    # A path under a regular file can never be created, even by root (chmod would not stop root).
    blocker = tmp_path / "file"
    blocker.write_text("x")
    text = _config(cluster).replace('data_dir = "."', f'data_dir = "{blocker / "data"}"')
    _one_line_error(_run(_variant(cluster, "unwritable", text)), str(blocker))


def test_data_dir_locked_by_a_running_node(cluster: devnet.Cluster) -> None:
    devnet.start_node(cluster, 0)
    try:
        client = Client(cluster.rpc_url(0), timeout_s=2)
        wait_for("node 0 serving", lambda: client.status_code("/health") == 200)
        p = free_ports(3)
        text = _config(cluster)
        for old, new in zip(
            (cluster.ports[0].p2p, cluster.ports[0].rpc, cluster.ports[0].metrics), p, strict=True
        ):
            text = text.replace(f"port = {old}", f"port = {new}")
        second = _variant(cluster, "second", text)
        _one_line_error(_run(second), "locked", "is a node running")
    finally:
        devnet.stop_node(cluster, 0)
        shutil.rmtree(cluster.node_dir(0) / "db", ignore_errors=True)
