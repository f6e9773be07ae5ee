"""The bench driver's helpers (node/tools/bench.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


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


def test_the_drain_waits_for_txs_whose_commit_is_not_yet_seen_at_their_entry_node() -> None:
    import argparse

    from node.tools.bench import Bench
    from node.tools.devnet import Cluster

    cluster = Cluster(root=Path("/nonexistent"), n=2, ports=(), admin_token="")
    b = Bench(cluster, argparse.Namespace())
    b.feed_live = [True, False]
    for h, node, height in (
        ("a", 0, 5),  # in block 5, which node 0 announced: seen
        ("b", 0, 6),  # in block 6, not announced by node 0 yet
        ("c", 0, None),  # no block known yet
        ("d", 1, 6),  # node 1's feed is down: its block being known is enough
        ("e", 1, None),
    ):
        b.sent_at[h] = 0.0
        b.entry[h] = node
        if height is not None:
            b.height_of[h] = height
    b.announced[0][5] = 1.0
    b.announced[1][6] = 1.0  # another node's announcement does not count for "b"
    waiting = b._unseen(b.sent_at)
    assert waiting == ["b", "c", "e"]
    b.announced[0][6] = 2.0
    b.height_of["e"] = 7
    # The next pass looks only at what still waited, and drops what is now seen.
    assert b._unseen(waiting) == ["c"]
    b.height_of["c"] = 6
    assert b._unseen(["c"]) == []


def test_a_wallet_keeps_its_later_txs_back_until_its_earlier_one_is_settled() -> None:
    from node.tools.bench import Wallets

    w = Wallets()
    a0, a1, a2 = ("r", "a0", "a"), ("r", "a1", "a"), ("r", "a2", "a")
    b0, c0 = ("r", "b0", "b"), ("r", "c0", "c")
    assert w.take([a0, b0], 10) == [a0, b0]
    # a0 is unsettled (in flight or pushed back): a1 and a2 wait in the wallet, c0 goes.
    assert w.take([a1, c0, a2], 10) == [c0]
    assert w.kept_back() == 2
    w.settle(b0)
    assert w.take([], 10) == []
    w.settle(a0)  # taken: a1 and a2 go out together, in nonce order, before fresh txs
    assert w.take([b0], 10) == [a1, a2, b0]
    assert w.kept_back() == 0
    # Until both are settled, a later tx of the wallet waits.
    w.settle(a1)
    a3 = ("r", "a3", "a")
    assert w.take([a3], 10) == []
    w.settle(a2)
    assert w.take([], 10) == [a3]


def test_wallets_send_at_most_the_limit_and_keep_the_order() -> None:
    from node.tools.bench import Wallets

    w = Wallets()
    txs = [("r", f"h{i}", f"acct{i}") for i in range(5)]
    assert w.take(txs, 3) == txs[:3]
    # The two over the limit were released to go first next time, ahead of fresh ones.
    fresh = ("r", "h5", "acct5")
    later = ("r", "h6", "acct3")  # acct3's next tx waits behind its first, still unsent
    assert w.take([later, fresh], 10) == [txs[3], txs[4], fresh]
    w.settle(txs[3])
    assert w.take([], 10) == [later]


def test_a_refused_wallet_resends_only_its_first_tx_and_takes_the_rest_back() -> None:
    from node.tools.bench import WALLET_BURST, Wallets

    w = Wallets()
    a = [("r", f"a{i}", "a") for i in range(WALLET_BURST + 3)]
    b0 = ("r", "b0", "b")
    assert w.take([a[0]], 100) == [a[0]]
    assert w.take(a[1:], 100) == []
    w.settle(a[0])
    burst = w.take([b0], 100)
    assert burst == [*a[1 : 1 + WALLET_BURST], b0]  # at most a burst, the rest stays back
    # The node pushed the burst back: a[1] goes again, the wallet keeps the others.
    assert w.take_back(burst[:-1]) == [a[1]]
    assert w.kept_back() == len(a) - 2
    w.settle(a[1])  # taken at last: the next burst starts where the refusal left off
    assert w.take([], 100) == a[2 : 2 + WALLET_BURST]


def test_a_wallet_whose_tx_is_held_sends_nothing_more() -> None:
    from node.tools.bench import Wallets

    w = Wallets()
    a0, a1, a2 = ("r", "a0", "a"), ("r", "a1", "a"), ("r", "a2", "a")
    b0 = ("r", "b0", "b")
    assert w.take([a0], 10) == [a0]
    assert w.take([a1], 10) == []
    w.stop(a0)  # the node answered "quarantined" (or "waiting")
    w.settle(a0)
    assert w.take([a2, b0], 10) == [b0]
    assert w.kept_back() == 2
    assert w.stopped() == 1


def test_a_stopped_wallet_keeps_back_txs_that_arrive_after_the_stop() -> None:
    from node.tools.bench import Wallets

    w = Wallets()
    a0, a1 = ("r", "a0", "a"), ("r", "a1", "a")
    assert w.take([a0], 10) == [a0]
    w.stop(a0)
    w.settle(a0)  # nothing was kept back when it stopped
    assert w.take([a1], 10) == []
    assert w.kept_back() == 1


def test_a_released_burst_is_never_split_over_two_calls() -> None:
    """Split, its later txs could reach another node first and be taken there (parked) while
    the earlier ones were pushed back and never sent again: stranded behind a gap."""
    from node.tools.bench import Wallets

    w = Wallets()
    a = [("r", f"a{i}", "a") for i in range(4)]
    b = [("r", f"b{i}", "b") for i in range(4)]
    assert w.take([a[0], b[0]], 10) == [a[0], b[0]]
    assert w.take(a[1:] + b[1:], 10) == []
    w.settle(a[0])
    w.settle(b[0])
    # Two bursts of 3 with room for 5: the second waits whole for the next call.
    assert w.take([], 5) == a[1:]
    assert w.take([], 5) == b[1:]


def test_bench_core_runs_and_prints_its_figures() -> None:
    """scripts/bench_core as shipped (it had fallen behind build_block's signature unnoticed)."""
    from tests.cluster_util import run_json

    figures = run_json(["scripts/bench_core", "--txs", "20", "--blocks", "1"], timeout_s=300)
    assert figures["txs"] == 20
    assert figures["blocks"] == 1
    for key in ("encode_us", "decode_us", "verify_us", "execute_1000_tx_block_ms"):
        assert figures[key] > 0


def _answered_bench(monkeypatch: pytest.MonkeyPatch, rounds: list[list[object]]) -> Any:
    """A Bench of one node whose JSON-RPC batches get ``rounds``' answers, one list per call."""
    import argparse

    from node.tools import bench
    from node.tools.client import AsyncClient
    from node.tools.devnet import Cluster, Ports

    async def fake_batch(self: object, calls: list[object]) -> list[object]:
        answers = rounds.pop(0)
        assert len(calls) == len(answers)
        return answers

    monkeypatch.setattr(AsyncClient, "batch", fake_batch)
    ports = (Ports(26600, 26700, 26800),)
    cluster = Cluster(root=Path("/nonexistent"), n=1, ports=ports, admin_token="")
    return bench.Bench(cluster, argparse.Namespace())


def test_rejected_txs_are_counted_by_the_error_that_refused_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``rejected_by`` says why: a final error by its name; ``tx_duplicate`` counts as taken and
    a back-pressure refusal is sent again, so neither is a rejection."""
    import asyncio

    from node.errors import MEMPOOL_FULL, TX_DUPLICATE, TX_NONCE
    from node.tools.client import RpcError

    answers: list[object] = [
        RpcError(TX_NONCE, "nonce too low"),
        RpcError(TX_DUPLICATE, "transaction already known"),
        RpcError(MEMPOOL_FULL, "mempool full", {"retry_after_ms": 10}),
        {"hash": "0x03", "status": "pending"},
    ]
    b = _answered_bench(monkeypatch, [answers])
    batch = [(f"raw{i}", f"0x0{i}", "abcd"[i]) for i in range(4)]
    b.wallets.take(batch, 10)
    session: Any = None  # never used: the batch call is the fake
    again, failed, wait_s = asyncio.run(b._send_once(session, 0, batch, 1.0))
    assert again == [batch[2]]
    assert not failed
    assert wait_s == pytest.approx(0.01)
    assert b.rejected == 1
    assert dict(b.rejected_by) == {"tx_nonce": 1}
    assert sorted(b.sent_at) == ["0x01", "0x03"]


def test_txs_left_uncommitted_are_counted_by_status_and_a_rejection_by_its_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One node (``_answered_bench``): each missing tx's ``tx_get`` status; a rejected one counts
    under its reason, so a stranded tx in a run says what dropped it."""
    import asyncio

    answers: list[object] = [
        {"hash": "0x01", "status": "rejected", "reason": "nonce_gap"},
        {"hash": "0x02", "status": "quarantined"},
        {"hash": "0x03", "status": "rejected", "reason": "nonce_gap"},
        {"hash": "0x04", "status": "pending"},
        {"hash": "0x05", "status": "rejected"},
    ]
    b = _answered_bench(monkeypatch, [answers])
    session: Any = None  # never used: the batch call is the fake
    counts = asyncio.run(b._classify(session, ["0x01", "0x02", "0x03", "0x04", "0x05"]))
    assert counts == {"pending": 1, "quarantined": 1, "rejected:?": 1, "rejected:nonce_gap": 2}


def test_a_tx_whose_call_timed_out_is_sent_again_not_rejected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ``timeout`` answer (-32009: the node's per-request deadline) leaves the tx's fate open
    (it may still be admitted), so the wallet sends the same bytes again, as after a failed
    call; the sending again answers tx_duplicate when the node had taken it."""
    import asyncio

    from node.errors import TIMEOUT, TX_DUPLICATE
    from node.tools.client import RpcError

    b = _answered_bench(
        monkeypatch,
        [
            [
                RpcError(TIMEOUT, "request took longer than 10 s"),
                {"hash": "0x01", "status": "pending"},
            ],
            [RpcError(TX_DUPLICATE, "transaction already known")],
        ],
    )
    batch = [("raw0", "0x00", "a"), ("raw1", "0x01", "b")]
    b.wallets.take(batch, 10)
    session: Any = None
    again, failed, _ = asyncio.run(b._send_once(session, 0, batch, 1.0))
    assert again == [batch[0]]
    assert not failed
    assert (b.rejected, b.call_failures) == (0, 1)
    again, failed, _ = asyncio.run(b._send_once(session, 0, again, 1.0))
    assert again == []
    assert b.rejected == 0
    assert sorted(b.sent_at) == ["0x00", "0x01"]  # both taken: their commits are waited for
    assert (len(b.timed_out), b.timeouts_taken) == (1, 1)


def test_the_open_loop_sends_at_most_rate_times_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tx due when the load phase ends is not part of it. A client's next tx used to go out
    whenever the loop woke before the deadline, so a timer that fired a little early sent one
    more (CI: 201 of 50 x 4). Here every sleep returns at once: the loop is always early."""
    import argparse
    import asyncio
    import time

    from node.tools import bench
    from node.tools.devnet import Cluster

    rate, duration_s, clients = 400.0, 0.5, 4
    cluster = Cluster(root=Path("/nonexistent"), n=4, ports=(), admin_token="")
    b = bench.Bench(cluster, argparse.Namespace(clients=clients))
    sent: list[Any] = []

    async def fake_send(s: object, node: int, batch: list[Any]) -> None:
        sent.extend(batch)

    real_sleep = asyncio.sleep

    async def early_sleep(delay: float) -> None:
        await real_sleep(0)

    monkeypatch.setattr(b, "_send", fake_send)
    monkeypatch.setattr(asyncio, "sleep", early_sleep)  # the bench's too: one module
    txs = [(f"raw{i}", f"0x{i:04x}", f"w{i}") for i in range(1_000)]  # one wallet each
    queue = [txs[i : i + 100] for i in range(0, len(txs), 100)]

    async def load() -> None:
        t0 = time.monotonic()
        deadline = t0 + duration_s
        session: Any = None  # never used: sending is the fake
        await asyncio.gather(*(b._client(session, n, queue, rate, t0, deadline) for n in range(4)))

    asyncio.run(load())
    assert len(sent) == rate * duration_s  # every tx due before the deadline, and no other
    assert len({tx[1] for tx in sent}) == len(sent)
