"""Issue 11's faults on a real network: validators in namespaces, 25 ms links, load, one fault.

Each test starts 4 ``vigil node`` processes, each in its own network namespace with its own
address (node/tools/netlab.py), 25 ms on every directed link, ~150 transfers/s round-robin to
every node (detector off), applies one fault drawn from a fixed seed, clears it, and asserts:

- recovery: every node in one view and ``/ready`` 200 within 2 x view_change_timeout + slack of
  the fault clearing, and again once the load stops;
- one chain: the same block hash at every height on every node (block_get);
- no tx stranded: every accepted tx committed, or ``rejected`` with a reason, within a bound of
  the load stopping (tx_get at the node that accepted it);
- the fault did what it says (a view change after the primary is cut off, commits going on
  through single-node faults, none beyond the in-flight pipeline while two nodes are cut off).

All failures of a test are reported together, with the phase's recovery timings (printed as
JSON). ``VIGIL_NETLAB_LONG=1`` also runs the issue's whole sequence, with its durations, on one
cluster. Skipped where network namespaces cannot be made (not root, no ``ip``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.tools import netns
from node.tools.netlab import Lab
from node.tools.netlab_load import Load
from node.tools.netlab_phases import (
    ISSUE_S,
    SHORT_S,
    Final,
    PhaseResult,
    finish,
    run_phase,
)

pytestmark = [pytest.mark.e2e, pytest.mark.netlab]

SEED = 11
RATE = 150.0
DELAY_MS = 25.0
SETTLE_S = 15.0
WARM_HEIGHT = 3
PIPELINE_DEPTH = 4  # node/config.py default: blocks that may be in flight when a fault starts


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    reason = netns.unsupported_reason()
    if reason is not None:
        pytest.skip(f"network fault lab unavailable: {reason}")
    with Lab(tmp_path, seed=SEED, delay_ms=DELAY_MS) as lab:
        yield lab


def _warm(lab: Lab) -> None:
    lab.wait_for(
        f"height {WARM_HEIGHT} under load",
        lambda: all((s := lab.status(i)) and s["height"] >= WARM_HEIGHT for i in range(lab.n)),
        60.0,
    )


def _phase_failures(r: PhaseResult) -> list[str]:
    out = []
    if r.converge_s is None:
        out.append(
            f"{r.name}: not back in one view with /ready 200 within {r.converge_bound_s:.0f} s"
            f" of the heal: views {r.views_after}, heights {r.heights_after},"
            f" ready {r.ready_after}"
        )
    if r.name == "primary_partition" and (r.view_change_s is None or r.first_commit_s is None):
        out.append(
            f"{r.name}: lab: no view change and new commit while the primary was cut off"
            f" (view change {r.view_change_s}, first commit {r.first_commit_s})"
        )
    if r.name in ("backup_loss", "one_way_partition", "backup_kill") and r.first_commit_s is None:
        out.append(f"{r.name}: lab: no commit while one backup was faulty")
    if r.name == "two_node_partition" and r.height_at_heal > r.height_at_fault + PIPELINE_DEPTH:
        out.append(
            f"{r.name}: committed {r.height_at_heal - r.height_at_fault} blocks while no side"
            " had a quorum"
        )
    return out


def _final_failures(f: Final) -> list[str]:
    out = []
    if f.converge_s is None:
        out.append(
            f"final: not in one view with /ready 200 within {f.bound_s:.0f} s of the load"
            f" stopping: views {f.views}, heights {f.heights}, ready {f.ready}"
        )
    c = f.chain
    if c.first_divergent is not None:
        out.append(
            f"final: block hashes differ at {c.divergent_heights} of {c.compared_to} heights,"
            f" first at height {c.first_divergent}: {json.dumps(c.at_first)}"
        )
    t = f.txs
    if t.unsettled:
        out.append(
            f"final: {sum(t.unsettled.values())} of {t.accepted} accepted txs neither committed"
            f" nor rejected {t.waited_s:.0f} s after the load stopped: {dict(t.unsettled)};"
            f" RPC failures {t.rpc_errors}; e.g. {json.dumps(t.examples[:3])}"
        )
    if t.rejected_without_reason:
        out.append(f"final: {t.rejected_without_reason} txs rejected without a reason")
    return out


def _report(results: list[PhaseResult], final: Final) -> None:
    print(json.dumps({"phases": [r.to_json() for r in results], "final": final.to_json()}))


@pytest.mark.parametrize("name", list(SHORT_S))
def test_fault_phase(lab: Lab, name: str) -> None:
    with Load(lab, rate=RATE) as load:
        _warm(lab)
        result = run_phase(lab, load, name, SHORT_S[name], SEED)
        final = finish(lab, load, SETTLE_S)
    _report([result], final)
    failures = _phase_failures(result) + _final_failures(final)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("VIGIL_NETLAB_LONG") != "1", reason="set VIGIL_NETLAB_LONG=1 (about 4 minutes)"
)
def test_issue_sequence_on_one_cluster(lab: Lab) -> None:
    """The issue's run: every fault in turn, with its durations, on one cluster."""
    with Load(lab, rate=RATE) as load:
        _warm(lab)
        results = [run_phase(lab, load, name, secs, SEED) for name, secs in ISSUE_S.items()]
        final = finish(lab, load, 30.0)
    _report(results, final)
    failures = [f for r in results for f in _phase_failures(r)] + _final_failures(final)
    assert not failures, "\n".join(failures)
