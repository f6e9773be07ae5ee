"""scripts/bench_history: one JSON object with the history's cost per tx, and bad flags refused."""

from __future__ import annotations

import json

import pytest

from node.tools import bench_history


def test_prints_the_cost_per_tx_of_admit_and_commit(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--txs", "300", "--senders", "20", "--block", "50", "--rounds", "2"]
    assert bench_history.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["txs"], out["senders"], out["block"], out["rounds"]) == (300, 20, 50, 2)
    assert out["receivers"] == 2_000
    assert out["admit_us_per_tx"] > 0
    assert out["observe_us_per_tx"] > 0
    # The best round of both together is at least the best of each alone.
    assert out["us_per_tx"] >= max(out["admit_us_per_tx"], out["observe_us_per_tx"]) - 0.01


def test_blocks_hold_every_tx_once_in_nonce_order_per_sender() -> None:
    blocks = bench_history._blocks(330, 7, 30, 50, seed=3)
    assert [len(b.txs) for b in blocks] == [50] * 6 + [30]
    assert [b.header.height for b in blocks] == list(range(1, 8))
    seen: dict[bytes, int] = {}
    for b in blocks:
        for tx in b.txs:
            assert tx.nonce == seen.get(tx.sender, 0)
            seen[tx.sender] = tx.nonce + 1
    assert sum(seen.values()) == 330


@pytest.mark.parametrize("flag", ["--txs", "--senders", "--block", "--rounds"])
def test_a_count_below_one_is_refused(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        bench_history.main([flag, "0"])
    assert exited.value.code == 2
    assert f"{flag} must be at least 1" in capsys.readouterr().err
