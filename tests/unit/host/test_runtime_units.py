"""Fast unit tests of the runtime's pure parts: config parsing, mempool rules, P2P frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from common.crypto import SigningKey, address_of
from node.chain.ledger import Account
from node.chain.mempool import Mempool
from node.chain.tx import Transaction, make_transfer
from node.errors import MEMPOOL_FULL, TX_BALANCE, TX_DUPLICATE, TX_NONCE, VigilError
from node.host.config import ConfigError, parse_config
from node.net.wire import BadFrame, decode_frame, encode_frame

BASE = {
    "node": {"index": 0, "data_dir": ".", "genesis": "g.json", "key_file": "k.json"},
    "p2p": {"insecure": True},
}


def test_config_defaults_and_relative_paths() -> None:
    cfg = parse_config(BASE, Path("/srv/n0"))
    assert cfg.genesis_file == Path("/srv/n0/g.json")
    assert cfg.block_txs_max == 2000
    assert cfg.block_empty_interval_ms == 0  # no heartbeat unless asked: an idle chain is still


@pytest.mark.parametrize("value", [0, 100, 2000, 3_600_000])
def test_config_block_empty_interval_ms_accepts_off_or_a_period(value: int) -> None:
    cfg = parse_config({**BASE, "block": {"empty_interval_ms": value}}, Path("/"))
    assert cfg.block_empty_interval_ms == value


@pytest.mark.parametrize("value", [-1, 1, 99, 3_600_001, True, False, "2000", 2.5])
def test_config_block_empty_interval_ms_refuses_other_values(value: object) -> None:
    with pytest.raises(ConfigError, match=r"block\.empty_interval_ms: expected 0 \(off\) or"):
        parse_config({**BASE, "block": {"empty_interval_ms": value}}, Path("/"))


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({**BASE, "rpc": {"port": 0}}, "rpc.port"),
        ({**BASE, "rpc": {"prot": 1}}, "rpc.prot"),
        ({**BASE, "bogus": {}}, "bogus"),
        ({"node": {"index": 0, "data_dir": "."}}, "node.genesis"),
        ({**BASE, "consensus": {"log_window": 4}}, "consensus.log_window"),
    ],
)
def test_config_errors_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(data, Path("/"))


KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(3)]


def _pool(txs_max: int = 100) -> Mempool:
    state = {address_of(k.public_key): Account(100, 0) for k in KEYS}
    return Mempool("c", txs_max, 10**6, state.get)


def _tx(k: int, nonce: int, amount: int = 1) -> Transaction:
    return make_transfer(KEYS[k], "c", address_of(KEYS[2].public_key), amount, 1, nonce)


def test_mempool_orders_nonces_and_fifo_across_senders() -> None:
    pool = _pool()
    for tx in (_tx(0, 1), _tx(1, 0), _tx(0, 0), _tx(1, 1)):
        pool.add(tx, tx.hash, 0.0)
    picked = pool.select(10)
    assert [(t.sender, t.nonce) for t in picked] == [
        (KEYS[0].public_key, 0),
        (KEYS[0].public_key, 1),
        (KEYS[1].public_key, 0),
        (KEYS[1].public_key, 1),
    ]
    assert pool.select(10) == []  # all in flight now


def test_mempool_admission_rules() -> None:
    pool = _pool(txs_max=2)
    tx = _tx(0, 0)
    pool.add(tx, tx.hash, 0.0)
    with pytest.raises(VigilError) as e:
        pool.add(tx, tx.hash, 0.0)
    assert e.value.code == TX_DUPLICATE
    with pytest.raises(VigilError) as e:
        pool.add(_tx(0, 0, amount=2), _tx(0, 0, amount=2).hash, 0.0)
    assert e.value.code == TX_NONCE
    big = _tx(1, 0, amount=100)
    with pytest.raises(VigilError) as e:
        pool.add(big, big.hash, 0.0)
    assert e.value.code == TX_BALANCE
    ok = _tx(1, 0)
    pool.add(ok, ok.hash, 0.0)
    extra = _tx(1, 1)
    with pytest.raises(VigilError) as e:
        pool.add(extra, extra.hash, 0.0)
    assert e.value.code == MEMPOOL_FULL


def test_mempool_recheck_after_commit_drops_stale_nonces() -> None:
    state = {address_of(k.public_key): Account(100, 0) for k in KEYS}
    pool = Mempool("c", 100, 10**6, state.get)
    a, b = _tx(0, 0), _tx(0, 1)
    pool.add(a, a.hash, 0.0)
    pool.add(b, b.hash, 0.0)
    state[address_of(KEYS[0].public_key)] = Account(98, 2)  # both nonces used elsewhere
    committed, dropped = pool.on_committed([a.hash], [address_of(KEYS[0].public_key)])
    assert [e.hash for e in committed] == [a.hash]
    assert [(e.hash, r) for e, r in dropped] == [(b.hash, "bad_nonce")]
    assert len(pool) == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        encode_frame(cast(Any, [1, 2])),
        encode_frame({"t": "nope"}),
        encode_frame({"t": "c"}),
    ],
)
def test_bad_frames_raise_badframe(raw: bytes) -> None:
    with pytest.raises(BadFrame):
        decode_frame(raw, 1024)


def test_frame_round_trip_and_size_limit() -> None:
    frame = encode_frame({"t": "c", "d": b"x" * 10})
    assert decode_frame(frame, 1024)["d"] == b"x" * 10
    with pytest.raises(BadFrame):
        decode_frame(frame, 5)


def test_nonce_gap_is_not_runnable_work() -> None:
    pool = _pool()
    gapped = _tx(0, 3)
    pool.add(gapped, gapped.hash, 0.0)
    assert pool.has_ready()
    assert not pool.has_runnable()
    first = _tx(1, 0)
    pool.add(first, first.hash, 0.0)
    assert pool.has_runnable()


# --- liveness and observability fixes ---------------------------------------------------------


def test_peerwatch_fetches_only_when_stuck_behind_f_plus_1_peers() -> None:
    from node.net.peerwatch import PeerWatch, vouched

    assert vouched([5, 9, 7], f=1) == 7
    assert vouched([5], f=1) == 0
    w = PeerWatch(f=1)
    w.on_status(1, 30, 0)
    assert w.check(head=25, view=0).fetch_to == 0  # one peer (maybe lying) is not enough
    w.on_status(2, 26, 0)
    first = w.check(head=25, view=0)
    assert first.fetch_to == 26
    assert first.behind
    w.on_status(1, 40, 0)
    w.on_status(2, 40, 0)
    assert w.check(head=30, view=0).fetch_to == 0  # head moves: consensus carries it
    both = w.check(head=30, view=0)
    assert both.fetch_to == 40
    assert both.fetch_from == (1, 2)
    assert w.check(head=40, view=0).behind is False


def test_peerwatch_view_behind_needs_two_checks_and_f_plus_1_peers() -> None:
    from node.net.peerwatch import PeerWatch

    w = PeerWatch(f=1)
    w.on_status(1, 5, 3)
    assert not w.higher_view(1)
    w.on_status(2, 5, 2)
    assert w.higher_view(1)
    assert w.check(head=5, view=1).view_behind is False
    assert w.check(head=5, view=1).view_behind is True
    assert w.check(head=5, view=2).view_behind is False
    w.forget(1)
    assert not w.higher_view(1)


def test_consensus_frames_are_labelled_by_message_kind() -> None:
    from consensus import messages as m
    from node.net.wire import consensus_kind, frame_label

    vote = m.encode(m.Prepare(1, 2, b"d" * 32, 0, b"s" * 64))
    commit = m.encode(m.CommitVote(1, 2, b"d" * 32, 0, b"s" * 64))
    pp = m.encode(m.PrePrepare(1, 2, b"d" * 32, b"p" * 5000, 0, b"s" * 64))
    assert consensus_kind(vote) == "prepare"
    assert consensus_kind(commit) == "commit"
    assert frame_label({"t": "c", "d": pp}) == "preprepare"
    assert frame_label({"t": "c", "d": b"\xc1junk"}) == "unknown"
    assert frame_label({"t": "status", "height": 1, "view": 0}) == "status"


@pytest.mark.parametrize("token", ["short", "x" * 15])
def test_config_refuses_short_admin_token(token: str) -> None:
    with pytest.raises(ConfigError, match=r"rpc\.admin_token"):
        parse_config({**BASE, "rpc": {"admin_token": token}}, Path("/"))
    assert parse_config({**BASE, "rpc": {"admin_token": "y" * 16}}, Path("/")).admin_token


def test_bench_skips_nodes_marked_down() -> None:
    import argparse

    from node.tools.bench import Bench
    from node.tools.devnet import Cluster

    # Only the node count matters here: no directory, no ports.
    cluster = Cluster(root=Path("/nonexistent"), n=4, ports=(), admin_token="")
    b = Bench(cluster, argparse.Namespace())
    assert b._live(1) == 1
    b._mark_down(1)
    b._mark_down(2)
    assert b._live(1) == 3
    for i in (0, 3):
        b._mark_down(i)
    assert b._live(0) is None


def test_view_change_releases_stale_inflight_records_but_keeps_new_view_ones() -> None:
    """Root cause of a stall: an old view's proposal kept its txs in flight forever."""
    from common.codec import sha256
    from consensus.api import Reproposed
    from node.chain.block import Proposal
    from tests.unit.host.fakes import FakeChain, resolver

    pool = _pool()
    r = resolver(FakeChain(height=1), mempool=pool)
    stale, kept = _tx(1, 0), _tx(2, 0)
    pool.add(stale, stale.hash, 0.0)
    r._record(2, b"a" * 32, (stale,), 0)  # our proposal in view 0 that nobody prepared
    assert pool.select(10) == []  # its txs are in flight in the mempool
    assert r.uncommitted_hashes() == {stale.hash}
    payload = Proposal(3, 1, 0, (kept.hash,)).encode()
    r.on_view_change(1, [Reproposed(1, b"b" * 32, b"x"), Reproposed(3, sha256(payload), payload)])
    assert r.uncommitted_hashes() == {kept.hash}  # seq 1 is committed already: ignored
    assert r.known(stale.hash)  # bodies stay: an old payload may still commit


def test_peerwatch_view_apart_when_2f_peers_share_another_view() -> None:
    """A lone replica in a higher view (issue 11 #2) is apart; so is one left behind."""
    from node.net.peerwatch import PeerWatch

    w = PeerWatch(1)
    for peer in (0, 1, 3):
        w.on_status(peer, 10, 1)
    assert not w.check(10, 2).view_apart  # two checks in a row: view changes race
    lag = w.check(10, 2)
    assert lag.view_apart
    assert not lag.view_behind  # the peers are *below* us: the old rule never saw it
    assert not w.check(10, 1).view_apart
    w.on_status(3, 10, 2)  # split 2/2: 0 and 1 in view 1, 3 with us in view 2
    w.check(10, 2)
    assert w.check(10, 2).view_apart  # 2f peers in view 1 agree on a view without us


def test_readiness_reasons() -> None:
    from node.host.health import Health
    from node.net.peerwatch import Lag

    h = Health(quorum_peers=2, grace_s=1.0)
    ok = Lag(0, (), False)
    assert h.not_ready_reason(3, False, ok, 0.0) is None
    assert h.not_ready_reason(1, False, ok, 0.0) == "peers"
    assert h.not_ready_reason(3, True, ok, 0.0) == "syncing"
    assert h.not_ready_reason(3, False, Lag(0, (), False, True), 0.0) == "lone_view"
    h.on_round(view=2, active=False, now_s=10.0)
    assert h.not_ready_reason(3, False, ok, 10.5) is None  # a view change takes a moment
    assert h.not_ready_reason(3, False, ok, 11.5) == "view_change"
    h.on_round(view=2, active=True, now_s=12.0)
    assert h.not_ready_reason(3, False, ok, 12.0) is None
    assert h.update("peers")
    assert not h.update("peers")
    assert h.update(None)


def test_txs_behind_a_lost_nonce_expire_as_rejected() -> None:
    """Issue 11 #3: a sender's nonce 1 was accepted by a node killed before gossiping it; its
    nonces 2 and 3 waited on every other node forever. They are dropped after the timeout."""
    from node.chain.mempool import NONCE_GAP_TIMEOUT_S

    pool = _pool()
    runnable = _tx(1, 0)
    parked = [_tx(2, 2), _tx(2, 3)]
    pool.add(runnable, runnable.hash, 0.0)
    for tx in parked:
        pool.add(tx, tx.hash, 0.0)
    assert pool.expire_gaps(NONCE_GAP_TIMEOUT_S - 1) == []
    expired = pool.expire_gaps(NONCE_GAP_TIMEOUT_S)
    assert {e.hash for e in expired} == {tx.hash for tx in parked}
    assert runnable.hash in pool  # its own nonce is next: not parked, kept
    assert len(pool) == 1


def test_txs_behind_a_held_tx_wait_for_its_fate_not_the_gap_timeout() -> None:
    """Issue 13: a sender's later txs wait behind its held tx until release, reject or the
    quarantine's TTL; the nonce-gap timeout must not reject them first."""
    from node.chain.mempool import NONCE_GAP_TIMEOUT_S

    pool = _pool()
    waiting = [_tx(0, 1), _tx(0, 2)]  # nonce 0 is held by the detector
    parked = _tx(1, 5)  # a plain gap
    for tx in [*waiting, parked]:
        pool.add(tx, tx.hash, 0.0)
    sender0 = waiting[0].sender_address
    expired = pool.expire_gaps(NONCE_GAP_TIMEOUT_S, keep=lambda s: s == sender0)
    assert [e.hash for e in expired] == [parked.hash]
    assert all(tx.hash in pool for tx in waiting)


def test_backlog_age_counts_runnable_txs_only() -> None:
    """Back-pressure looks at the oldest tx that can commit: old txs parked behind a gap or a
    held tx are not a backlog, and must not push every client back while they wait."""
    pool = _pool()
    old_parked = _tx(0, 3)
    pool.add(old_parked, old_parked.hash, 0.0)
    assert pool.oldest_age_s(10.0) == 10.0
    assert pool.oldest_runnable_age_s(10.0) == 0.0
    runnable = [_tx(1, 0), _tx(1, 1)]
    for n, tx in enumerate(runnable):
        pool.add(tx, tx.hash, 4.0 + n)
    assert pool.oldest_runnable_age_s(10.0) == 6.0
    pool.mark_inflight([runnable[0].hash])  # in a proposal: still waiting to commit
    assert pool.oldest_runnable_age_s(10.0) == 6.0
    filler = [_tx(0, n) for n in range(3)]
    for tx in filler:
        pool.add(tx, tx.hash, 8.0)
    assert pool.oldest_runnable_age_s(10.0) == 10.0  # the gap is filled: it can run now


def test_thousands_of_parked_txs_at_the_front_are_not_runnable_work() -> None:
    """Warm-cluster bench (stop 11): 3,000 txs waiting behind held ones sat at the front of
    the mempool; ``has_runnable`` gave up after 2,000 and assumed work, so every backup's
    request timer fired on an idle chain and the views changed every 2 s for 30 s."""
    keys = [SigningKey(bytes([k + 9]) * 32) for k in range(150)]
    state = {address_of(k.public_key): Account(100, 0) for k in keys}
    pool = Mempool("c", 10_000, 10**8, state.get)
    to = address_of(KEYS[2].public_key)
    for k in keys:  # nonce 0 held elsewhere: nonces 1..20 wait
        for nonce in range(1, 21):
            tx = make_transfer(k, "c", to, 1, 1, nonce)
            pool.add(tx, tx.hash, 0.0)
    assert len(pool) == 3000
    assert not pool.has_runnable()
    runnable = make_transfer(keys[0], "c", to, 1, 1, 0)  # fills its sender's gap
    pool.add(runnable, runnable.hash, 1.0)
    assert pool.has_runnable()
    pool.mark_inflight([runnable.hash])
    assert pool.has_runnable()  # its nonce 1 follows the one in flight
    sender = runnable.sender_address
    pool.mark_inflight(e.hash for e in pool.entries(10_000) if e.sender == sender)
    assert not pool.has_runnable()
