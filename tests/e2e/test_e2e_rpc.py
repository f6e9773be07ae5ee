"""End to end on a real 4-node cluster: wallet send, anchor + verify, tampering, hostile input."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common.crypto import SigningKey, address_of, to_hex
from node.chain.genesis import Genesis
from node.tools.client import AsyncClient
from node.tools.devnet import bench_key
from node.tools.keyfile import save_key
from node.tools.proofs import ProofError, verify_tx_inclusion
from node.tools.wallet import main
from tests.cluster_util import LocalCluster, wait_for

pytestmark = [
    pytest.mark.e2e,
    # node/devnet.start_node drops its Popen while the node runs (owned by the runtime helper).
    pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning"),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <function Popen.__del__"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
]


CLUSTER_OPTIONS = {"n": 4, "bench_accounts": 8}


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _wallet(tmp_path: Path, k: int) -> Path:
    path = tmp_path / f"w{k}.json"
    save_key(path, bench_key(k))
    return path


def test_wallet_send_moves_funds(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = cluster.cluster.rpc_url(1)
    to = address_of(SigningKey(b"\x42" * 32).public_key)
    sender = address_of(bench_key(0).public_key)
    before = cluster.balances(0, [sender])[sender]
    code, out, err = _cli(
        capsys, "wallet", "send", "--wallet", str(_wallet(tmp_path, 0)), "--to", to_hex(to),
        "--amount", "1234", "--fee", "3", "--wait", "--timeout", "60", "--rpc", url,
    )  # fmt: skip
    assert code == 0, err
    assert "status: committed" in err
    tx_hash = out.strip()
    for i in range(cluster.n):
        wait_for(f"node {i} sees the transfer", lambda i=i: cluster.balances(i, [to])[to] == 1234)
        assert cluster.balances(i, [sender])[sender] == before - 1237
        assert cluster.tx_status(i, tx_hash) == "committed"
    code, out, _ = _cli(capsys, "wallet", "balance", "--address", to_hex(to), "--rpc", url)
    assert (code, json.loads(out)["balance"]) == (0, 1234)


def test_anchor_then_verify(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = cluster.cluster.rpc_url(2)
    genesis_path = cluster.cluster.root / "genesis.json"
    doc = tmp_path / "contract.pdf"
    doc.write_bytes(b"%PDF-1.4 the signed agreement\n" * 100)
    code, out, err = _cli(
        capsys, "wallet", "anchor", str(doc), "--wallet", str(_wallet(tmp_path, 1)),
        "--memo", "contract", "--wait", "--timeout", "60", "--rpc", url,
    )  # fmt: skip
    assert code == 0, err
    tx_hash = out.strip()
    for i in (0, 3):  # any node proves it, checked against the genesis file
        code, out, err = _cli(
            capsys, "verify", str(doc), "--genesis", str(genesis_path),
            "--rpc", cluster.cluster.rpc_url(i),
        )  # fmt: skip
        assert code == 0, err
        assert out.startswith("verified: ")
        assert tx_hash in out
    code, out, err = _cli(capsys, "verify", str(doc), "--rpc", url)  # trusting the node's list
    assert code == 0
    assert "warning" in err
    # a changed file has no anchor
    doc.write_bytes(doc.read_bytes() + b" ")
    code, out, err = _cli(capsys, "verify", str(doc), "--genesis", str(genesis_path), "--rpc", url)
    assert (code, out) == (1, "")
    assert "no anchor of sha256" in err
    assert err.count("\n") == 1
    # a wrong trust anchor fails the certificate check
    genesis = Genesis.load(genesis_path)
    other = Genesis.from_json(
        genesis.to_json()
        | {
            "validators": [
                {"index": i, "public_key": to_hex(SigningKey(bytes([i + 7]) * 32).public_key)}
                for i in range(4)
            ]
        }
    )
    bad_genesis = tmp_path / "other_genesis.json"
    other.save(bad_genesis)
    doc.write_bytes(doc.read_bytes()[:-1])
    code, _, err = _cli(capsys, "verify", str(doc), "--genesis", str(bad_genesis), "--rpc", url)
    assert code == 1
    assert "verification FAILED: certificate" in err
    # tampered proofs fetched from the real node
    asyncio.run(_tampered_proofs(url, bytes.fromhex(tx_hash[2:]), genesis))


async def _tampered_proofs(url: str, tx_hash: bytes, genesis: Genesis) -> None:
    keys = list(genesis.validator_keys())
    async with AsyncClient(url) as c:
        proof: dict[str, Any] = dict(await c.tx_proof(tx_hash))
        block: dict[str, Any] = dict(await c.block_get(proof["height"]))
    verify_tx_inclusion(tx_hash, proof, block, keys, genesis.chain_id)
    flip = {"0": "1"}

    def _bump_timestamp(p: dict[str, Any], b: dict[str, Any]) -> None:
        b["timestamp"] += 1
        b.pop("hash")

    tampers: dict[str, Callable[[dict[str, Any], dict[str, Any]], object]] = {
        "tx_root": lambda p, b: p.__setitem__("tx_root", "0x" + "00" * 32),
        "index": lambda p, b: p.__setitem__("index", p["index"] + 1),
        "signature": lambda p, b: b["certificate"]["commits"][0].__setitem__(
            "signature",
            b["certificate"]["commits"][0]["signature"][:-1]
            + flip.get(b["certificate"]["commits"][0]["signature"][-1], "0"),
        ),
        "timestamp": _bump_timestamp,
        "height": lambda p, b: p.__setitem__("height", p["height"] - 1),
    }
    for name, tamper in tampers.items():
        p2, b2 = json.loads(json.dumps(proof)), json.loads(json.dumps(block))
        tamper(p2, b2)
        with pytest.raises(ProofError):
            verify_tx_inclusion(tx_hash, p2, b2, keys, genesis.chain_id)
        del name


async def _hostile_round(url: str) -> dict[str, Any]:
    """Abuse node ``url`` in every way of test_rpc_hostile; returns counts and timings."""
    json_hdr = {"Content-Type": "application/json"}
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as s:
        codes = []
        for raw in (
            b"{",
            b"[" * 200_000,
            b"\xff" * 1000,
            b'{"jsonrpc":"2.0","id":1,"method":"tx_submit","params":["0x' + b"ab" * 200 + b'"]}',
        ):
            async with s.post(url, data=raw, headers=json_hdr) as r:
                codes.append((await r.json())["error"]["code"])
        out["garbage_codes"] = codes
        started = time.perf_counter()
        try:
            async with s.post(url, data=io.BytesIO(b" " * 10_000_000), headers=json_hdr) as r:
                out["body_10mb_status"] = r.status
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            out["body_10mb_status"] = "closed"
        out["body_10mb_ms"] = round((time.perf_counter() - started) * 1000, 1)

        async def status_ms() -> float:
            t0 = time.perf_counter()
            async with (
                aiohttp.ClientSession() as own,
                own.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "node_status"}) as r,
            ):
                assert "result" in await r.json()
            return (time.perf_counter() - t0) * 1000

        host, port = url.split("//")[1].split(":")
        slow = [await asyncio.open_connection(host, int(port)) for _ in range(200)]
        for _, w in slow:
            w.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le")
        try:
            lat = sorted(await asyncio.gather(*(status_ms() for _ in range(200))))
        finally:
            for _, w in slow:
                w.close()
        out["concurrent_200_p50_ms"] = round(lat[100], 1)
        out["concurrent_200_max_ms"] = round(lat[-1], 1)
    return out


def test_hostile_input_while_committing(cluster: LocalCluster) -> None:
    url = cluster.cluster.rpc_url(0)
    h0 = cluster.height(0)
    to = address_of(SigningKey(b"\x43" * 32).public_key)
    raws = [cluster.transfer(k, to, amount=1) for k in range(2, 8)]
    answers = cluster.submit(1, raws)
    assert all("result" in a for a in answers), answers
    result = asyncio.run(_hostile_round(url))
    print(json.dumps({"test": "e2e_hostile", **result}))
    assert result["garbage_codes"] == [-32700, -32700, -32700, -32001]
    assert result["body_10mb_status"] in (413, "closed")
    # the node kept committing: the transfers land and the chain grows on the abused node
    wait_for("transfers committed on node 0", lambda: cluster.balances(0, [to])[to] == len(raws))
    assert cluster.height(0) > h0
    assert cluster.health(0)["peers"] >= 3
