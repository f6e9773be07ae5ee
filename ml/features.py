"""Transaction features for the detector, and plain-word reasons derived from them.

Pure functions of small summaries that node/ keeps from committed blocks (and from recently
admitted transactions); no addresses, keys or clocks in here. Ratios are logs (base 2) so that the
isolation forest's uniform splits see "10x" and "1000x" as equally far apart as "1x" and "10x".

Pace is measured against what the whole network does right now, not in absolute terms: a payday
or a benchmark makes every sender faster at once, and that is not an anomaly; one sender at ten
times the network's current pace is. ``ChainHistory.sender_rate`` carries the network's pace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FEATURE_NAMES: tuple[str, ...] = (
    "log_amount",  # log2(1 + amount)
    "amount_vs_sender",  # log2 of amount over the sender's median transfer (0 if none yet)
    "fee_vs_typical",  # log2 of fee over the recent median fee on chain
    "gap_vs_network",  # log2 of (1 + s since the sender's previous tx) / (1 + the typical gap)
    "rate_vs_network",  # log2 of (1 + sender's txs in RATE_WINDOW_MS) / (1 + a typical sender's)
    "receiver_novelty",  # 0 paid before by this sender, 1 new to the sender, 2 new to the chain
    "fanout_recent",  # log2(1 + distinct receivers of the sender in FANOUT_WINDOW_MS, incl. this)
    "nonce_gap",  # signed log2(1 + |nonce - next expected nonce|)
    "is_anchor",  # 1 for an anchor, 0 for a transfer
    # log2 of (receivers new to the sender in NEW_PAYEE_WINDOW_MS, incl. this tx's; at least 1)
    # over (1 + the network's new receivers per active sender in that window), at least 0
    "new_payees_vs_network",
)
N_FEATURES = len(FEATURE_NAMES)
INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}

GAP_CAP_S = 86_400.0  # a day: longer idle periods all look alike to the model
# Gaps shorter than a block interval cannot be told apart on the committed chain (txs of one block
# share its timestamp), so training rows and scored rows both see at least this one: the recent
# median block interval, capped here so that a quiet chain does not blur every gap.
GAP_FLOOR_MAX_S = 10.0
RATE_WINDOW_MS = 60_000
# A sudden fan-out pays a dozen new addresses within seconds; over a minute, a busy day's
# ordinary senders also pay a few new ones, and would hide it.
NEW_PAYEE_WINDOW_MS = 30_000
FANOUT_WINDOW_MS = 600_000


@dataclass(frozen=True, slots=True)
class TxFacts:
    """The numeric description of one transaction at the time it is judged."""

    amount: int
    fee: int
    is_anchor: bool
    timestamp_ms: int  # admission time when scoring, block time when building training rows
    nonce: int


@dataclass(frozen=True, slots=True)
class SenderHistory:
    """What is known about the sender before this tx. ``recent_*`` are oldest first."""

    tx_count: int = 0  # committed txs
    median_amount: float | None = None  # of its recent transfers; None if it has made none
    last_timestamp_ms: int | None = None
    # Its recent txs (committed and admitted): at least every one in the last RATE_WINDOW_MS.
    recent_timestamps_ms: tuple[int, ...] = ()
    recent_receivers: int = 0  # distinct receivers in FANOUT_WINDOW_MS, not counting this tx's
    next_nonce: int = 0
    # Receivers it paid for the first time in the last NEW_PAYEE_WINDOW_MS, not this tx's.
    recent_new_payees: int = 0


@dataclass(frozen=True, slots=True)
class ReceiverHistory:
    """What is known about the receiver (for an anchor: nothing, and nothing counts as new)."""

    seen_on_chain: bool = True
    paid_by_sender: bool = True


@dataclass(frozen=True, slots=True)
class ChainHistory:
    """Chain-wide typical values over the recent window of committed transfers."""

    median_amount: float | None = None
    median_fee: float | None = None
    # The network's current pace: txs per active sender in the last RATE_WINDOW_MS (None: unknown,
    # taken as 1). A sender's rate and gap are features relative to it.
    sender_rate: float | None = None
    # The network's receivers new to their sender in the last NEW_PAYEE_WINDOW_MS, per sender
    # active in that window:
    # an onboarding wave raises it for everyone, one account fanning out does not.
    new_payee_rate: float | None = None
    # Median interval between recent blocks (s): the resolution of committed gaps.
    block_interval_s: float | None = None


def gap_floor_s(chain: ChainHistory) -> float:
    """The shortest gap the features tell apart: the chain's block interval, capped."""
    return min(max(chain.block_interval_s or 0.0, 0.0), GAP_FLOOR_MAX_S)


def typical_gap_s(chain: ChainHistory) -> float:
    """The gap between a typical sender's txs at the network's current pace, in seconds."""
    return RATE_WINDOW_MS / 1000.0 / max(1.0, chain.sender_rate or 1.0)


# Columns of the raw matrix ``feature_rows`` turns into features, one row per tx. NaN stands for
# "none": a sender without transfers has no median amount, an account's first tx has no gap.
RAW_COLUMNS: tuple[str, ...] = (
    "amount",  # the tx's amount (anchors: ignored, they get the sender's typical amount)
    "sender_median",  # median of the sender's recent transfers, NaN if it has made none
    "fee",
    "gap_s",  # seconds since the sender's previous tx (may be negative: clocks), NaN if none
    "recent",  # the sender's txs in [now - RATE_WINDOW_MS, now]
    "novelty",  # 0 paid before by this sender, 1 new to the sender, 2 new to the chain
    "fanout",  # distinct receivers in FANOUT_WINDOW_MS, including this tx's if new to the sender
    "nonce_gap",  # nonce minus the sender's next expected nonce
    "is_anchor",  # 1.0 or 0.0
    "new_payees",  # receivers new to the sender in NEW_PAYEE_WINDOW_MS, incl. this tx's if new
)
N_RAW = len(RAW_COLUMNS)


def feature_rows(raw: npt.ArrayLike, chain: ChainHistory) -> npt.NDArray[np.float64]:
    """Features (order of FEATURE_NAMES) of many txs at once, from their RAW_COLUMNS matrix.

    Column-wise numpy, so that a micro-batch costs a few array operations instead of a Python
    function call per tx; ``featurize`` is the one-row case of this.
    """
    r = np.asarray(raw, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] != N_RAW:
        raise ValueError(f"raw must be a (txs x {N_RAW}) matrix")
    anchor = r[:, 8] > 0.5
    median = r[:, 1]
    has_median = ~np.isnan(median)
    reference = np.where(has_median, median, 0.0)
    # An anchor moves no value: give it the sender's typical amount so that "amount 0" does
    # not make every anchor look like a tiny, odd transfer; is_anchor tells the two apart.
    chain_typical = chain.median_amount if chain.median_amount is not None else 0.0
    typical = np.where(has_median, reference, chain_typical)
    amount = np.where(anchor, typical, np.maximum(r[:, 0], 0.0))
    out = np.empty((r.shape[0], N_FEATURES))
    out[:, 0] = np.log2(1.0 + amount)
    # A sender without transfers has no typical amount: neutral here (log_amount still sees the
    # size). Comparing with the chain's median instead spreads ordinary rows over +-7 bits and
    # hides a sender's 1000x jump among them.
    out[:, 1] = np.where(has_median, np.log2((1.0 + amount) / (1.0 + reference)), 0.0)
    fee_ref = chain.median_fee
    if fee_ref is None:
        out[:, 2] = 0.0
    else:
        out[:, 2] = np.log2((1.0 + np.maximum(r[:, 2], 0.0)) / (1.0 + fee_ref))
    # Gap and rate relative to the network's current pace (a busy day is not an anomaly). An
    # account's first tx is not anomalous for that reason alone: it gets the typical gap.
    # Both gaps are floored at the block interval: committed gaps are multiples of it, scored
    # ones (admission times) are not, and the forest would isolate the in-between values.
    floor = gap_floor_s(chain)
    typical_gap = max(typical_gap_s(chain), floor)
    rate = max(1.0, chain.sender_rate or 1.0)
    gap = r[:, 3]
    gap_s = np.where(np.isnan(gap), typical_gap, np.maximum(np.nan_to_num(gap), floor))
    out[:, 3] = np.log2((1.0 + np.minimum(gap_s, GAP_CAP_S)) / (1.0 + typical_gap))
    out[:, 4] = np.log2((1.0 + r[:, 4]) / (1.0 + rate))
    out[:, 5] = r[:, 5]
    out[:, 6] = np.log2(1.0 + r[:, 6])
    nonce_gap = r[:, 7]
    out[:, 7] = np.copysign(np.log2(1.0 + np.abs(nonce_gap)), nonce_gap)
    out[:, 8] = anchor
    new_rate = max(0.0, chain.new_payee_rate or 0.0)
    # One new payee is never a fan-out (max(n, 1)): a newcomer's first payment on a quiet chain
    # (no network rate) must not look like one. Floored at 0: a sender paying no more new
    # addresses than the network's average is ordinary whatever that average is (else the mass
    # of rows at "none" would move with it, and a window of one regime would isolate every row
    # of the next).
    n_new = np.maximum(r[:, 9], 1.0)
    out[:, 9] = np.maximum(np.log2(n_new / (1.0 + new_rate)), 0.0)
    return out


def raw_row(
    tx: TxFacts, sender: SenderHistory, receiver: ReceiverHistory
) -> tuple[float, float, float, float, float, float, float, float, float, float]:
    """One tx's RAW_COLUMNS from its summaries."""
    now = tx.timestamp_ms
    nan = math.nan
    last = sender.last_timestamp_ms
    recent = sum(1 for t in sender.recent_timestamps_ms if now - RATE_WINDOW_MS <= t <= now)
    new_to_sender = not tx.is_anchor and not receiver.paid_by_sender
    new_to_chain = not tx.is_anchor and not receiver.seen_on_chain
    return (
        float(tx.amount),
        nan if sender.median_amount is None else sender.median_amount,
        float(tx.fee),
        nan if last is None else (now - last) / 1000.0,
        float(recent),
        2.0 if new_to_chain else 1.0 if new_to_sender else 0.0,
        float(sender.recent_receivers + (1 if new_to_sender else 0)),
        float(tx.nonce - sender.next_nonce),
        1.0 if tx.is_anchor else 0.0,
        float(sender.recent_new_payees + (1 if new_to_sender else 0)),
    )


def featurize(
    tx: TxFacts, sender: SenderHistory, receiver: ReceiverHistory, chain: ChainHistory
) -> npt.NDArray[np.float64]:
    """The fixed feature vector (order of FEATURE_NAMES) of one transaction."""
    row: npt.NDArray[np.float64] = feature_rows([raw_row(tx, sender, receiver)], chain)[0]
    return row


# --- reasons -----------------------------------------------------------------------------------


def _times(log2_ratio: float) -> str:
    ratio = 2.0**log2_ratio
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x"


def _span(ms: int) -> str:
    s = ms / 1000.0
    if s < 10:
        return f"{s:.1f} s" if s < 1 else f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min" if s >= 120 else f"{s:.0f} s"
    return f"{s / 3600:.0f} h"


def _phrase(
    name: str, x: npt.NDArray[np.float64], tx: TxFacts, sender: SenderHistory
) -> str | None:
    """Plain words for one feature's value, or None when its value says nothing notable."""
    v = float(x[INDEX[name]])
    whose = "the sender's median"
    if name == "amount_vs_sender":
        if tx.is_anchor:
            return None
        if v >= 1.0:
            return f"amount is {_times(v)} {whose}"
        if v <= -1.0:
            return f"amount is 1/{_times(-v)[:-1]} of {whose}"
        return None
    if name == "log_amount":
        return None if tx.is_anchor else f"unusual amount ({tx.amount})"
    if name == "fee_vs_typical":
        if abs(v) < 1.0:
            return None
        return f"fee is {_times(v)} the typical fee" if v > 0 else "fee far below the typical fee"
    if name == "gap_vs_network":
        if sender.last_timestamp_ms is None:
            return "first transaction from this account"
        gap_ms = max(0, tx.timestamp_ms - sender.last_timestamp_ms)
        return f"{_span(gap_ms)} since the sender's previous transaction"
    if name == "rate_vs_network":
        window = [t for t in sender.recent_timestamps_ms if tx.timestamp_ms - RATE_WINDOW_MS <= t]
        if not window or v < 1.0:
            return None
        span_ms = max(1, tx.timestamp_ms - min(window))
        return (
            f"{len(window) + 1} transactions in {_span(span_ms)} ({_times(v)} the network's pace)"
        )
    if name == "receiver_novelty":
        if v > 1.5:
            return "first transfer to a never-seen address"
        return "first transfer from this sender to this address" if v > 0.5 else None
    if name == "fanout_recent":
        n = round(2.0**v - 1.0)
        return f"paid {n} distinct addresses in {_span(FANOUT_WINDOW_MS)}" if n >= 3 else None
    if name == "nonce_gap":
        gap = tx.nonce - sender.next_nonce
        return f"nonce is {gap:+d} from the account's next nonce" if gap else None
    if name == "is_anchor":
        return "anchor transaction" if v > 0.5 else None
    if name == "new_payees_vs_network":
        n = sender.recent_new_payees + (1 if float(x[INDEX["receiver_novelty"]]) > 0.5 else 0)
        if n < 3:
            return None
        return f"paid {n} addresses it never paid before in {_span(NEW_PAYEE_WINDOW_MS)}"
    return None


def _beyond_phrase(
    name: str,
    x: npt.NDArray[np.float64],
    high: float,
    rows: int,
    tx: TxFacts,
    sender: SenderHistory,
) -> str | None:
    """Plain words for a value above everything in the training window of ``rows`` txs."""
    v = float(x[INDEX[name]])
    last = f"the last {rows} transactions"
    if name == "log_amount":
        return None if tx.is_anchor else f"amount is {_times(v - high)} above anything in {last}"
    if name == "amount_vs_sender":
        if tx.is_anchor:
            return None
        return f"amount is {_times(v)} the sender's median (at most {_times(high)} in {last})"
    if name == "fee_vs_typical":
        return f"fee is {_times(v)} the typical fee (at most {_times(high)} in {last})"
    if name == "receiver_novelty":
        if v > 1.5:
            return f"first transfer to a never-seen address (none in {last})"
        return f"first transfer from this sender to this address (none in {last})"
    base = _phrase(name, x, tx, sender)
    if base is None:
        return None
    if name == "rate_vs_network":
        return f"{base} (at most {_times(high)} in {last})"
    if name == "fanout_recent":
        return f"{base} (at most {round(2.0**high - 1.0)} in {last})"
    if name == "new_payees_vs_network":
        return f"{base} (at most {_times(high)} the network's rate in {last})"
    return base


def reasons(
    x: npt.NDArray[np.float64],
    contributions: npt.NDArray[np.float64],
    tx: TxFacts,
    sender: SenderHistory,
    limit: int = 3,
    *,
    odds: npt.NDArray[np.float64] | None = None,
    high: npt.NDArray[np.float64] | None = None,
    window_rows: int = 0,
) -> list[str]:
    """Up to ``limit`` plain-word reasons, from the features that isolated this tx most.

    ``contributions`` is per feature (e.g. IsolationForest.explain minus its typical value on
    ordinary traffic); features contributing nothing positive are not reasons. With ``odds``
    (per feature, > 0 where the value is above the training window's ``high``, as from
    ml.calibration.Ranges.isolation_odds) those features come first, most out of range first,
    and their phrase says how far beyond the window of ``window_rows`` txs they are.
    """
    if x.shape != (N_FEATURES,) or contributions.shape != (N_FEATURES,):
        raise ValueError(f"expected {N_FEATURES} features and contributions")
    out: list[str] = []
    covered: set[int] = set()
    if odds is not None and high is not None:
        if odds.shape != (N_FEATURES,) or high.shape != (N_FEATURES,):
            raise ValueError(f"expected {N_FEATURES} odds and highs")
        for i in np.argsort(-odds, kind="stable").tolist():
            if odds[i] <= 0.0 or len(out) >= limit:
                break
            phrase = _beyond_phrase(FEATURE_NAMES[i], x, float(high[i]), window_rows, tx, sender)
            if phrase is not None and phrase not in out:
                out.append(phrase)
                covered.add(i)
    for i in np.argsort(-contributions, kind="stable").tolist():
        if contributions[i] <= 0.0 or len(out) >= limit:
            break
        if i in covered:
            continue
        phrase = _phrase(FEATURE_NAMES[i], x, tx, sender)
        if phrase is not None and phrase not in out:
            out.append(phrase)
    return out
