"""A stream of empty blocks (the heartbeat of an idle chain, ``[block] empty_interval_ms``) leaves
the detector as it was: no block-interval gap floor at the heartbeat period, no retraining churn
on a window that did not change."""

from __future__ import annotations

import pytest

from node.detect.detector import Detector, DetectorConfig, WindowSpec, model_id_of
from tests.unit.detect.test_detector import FakeBlock, FakeHeader, Traffic, train_if_due


def _empty(traffic: Traffic, every_ms: int) -> FakeBlock:
    traffic.height += 1
    traffic.now_ms += every_ms
    return FakeBlock(FakeHeader(traffic.height, traffic.now_ms), ())


def test_empty_blocks_do_not_move_the_block_interval_gap_floor() -> None:
    """Tx blocks every second; an idle hour of heartbeats every 2 s in between. The median block
    interval (the features' gap floor, ml/features.py) stays the tx blocks' 1 s, and the first tx
    block after the idle stretch is measured from the last tx block, as without heartbeats."""
    with_hb, without = Traffic(7), Traffic(7)
    det_hb, det = Detector(DetectorConfig()), Detector(DetectorConfig())
    for traffic, d in ((with_hb, det_hb), (without, det)):
        for block in traffic.ordinary_blocks(80):
            d.observe_block(block)
    assert det_hb._history.chain.block_interval_s == 1.0
    for _ in range(1800):
        det_hb.observe_block(_empty(with_hb, 2000))
    without.height = with_hb.height
    without.now_ms = with_hb.now_ms
    assert det_hb._history.chain == det._history.chain
    for traffic, d in ((with_hb, det_hb), (without, det)):
        for block in traffic.ordinary_blocks(5):
            d.observe_block(block)
    assert det_hb._history.chain == det._history.chain
    assert det_hb._history.chain.block_interval_s == 1.0


def test_empty_blocks_do_not_retrain_an_unchanged_window() -> None:
    """Retraining at multiples of ``retrain_every_blocks`` needs a row committed since the last
    multiple: heartbeats alone never refit (a new model_id every period for nothing)."""
    traffic = Traffic(3)
    det = Detector(
        DetectorConfig(
            retrain_every_blocks=10, retrain_min_rows=1, min_train_txs=50, warmup_txs=100
        )
    )
    det.note_addresses([a.addr for a in traffic.accounts])
    for block in traffic.ordinary_blocks(40):
        det.observe_block(block)
        train_if_due(det, block.header.height)
    trained = det.status()["trained_at_height"]
    assert trained == 40
    for _ in range(200):  # twenty multiples of 10 pass, all empty
        block = _empty(traffic, 2000)
        det.observe_block(block)
        assert not det.needs_training(block.header.height)
    for block in traffic.ordinary_blocks(10):  # txs again: the next multiple retrains
        det.observe_block(block)
        train_if_due(det, block.header.height)
    assert det.status()["trained_at_height"] == 250


def test_a_multiple_with_rows_in_the_last_period_still_retrains() -> None:
    """The old schedule is kept where rows come: one tx block in the period is enough."""
    traffic = Traffic(4)
    det = Detector(
        DetectorConfig(
            retrain_every_blocks=10, retrain_min_rows=1, min_train_txs=50, warmup_txs=100
        )
    )
    for block in traffic.ordinary_blocks(40):
        det.observe_block(block)
        train_if_due(det, block.header.height)
    for _ in range(8):
        det.observe_block(_empty(traffic, 2000))
    det.observe_block(next(traffic.ordinary_blocks(1)))  # height 49
    det.observe_block(_empty(traffic, 2000))  # height 50
    assert det.needs_training(50)


def _trained_heights(min_rows: int, blocks: int, min_interval_ms: int = 0) -> list[int]:
    """Heights that train over ``blocks`` blocks of 6 txs one second apart, retraining every 10
    blocks (no chain-time floor unless ``min_interval_ms``)."""
    traffic = Traffic(5)
    det = Detector(
        DetectorConfig(
            retrain_every_blocks=10,
            retrain_min_rows=min_rows,
            retrain_min_interval_ms=min_interval_ms,
            min_train_txs=50,
            warmup_txs=100,
        )
    )
    trained = []
    for block in traffic.ordinary_blocks(blocks):
        det.observe_block(block)
        if det.needs_training(block.header.height):
            trained.append(block.header.height)
            train_if_due(det, block.header.height)
    return trained


def test_a_period_with_few_rows_waits_for_the_slow_multiple() -> None:
    """Blocks of 6 txs, a retrain every 10 blocks asking for 100 new rows: the 60 rows of a
    period are not enough, so the next retrain is at the slow multiple (8 x 10 = 80); a period
    with enough rows retrains at its own multiple, as before."""
    # first model (50 rows), warm model (100 rows), then the slow multiple
    assert _trained_heights(100, 100) == [9, 17, 80]
    assert _trained_heights(60, 40) == [9, 10, 17, 20, 30, 40]


def test_a_scheduled_retrain_waits_for_the_chain_time_floor() -> None:
    """Under a heavy load every multiple has its rows; the floor (block time since the last
    training's block) spaces the fits out. Blocks 1 s apart, a floor of 25 s: after the first and
    the warm model (9, 17), a multiple of 10 retrains only 25 s of block time after the last."""
    assert _trained_heights(60, 100) == [9, 10, 17, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert _trained_heights(60, 100, min_interval_ms=25_000) == [9, 17, 50, 80]
    # The floor is met exactly at 30 s: 17 -> 50 is 33 s, 50 -> 80 is 30 s.
    assert _trained_heights(60, 100, min_interval_ms=30_000) == [9, 17, 50, 80]
    assert _trained_heights(60, 100, min_interval_ms=30_001) == [9, 17, 50, 90]


def test_the_floor_is_a_schedule_not_part_of_the_model() -> None:
    """Two nodes with different floors that train on the same window name the same model; the
    floor may be 0 (none) but not negative."""
    spec = WindowSpec(1, 1, 50, 300, 7)
    assert model_id_of(spec, DetectorConfig(retrain_min_interval_ms=0)) == model_id_of(
        spec, DetectorConfig(retrain_min_interval_ms=60_000)
    )
    assert model_id_of(spec, DetectorConfig()) != model_id_of(spec, DetectorConfig(n_trees=50))
    with pytest.raises(ValueError, match="retrain_min_interval_ms: expected a non-negative"):
        DetectorConfig(retrain_min_interval_ms=-1)
    with pytest.raises(ValueError, match="retrain_every_blocks: expected a positive"):
        DetectorConfig(retrain_every_blocks=0)
