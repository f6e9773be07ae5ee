"""End to end with a real Ethereum client: web3.py + eth-account against a real 4-node cluster.

An Ethereum account is created, receives native funds, pays a native address and another
Ethereum account (type 2 and legacy EIP-155), anchors a file's digest (found with eth_getLogs and
with ``vigil verify``); then the errors a wallet shows: wrong chain id, replayed raw tx, too low a
fee, malformed RLP, oversized tx, insufficient funds; finally the detector holds an abnormal
Ethereum tx (hash returned, no receipt, visible to tx_get and the admin list).
The transcript is printed (pytest -s) for docs/rpc.md.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("web3", reason="web3.py is in the test extra: pip install -e '.[test]'")

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_account.types import TransactionDictType
from eth_typing import HexStr
from eth_utils.address import to_checksum_address
from web3 import Web3
from web3.exceptions import TransactionNotFound, Web3RPCError
from web3.types import BlockData, RPCEndpoint, TxData, TxParams, Wei

from node.chain.ethtx import ANCHOR_ADDRESS, BASE_FEE_WEI, WEI_PER_UNIT, eth_chain_id
from node.tools import devnet
from tests.cluster_util import LocalCluster, wait_for

pytestmark = pytest.mark.e2e

WARMUP = 40
DETECTOR = {
    "warmup_txs": WARMUP,
    "min_train_txs": WARMUP,
    "retrain_every_blocks": 1_000_000,
    "contamination": 0.25,  # a 40-row window: hold the top quarter (the default extrapolates)
}
UNIT = WEI_PER_UNIT
TRANSCRIPT: list[dict[str, Any]] = []


def note(step: str, **fields: Any) -> None:
    TRANSCRIPT.append({"step": step, **fields})


def send(w3: Web3, acct: LocalAccount, tx: TransactionDictType) -> tuple[bytes, HexStr]:
    signed = acct.sign_transaction(tx)
    raw = bytes(signed.raw_transaction)
    h = w3.eth.send_raw_transaction(raw)
    assert bytes(h) == bytes(signed.hash)  # the node returns the hash every Ethereum tool computes
    return raw, HexStr("0x" + bytes(h).hex())


def rpc_error(w3: Web3, raw: bytes) -> dict[str, Any]:
    with pytest.raises(Web3RPCError) as info:
        w3.eth.send_raw_transaction(raw)
    response = info.value.rpc_response
    assert response is not None
    err = response["error"]
    return {"code": err["code"], "message": err["message"]}


def full_transactions(block: BlockData) -> list[TxData]:
    """A block fetched with ``full_transactions=True``: its transactions, not their hashes."""
    txs: list[TxData] = []
    for t in block["transactions"]:
        assert not isinstance(t, bytes)
        txs.append(t)
    return txs


def transaction_hashes(block: BlockData) -> list[bytes]:
    """A block fetched without ``full_transactions``: its transactions' hashes."""
    hashes: list[bytes] = []
    for x in block["transactions"]:
        assert isinstance(x, bytes)
        hashes.append(bytes(x))
    return hashes


def test_web3_wallet_flow(tmp_path: Path) -> None:
    # the heartbeat on, as `scripts/cluster up` makes it: empty blocks between the steps
    block = {"interval_ms": 50, "empty_interval_ms": devnet.DEVNET_EMPTY_INTERVAL_MS}
    overrides: dict[str, dict[str, Any]] = {"detector": DETECTOR, "block": block}
    with LocalCluster(tmp_path, n=4, overrides=overrides, bench_accounts=WARMUP + 4) as c:
        url = c.cluster.rpc_url(0)
        w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))
        chain = w3.eth.chain_id
        assert chain == eth_chain_id(devnet.CHAIN_ID)
        assert w3.net.version == str(chain)
        assert w3.client_version.startswith("Vigil/")
        assert w3.eth.syncing is False
        assert list(w3.eth.accounts) == []
        assert w3.eth.gas_price == BASE_FEE_WEI
        assert w3.eth.max_priority_fee == 0
        note("connect", chain_id=chain, client=w3.client_version, gas_price=w3.eth.gas_price)

        # --- an Ethereum account receives native funds (a native transfer from bench account 0)
        alice, bob = Account.create(), Account.create()
        a_addr = bytes.fromhex(alice.address[2:])
        fund_units = 500 * 10**9  # 500 coins in a wallet's 18 decimals
        raw = c.transfer(0, a_addr, amount=fund_units)
        h = c.submit(0, [raw])[0]["result"]["hash"]
        wait_for("funding committed", lambda: c.tx_status(0, h) == "committed")
        assert w3.eth.get_balance(alice.address) == fund_units * UNIT
        note("funded", address=alice.address, balance_wei=str(w3.eth.get_balance(alice.address)))

        # --- type 2 transfer to a native address
        native_to = c.address(1)
        before_native = c.balances(0, [native_to])[native_to]
        base = w3.eth.get_block("latest")["baseFeePerGas"]
        native_addr = to_checksum_address("0x" + native_to.hex())
        tx: TransactionDictType = {
            "type": 2,
            "chainId": chain,
            "nonce": w3.eth.get_transaction_count(alice.address, "pending"),
            "to": native_addr,
            "value": 10**17,
            "maxPriorityFeePerGas": w3.eth.max_priority_fee,
            "maxFeePerGas": 2 * base,
        }
        tx["gas"] = w3.eth.estimate_gas(
            {"to": native_addr, "value": Wei(10**17), "from": alice.address}
        )
        assert tx["gas"] == 21_000
        raw1, h1 = send(w3, alice, tx)
        r1 = w3.eth.wait_for_transaction_receipt(h1, timeout=60, poll_latency=0.1)
        assert r1["status"] == 1
        assert r1["gasUsed"] == 21_000
        assert r1["effectiveGasPrice"] == BASE_FEE_WEI
        fee1 = r1["gasUsed"] * r1["effectiveGasPrice"]
        assert w3.eth.get_balance(alice.address) == fund_units * UNIT - 10**17 - fee1
        assert c.balances(0, [native_to])[native_to] == before_native + 10**17 // UNIT
        note(
            "type2 to native address",
            hash=h1,
            status=r1["status"],
            gasUsed=r1["gasUsed"],
            effectiveGasPrice=r1["effectiveGasPrice"],
            fee_wei=fee1,
            block=r1["blockNumber"],
        )

        # --- legacy (EIP-155) transfer to another Ethereum account
        tx2: TransactionDictType = {
            "chainId": chain,
            "nonce": w3.eth.get_transaction_count(alice.address, "pending"),
            "to": bob.address,
            "value": 3 * 10**18,
            "gas": 21_000,
            "gasPrice": w3.eth.gas_price,
        }
        _raw2, h2 = send(w3, alice, tx2)
        r2 = w3.eth.wait_for_transaction_receipt(h2, timeout=60, poll_latency=0.1)
        assert r2["status"] == 1
        assert r2["type"] == 0
        assert w3.eth.get_balance(bob.address) == 3 * 10**18
        note("legacy to Ethereum account", hash=h2, status=r2["status"], bob=str(3 * 10**18))

        # --- Bob pays back to Alice (an account that only ever received)
        tx3: TransactionDictType = {
            "type": 2,
            "chainId": chain,
            "nonce": 0,
            "to": alice.address,
            "value": 10**18,
            "gas": 21_000,
            "maxFeePerGas": 2 * base,
            "maxPriorityFeePerGas": 0,
        }
        _, h3 = send(w3, bob, tx3)
        assert w3.eth.wait_for_transaction_receipt(h3, timeout=60, poll_latency=0.1)["status"] == 1
        assert w3.eth.get_balance(bob.address) == 2 * 10**18 - 21_000 * BASE_FEE_WEI
        assert w3.eth.get_transaction_count(bob.address) == 1

        # --- anchor: data = sha256(file) ‖ memo, to the reserved anchor address
        doc = tmp_path / "contract.txt"
        doc.write_bytes(b"web3 anchored document\n")
        digest = hashlib.sha256(doc.read_bytes()).digest()
        anchor_to = to_checksum_address("0x" + ANCHOR_ADDRESS.hex())
        call: TxParams = {
            "from": alice.address,
            "to": anchor_to,
            "data": HexStr("0x" + (digest + b"web3").hex()),
        }
        gas = w3.eth.estimate_gas(call)
        tx4: TransactionDictType = {
            "type": 2,
            "chainId": chain,
            "nonce": w3.eth.get_transaction_count(alice.address, "pending"),
            "to": anchor_to,
            "value": 0,
            "data": digest + b"web3",
            "gas": gas,
            "maxFeePerGas": 2 * base,
            "maxPriorityFeePerGas": 0,
        }
        _, h4 = send(w3, alice, tx4)
        r4 = w3.eth.wait_for_transaction_receipt(h4, timeout=60, poll_latency=0.1)
        assert r4["status"] == 1
        assert r4["gasUsed"] == gas
        assert [bytes(t) for t in r4["logs"][0]["topics"]] == [digest]
        logs = w3.eth.get_logs(
            {
                "fromBlock": 0,
                "toBlock": "latest",
                "address": anchor_to,
                "topics": ["0x" + digest.hex()],
            }
        )
        assert [bytes(x["transactionHash"]).hex() for x in logs] == [h4[2:]]
        assert bytes(logs[0]["data"]) == b"web3"
        verify = subprocess.run(
            [
                str(Path(sys.executable).with_name("vigil")),
                "verify",
                "--rpc",
                url,
                "--genesis",
                str(c.cluster.root / "genesis.json"),
                str(doc),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert verify.returncode == 0, verify.stderr + verify.stdout
        note("anchor", hash=h4, gasUsed=r4["gasUsed"], logs=len(logs), verify=verify.stdout.strip())

        # --- reads: blocks with and without txs, by hash, tx by hash, nonces, code, call
        blk = w3.eth.get_block(r4["blockNumber"], full_transactions=True)
        assert blk["hash"] == r4["blockHash"]
        assert any(bytes(t["hash"]) == bytes.fromhex(h4[2:]) for t in full_transactions(blk))
        by_hash = w3.eth.get_block(r4["blockHash"])
        assert by_hash["number"] == r4["blockNumber"]
        assert bytes.fromhex(h4[2:]) in transaction_hashes(by_hash)
        got = w3.eth.get_transaction(h4)
        assert got["from"] == alice.address
        assert got["blockNumber"] == r4["blockNumber"]
        assert w3.eth.get_transaction_count(alice.address) == 3
        assert w3.eth.get_transaction_count(alice.address, "pending") == 3
        assert w3.eth.get_code(bob.address) == b""
        history = w3.eth.fee_history(4, "latest", [50])
        assert set(history["baseFeePerGas"]) == {BASE_FEE_WEI}
        with pytest.raises(Web3RPCError, match="no EVM"):
            w3.eth.call({"to": bob.address, "data": HexStr("0x12345678")})
        with pytest.raises(Web3RPCError, match="no EVM"):
            w3.eth.estimate_gas({"from": alice.address, "data": HexStr("0x6000")})
        unknown = w3.provider.make_request(RPCEndpoint("eth_sign"), [alice.address, "0x00"])
        assert unknown["error"]["code"] == -32601
        note("unsupported method", error=dict(unknown["error"]))

        # --- the errors a wallet shows
        nonce = w3.eth.get_transaction_count(alice.address, "pending")
        good = {**tx2, "nonce": nonce, "value": 10**9}
        errors = {
            "wrong chain id": rpc_error(
                w3, alice.sign_transaction({**good, "chainId": 1}).raw_transaction
            ),
            "replayed raw tx": rpc_error(w3, raw1),
            "too low a fee": rpc_error(
                w3, alice.sign_transaction({**good, "gasPrice": 1}).raw_transaction
            ),
            "malformed RLP": rpc_error(w3, bytes.fromhex("f86b80843b9aca00")),
            "oversized tx": rpc_error(
                w3,
                alice.sign_transaction(
                    {**good, "to": anchor_to, "value": 0, "data": b"\x01" * 2000, "gas": 100_000}
                ).raw_transaction,
            ),
            "insufficient funds": rpc_error(
                w3, bob.sign_transaction({**good, "nonce": 1, "value": 10**20}).raw_transaction
            ),
            "gas below 21000": rpc_error(
                w3, alice.sign_transaction({**good, "gas": 20_000}).raw_transaction
            ),
        }
        assert all(e["code"] == -32000 for e in errors.values()), errors
        assert errors["wrong chain id"]["message"].startswith("invalid chain id for signer")
        assert errors["replayed raw tx"]["message"].startswith("nonce too low")
        assert errors["too low a fee"]["message"].startswith(
            "max fee per gas less than block base fee"
        )
        assert errors["malformed RLP"]["message"].startswith("rlp:")
        assert errors["oversized tx"]["message"].startswith("oversized data")
        assert errors["insufficient funds"]["message"].startswith("insufficient funds")
        assert errors["gas below 21000"]["message"].startswith("intrinsic gas too low")
        note("errors", **errors)
        assert w3.eth.get_transaction_count(alice.address, "pending") == nonce  # nothing consumed

        # --- the detector screens Ethereum txs: warm it up, then an abnormal one is held
        rng = random.Random(3)
        for i in range(0, WARMUP, 10):
            raws = [
                c.transfer(k, c.address((k + 1) % WARMUP), rng.randint(100, 1000))
                for k in range(i, i + 10)
            ]
            last = c.submit(0, raws)[-1]["result"]["hash"]
            wait_for("warm-up", lambda h=last: c.tx_status(0, h) == "committed")
        wait_for("detector warm", lambda: c.rpc(0, "detector_status")["warm"])
        stranger = to_checksum_address("0x" + hashlib.sha256(b"never seen").digest()[:20].hex())
        big = {**good, "to": stranger, "value": 400 * 10**18}
        _, held = send(w3, alice, big)
        assert c.tx_status(0, held) == "quarantined", json.dumps(c.rpc(0, "tx_get", [held]))
        with pytest.raises(TransactionNotFound):
            w3.eth.get_transaction_receipt(held)  # no receipt while held
        info = c.rpc(0, "tx_get", [held])
        listed = c.rpc(0, "quarantine_list", [], admin=True)
        assert any(x["hash"] == held for x in listed)
        note("held by the detector", hash=held, status=info["status"], anomaly=info["anomaly"])
        print(json.dumps(TRANSCRIPT, indent=1, default=str))
