"""End to end: a held sender's later txs wait (``blocked_by``) and are never stranded; every hold
can be audited by rebuilding its model from the chain on another node.

One cluster, three senders, each with one held tx (10^11 to a never-seen address) and 10 later
ordinary transfers: A is released (all 11 commit in nonce order on every node), B is rejected
(the 10 fail at once with ``blocked_tx_rejected``), C expires (``blocked_tx_expired``). Nothing is
left in any mempool. Then node 2 is stopped and the hold of B is explained offline from node 2's
database: same model id, same score to the last bit, same reasons.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from node.host.config import load_config
from node.tools import admin
from tests.cluster_util import LocalCluster, wait_for

pytestmark = pytest.mark.e2e

ACCOUNTS = 40
PLAN = [k for k in range(ACCOUNTS) for _ in range(1 + k % 4)]
TTL_MS = 12_000
DETECTOR = {
    "warmup_txs": len(PLAN),
    "min_train_txs": len(PLAN),
    "retrain_every_blocks": 1_000_000,
    "quarantine_ttl_ms": TTL_MS,
}
SENDERS = {"release": 3, "reject": 7, "expire": 11}
LATER = 10


def never_seen(tag: int) -> bytes:
    return hashlib.sha256(b"vigil-e2e-waiting-%d" % tag).digest()[:20]


def test_waiting_txs_release_reject_expire_and_audit(tmp_path: Path) -> None:
    overrides = {"detector": DETECTOR, "block": {"interval_ms": 50}}
    with LocalCluster(tmp_path, n=4, overrides=overrides, bench_accounts=ACCOUNTS + 4) as c:
        p = int(c.rpc(0, "node_status")["primary"])
        rng = random.Random(1)
        plan = list(PLAN)
        rng.shuffle(plan)
        for i in range(0, len(plan), 20):
            raws = [
                c.transfer(
                    k, c.address((k + 1 + rng.randrange(2)) % ACCOUNTS), rng.randint(100, 1000)
                )
                for k in plan[i : i + 20]
            ]
            last = c.submit(p, raws)[-1]["result"]["hash"]
            wait_for(f"warm-up {last}", lambda h=last: c.tx_status(p, h) == "committed")
        wait_for("detector warm", lambda: c.rpc(p, "detector_status")["warm"])

        held: dict[str, str] = {}
        later: dict[str, list[str]] = {}
        for case, k in SENDERS.items():
            raws = [c.transfer(k, never_seen(k), 10**11)]
            raws += [c.transfer(k, c.address((k + 1) % ACCOUNTS), 100 + j) for j in range(LATER)]
            answers = [a["result"] for a in c.submit(p, raws)]
            assert answers[0]["status"] == "quarantined", answers[0]
            held[case] = answers[0]["hash"]
            later[case] = [a["hash"] for a in answers[1:]]
            for a in answers[1:]:
                assert (a["status"], a["blocked_by"]) == ("waiting", held[case]), a
            info = c.rpc(p, "tx_get", [later[case][-1]])
            assert (info["status"], info["blocked_by"]) == ("waiting", held[case])

        # --- release: the held tx and its 10 followers commit, in nonce order, everywhere.
        c.rpc(p, "quarantine_release", [held["release"]], admin=True)
        chain = [held["release"], *later["release"]]
        for i in range(c.n):
            wait_for(f"released chain on {i}", lambda i=i: c.tx_status(i, chain[-1]) == "committed")
        spots = [
            (c.rpc(p, "tx_get", [h])["height"], c.rpc(p, "tx_get", [h])["index"]) for h in chain
        ]
        assert spots == sorted(spots)

        # --- reject: the followers fail at once with a clear reason, on every node.
        out = c.rpc(p, "quarantine_reject", [held["reject"]], admin=True)
        assert out["status"] == "rejected"
        for h in later["reject"]:
            info = c.rpc(p, "tx_get", [h])
            assert (info["status"], info["reason"]) == ("rejected", "blocked_tx_rejected"), info

        # --- expiry: after the TTL, the same with blocked_tx_expired.
        def expired() -> bool:
            info = c.rpc(p, "tx_get", [later["expire"][0]])
            return bool(info["status"] == "rejected" and info["reason"] == "blocked_tx_expired")

        wait_for("expiry", expired, deadline_s=TTL_MS / 1000 + 30)
        assert c.tx_status(p, held["expire"]) == "rejected"
        for i in range(c.n):
            wait_for(f"empty mempool on {i}", lambda i=i: c.rpc(i, "mempool_status")["size"] == 0)

        # --- audit: node 2 (never held anything) rebuilds the model of B's hold from its chain.
        shown = c.rpc(p, "quarantine_show", [held["reject"]], admin=True)
        assert shown["state"] == "rejected"
        assert shown["model_id"].startswith("0x")
        online = c.rpc(p, "detector_explain", [held["reject"]], admin=True)
        assert (online["same_model"], online["same_score"], online["same_reasons"]) == (
            True,
            True,
            True,
        ), online
        other = 2 if p != 2 else 1
        record = tmp_path / "record.json"
        record.write_text(json.dumps(shown))
        c.stop(other)
        cfg_path = c.cluster.node_dir(other) / "config.toml"
        db = load_config(cfg_path).db_path
        r = admin.explain_offline(Path(db), cfg_path, bytes.fromhex(held["reject"][2:]), record)
        assert (r["same_model"], r["same_score"], r["same_reasons"]) == (True, True, True), r
        assert r["rebuilt"]["score"] == shown["audit"]["score"]
