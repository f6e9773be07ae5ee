"""Fault phases for the lab, their recovery timings, and the chain agreement check.

A phase applies one fault for ``duration_s`` under load, clears it, then watches recovery::

    fault           what was done (targets are drawn from the seed, the primary is looked up)
    view_change_s   fault start -> a node outside the fault reports a higher view
    first_commit_s  fault start -> the first height increase outside the fault after that view
                    change (or after the fault start when no view changed; for a fault that
                    takes the quorum away, that is after the heal)
    heal_commit_s   fault cleared -> the first height increase anywhere
    converge_s      fault cleared -> every node answers, in one view, /ready 200, at or above
                    the highest height seen at the heal, and the chain grew since (the load
                    runs on: a cluster that does not commit has not recovered); None if not
                    within the bound

The bound is ``2 x view_change_timeout + catch-up slack`` (issue 11: a replica left alone in a
higher view must be back within 2 x the view-change timeout of the fault clearing).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from node.tools.netlab import RPC_ERRORS, Lab
from node.tools.netlab_load import Load, Settlement, settle

SAMPLE_S = 0.15
CATCHUP_SLACK_S = 6.0
LOSS = 0.05
STAGGER_S = 0.3
HOLD_S = 3.5  # past the view change (~2 s), short of the websocket heartbeat (5 s)


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    views: tuple[int | None, ...]
    heights: tuple[int | None, ...]
    primaries: tuple[int | None, ...]


def sample(lab: Lab) -> Sample:
    statuses = [lab.status(i) for i in range(lab.n)]
    return Sample(
        time.monotonic(),
        tuple(None if s is None else int(s["view"]) for s in statuses),
        tuple(None if s is None else int(s["height"]) for s in statuses),
        tuple(None if s is None else int(s["primary"]) for s in statuses),
    )


def _max(values: tuple[int | None, ...], nodes: list[int]) -> int:
    return max((v for i, v in enumerate(values) if i in nodes and v is not None), default=-1)


@dataclass
class Fault:
    what: str
    faulty: tuple[int, ...]  # nodes the fault hits; the others should keep committing
    quorum_kept: bool
    clear: Callable[[], None]
    later: list[tuple[float, Callable[[], None]]] = field(default_factory=list)  # (at_s, step)


def current_primary(lab: Lab) -> int:
    """The primary most nodes name (the view's primary as the majority sees it)."""
    s = sample(lab)
    named = [p for p in s.primaries if p is not None]
    return max(set(named), key=named.count) if named else 0


def _backup(lab: Lab, rng: random.Random, primary: int) -> int:
    return rng.choice([i for i in range(lab.n) if i != primary])


def primary_partition(lab: Lab, load: Load, rng: random.Random) -> Fault:
    """Cut the primary off, the way real partitions go: not every link at one instant.

    Its link to one backup B goes down first; STAGGER_S later the primary is cut off from all,
    and B hears nobody for HOLD_S more (its peers' bytes are held, as TCP holds them in
    retransmission, then delivered). The primary's last proposals reach the other two backups,
    which commit them in the old view; B never saw them, and first hears of them in the NEW-VIEW,
    which re-proposes them: B commits them in the new view. Issue 11: the block hashes differ
    when the header carries the view of the commit. B is never the next primary (it could not
    hear the VIEW-CHANGEs).
    """
    s = sample(lab)
    p = current_primary(lab)
    view = max(v for v in s.views if v is not None)
    next_primary = (view + 1) % lab.n
    b = rng.choice([i for i in range(lab.n) if i not in (p, next_primary)])
    others = {i for i in range(lab.n) if i != p}
    rest = sorted(others - {b})
    lab.cut([p], [b])
    time.sleep(STAGGER_S)  # the fault's schedule: the second cut comes this much later
    lab.partition([{p}, others])
    lab.cut(rest, [b])
    what = (
        f"partition primary {p} from {sorted(others)}; its link to {b} {STAGGER_S} s earlier,"
        f" and {b} hears {rest} only {HOLD_S} s later"
    )
    return Fault(what, (p,), True, lab.heal, [(STAGGER_S + HOLD_S, lambda: lab.restore(rest, [b]))])


def backup_loss(lab: Lab, load: Load, rng: random.Random) -> Fault:
    b = _backup(lab, rng, current_primary(lab))
    lab.set_loss(b, LOSS)
    return Fault(
        f"{LOSS:.0%} packet loss on backup {b} ({lab.loss_mode})",
        (b,),
        True,
        lambda: lab.set_loss(b, 0.0),
    )


def one_way_partition(lab: Lab, load: Load, rng: random.Random) -> Fault:
    b = _backup(lab, rng, current_primary(lab))
    lab.cut_inbound(b)
    return Fault(f"one-way: backup {b} hears nobody, all hear it", (b,), True, lab.heal)


def two_node_partition(lab: Lab, load: Load, rng: random.Random) -> Fault:
    p = current_primary(lab)
    pair = {p, _backup(lab, rng, p)}
    rest = {i for i in range(lab.n) if i not in pair}
    lab.partition([pair, rest])
    return Fault(
        f"partition {sorted(pair)} from {sorted(rest)}", tuple(sorted(pair)), False, lab.heal
    )


def backup_kill(lab: Lab, load: Load, rng: random.Random) -> Fault:
    b = _backup(lab, rng, current_primary(lab))
    load.avoid(b)
    # Txs it accepted should have reached a peer before it dies (a mempool is not durable).
    last = load.last_accepted_by(b)
    if last is not None:
        peer = (b + 1) % lab.n
        lab.wait_for(
            f"node {peer} to know node {b}'s last accepted tx",
            lambda: lab.rpc(peer, "tx_get", [last.hash]),
            deadline_s=10.0,
        )
    lab.kill(b)

    def restart() -> None:
        lab.start(b, wait=False)
        load.allow(b)

    return Fault(f"SIGKILL backup {b}, restart at the heal", (b,), True, restart)


PHASES: dict[str, Callable[[Lab, Load, random.Random], Fault]] = {
    "primary_partition": primary_partition,
    "backup_loss": backup_loss,
    "one_way_partition": one_way_partition,
    "two_node_partition": two_node_partition,
    "backup_kill": backup_kill,
}
# Fault durations: the short ones keep the test suite in its CI budget; the issue's are longer.
SHORT_S = {
    "primary_partition": 15.0,
    "backup_loss": 15.0,
    "one_way_partition": 10.0,
    "two_node_partition": 12.0,
    "backup_kill": 10.0,
}
ISSUE_S = {
    "primary_partition": 20.0,
    "backup_loss": 30.0,
    "one_way_partition": 20.0,
    "two_node_partition": 15.0,
    "backup_kill": 15.0,
}


@dataclass
class PhaseResult:
    name: str
    fault: str = ""
    fault_s: float = 0.0
    view_change_s: float | None = None
    first_commit_s: float | None = None
    heal_commit_s: float | None = None
    converge_s: float | None = None
    converge_bound_s: float = 0.0
    height_at_fault: int = 0  # highest height when the fault started / cleared
    height_at_heal: int = 0
    views_before: list[int | None] = field(default_factory=list)
    views_after: list[int | None] = field(default_factory=list)
    heights_after: list[int | None] = field(default_factory=list)
    ready_after: list[bool] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            out[k] = round(v, 2) if isinstance(v, float) else v
        return out


def converged(lab: Lab, s: Sample, floor: int, grown: bool = False) -> tuple[bool, list[bool]]:
    """Every node answers, one view, every height >= floor (and one > floor if ``grown``),
    every /ready 200."""
    if None in s.views or len(set(s.views)) != 1:
        return False, []
    heights = [h for h in s.heights if h is not None]
    if min(heights) < floor or (grown and max(heights) <= floor):
        return False, []
    ready = [lab.ready(i) for i in range(lab.n)]
    return all(ready), ready


def view_change_timeout_s(lab: Lab) -> float:
    return float(lab.overrides.get("consensus", {}).get("view_change_timeout_ms", 4000)) / 1000


def run_phase(lab: Lab, load: Load, name: str, duration_s: float, seed: int) -> PhaseResult:
    """Apply fault ``name`` for ``duration_s`` under load, clear it, measure the recovery."""
    rng = random.Random(f"{seed}:{name}")
    result = PhaseResult(name, converge_bound_s=2 * view_change_timeout_s(lab) + CATCHUP_SLACK_S)
    before = sample(lab)
    result.views_before = list(before.views)
    t0 = time.monotonic()
    fault = PHASES[name](lab, load, rng)
    result.fault = fault.what
    outside = [i for i in range(lab.n) if i not in fault.faulty] if fault.quorum_kept else []
    outside = outside or list(range(lab.n))
    v0 = _max(before.views, list(range(lab.n)))
    h_ref = _max(before.heights, outside)
    vc_at: float | None = None
    steps = sorted(fault.later, key=lambda step: step[0])
    while time.monotonic() - t0 < duration_s:
        while steps and time.monotonic() - t0 >= steps[0][0]:
            steps.pop(0)[1]()
        s = sample(lab)
        if vc_at is None and _max(s.views, outside) > v0:
            vc_at = s.t
            result.view_change_s = s.t - t0
            h_ref = _max(s.heights, outside)
            result.first_commit_s = None  # blocks of the old view in flight do not count
        if result.first_commit_s is None and _max(s.heights, outside) > h_ref:
            result.first_commit_s = s.t - t0
        time.sleep(SAMPLE_S)  # sampling period of a bounded loop
    fault.clear()
    t1 = time.monotonic()
    result.fault_s = t1 - t0
    heal = sample(lab)
    h_heal = _max(heal.heights, list(range(lab.n)))
    result.height_at_fault = _max(before.heights, list(range(lab.n)))
    result.height_at_heal = h_heal
    last = heal
    ready: list[bool] = []
    while time.monotonic() - t1 < result.converge_bound_s:
        last = sample(lab)
        if vc_at is None and _max(last.views, outside) > v0:
            vc_at = last.t
            result.view_change_s = last.t - t0
            if result.first_commit_s is None:
                h_ref = _max(last.heights, outside)
        if _max(last.heights, outside) > h_ref and result.first_commit_s is None:
            result.first_commit_s = last.t - t0
        if result.heal_commit_s is None and _max(last.heights, list(range(lab.n))) > h_heal:
            result.heal_commit_s = last.t - t1
        ok, ready = converged(lab, last, h_heal, grown=True)  # the load is on: it must commit
        if ok:
            result.converge_s = last.t - t1
            break
        time.sleep(SAMPLE_S)
    result.views_after = list(last.views)
    result.heights_after = list(last.heights)
    result.ready_after = ready or [lab.ready(i) for i in range(lab.n)]
    return result


@dataclass
class ChainCheck:
    """Block hashes at every height on every node."""

    heights: list[int | None] = field(default_factory=list)
    compared_to: int = 0
    divergent_heights: int = 0
    first_divergent: int | None = None
    at_first: dict[str, Any] = field(default_factory=dict)  # node -> header at that height

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def wait_level(lab: Lab, deadline_s: float) -> list[int | None]:
    """Wait (bounded) until every node answers at one height; the heights at the end."""
    end = time.monotonic() + deadline_s
    s = sample(lab)
    while time.monotonic() < end:
        s = sample(lab)
        if None not in s.heights and len(set(s.heights)) == 1:
            break
        time.sleep(SAMPLE_S)
    return list(s.heights)


def compare_chains(lab: Lab) -> ChainCheck:
    """Fetch every block up to the lowest node's height from every node and compare hashes."""
    check = ChainCheck(heights=list(sample(lab).heights))
    known = [h for h in check.heights if h is not None]
    top = min(known) if known else 0
    check.compared_to = top
    for start in range(1, top + 1, 200):
        heights = list(range(start, min(top, start + 199) + 1))
        per_node: dict[int, list[dict[str, Any]]] = {}
        for i in range(lab.n):
            try:
                answers = lab.rpc_batch(i, [("block_get", [h]) for h in heights])
            except RPC_ERRORS:
                continue
            per_node[i] = [a.get("result") or {} for a in answers]
        for k, h in enumerate(heights):
            hashes = {i: blocks[k].get("hash") for i, blocks in per_node.items()}
            if len(set(hashes.values())) > 1:
                check.divergent_heights += 1
                if check.first_divergent is None:
                    check.first_divergent = h
                    check.at_first = {str(i): _brief(b[k]) for i, b in per_node.items()}
    return check


def _brief(block: dict[str, Any]) -> dict[str, Any]:
    """The header fields that tell two versions of one height apart, and who certified it."""
    out = {
        key: block.get(key)
        for key in ("hash", "prev_hash", "payload_digest", "view", "proposer", "timestamp")
    }
    cert = block.get("certificate") or {}
    out["cert_view"] = cert.get("view")
    out["cert_signers"] = [c["index"] for c in cert.get("commits", [])]
    out["txs"] = len(block.get("tx_hashes", []))
    return out


@dataclass
class Final:
    """The end of a run, once the load stopped: one chain, settled txs, one view, all ready."""

    heights: list[int | None]
    txs: Settlement
    chain: ChainCheck
    views: list[int | None]
    ready: list[bool]
    converge_s: float | None  # load stopped -> one view and all ready; None past the bound
    bound_s: float

    @property
    def ok(self) -> bool:
        return (
            self.converge_s is not None
            and self.chain.first_divergent is None
            and not self.txs.unsettled
            and not self.txs.rejected_without_reason
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "heights": self.heights,
            "chain": self.chain.to_json(),
            "txs": self.txs.to_json(),
            "views": self.views,
            "ready": self.ready,
            "converge_s": None if self.converge_s is None else round(self.converge_s, 2),
            "bound_s": self.bound_s,
        }


def finish(lab: Lab, load: Load, settle_s: float) -> Final:
    """Stop the load; wait for every accepted tx to settle, then check views, ready and chains.

    One view and /ready 200 everywhere are due within 2 x view_change_timeout + slack of the
    load stopping (the settle time counts towards it).
    """
    load.stop()
    stopped = time.monotonic()
    bound = 2 * view_change_timeout_s(lab) + CATCHUP_SLACK_S
    txs = settle(lab, load.accepted, settle_s)
    heights = wait_level(lab, max(1.0, stopped + bound - time.monotonic()))
    s = sample(lab)
    ok, ready = converged(lab, s, 0)
    while not ok and time.monotonic() - stopped < bound:
        time.sleep(SAMPLE_S)  # sampling period of a bounded loop
        s = sample(lab)
        ok, ready = converged(lab, s, 0)
    converge_s = s.t - stopped if ok else None
    chain = compare_chains(lab)
    ready = ready or [lab.ready(i) for i in range(lab.n)]
    return Final(heights, txs, chain, list(s.views), ready, converge_s, bound)
