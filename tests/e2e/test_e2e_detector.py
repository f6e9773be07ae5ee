"""End to end on a real 4-node cluster: after warm-up the detector quarantines abnormal transfers.

Warm-up is a small, varied batch of ordinary transfers (the ``[detector]`` table of the test
configs makes 100 committed txs enough). Then: an ordinary transfer commits; abnormal ones
(10^11 units to never-seen addresses, against amounts in the hundreds) are quarantined and never
gossiped or committed; a released one commits on every node; a rejected one reports
``rejected`` with its reason; admin methods refuse a caller without the token.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from node.errors import NOT_FOUND, UNAUTHORIZED
from node.tools.client import RpcError
from tests.cluster_util import LocalCluster, wait_for

pytestmark = pytest.mark.e2e

ACCOUNTS = 40
# Account k sends 1 + k % 4 ordinary transfers (100 in all): senders' counts and rates vary.
PLAN = [k for k in range(ACCOUNTS) for _ in range(1 + k % 4)]
DETECTOR = {
    "warmup_txs": len(PLAN),
    "min_train_txs": len(PLAN),
    "retrain_every_blocks": 1_000_000,  # one model for the whole test
}  # everything else default: 10^11 is far above the window's amounts, so it scores beyond it
ABNORMAL_SENDERS = (2, 6, 10, 14)
FRESH_SENDER = ACCOUNTS  # no history: its first, ordinary transfer looks typical


def never_seen(tag: int) -> bytes:
    return hashlib.sha256(b"vigil-e2e-never-seen-%d" % tag).digest()[:20]


def test_detector_quarantine_release_reject(tmp_path: Path) -> None:
    overrides = {"detector": DETECTOR, "block": {"interval_ms": 50}}
    with LocalCluster(tmp_path, n=4, overrides=overrides, bench_accounts=ACCOUNTS + 4) as c:
        p = int(c.rpc(0, "node_status")["primary"])
        others = [i for i in range(c.n) if i != p]

        # --- warm-up: ordinary transfers in small batches, each committed before the next.
        rng = random.Random(1)
        plan = list(PLAN)
        rng.shuffle(plan)
        for i in range(0, len(plan), 10):
            raws = []
            for k in plan[i : i + 10]:
                payee = c.address((k + 1 + rng.randrange(2)) % ACCOUNTS)
                raws.append(c.transfer(k, payee, rng.randint(100, 1000)))
            answers = c.submit(p, raws)
            assert all(a["result"]["status"] == "pending" for a in answers), answers
            last = answers[-1]["result"]["hash"]
            wait_for(f"warm-up tx {last}", lambda h=last: c.tx_status(p, h) == "committed")
        status = wait_for(
            "detector warm",
            lambda: (s := c.rpc(p, "detector_status"))["warm"] and s,
        )
        assert status["model_version"] >= 1
        assert status["trained_rows"] == len(PLAN)

        # --- an ordinary transfer is admitted and commits.
        ordinary = c.submit(p, [c.transfer(FRESH_SENDER, c.address(0), 500)])[0]["result"]
        assert ordinary["status"] == "pending"
        wait_for("ordinary commit", lambda: c.tx_status(p, ordinary["hash"]) == "committed")
        got = c.rpc(p, "tx_get", [ordinary["hash"]])
        assert got["anomaly"]["score"] <= got["anomaly"]["threshold"]

        # --- abnormal transfers are quarantined, with the detector's reasons.
        raws = [c.transfer(k, never_seen(k), 10**11) for k in ABNORMAL_SENDERS]
        answers = [a["result"] for a in c.submit(p, raws)]
        held = [a["hash"] for a in answers if a["status"] == "quarantined"]
        assert len(held) == len(ABNORMAL_SENDERS), f"expected all held: {answers} {status}"
        a_hash, b_hash = held[0], held[1]
        info = c.rpc(p, "tx_get", [a_hash])
        assert info["status"] == "quarantined"
        assert info["amount"] == 10**11
        assert info["anomaly"]["score"] > info["anomaly"]["threshold"]
        assert any("above anything in the last" in r for r in info["anomaly"]["reasons"]), info
        assert c.rpc(p, "mempool_status")["quarantined"] == len(held)

        # --- admin methods without the token fail and change nothing.
        for method, params in (("quarantine_list", None), ("quarantine_release", [a_hash])):
            with pytest.raises(RpcError) as exc:
                c.rpc(p, method, params)
            assert exc.value.code == UNAUTHORIZED
        assert c.tx_status(p, a_hash) == "quarantined"
        listed = c.rpc(p, "quarantine_list", admin=True)
        assert {x["hash"] for x in listed} == set(held)
        assert all(x["score"] > x["threshold"] and x["reasons"] for x in listed)

        # --- release A: it enters the mempool and commits on every node.
        assert c.rpc(p, "quarantine_release", [a_hash], admin=True)["status"] == "pending"
        for i in range(c.n):
            wait_for(f"released tx on node {i}", lambda i=i: c.tx_status(i, a_hash) == "committed")

        # --- B was never gossiped nor committed: the primary holds it, the others never saw it.
        height = c.height(p)
        for i in others:
            c.wait_height(i, height)
            with pytest.raises(RpcError) as exc:
                c.rpc(i, "tx_get", [b_hash])
            assert exc.value.code == NOT_FOUND
        assert c.tx_status(p, b_hash) == "quarantined"

        # --- reject B: recorded as rejected with its reason.
        out = c.rpc(p, "quarantine_reject", [b_hash], admin=True)
        assert (out["status"], out["reason"]) == ("rejected", "quarantine_rejected")
        info = c.rpc(p, "tx_get", [b_hash])
        assert (info["status"], info["reason"]) == ("rejected", "quarantine_rejected")
        with pytest.raises(RpcError) as exc:
            c.rpc(p, "quarantine_reject", [b_hash], admin=True)
        assert exc.value.code == NOT_FOUND
        detector = c.rpc(p, "detector_status")
        assert detector["quarantined"] == len(held) - 2
        assert detector["quarantined_total"] == len(held)
