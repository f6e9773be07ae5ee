"""The checker bites: deliberately broken replicas are caught by the simulator within few seeds."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from consensus.api import ConsensusConfig
from consensus.messages import Verify
from consensus.replica import Replica
from consensus.sim.cluster import ReplicaFactory, run_seed

SEEDS_MAX = 60


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


def first_violation(factory: ReplicaFactory) -> tuple[int, str] | None:
    for seed in range(SEEDS_MAX):
        result = run_seed(seed, 4, factory)
        if result.safety_violations:
            return seed, result.safety_violations[0]
    return None


@pytest.mark.parametrize(
    ("factory", "kinds"),
    [
        (QuorumOfTwoF, ("certificate", "agreement", "equivocation")),
        (NewViewIgnoresPrepared, ("agreement", "equivocation")),
        (ForgetsVotesOnRestart, ("equivocation", "agreement")),
    ],
)
def test_broken_variant_is_caught(factory: ReplicaFactory, kinds: tuple[str, ...]) -> None:
    found = first_violation(factory)
    assert found is not None, f"{factory.__name__} survived {SEEDS_MAX} seeds"
    assert found[1].split(":")[0] in kinds
