"""TxHistory's ordered fast path (windows found by bisection) against the full event scan."""

from __future__ import annotations

import collections
import copy
import hashlib
import random
import statistics

import pytest

from ml.features import FANOUT_WINDOW_MS, NEW_PAYEE_WINDOW_MS, RATE_WINDOW_MS
from node.detect.history import SENDER_EVENTS_MAX, MedianWindow, TxHistory
from tests.unit.detect.test_detector import FakeBlock, FakeHeader, FakeTx


def _addr(i: int) -> bytes:
    return hashlib.sha256(b"addr%d" % i).digest()[:20]


@pytest.mark.parametrize("seed", range(6))
def test_the_ordered_fast_path_matches_the_full_scan(seed: int) -> None:
    # Block times in non-decreasing order keep every account "ordered" (windows by bisection).
    # The same history with every account marked unordered is scanned event by event, the way
    # the rows were built before the fast path: rows and contexts must be equal, exactly. Times
    # land on and around every window edge of the scoring time, and some after it.
    rng = random.Random(seed)
    senders = [_addr(i) for i in range(6)]
    receivers = [_addr(1000 + i) for i in range(400)]
    nonces = dict.fromkeys(senders, 0)
    now = 1_700_000_000_000
    edges = (FANOUT_WINDOW_MS, RATE_WINDOW_MS, NEW_PAYEE_WINDOW_MS)
    offsets = sorted(
        {rng.randrange(0, 2 * FANOUT_WINDOW_MS) for _ in range(30)}
        | {e + d for e in edges for d in (-1, 0, 1)}
        | {0, 1, 2},
        reverse=True,
    )
    times = [now - off for off in offsets] + [now + 5, now + 5, now + 900]
    history = TxHistory(1000, 1000, 10**9)
    count = 0

    def tx(sender: bytes) -> FakeTx:
        nonlocal count
        count += 1
        nonce = nonces[sender]
        nonces[sender] = nonce + 1 + (rng.random() < 0.1)  # now and then a gap
        if rng.random() < 0.15:
            return FakeTx("anchor", sender, b"", 0, 10, nonce, b"h%d" % count)
        to = rng.choice(receivers)
        return FakeTx("transfer", sender, to, rng.randrange(1, 10**6), 10, nonce, b"h%d" % count)

    for height, t in enumerate(times, start=1):
        block = tuple(
            tx(rng.choice(senders)) for _ in range(rng.randrange(0, 2 * SENDER_EVENTS_MAX))
        )
        history.observe_block(FakeBlock(FakeHeader(height, t), block))
    # Some admitted, not yet committed txs (the pending overlay), at times around the edges too.
    for t in (now - RATE_WINDOW_MS, now - NEW_PAYEE_WINDOW_MS - 1, now - 3, now + 1):
        history.admit([tx(s) for s in senders], t, rows=False)
    scanned = copy.deepcopy(history)
    for acct in scanned._accounts.values():
        assert acct.ordered
        acct.ordered = False
    probe = [tx(s) for s in senders for _ in range(3)]
    fast_rows, fast_contexts = history.admit(probe, now, rows=True)
    scan_rows, scan_contexts = scanned.admit(probe, now, rows=True)
    assert repr(fast_rows) == repr(scan_rows)  # repr: NaN == NaN, and -0.0 != 0.0
    assert fast_contexts == scan_contexts
    assert any(row[4] > 0 for row in fast_rows)  # some recent events
    assert any(row[9] > 1 for row in fast_rows)  # some new payees in the short window
    assert any(len(c[8]) > 0 for c in fast_contexts)  # some rate timestamps


@pytest.mark.parametrize("seed", range(4))
def test_the_median_window_equals_statistics_median_of_the_last_values(seed: int) -> None:
    # The chain's median amount, fee and block interval feed every training and scoring row:
    # the kept-sorted window must give statistics.median's value exactly, as values age out.
    rng = random.Random(seed)
    size = rng.choice((1, 2, 7, 64))
    window = MedianWindow(size)
    assert window.median() is None
    seen: list[int] = []
    for _ in range(500):
        value = rng.choice((rng.randrange(0, 5), rng.randrange(0, 10**18), 2**64 - 1))
        window.append(value)
        seen.append(value)
        last = seen[-size:]
        assert len(window) == len(last)
        assert window.median() == float(statistics.median(last))


@pytest.mark.parametrize("seed", range(4))
def test_receiver_counts_follow_the_events_and_give_the_scanned_fan_out(seed: int) -> None:
    """``recv_counts`` counts ``recvs`` as events arrive and leave (the deque keeps the last
    SENDER_EVENTS_MAX), and a sender whose every event is in the fan-out window (the counts
    stand for the window) gets the rows the full scan gives, pending receivers included, some of
    them already paid and some new."""
    rng = random.Random(seed)
    sender = _addr(0)
    receivers = [_addr(1000 + i) for i in range(rng.choice((3, 40, 200)))]
    history = TxHistory(1000, 1000, 10**9)
    now = 1_700_000_000_000
    nonce = 0
    for height in range(1, 40):
        txs = []
        for k in range(rng.randrange(0, 12)):
            if rng.random() < 0.2:
                txs.append(FakeTx("anchor", sender, b"", 0, 10, nonce, b"c%d-%d" % (height, k)))
            else:
                to = rng.choice(receivers)
                txs.append(FakeTx("transfer", sender, to, 5, 10, nonce, b"c%d-%d" % (height, k)))
            nonce += 1
        history.observe_block(FakeBlock(FakeHeader(height, now + height * 1000), tuple(txs)))
        acct = history._accounts.get(sender)
        if acct is not None:
            assert acct.recv_counts == dict(collections.Counter(acct.recvs))
    pending_to = [*receivers[:2], _addr(9999)]
    history.admit(
        [
            FakeTx("transfer", sender, to, 5, 10, nonce + i, b"p%d" % i)
            for i, to in enumerate(pending_to)
        ],
        now + 50_000,
        rows=False,
    )
    scanned = copy.deepcopy(history)
    scanned._accounts[sender].ordered = False
    paid = next(r for r in reversed(history._accounts[sender].recvs) if r)  # a committed one
    probe = [
        FakeTx("transfer", sender, to, 5, 10, nonce + 3, b"q%d" % i)
        for i, to in enumerate((paid, receivers[0], _addr(9999), _addr(8888)))
    ] + [FakeTx("anchor", sender, b"", 0, 10, nonce + 3, b"qa")]
    now_probe = now + 60_000
    assert history._accounts[sender].times[0] >= now_probe - FANOUT_WINDOW_MS
    fast_rows, fast_contexts = history.admit(probe, now_probe, rows=True)
    scan_rows, scan_contexts = scanned.admit(probe, now_probe, rows=True)
    assert repr(fast_rows) == repr(scan_rows)
    assert fast_contexts == scan_contexts
    # And the count itself: the distinct receivers of the committed events, the pending txs and
    # the probe's earlier txs (admitted before it), less the tx's own receiver.
    seen = {r for r in history._accounts[sender].recvs if r} | set(pending_to)
    for tx, context in zip(probe, fast_contexts, strict=True):
        assert context[9] == len(seen) - (tx.to in seen)
        if tx.to:
            seen.add(tx.to)
