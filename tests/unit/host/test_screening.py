"""Screening: the detector on the admission path, training after commits, operator actions."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from common.crypto import address_of
from node.chain.tx import Transaction, make_transfer
from node.errors import NOT_FOUND, VigilError
from node.host.admission import Screened
from node.host.metrics import Metrics
from node.host.screening import Screening, split_config
from node.tools import devnet
from storage.db import Store

ACCOUNTS = 40
# Warm-up: account k sends 1 + k % 4 ordinary transfers, so senders' rates vary (as in the e2e).
PLAN = [k for k in range(ACCOUNTS) for _ in range(1 + k % 4)]
FRESH = ACCOUNTS  # a sender with no history
CFG = {
    "warmup_txs": len(PLAN),  # the model comes right after the whole warm-up
    "min_train_txs": len(PLAN),
    "retrain_every_blocks": 1000,
    "quarantine_ttl_ms": 60_000,
}


@dataclass(frozen=True)
class Header:
    height: int
    timestamp_ms: int


@dataclass(frozen=True)
class Block:
    header: Header
    txs: tuple[Transaction, ...]


@dataclass(frozen=True)
class Receipt:
    ok: bool = True


@dataclass
class FakeChain:
    blocks: dict[int, Block] = field(default_factory=dict)
    store: Any = None

    @property
    def height(self) -> int:
        return max(self.blocks, default=0)

    def get_block(self, height: int) -> Block | None:
        return self.blocks.get(height)


class NoReceipts:
    def get_receipt(self, tx_hash: bytes) -> bytes | None:
        return None


class Releaser:
    def __init__(self) -> None:
        self.admitted: list[bytes] = []

    def admit_released(self, tx: Transaction) -> dict[str, Any]:
        self.admitted.append(tx.hash)
        return {"hash": "0x" + tx.hash.hex(), "status": "pending"}


class Traffic:
    """Ordinary transfers like the e2e test's warm-up: small amounts to two regular payees."""

    def __init__(self) -> None:
        self.keys = [devnet.bench_key(k) for k in range(ACCOUNTS + 4)]
        self.addrs = [address_of(k.public_key) for k in self.keys]
        self.nonces = [0] * (ACCOUNTS + 4)
        self.now_ms = 1_700_000_000_000
        self.rng = random.Random(3)

    def ordinary(self, k: int, amount: int | None = None) -> Transaction:
        n = self.nonces[k]
        self.nonces[k] += 1
        to = self.addrs[(k + 1 + self.rng.randrange(2)) % ACCOUNTS]
        amount = self.rng.randint(100, 1000) if amount is None else amount
        return make_transfer(self.keys[k], devnet.CHAIN_ID, to, amount, 1, n)

    def huge(self, k: int, tag: bytes) -> Transaction:
        n = self.nonces[k]
        self.nonces[k] += 1
        to = hashlib.sha256(b"never-seen" + tag).digest()[:20]
        return make_transfer(self.keys[k], devnet.CHAIN_ID, to, 10**11, 1, n)


async def warm_up(s: Screening, t: Traffic, chain: FakeChain) -> None:
    rng = random.Random(7)
    plan = list(PLAN)
    rng.shuffle(plan)
    for i in range(0, len(plan), 20):
        txs = tuple(t.ordinary(k) for k in plan[i : i + 20])
        assert not any(v.quarantined for v in s.screen(txs))  # no model yet: nothing held
        assert s.status()["model_version"] == 0
        t.now_ms += rng.randint(80, 400)
        block = Block(Header(chain.height + 1, t.now_ms), txs)
        chain.blocks[block.header.height] = block
        s.on_block_committed(block, [Receipt()] * len(txs))
        await s.wait_trained()


def make(tmp_path: Path, t: Traffic) -> tuple[Screening, Store, Metrics]:
    store = Store(str(tmp_path / "db"))
    metrics = Metrics()
    s = Screening(CFG, store, metrics, clock_ms=lambda: t.now_ms)
    return s, store, metrics


async def warmed(tmp_path: Path) -> tuple[Traffic, FakeChain, Screening, Store, Metrics]:
    """A started screening whose detector has a warm model of the warm-up traffic."""
    t = Traffic()
    chain = FakeChain(store=NoReceipts())
    s, store, metrics = make(tmp_path, t)
    s.start(chain, t.addrs)
    await warm_up(s, t, chain)
    return t, chain, s, store, metrics


async def test_screen_hold_reject_release_and_restart(tmp_path: Path) -> None:
    t, chain, s, store, metrics = await warmed(tmp_path)
    st = s.status()
    assert st["warm"] is True
    assert st["model_version"] == 1
    assert st["window_size"] == len(PLAN)
    assert metrics.detector_trainings_total._value.get() == 1

    t.now_ms += 500
    ordinary = [t.ordinary(FRESH + j, 500) for j in range(3)]
    abnormal = [t.huge(2, b"a"), t.huge(6, b"b"), t.huge(10, b"c")]
    verdicts = s.screen(ordinary + abnormal)
    assert [v.quarantined for v in verdicts] == [False] * 3 + [True] * 3
    for tx, v in zip(abnormal, verdicts[3:], strict=True):
        assert v.score is not None
        assert v.score > st["threshold"]
        assert any("median" in r or "never-seen" in r for r in v.reasons)
        s.hold(tx, v)
    assert len(s.quarantine) == 3
    assert s.known(abnormal[0].hash)
    info = s.tx_info(abnormal[0].hash)
    assert info is not None
    assert info["status"] == "quarantined"
    assert info["amount"] == 10**11
    assert info["anomaly"]["threshold"] == pytest.approx(st["threshold"])
    assert info["anomaly"]["reasons"] == list(verdicts[3].reasons)
    assert s.anomaly(ordinary[0].hash) is not None  # scored, not held
    listed = s.listing(10)
    assert [x["hash"] for x in listed] == ["0x" + tx.hash.hex() for tx in abnormal]

    # Reject: recorded as rejected with its reason, counted by reason.
    out = s.reject(abnormal[0].hash)
    assert out == {
        "hash": "0x" + abnormal[0].hash.hex(),
        "status": "rejected",
        "reason": "quarantine_rejected",
    }
    info = s.tx_info(abnormal[0].hash)
    assert info is not None
    assert (info["status"], info["reason"]) == ("rejected", "quarantine_rejected")
    rejected = metrics.txs_rejected_total.labels(reason="quarantine_rejected")
    assert rejected._value.get() == 1
    with pytest.raises(VigilError) as exc:
        s.reject(abnormal[0].hash)
    assert exc.value.code == NOT_FOUND

    # Release: into the (fake) admission, and peers are told.
    releaser = Releaser()
    sent: list[dict[str, Any]] = []
    s.bind(releaser, sent.append)
    assert s.release(abnormal[1].hash)["status"] == "pending"
    assert releaser.admitted == [abnormal[1].hash]
    assert sent == [{"t": "txs", "txs": [abnormal[1].encode()], "released": True}]
    assert s.tx_info(abnormal[1].hash) is None
    assert metrics.quarantine_txs._value.get() == 1

    # Restart: the held tx and the rejected record come back; history is replayed from blocks.
    store.close()
    s2, store2, _ = make(tmp_path, t)
    assert s2.start(chain, t.addrs) == 1
    assert s2.status()["window_size"] == len(PLAN)
    info = s2.tx_info(abnormal[2].hash)
    assert info is not None
    assert info["status"] == "quarantined"
    info = s2.tx_info(abnormal[0].hash)
    assert info is not None
    assert info["reason"] == "quarantine_rejected"

    # TTL: the held one expires as rejected once the clock passes it.
    t.now_ms += CFG["quarantine_ttl_ms"]
    info = s2.tx_info(abnormal[2].hash)
    assert info is not None
    assert (info["status"], info["reason"]) == ("rejected", "quarantine_expired")
    assert len(s2.quarantine) == 0
    store2.close()


async def test_peer_release_and_commit_elsewhere(tmp_path: Path) -> None:
    t, chain, s, store, _ = await warmed(tmp_path)
    releaser = Releaser()
    s.bind(releaser, None)
    a, b, c = t.huge(2, b"x"), t.huge(6, b"y"), t.huge(10, b"z")
    verdicts = s.screen([a, b])
    assert all(v.quarantined for v in verdicts)
    s.hold(a, verdicts[0])
    s.hold(b, verdicts[1])
    # A peer released a (held here too) and c (never seen here).
    s.on_peer_release([a.encode(), c.encode(), "not bytes"])
    assert releaser.admitted == [a.hash]
    assert a.hash not in s.quarantine
    (vc,) = s.screen([c])
    assert vc.quarantined is False
    assert vc.score is not None
    # b commits anyway (another primary proposed it): it leaves the quarantine.
    block = Block(Header(chain.height + 1, t.now_ms + 100), (b,))
    s.on_block_committed(block, [Receipt()])
    assert len(s.quarantine) == 0
    assert s.tx_info(b.hash) is None
    store.close()


def test_disabled_and_config_split() -> None:
    s = Screening({"enabled": False}, None, None)
    t = Traffic()
    assert s.screen([t.ordinary(0)]) == [Screened(False)]
    cfg, q = split_config({"warmup_txs": 5, "quarantine_txs_max": 3})
    assert cfg.warmup_txs == 5
    assert q == {"txs_max": 3}
    with pytest.raises(ValueError, match=r"detector\.quarantine_ttl_ms"):
        split_config({"quarantine_ttl_ms": 0})
    with pytest.raises(ValueError, match=r"detector\.bogus"):
        split_config({"bogus": 1})


async def test_peers_txs_are_scored_later_in_one_batch(tmp_path: Path) -> None:
    t, _, s, store, metrics = await warmed(tmp_path)
    t.now_ms += 500
    mine, peers = t.huge(2, b"m"), [t.huge(6, b"p"), t.ordinary(FRESH, 500)]
    scored_before = metrics.detector_score._sum.get()
    verdicts = s.screen([peers[0], mine, peers[1]], [False, True, False])
    # Only this node's client's tx is scored (and held) on the admission path.
    assert [v.quarantined for v in verdicts] == [False, True, False]
    assert verdicts[0].score is None
    assert verdicts[2].score is None
    assert s.detector.later_count == 2
    # tx_get of a peer's tx before the batch ran: it is scored on demand, with the rest.
    shown = s.anomaly(peers[0].hash)
    assert shown is not None
    assert shown["score"] > shown["threshold"]  # as abnormal as it is, just not held here
    assert s.detector.later_count == 0
    later = s.anomaly(peers[1].hash)
    assert later is not None
    assert later["score"] <= later["threshold"]
    assert metrics.detector_score._sum.get() > scored_before
    assert s.score_later() == 0
    store.close()


def test_the_training_workers_first_import_loads_no_numpy() -> None:
    """The worker imports its initializer's module before the initializer lowers its priority:
    that module must not pull numpy or the model code in at the validators' priority."""
    import subprocess
    import sys

    heavy = "{'numpy', 'node.detect.model'}"
    code = f"import sys, node.host.fitting; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
