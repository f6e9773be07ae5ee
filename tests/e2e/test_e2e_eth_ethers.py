"""End to end with ethers v6 (npm, tests/js/) against a real 4-node cluster.

tests/js/ethers_flow.mjs runs the wallet flow (native funds in, type 2 and legacy sends, an
anchor found with getLogs, blocks, newHeads and logs over /ws) and the errors a wallet shows;
this test funds its account, runs it with node and checks the transcript. The cluster runs with
the heartbeat on (``[block] empty_interval_ms``, as ``scripts/cluster up`` makes it), so the
script waits with ethers' own ``tx.wait()``, which needs the head to advance after a commit.
Skips with a clear message where node or the npm packages (``npm ci`` in tests/js, done by
scripts/test) are missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("eth_account", reason="eth-account is in the test extra")

from eth_account import Account

from node.chain.ethtx import ANCHOR_ADDRESS
from node.tools import devnet
from tests.cluster_util import LocalCluster, wait_for

pytestmark = pytest.mark.e2e

JS = Path(__file__).resolve().parents[1] / "js"
NODE = shutil.which("node")


@pytest.mark.skipif(
    NODE is None, reason="node (Node.js) is not installed: the ethers test needs it"
)
@pytest.mark.skipif(
    not (JS / "node_modules" / "ethers").is_dir(),
    reason="ethers is not installed: run `npm ci` in tests/js (scripts/test does when npm exists)",
)
def test_ethers_wallet_flow(tmp_path: Path) -> None:
    block = {"interval_ms": 50, "empty_interval_ms": devnet.DEVNET_EMPTY_INTERVAL_MS}
    with LocalCluster(tmp_path, n=4, overrides={"block": block}) as c:
        alice = Account.create()
        raw = c.transfer(0, bytes.fromhex(alice.address[2:]), amount=100 * 10**9)
        h = c.submit(0, [raw])[0]["result"]["hash"]
        wait_for("funding committed", lambda: c.tx_status(0, h) == "committed")
        funding_block = c.rpc(0, "tx_get", [h])["height"]
        url = c.cluster.rpc_url(0)
        env = {
            **os.environ,
            "RPC_URL": url,
            "WS_URL": url.replace("http://", "ws://").rstrip("/") + "/ws",
            "PRIVATE_KEY": alice.key.hex(),
            "FUNDING_BLOCK": str(funding_block),
            "NATIVE_TO": "0x" + c.address(1).hex(),
            "ANCHOR": "0x" + ANCHOR_ADDRESS.hex(),
            "DIGEST": "0x" + hashlib.sha256(b"ethers anchored document").hexdigest(),
        }
        assert NODE is not None
        proc = subprocess.run(
            [NODE, str(JS / "ethers_flow.mjs")],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            cwd=JS,
        )
        assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
        transcript = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(transcript, indent=1))
        steps = {t["step"]: t for t in transcript}
        assert steps["type2 to native address"]["gasUsed"] == "21000"
        native_to = c.address(1)
        assert c.balances(0, [native_to])[native_to] >= 25 * 10**7
        errors = {k[len("error: ") :]: v for k, v in steps.items() if k.startswith("error: ")}
        assert errors["wrong chain id"]["message"].startswith("invalid chain id for signer")
        assert errors["replayed raw tx"]["ethersCode"] == "NONCE_EXPIRED"
        assert errors["too low a fee"]["message"].startswith("max fee per gas less than")
        assert errors["malformed RLP"]["message"].startswith("rlp:")
        assert errors["oversized tx"]["message"].startswith("oversized data")
        assert errors["insufficient funds"]["ethersCode"] == "INSUFFICIENT_FUNDS"
        assert "no EVM" in errors["eth_call"]["message"]
