"""The hold budget: at most so many senders held a minute, the highest scores first, the rest
``watch`` (counted, with a metric and a warning log on the screening side)."""

from __future__ import annotations

import pytest

from node.detect.budget import HARD_CAP_FACTOR, WINDOW_MS, HoldBudget


def sender(i: int) -> bytes:
    return i.to_bytes(20, "big")


def test_within_budget_everything_is_held() -> None:
    b = HoldBudget(3)
    assert [b.decide(sender(i), 0.7, 1_000) for i in range(3)] == [True, True, True]
    assert b.overflows == 0
    assert b.senders_last_minute(1_000) == 3
    assert b.holds_last_minute(1_000) == 3


def test_over_budget_only_scores_above_everything_held_this_minute() -> None:
    b = HoldBudget(2)
    assert b.decide(sender(0), 0.70, 0)
    assert b.decide(sender(1), 0.80, 0)
    # Full: 0.75 is not above the 0.80 held, so it passes as watch; 0.90 is held.
    assert not b.decide(sender(2), 0.75, 10)
    assert b.overflows == 1
    assert b.decide(sender(3), 0.90, 20)
    assert b.overflows == 1


def test_hard_cap_at_twice_the_budget_even_for_the_highest_scores() -> None:
    b = HoldBudget(2)
    held = [b.decide(sender(i), 0.5 + i / 100, 0) for i in range(10)]
    assert sum(held) == HARD_CAP_FACTOR * 2
    assert b.overflows == 10 - HARD_CAP_FACTOR * 2


def test_a_sender_already_held_costs_nothing() -> None:
    b = HoldBudget(1)
    assert b.decide(sender(0), 0.7, 0)
    for t in range(1, 50):
        assert b.decide(sender(0), 0.6, t)  # its later txs wait anyway
    assert b.decide(sender(1), 0.6, 60, blocked=True)  # blocked: held elsewhere already
    assert b.overflows == 0
    assert b.senders_last_minute(60) == 1
    assert b.holds_last_minute(60) == 51


def test_the_budget_rolls_over_after_a_minute() -> None:
    b = HoldBudget(1)
    assert b.decide(sender(0), 0.9, 0)
    assert not b.decide(sender(1), 0.8, WINDOW_MS - 1)
    assert b.decide(sender(2), 0.8, WINDOW_MS)  # the first charge left the window
    assert b.holds_last_minute(2 * WINDOW_MS + 1) == 0


def test_bad_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="per_min"):
        HoldBudget(0)
