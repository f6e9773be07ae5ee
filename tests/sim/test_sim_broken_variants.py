"""The checker bites: deliberately broken replicas are caught by the simulator within few seeds.

One variant per rule that lives in the core: the three classic PBFT mistakes (within 60 seeds),
and one per rule moved in from the host or added for issues 11 and 12 (within 200 seeds). The
RETRACT variants are caught by the stale NEW-VIEW attack (consensus/sim/attack.py), which plays
in 12% of the seeds.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import pytest

import consensus.viewchange_core
from common import codec
from consensus.api import Commit, ConsensusConfig
from consensus.messages import NewView, Verify
from consensus.replica import Replica
from consensus.sim.cluster import BlockId, ReplicaFactory, Simulation, block_id, run_seed
from consensus.viewchange import Selection, new_view_problem

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


class ReturnsWithoutAcks(Replica):
    """Returns to the view it left as soon as its RETRACT is out, without 2f+1 RETRACT-ACKs.

    First caught by seed 52 (agreement): R's RETRACT never reaches the victim before GST, so
    the victim still counts R's retracted VIEW-CHANGE in the attacker's NEW-VIEW.
    """

    def _retract_quorum(self) -> int:
        return 1


class CountsRetracted(Replica):
    """Counts VIEW-CHANGEs their sender retracted, in NEW-VIEWs and as votes (the hook).

    First caught by seed 0 (agreement): R's RETRACT was acknowledged, yet the victim (and R
    itself) enter view 1 through a NEW-VIEW built on R's retracted VIEW-CHANGE.
    """

    _refuse_retracted = False


def new_view_problem_without_epochs(nv: NewView, *args: Any, **kwargs: Any) -> Selection | str:
    """``new_view_problem`` with the RETRACT check on the NEW-VIEW's VIEW-CHANGEs skipped."""
    kwargs["void"] = lambda vc: False
    return new_view_problem(nv, *args, **kwargs)


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


@pytest.mark.parametrize("factory", [ReturnsWithoutAcks, CountsRetracted])
def test_retract_variant_is_caught(factory: ReplicaFactory) -> None:
    """Issue 12: each RETRACT rule, taken out, loses a committed request within 200 seeds."""
    found = first_violation(factory, MOVED_RULE_SEEDS_MAX)
    assert found is not None, f"{factory.__name__} survived {MOVED_RULE_SEEDS_MAX} seeds"
    assert found[1].startswith("agreement"), found


def test_new_view_epoch_check_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the epoch check on a NEW-VIEW's VIEW-CHANGEs skipped (replicas still drop retracted
    VIEW-CHANGEs sent to them): caught by seed 0 (agreement), as ``CountsRetracted``."""
    monkeypatch.setattr(
        consensus.viewchange_core, "new_view_problem", new_view_problem_without_epochs
    )
    found = first_violation(Replica, MOVED_RULE_SEEDS_MAX)
    assert found is not None, f"survived {MOVED_RULE_SEEDS_MAX} seeds"
    assert found[1].startswith("agreement"), found


def test_correct_core_refuses_the_stale_new_view() -> None:
    """Seed 0 plays the attack and it fires: the victim and R refuse the NEW-VIEW."""
    sim = Simulation(0)
    result = sim.run()
    assert sim.attack is not None
    assert sim.attack.fired
    assert not sim.attack.hold_retract
    assert result.safety_violations == ()
    assert result.liveness_failure is None
    for index in (sim.attack.victim, sim.attack.lone):
        replica = sim.nodes[index].replica
        assert replica is not None
        assert replica.dropped_counts.get("retracted_view_change", 0) >= 1
