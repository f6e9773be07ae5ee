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


def _trained_heights(min_rows: int, blocks: int, slot_ms: int = 0) -> list[int]:
    """Heights that train over ``blocks`` blocks of 6 txs one second apart, retraining every 10
    blocks (no slots of chain time unless ``slot_ms``)."""
    traffic = Traffic(5)
    det = Detector(
        DetectorConfig(
            retrain_every_blocks=10,
            retrain_min_rows=min_rows,
            retrain_slot_ms=slot_ms,
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


def test_a_scheduled_retrain_comes_once_per_slot_of_chain_time() -> None:
    """Under a heavy load every multiple has its rows; slots of chain time space the fits out.
    Blocks 1 s apart from t0 = 1,700,000,000 s, a retrain every 10 blocks: with slots of 25 s
    (block h in slot h // 25) the first multiple of each slot retrains (10, 30, 50, 80, 100)
    besides the first and the warm model (9, 17); with slots of 30 s (t0 is 20 s into one,
    block h in slot (20 + h) // 30) 10, 40, 70 and 100."""
    assert _trained_heights(60, 100) == [9, 10, 17, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert _trained_heights(60, 100, slot_ms=25_000) == [9, 10, 17, 30, 50, 80, 100]
    assert _trained_heights(60, 100, slot_ms=30_000) == [9, 10, 17, 40, 70, 100]


# Every multiple of 10 blocks has its rows (6 txs a block): only the slots space the retrains.
SLOTTED = DetectorConfig(
    retrain_every_blocks=10,
    retrain_min_rows=60,
    retrain_slot_ms=25_000,
    min_train_txs=50,
    warmup_txs=100,
)


def _scheduled(det: Detector, blocks: list[FakeBlock], skip: int = -1) -> list[int]:
    """Heights at which ``det`` is due over ``blocks``; it trains at each, but for ``skip``."""
    due = []
    for block in blocks:
        det.observe_block(block)
        h = block.header.height
        if det.needs_training(h):
            due.append(h)
            if h != skip:
                train_if_due(det, h)
    return due


def test_nodes_that_skipped_a_retrain_or_restarted_are_due_with_the_others() -> None:
    """The schedule is the chain's: a node still fitting when a retrain falls due skips it, and a
    restarted node replays only its window, yet both are due at the same heights as a node that
    trained at every one from the start (the first model of a restarted node aside)."""
    cfg = SLOTTED
    blocks = list(Traffic(5).ordinary_blocks(200))
    steady = _scheduled(Detector(cfg), blocks)
    assert steady[:4] == [9, 10, 17, 30]
    skipped = _scheduled(Detector(cfg), blocks, skip=30)
    assert skipped == steady
    restarted = Detector(cfg)
    for block in blocks[99:130]:  # the replay of its window (height 100 to 130), no training
        restarted.observe_block(block)
    after = _scheduled(restarted, blocks[130:])
    assert after[0] == 131  # its first model, at once
    assert after[1:] == [h for h in steady if h > 131]
    assert len(after) > 3


def test_a_block_dated_far_ahead_does_not_stall_the_schedule() -> None:
    """Block timestamps are the proposer's: a block at a multiple dated an hour ahead takes its
    own slot, and the honest blocks after it are in new slots again, not an hour of none."""
    cfg = SLOTTED
    blocks = list(Traffic(5).ordinary_blocks(150))
    at40 = blocks[39]
    ahead = FakeBlock(FakeHeader(40, at40.header.timestamp_ms + 3_600_000), at40.txs)
    due = _scheduled(Detector(cfg), [*blocks[:39], ahead, *blocks[40:]])
    assert 40 in due
    assert [h for h in due if h > 40] == [50, 80, 100, 130, 150]


def test_the_slot_is_a_schedule_not_part_of_the_model() -> None:
    """Two nodes with different slots that train on the same window name the same model; the
    slot may be 0 (none) but not negative."""
    spec = WindowSpec(1, 1, 50, 300, 7)
    assert model_id_of(spec, DetectorConfig(retrain_slot_ms=0)) == model_id_of(
        spec, DetectorConfig(retrain_slot_ms=60_000)
    )
    assert model_id_of(spec, DetectorConfig()) != model_id_of(spec, DetectorConfig(n_trees=50))
    with pytest.raises(ValueError, match="retrain_slot_ms: expected a non-negative"):
        DetectorConfig(retrain_slot_ms=-1)
    with pytest.raises(ValueError, match="retrain_every_blocks: expected a positive"):
        DetectorConfig(retrain_every_blocks=0)
