"""``vigil init`` and ``vigil genesis``: the operators' path, and bad input refused in one line
with nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from node.chain.genesis import Genesis, GenesisError
from node.host.config import ConfigError, load_config, load_validator_key, read_passphrase
from node.host.runtime import Node, NodeError
from node.net.tls import TlsError, check_validity, load_certificate_der, make_certificate
from node.tools.cli import main

PASS = "correct horse battery staple"


def _init(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str], port: int) -> str:
    home = tmp_path / name
    rc = main(["init", "--home", str(home), "--host", "127.0.0.1", "--p2p-port", str(port)])
    assert rc == 0
    return capsys.readouterr().out.strip()


def _genesis(tmp_path: Path, lines: list[str], capsys: pytest.CaptureFixture[str]) -> Path:
    g = tmp_path / "genesis.json"
    assert main(["genesis", "new", "--chain-id", "test-1", "--out", str(g)]) == 0
    assert main(["genesis", "add-validator", str(g), *lines]) == 0
    assert main(["genesis", "add-balance", str(g), "0x" + "11" * 20, "1000"]) == 0
    capsys.readouterr()
    return g


def test_init_genesis_and_config_agree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_KEY_PASSPHRASE", PASS)
    lines = [_init(tmp_path, f"h{i}", capsys, 26600 + i) for i in range(4)]
    assert all(line.startswith("0x") and "@127.0.0.1:2660" in line for line in lines)
    key_text = (tmp_path / "h0" / "key.json").read_text()
    assert "crypto" in key_text
    assert PASS not in key_text
    assert oct((tmp_path / "h0" / "key.json").stat().st_mode & 0o777) == "0o600"
    g = _genesis(tmp_path, lines, capsys)
    assert main(["genesis", "show", str(g)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["validators"] == 4
    assert shown["f"] == 1
    assert main(["genesis", "hash", str(g)]) == 0
    assert capsys.readouterr().out.strip() == "0x" + Genesis.load(g).hash.hex()
    # Node 2 finds its index by its key; peers list every line.
    home = tmp_path / "h2"
    (home / "genesis.json").write_text(g.read_text())
    cfg_text = (
        (home / "config.toml")
        .read_text()
        .replace("peers = []", "peers = [" + ", ".join(json.dumps(x) for x in lines) + "]")
    )
    (home / "config.toml").write_text(cfg_text)
    node = Node(load_config(home / "config.toml"))
    assert node.index == 2
    assert sorted(node.p2p.addresses) == [0, 1, 3]


def test_genesis_bad_input_one_line_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    g = tmp_path / "genesis.json"
    assert main(["genesis", "new", "--chain-id", "t", "--out", str(g)]) == 0
    key = "0x3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
    assert main(["genesis", "add-validator", str(g), key]) == 0
    capsys.readouterr()
    before = g.read_text()
    cases = [
        (["genesis", "add-validator", str(g), key], "duplicate key"),
        (["genesis", "add-validator", str(g), "0x" + "00" * 32], "not a usable Ed25519"),
        (["genesis", "add-validator", str(g), "0x1234"], "expected 32 bytes"),
        (["genesis", "add-balance", str(g), "0x" + "11" * 20, "-5"], "positive integer"),
        (["genesis", "add-balance", str(g), "0x" + "11" * 20, str(2**64)], "1..2**64-1"),
        (["genesis", "add-balance", str(g), "0x11", "5"], "expected 20 bytes"),
    ]
    for argv, why in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert why in err
        assert len(err.splitlines()) == 1
        assert g.read_text() == before
    assert main(["genesis", "show", str(g)]) == 0
    assert "3f+1" not in capsys.readouterr().err  # n = 1 = 3*0 + 1
    for extra in range(4):  # 5 validators: a warning
        k = Path(tmp_path / f"k{extra}")
        main(["init", "--home", str(k), "--host", "h.example", "--plain-key"])
        main(["genesis", "add-validator", str(g), capsys.readouterr().out.strip()])
    assert "use 3f+1 validators" in capsys.readouterr().err
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps({"chain_id": "x", "validators": [], "balances": []}))
    with pytest.raises(GenesisError, match="format 1"):
        Genesis.load(v1)


def test_wrong_passphrase_and_wrong_key_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_KEY_PASSPHRASE", PASS)
    lines = [_init(tmp_path, f"h{i}", capsys, 26600 + i) for i in range(4)]
    g = _genesis(tmp_path, lines[:3], capsys)  # h3 is not a validator
    for name in ("h0", "h3"):
        (tmp_path / name / "genesis.json").write_text(g.read_text())
    monkeypatch.setenv("VIGIL_KEY_PASSPHRASE", "not the passphrase")
    cfg = load_config(tmp_path / "h0" / "config.toml")
    with pytest.raises(ConfigError, match="wrong passphrase") as exc:
        load_validator_key(cfg.key_file, read_passphrase(cfg))
    assert "not the passphrase" not in str(exc.value)
    monkeypatch.setenv("VIGIL_KEY_PASSPHRASE", PASS)
    with pytest.raises(NodeError, match=r"not a validator in the genesis file"):
        Node(load_config(tmp_path / "h3" / "config.toml"))
    assert not (tmp_path / "h3" / "db").exists()
    # node.index that disagrees with the key
    path = tmp_path / "h0" / "config.toml"
    path.write_text(path.read_text().replace("[node]\n", "[node]\nindex = 2\n"))
    with pytest.raises(NodeError, match="disagrees with genesis"):
        Node(load_config(path))
    # a passphrase file readable by others is refused
    pf = tmp_path / "pass"
    pf.write_text(PASS)
    os.chmod(pf, 0o644)
    assert (
        main(["init", "--home", str(tmp_path / "h9"), "--host", "x", "--passphrase-file", str(pf)])
        == 2
    )
    assert "chmod 600" in capsys.readouterr().err
    assert not (tmp_path / "h9").exists()


def test_expired_certificate_refused(tmp_path: Path) -> None:
    import datetime as dt

    der = make_certificate(
        tmp_path / "c.crt",
        tmp_path / "c.key",
        "old",
        days=1,
        not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    )
    with pytest.raises(TlsError, match="certificate expired on 2020-01-02"):
        check_validity(der, "p2p.tls_cert")
    assert load_certificate_der(tmp_path / "c.crt", "x") == der


def test_plain_ws_peer_needs_insecure(tmp_path: Path) -> None:
    from node.host.config import parse_config

    base = {"node": {"data_dir": ".", "genesis": "g", "key_file": "k"}}
    with pytest.raises(ConfigError, match=r"p2p\.tls_cert: required"):
        parse_config(base, tmp_path)
    with pytest.raises(ConfigError, match="no scheme here"):
        parse_config({**base, "p2p": {"insecure": True, "peers": ["ws://a:1"]}}, tmp_path)
    cfg = parse_config({**base, "p2p": {"insecure": True}}, tmp_path)
    assert cfg.p2p_insecure


def test_genesis_vector() -> None:
    vec = json.loads((Path(__file__).resolve().parents[2] / "vectors" / "genesis.json").read_text())
    g = Genesis.from_json(vec["genesis"])
    assert "0x" + g.hash.hex() == vec["hash"]
    assert g.to_json() == vec["genesis"]


def _vigil_node(config: Path, env: dict[str, str]) -> tuple[int, str]:
    """``vigil node --config`` as its own process (it sets up logging); (exit code, stderr)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "node.tools.cli", "node", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        cwd=Path(__file__).resolve().parents[3],
        check=False,
    )
    return proc.returncode, proc.stderr.strip()


def test_short_or_wrong_passphrase_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A passphrase under the minimum is an error about the passphrase (not the log redaction's
    minimum); a wrong one stops `vigil node` in one line; neither writes anything."""
    monkeypatch.setenv("VIGIL_KEY_PASSPHRASE", "short7!")
    home = tmp_path / "h"
    assert main(["init", "--home", str(home), "--host", "127.0.0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "vigil init: VIGIL_KEY_PASSPHRASE: the key passphrase must be at least 12 characters, got 7"
    )
    assert not home.exists()
    monkeypatch.setenv("VIGIL_KEY_PASSPHRASE", PASS)
    lines = [_init(tmp_path, f"h{i}", capsys, 26600 + i) for i in range(4)]
    g = _genesis(tmp_path, lines, capsys)
    node0 = tmp_path / "h0"
    (node0 / "genesis.json").write_text(g.read_text())
    monkeypatch.delenv("VIGIL_KEY_PASSPHRASE")
    pf = tmp_path / "pass"
    pf.write_text("sevench\n")
    os.chmod(pf, 0o600)
    cfg = node0 / "config.toml"
    cfg.write_text(cfg.read_text().replace("[node]\n", f'[node]\npassphrase_file = "{pf}"\n'))
    env = {"VIGIL_KEY_PASSPHRASE": ""}
    rc, err = _vigil_node(cfg, env)
    assert rc == 2
    assert err.splitlines() == [
        "vigil node: node.passphrase_file: the key passphrase must be at least 12 characters, got 7"
    ]
    assert "redact" not in err
    pf.write_text("a wrong but long passphrase\n")
    rc, err = _vigil_node(cfg, env)
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("vigil node: node.key_file: ")
    assert err.endswith("wrong passphrase or damaged key file")
    assert "a wrong but long" not in err
    assert not (node0 / "db").exists()
    assert not (node0 / "sign_guard.json").exists()
