"""The deterministic simulator over many seeds: safety and liveness hold, runs replay exactly."""

from __future__ import annotations

import pytest

from consensus.sim.cluster import run_seed

SEEDS_PER_CHUNK = 250
CHUNKS = 4  # 1,000 seeds in CI; scripts/simulate runs many more


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_seeds_are_safe_and_live(chunk: int) -> None:
    failures = []
    view_changes = blocks = 0
    for seed in range(chunk * SEEDS_PER_CHUNK, (chunk + 1) * SEEDS_PER_CHUNK):
        result = run_seed(seed)
        view_changes += result.view_changes
        blocks += result.blocks_committed
        if result.safety_violations or result.liveness_failure:
            failures.append((seed, result.safety_violations, result.liveness_failure))
    assert failures == []
    assert view_changes > 0  # faults really forced view changes
    assert blocks >= 3 * SEEDS_PER_CHUNK


def test_same_seed_same_trace() -> None:
    first = run_seed(12)
    again = run_seed(12)
    assert first == again
    assert first.trace_hash != run_seed(13).trace_hash
