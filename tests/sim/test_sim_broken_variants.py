"""The checker bites: deliberately broken replicas are caught by the simulator within few seeds.

One variant per rule that lives in the core: the three classic PBFT mistakes (within 60 seeds),
and one per rule moved in from the host or added for issue 11 (within 200 seeds).
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from common import codec
from consensus.api import Commit, ConsensusConfig
from consensus.messages import Verify
from consensus.replica import Replica
from consensus.sim.cluster import BlockId, ReplicaFactory, block_id, run_seed

SEEDS_MAX = 60
MOVED_RULE_SEEDS_MAX = 200


class QuorumOfTwoF(Replica):
    """Prepares and commits with 2f votes instead of 2f+1."""

    @staticmethod
    def _quorum_size(config: ConsensusConfig) -> int:
        return 2 * config.f


class NewViewIgnoresPrepared(Replica):
    """The new primary fills every seq with null instead of re-proposing prepared payloads."""

    _use_prepared = False


class ForgetsVotesOnRestart(Replica):
    """Starts empty after a crash, as if its Persist records were never written."""

    def __init__(
        self,
        config: ConsensusConfig,
        rng: random.Random,
        records: Iterable[tuple[bytes, bytes]] = (),
        committed_seq: int = 0,
        now_ms: int = 0,
        *,
        verify: Verify,
    ) -> None:
        super().__init__(config, rng, (), committed_seq, now_ms, verify=verify)


class CheckpointBeforeApplied(Replica):
    """Votes CHECKPOINT when it executes a seq, before the host made the block durable."""

    _checkpoint_after_applied = False


class StaysAlone(Replica):
    """Never takes back a VIEW-CHANGE nobody joined: the old rule (issue 11)."""

    _retract_when_alone = False


def block_id_with_view(c: Commit, prev: bytes) -> bytes:
    """The old node/ header: the commit view is hashed into the block (issue 11)."""
    return codec.sha256(block_id(c, prev) + c.view.to_bytes(8, "big"))


def first_violation(
    factory: ReplicaFactory, seeds: int = SEEDS_MAX, ids: BlockId = block_id
) -> tuple[int, str] | None:
    for seed in range(seeds):
        result = run_seed(seed, 4, factory, ids)
        if result.safety_violations:
            return seed, result.safety_violations[0]
        if result.liveness_failure:
            return seed, result.liveness_failure
    return None


@pytest.mark.parametrize(
    ("factory", "kinds"),
    [
        (QuorumOfTwoF, ("certificate", "agreement", "equivocation")),
        (NewViewIgnoresPrepared, ("agreement", "equivocation")),
        # The host's double-sign guard (applied by the simulator) refuses the repeated vote
        # first: "guard: ... conflicting_digest"; without it, an equivocation.
        (ForgetsVotesOnRestart, ("guard", "equivocation", "agreement")),
    ],
)
def test_broken_variant_is_caught(factory: ReplicaFactory, kinds: tuple[str, ...]) -> None:
    found = first_violation(factory)
    assert found is not None, f"{factory.__name__} survived {SEEDS_MAX} seeds"
    assert found[1].split(":")[0] in kinds


@pytest.mark.parametrize(
    ("factory", "ids", "kind"),
    [
        (CheckpointBeforeApplied, block_id, "checkpoint"),
        (StaysAlone, block_id, "alone for"),
        (Replica, block_id_with_view, "block"),
    ],
)
def test_moved_rule_variant_is_caught(factory: ReplicaFactory, ids: BlockId, kind: str) -> None:
    found = first_violation(factory, MOVED_RULE_SEEDS_MAX, ids)
    assert found is not None, f"{factory.__name__}/{ids.__name__} survived 200 seeds"
    assert found[1].startswith(kind), found
