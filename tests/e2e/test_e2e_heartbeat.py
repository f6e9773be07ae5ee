"""The heartbeat on a real cluster (``[block] empty_interval_ms``): real node processes.

With it on, an idle chain's head advances with blocks of zero txs, each with a commit certificate
that verifies offline, the same block on every node, and no view change; with it off (the node
default), the head of an idle chain stays still.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from common.crypto import from_hex
from consensus.certificate import CommitCertificate, verify_certificate
from tests.cluster_util import LocalCluster, wait_for

pytestmark = pytest.mark.e2e

INTERVAL_MS = 500
IDLE_S = 4.0


def _heights(c: LocalCluster) -> list[int]:
    return [int(c.rpc(i, "node_status")["height"]) for i in range(c.n)]


def _certificate(block: dict[str, Any]) -> CommitCertificate:
    cert = block["certificate"]
    return CommitCertificate(
        cert["view"],
        cert["seq"],
        from_hex(cert["digest"], 32),
        tuple((s["index"], from_hex(s["signature"], 64)) for s in cert["commits"]),
    )


def test_an_idle_chain_with_the_heartbeat_makes_empty_blocks(tmp_path: Path) -> None:
    overrides = {"block": {"empty_interval_ms": INTERVAL_MS}}
    with LocalCluster(tmp_path, n=4, overrides=overrides) as c:
        wait_for("the first heartbeat block", lambda: min(_heights(c)) >= 1)
        start, t0 = max(_heights(c)), time.monotonic()
        time.sleep(IDLE_S)
        wait_for("every node at the new head", lambda: min(_heights(c)) >= start + 3)
        status = c.rpc(0, "node_status")
        head, elapsed_s = int(status["height"]), time.monotonic() - t0
        # about one block per interval (plus the commit's latency), not a flood
        assert head - start <= elapsed_s * 1000 / INTERVAL_MS + 1
        validators = tuple(from_hex(v["public_key"], 32) for v in status["validators"])
        for height in range(start + 1, start + 4):
            blocks = [c.rpc(i, "block_get", {"height": height}) for i in range(c.n)]
            assert {b["hash"] for b in blocks} == {blocks[0]["hash"]}
            block = blocks[0]
            assert block["tx_hashes"] == []
            cert = _certificate(block)
            assert (cert.seq, "0x" + cert.digest.hex()) == (height, block["payload_digest"])
            assert verify_certificate(cert, validators, status["chain_id"])
        assert [c.rpc(i, "node_status")["view"] for i in range(c.n)] == [0] * c.n
        # a tx still goes through at once, between heartbeats
        raw = c.transfer(0, c.address(1), amount=5)
        h = c.submit(0, [raw])[0]["result"]["hash"]
        wait_for("the transfer committed", lambda: c.tx_status(0, h) == "committed")


def test_an_idle_chain_without_the_heartbeat_stays_still(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, n=4) as c:  # the node default: empty_interval_ms = 0
        raw = c.transfer(0, c.address(1), amount=5)
        h = c.submit(0, [raw])[0]["result"]["hash"]
        wait_for("the transfer committed", lambda: c.tx_status(0, h) == "committed")
        wait_for("every node at height 1", lambda: _heights(c) == [1] * c.n)
        time.sleep(IDLE_S)
        assert _heights(c) == [1] * c.n
