"""Transaction features, one by one, and the reasons built from them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml.features import (
    FEATURE_NAMES,
    GAP_CAP_S,
    INDEX,
    N_FEATURES,
    ChainHistory,
    ReceiverHistory,
    SenderHistory,
    TxFacts,
    feature_rows,
    featurize,
    raw_row,
    reasons,
)

NOW = 1_000_000
# A typical sender makes 2 txs a minute right now: its typical gap is 30 s.
CHAIN = ChainHistory(median_amount=100.0, median_fee=10.0, sender_rate=2.0)
KNOWN = ReceiverHistory(seen_on_chain=True, paid_by_sender=True)


def tx(amount: int = 100, fee: int = 10, anchor: bool = False, nonce: int = 5) -> TxFacts:
    return TxFacts(amount=amount, fee=fee, is_anchor=anchor, timestamp_ms=NOW, nonce=nonce)


def regular(
    *,
    median_amount: float | None = 99.0,
    last_timestamp_ms: int | None = NOW - 7_000,
    recent_timestamps_ms: tuple[int, ...] = (NOW - 90_000, NOW - 40_000, NOW - 7_000),
    recent_receivers: int = 2,
    recent_new_payees: int = 0,
) -> SenderHistory:
    return SenderHistory(
        tx_count=5,
        median_amount=median_amount,
        last_timestamp_ms=last_timestamp_ms,
        recent_timestamps_ms=recent_timestamps_ms,
        recent_receivers=recent_receivers,
        next_nonce=5,
        recent_new_payees=recent_new_payees,
    )


def f(
    name: str, facts: TxFacts, sender: SenderHistory, receiver: ReceiverHistory, chain: ChainHistory
) -> float:
    x = featurize(facts, sender, receiver, chain)
    assert x.shape == (N_FEATURES,)
    assert np.isfinite(x).all()
    return float(x[INDEX[name]])


def test_names_are_fixed_and_unique() -> None:
    assert len(set(FEATURE_NAMES)) == N_FEATURES == 10


def test_log_amount() -> None:
    assert f("log_amount", tx(amount=1023), regular(), KNOWN, CHAIN) == 10.0
    assert f("log_amount", tx(amount=0), regular(), KNOWN, CHAIN) == 0.0


def test_amount_vs_sender_median() -> None:
    assert f("amount_vs_sender", tx(amount=99), regular(), KNOWN, CHAIN) == 0.0
    assert f("amount_vs_sender", tx(amount=99_999), regular(), KNOWN, CHAIN) == pytest.approx(
        math.log2(1000)
    )
    assert f("amount_vs_sender", tx(amount=9), regular(), KNOWN, CHAIN) == pytest.approx(-3.321928)


def test_anchor_amount_is_neutral() -> None:
    anchor = tx(amount=0, anchor=True)
    assert f("amount_vs_sender", anchor, regular(), ReceiverHistory(), CHAIN) == 0.0
    assert f("log_amount", anchor, regular(), ReceiverHistory(), CHAIN) == math.log2(100)
    assert f("is_anchor", anchor, regular(), ReceiverHistory(), CHAIN) == 1.0
    assert f("is_anchor", tx(), regular(), KNOWN, CHAIN) == 0.0
    assert f("receiver_novelty", anchor, regular(), ReceiverHistory(False, False), CHAIN) == 0.0


def test_fee_vs_typical() -> None:
    assert f("fee_vs_typical", tx(fee=10), regular(), KNOWN, CHAIN) == 0.0
    assert f("fee_vs_typical", tx(fee=87), regular(), KNOWN, CHAIN) == 3.0
    assert f("fee_vs_typical", tx(fee=87), regular(), KNOWN, ChainHistory()) == 0.0


def test_gap_since_previous_tx_against_the_network_typical_gap() -> None:
    assert f("gap_vs_network", tx(), regular(), KNOWN, CHAIN) == math.log2(8 / 31)  # 7 s vs 30 s
    long_idle = regular(last_timestamp_ms=NOW - 10**10)
    assert f("gap_vs_network", tx(), long_idle, KNOWN, CHAIN) == math.log2((1 + GAP_CAP_S) / 31)
    clock_skew = regular(last_timestamp_ms=NOW + 5_000)
    assert f("gap_vs_network", tx(), clock_skew, KNOWN, CHAIN) == math.log2(1 / 31)
    # Ten times the pace everywhere: a 0.7 s gap is what 7 s was.
    busy = ChainHistory(median_amount=100.0, median_fee=10.0, sender_rate=20.0)
    fast = regular(last_timestamp_ms=NOW - 700)
    assert f("gap_vs_network", tx(), fast, KNOWN, busy) == pytest.approx(math.log2(1.7 / 4))


def test_recent_rate_against_the_network_pace() -> None:
    assert f("rate_vs_network", tx(), regular(), KNOWN, CHAIN) == 0.0  # 2 in 60 s, as typical
    burst = regular(recent_timestamps_ms=tuple(NOW - 200 * i for i in range(15)))
    assert f("rate_vs_network", tx(), burst, KNOWN, CHAIN) == math.log2(16 / 3)
    # The same burst while every sender makes 15 a minute is ordinary.
    payday = ChainHistory(median_amount=100.0, median_fee=10.0, sender_rate=15.0)
    assert f("rate_vs_network", tx(), burst, KNOWN, payday) == 0.0


def test_receiver_novelty() -> None:
    assert f("receiver_novelty", tx(), regular(), KNOWN, CHAIN) == 0.0
    new_to_sender = ReceiverHistory(seen_on_chain=True, paid_by_sender=False)
    assert f("receiver_novelty", tx(), regular(), new_to_sender, CHAIN) == 1.0
    never_seen = ReceiverHistory(seen_on_chain=False, paid_by_sender=False)
    assert f("receiver_novelty", tx(), regular(), never_seen, CHAIN) == 2.0


def test_fanout_counts_this_receiver_when_new() -> None:
    assert f("fanout_recent", tx(), regular(), KNOWN, CHAIN) == math.log2(3)
    new = ReceiverHistory(seen_on_chain=False, paid_by_sender=False)
    assert f("fanout_recent", tx(), regular(recent_receivers=14), new, CHAIN) == 4.0


def test_nonce_gap_is_signed() -> None:
    assert f("nonce_gap", tx(nonce=5), regular(), KNOWN, CHAIN) == 0.0
    assert f("nonce_gap", tx(nonce=8), regular(), KNOWN, CHAIN) == 2.0
    assert f("nonce_gap", tx(nonce=2), regular(), KNOWN, CHAIN) == -2.0


def test_first_tx_of_an_account_looks_typical() -> None:
    first = SenderHistory()
    new = ReceiverHistory(seen_on_chain=True, paid_by_sender=False)
    x = featurize(tx(amount=5000, nonce=0), first, new, CHAIN)
    assert x[INDEX["amount_vs_sender"]] == 0.0  # no median of its own yet
    assert x[INDEX["gap_vs_network"]] == 0.0  # the network's typical gap
    assert x[INDEX["rate_vs_network"]] == math.log2(1 / 3)
    assert x[INDEX["fanout_recent"]] == 1.0
    assert x[INDEX["nonce_gap"]] == 0.0
    # Nothing at all known yet (empty chain): still finite, gap at the cap.
    y = featurize(tx(nonce=0), first, new, ChainHistory())
    assert y[INDEX["gap_vs_network"]] == 0.0


def only(name: str) -> np.ndarray:
    c = np.zeros(N_FEATURES)
    c[INDEX[name]] = 1.0
    return c


def test_reasons_in_plain_words() -> None:
    t = tx(amount=84_999)
    sender = regular()
    x = featurize(t, sender, ReceiverHistory(False, False), CHAIN)
    c = only("amount_vs_sender") * 3 + only("receiver_novelty") * 2 + only("nonce_gap")
    out = reasons(x, c, t, sender)
    assert out == ["amount is 850x the sender's median", "first transfer to a never-seen address"]


def test_reasons_for_a_burst() -> None:
    t = tx()
    sender = regular(recent_timestamps_ms=tuple(NOW - 250 * i for i in range(1, 12)))
    x = featurize(t, sender, ReceiverHistory(True, False), CHAIN)
    out = reasons(x, only("rate_vs_network") + 0.5 * only("receiver_novelty"), t, sender)
    assert out == [
        "12 transactions in 3 s (4.0x the network's pace)",
        "first transfer from this sender to this address",
    ]


def test_reasons_first_tx_and_limits() -> None:
    t = tx(fee=500)
    sender = SenderHistory()
    x = featurize(t, sender, KNOWN, CHAIN)
    c = only("gap_vs_network") * 2 + only("fee_vs_typical")
    assert reasons(x, c, t, sender) == [
        "first transaction from this account",
        "fee is 46x the typical fee",
    ]
    assert reasons(x, c, t, sender, limit=1) == ["first transaction from this account"]
    assert reasons(x, -c, t, sender) == []
    with pytest.raises(ValueError, match="features"):
        reasons(x[:3], c, t, sender)


def test_feature_rows_of_a_batch_equal_featurize_one_by_one() -> None:
    # The detector featurizes a micro-batch column-wise; a row must not depend on its batch.
    cases = [
        (tx(), regular(), KNOWN),
        (tx(amount=10**11, fee=0), regular(median_amount=None), KNOWN),
        (tx(anchor=True), regular(median_amount=None), ReceiverHistory()),
        (tx(anchor=True), regular(), ReceiverHistory()),
        (tx(nonce=2), regular(last_timestamp_ms=None, recent_timestamps_ms=()), KNOWN),
        (tx(nonce=9), regular(last_timestamp_ms=NOW + 5_000), ReceiverHistory(False, False)),
        (tx(amount=-3), regular(recent_receivers=7), ReceiverHistory(True, False)),
    ]
    for chain in (CHAIN, ChainHistory()):
        raw = [raw_row(*case) for case in cases]
        batch = feature_rows(raw, chain)
        assert batch.shape == (len(cases), N_FEATURES)
        for row, case in zip(batch, cases, strict=True):
            assert np.array_equal(row, featurize(*case, chain))
    with pytest.raises(ValueError, match="matrix"):
        feature_rows(np.zeros((2, 3)), CHAIN)


def test_new_payees_against_the_network() -> None:
    new = ReceiverHistory(seen_on_chain=True, paid_by_sender=False)
    quiet = ChainHistory(median_amount=100.0, median_fee=10.0, sender_rate=2.0)
    # One new payee is never a fan-out, even on a chain with no network rate.
    assert f("new_payees_vs_network", tx(), regular(), new, quiet) == 0.0
    assert f("new_payees_vs_network", tx(), regular(), KNOWN, quiet) == 0.0
    # The 4th new payee in the window: log2(4) on a quiet chain, log2(4 / 2) when the network
    # pays one new payee per sender in the same time.
    fanning = regular(recent_new_payees=3)
    assert f("new_payees_vs_network", tx(), fanning, new, quiet) == 2.0
    busy = ChainHistory(median_amount=100.0, median_fee=10.0, sender_rate=2.0, new_payee_rate=1.0)
    assert f("new_payees_vs_network", tx(), fanning, new, busy) == 1.0
    # Never below 0: no more new payees than the network's average is ordinary.
    assert f("new_payees_vs_network", tx(), regular(recent_new_payees=1), new, busy) == 0.0


def test_gaps_below_the_block_interval_look_alike() -> None:
    chain = ChainHistory(
        median_amount=100.0, median_fee=10.0, sender_rate=60.0, block_interval_s=1.0
    )
    a = f("gap_vs_network", tx(), regular(last_timestamp_ms=NOW - 100), KNOWN, chain)
    b = f("gap_vs_network", tx(), regular(last_timestamp_ms=NOW), KNOWN, chain)
    c = f("gap_vs_network", tx(), regular(last_timestamp_ms=NOW - 1_000), KNOWN, chain)
    assert a == b == c == 0.0  # the typical gap (1 s at 60 a minute) is floored alike
    assert f("gap_vs_network", tx(), regular(last_timestamp_ms=NOW - 3_000), KNOWN, chain) == 1.0
