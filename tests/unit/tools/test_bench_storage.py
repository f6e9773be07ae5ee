"""scripts/bench_storage: one JSON object with the writes' cost per tx, and bad flags refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consensus.log import slot_key
from node.tools import bench_storage
from storage import Store


@pytest.mark.parametrize("flags", [[], ["--no-state-compression"]])
def test_prints_the_cost_per_tx_of_a_replay(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--blocks", "6", "--block", "20", "--senders", "15", "--rounds", "1", *flags]
    assert bench_storage.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["blocks"], out["block"], out["senders"], out["rounds"]) == (6, 20, 15, 1)
    assert out["txs"] == 120
    assert out["state_compression"] is (not flags)
    assert out["cpu_us_per_tx"] > 0
    assert out["wall_us_per_tx"] > 0
    assert out["store_mib"] > 0


def test_the_replay_leaves_what_a_validator_keeps(tmp_path: Path) -> None:
    # Every block, its txs and receipts are in; the bodies and all but the last slots are gone.
    blocks = bench_storage._blocks(7, 10, 5, seed=2)
    with Store(str(tmp_path / "db"), sync=False) as store:
        bench_storage._replay(store, blocks)
        assert store.head() == (7, blocks[-1].block_hash)
        for b in blocks:
            assert store.get_block(b.height) == b.encoded
            for index, (tx_hash, receipt) in enumerate(b.receipts):
                assert store.get_tx_location(tx_hash) == (b.height, index)
                assert store.get_receipt(tx_hash) == receipt
            for key, _ in b.bodies:
                assert store.meta_get(key) is None
        kept = [key for key, _ in store.log_items()]
    assert kept == [slot_key(h) for h in range(7 - bench_storage.KEEP_SLOTS + 1, 8)]


@pytest.mark.parametrize("flag", ["--blocks", "--block", "--senders", "--rounds"])
def test_a_count_below_one_is_refused(flag: str) -> None:
    with pytest.raises(SystemExit) as exited:
        bench_storage.main([flag, "0"])
    assert exited.value.code == 2
