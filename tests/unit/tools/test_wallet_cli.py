"""The wallet CLI and key files: modes, passphrases, one-line errors, and a send to a fake node."""

from __future__ import annotations

import asyncio
import json
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from node.api.rpc import make_rpc_app
from node.chain.tx import Transaction
from node.tools.keyfile import KeyfileError, load_key, read_keyfile
from node.tools.wallet import main
from tests.unit.api.test_rpc_fake import FakeService

DEAD_RPC = "http://127.0.0.1:9"  # discard port: nothing listens


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def fake_node() -> Iterator[tuple[FakeService, str]]:
    """A fake node's RPC on a real port, served from its own thread (the CLI runs asyncio.run)."""
    svc = FakeService()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, object] = {}

    async def start() -> None:
        runner = web.AppRunner(make_rpc_app(svc, admin_token=None))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["runner"] = runner
        box["port"] = runner.addresses[0][1]

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30)
    try:
        yield svc, f"http://127.0.0.1:{box['port']}"
    finally:
        runner = box["runner"]
        assert isinstance(runner, web.AppRunner)
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def test_keygen_writes_mode_0600(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sub" / "k.json"
    code, out, _ = run(capsys, "keygen", "--out", str(path))
    assert code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    printed = json.loads(out)
    obj = read_keyfile(path)
    assert printed["address"] == obj["address"]
    assert "seed" not in printed
    key = load_key(path)
    assert "0x" + key.public_key.hex() == obj["public_key"]
    code, _, err = run(capsys, "keygen", "--out", str(path))
    assert code == 1
    assert err.count("\n") == 1
    assert "already exists" in err


def test_keygen_without_out_prints_a_fresh_key(capsys: pytest.CaptureFixture[str]) -> None:
    _, a, _ = run(capsys, "keygen")
    _, b, _ = run(capsys, "keygen")
    assert json.loads(a)["seed"] != json.loads(b)["seed"]


def test_passphrase_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.json"
    monkeypatch.setenv("PW", "hunter2")
    code, out, _ = run(capsys, "wallet", "new", "--wallet", str(path), "--passphrase-env", "PW")
    assert code == 0
    address = out.strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_text()
    assert '"seed"' not in raw
    assert "crypto" in json.loads(raw)
    assert "0x" + load_key(path, "hunter2").public_key.hex() == json.loads(raw)["public_key"]
    with pytest.raises(KeyfileError, match="wrong passphrase"):
        load_key(path, "hunter3")
    with pytest.raises(KeyfileError, match="passphrase is needed"):
        load_key(path)
    code, out, _ = run(capsys, "wallet", "address", "--wallet", str(path))
    assert (code, out.strip()) == (0, address)
    # Editing the visible address breaks the AES-GCM associated data: no silent mix-up.
    obj = json.loads(raw)
    obj["address"] = "0x" + "00" * 20
    path.write_text(json.dumps(obj))
    with pytest.raises(KeyfileError):
        load_key(path, "hunter2")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no such key file"),
        ("not json", "not JSON"),
        ('{"version": 1, "address": "0x00"}', "malformed key file"),
        ('{"version": 2}', "not a vigil key file"),
        ("[1, 2]", "not a vigil key file"),
    ],
)
def test_wrong_key_file_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, needle: str
) -> None:
    path = tmp_path / "w.json"
    if content is not None:
        path.write_text(content)
    argv = ["wallet", "send", "--wallet", str(path), "--to", "0x" + "11" * 20, "--amount", "1"]
    code, out, err = run(capsys, *argv, "--rpc", DEAD_RPC)
    assert code == 1
    assert out == ""
    assert err.startswith("vigil: error: ")
    assert err.count("\n") == 1
    assert needle in err
    assert "Traceback" not in err


def test_encrypted_wallet_without_passphrase_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.json"
    monkeypatch.setenv("PW", "pw")
    run(capsys, "wallet", "new", "--wallet", str(path), "--passphrase-env", "PW")
    argv = ["wallet", "send", "--wallet", str(path), "--to", "0x" + "11" * 20, "--amount", "1"]
    code, _, err = run(capsys, *argv, "--rpc", DEAD_RPC)
    assert code == 1
    assert "--passphrase-env" in err
    code, _, err = run(capsys, *argv, "--rpc", DEAD_RPC, "--passphrase-env", "NOPE_UNSET_VAR")
    assert code == 1
    assert "NOPE_UNSET_VAR" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["wallet", "balance", "--address", "0x" + "11" * 20],
        ["tx", "0x" + "11" * 32],
        ["verify", "pyproject.toml"],
    ],
)
def test_unreachable_node_is_one_line_error(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv, "--rpc", DEAD_RPC)
    assert code == 1
    assert out == ""
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1
    assert lines[0].startswith("vigil: error: cannot reach node at http://127.0.0.1:9/")


def test_bad_arguments_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "tx", "0x1234", "--rpc", DEAD_RPC)
    assert code == 1
    assert "expected 32 bytes" in err
    code, _, err = run(capsys, "wallet", "balance", "--address", "nothex", "--rpc", DEAD_RPC)
    assert code == 1
    assert err.count("\n") == 1


def test_send_and_anchor_against_a_fake_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_node: tuple[FakeService, str]
) -> None:
    svc, url = fake_node
    wallet = tmp_path / "w.json"
    run(capsys, "wallet", "new", "--wallet", str(wallet))
    to = "0x" + "ab" * 20
    code, out, err = run(
        capsys,
        "wallet",
        "send",
        "--wallet",
        str(wallet),
        "--to",
        to,
        "--amount",
        "25",
        "--fee",
        "2",
        "--rpc",
        url,
    )
    assert code == 0, err
    tx_hash = bytes.fromhex(out.strip()[2:])
    tx = svc.txs[tx_hash]
    assert isinstance(tx, Transaction)
    assert (tx.kind, tx.to.hex(), tx.amount, tx.fee, tx.chain_id) == (
        "transfer",
        "ab" * 20,
        25,
        2,
        "vigil-test",
    )
    assert tx.verify_signature()
    doc = tmp_path / "doc.txt"
    doc.write_bytes(b"hello vigil\n")
    code, out, err = run(
        capsys, "wallet", "anchor", str(doc), "--wallet", str(wallet), "--rpc", url, "--nonce", "1"
    )
    assert code == 0, err
    anchor = svc.txs[bytes.fromhex(out.strip()[2:])]
    assert anchor.kind == "anchor"
    assert anchor.nonce == 1
    import hashlib

    assert anchor.digest == hashlib.sha256(b"hello vigil\n").digest()
    code, out, _ = run(capsys, "tx", "0x" + tx_hash.hex(), "--rpc", url)
    assert code == 0
    assert json.loads(out)["amount"] == 25
    code, out, _ = run(capsys, "wallet", "balance", "--wallet", str(wallet), "--rpc", url)
    assert json.loads(out)["balance"] == 1000
    # an anchor the node does not know: one-line error, exit 1
    code, _, err = run(capsys, "verify", str(doc), "--rpc", url)
    assert code == 1
    assert "no anchor of sha256" in err.splitlines()[-1]


def test_rejected_submission_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_node: tuple[FakeService, str]
) -> None:
    _, url = fake_node
    wallet = tmp_path / "w.json"
    run(capsys, "wallet", "new", "--wallet", str(wallet))
    # amount beyond u64: the CLI refuses to build it; a negative one too
    code, _, err = run(
        capsys,
        "wallet",
        "send",
        "--wallet",
        str(wallet),
        "--to",
        "0x" + "ab" * 20,
        "--amount",
        "-1",
        "--rpc",
        url,
    )
    assert code == 1
    assert err.count("\n") == 1
