"""The heartbeat seeds of the simulator really exercise it: idle stretches end in empty blocks,
committed with certificates (checked by the simulator) like any block; the other seeds run
without it, exactly as before the heartbeat existed."""

from __future__ import annotations

from common import codec
from consensus.sim.cluster import HEARTBEAT_SEEDS, Simulation

SEEDS = range(60)


def _empty_blocks(sim: Simulation) -> int:
    """Committed payloads of no txs (the fake host's empty block) on the honest replicas."""
    count = 0
    for node in sim.nodes:
        if not node.honest:
            continue
        for entry in node.ledger:
            try:
                value = codec.decode(entry.payload)
            except codec.CodecError:
                continue  # a null block, or a byzantine primary's payload of another shape
            if isinstance(value, dict) and value.get("txs") == []:
                count += 1
    return count


def test_heartbeat_seeds_commit_empty_blocks_safely() -> None:
    heartbeat = [s for s in SEEDS if Simulation(s).heartbeat]
    assert 0.5 * HEARTBEAT_SEEDS * len(SEEDS) <= len(heartbeat) <= 2 * HEARTBEAT_SEEDS * len(SEEDS)
    empty = 0
    for seed in heartbeat:
        sim = Simulation(seed)
        assert all(n.config.empty_interval_ms > 0 for n in sim.nodes)
        result = sim.run()
        assert result.safety_violations == ()
        assert result.liveness_failure is None
        empty += _empty_blocks(sim)
    assert empty >= len(heartbeat)  # about one per seed at least: the idle phases made blocks


def test_other_seeds_run_without_the_heartbeat() -> None:
    for seed in SEEDS:
        sim = Simulation(seed)
        if not sim.heartbeat:
            assert all(n.config.empty_interval_ms == 0 for n in sim.nodes)
            assert sim.busy
