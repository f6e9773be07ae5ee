"""The simulator applies the host's double-sign guard (consensus/guard.py) to every honest
replica, so a core that signs what the guard refuses is caught here, not on a real network."""

from __future__ import annotations

import pytest

from consensus.guard import Signed, SignRule
from consensus.sim import cluster
from consensus.sim.cluster import run_seed

SEEDS_MAX = 200


class GuardBeforeRetract(SignRule):
    """The guard as it was before RETRACT met it: one VIEW-CHANGE per view, and a RETRACT does
    not lower the view floor. A retracted replica was muted (tests/e2e/test_e2e_retract.py)."""

    def check(self, s: Signed) -> str | None:
        known = self.signed.get((s.kind, s.view, s.seq))
        if s.kind == "view_change" and known is not None and known != s.digest:
            return "conflicting_digest"
        return super().check(s)

    def record(self, s: Signed) -> bool:
        if s.kind == "retract":
            self.signed[(s.kind, s.view, s.seq)] = s.digest
            return True
        return super().record(s)


def first_guard_violation(seeds: int) -> tuple[int, str] | None:
    for seed in range(seeds):
        result = run_seed(seed, 4)
        problems = [*result.safety_violations, result.liveness_failure or ""]
        for problem in problems:
            if problem:
                return seed, problem
    return None


def test_the_guard_is_applied_and_the_core_never_trips_it() -> None:
    assert first_guard_violation(60) is None


def test_a_guard_that_mutes_retracted_replicas_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "guard_rule", GuardBeforeRetract)
    found = first_guard_violation(SEEDS_MAX)
    assert found is not None, f"the old guard survived {SEEDS_MAX} seeds"
    assert found[1].startswith("guard:"), found
