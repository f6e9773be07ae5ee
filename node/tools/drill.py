"""``scripts/detector_drill``: replay traffic scenarios through the real screening path.

Each scenario of node/detect/scenarios.py runs, per seed, through ``node.host.screening.Screening``
as the node wires it (detector, hold budget, quarantine; no storage, a simulated clock): ordinary
txs and injected abnormal cases are screened in micro-batches, held txs go to the quarantine,
everything else not waiting behind a held tx is committed in one block per step, and the model
trains at the heights the node would. Prints one JSON object and a table (stderr) of, per
scenario over the seeds:

- ``false_quarantine``: share of ordinary txs held (follow-ups left out);
- ``follow_ups`` / ``follow_ups_held``: ordinary txs of a sender that made an abnormal case less
  than 10 minutes earlier or is waiting behind a held tx, and the share of them held;
- ``waiting``: ordinary txs waiting behind a held tx of their sender;
- ``recall_<kind>``: share of abnormal txs stopped (held, or waiting behind a held tx of the same
  case); bursts and fan-outs from their 4th tx on;
- ``watch``: would-be holds passed over the hold budget.

Exits 1 when a target is missed (false quarantine <= 0.5%, recall >= 0.9 huge/drain, >= 0.8
burst/fan-out), 2 on bad arguments (one line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

from ml.features import FANOUT_WINDOW_MS
from node.chain.tx import Transaction
from node.detect.scenarios import KINDS, SCENARIOS, Scenario, ScenarioError, SimTx
from node.host.screening import Screening

TARGETS = {"false_quarantine": 0.005, "huge": 0.9, "drain": 0.9, "burst": 0.8, "fanout": 0.8}
BATCH = 64  # ordinary txs screened per micro-batch
JUDGED_FROM = {"burst": 3, "fanout": 3}  # the first 3 of a burst look like ordinary payments


@dataclass(frozen=True, slots=True)
class _Header:
    height: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class _Block:
    header: _Header
    txs: tuple[SimTx, ...]


@dataclass(slots=True)
class Tally:
    ordinary: int = 0
    held: int = 0
    follow_ups: int = 0
    follow_ups_held: int = 0
    waiting: int = 0
    watch: int = 0
    holds_per_min_max: int = 0
    cases: dict[str, list[int]] = field(default_factory=lambda: {k: [0, 0] for k in KINDS})


async def replay(scenario: Scenario, table: dict[str, Any] | None = None) -> Tally:
    """Run one scenario through ``Screening``; the tally of what was held and stopped."""
    clock = [scenario.now_ms]
    s = Screening(table or {}, None, None, clock_ms=lambda: clock[0])
    s.detector.note_addresses(scenario.addresses)
    tally = Tally()
    flagged: dict[bytes, int] = {}  # sender -> time of its last abnormal case

    def screen(txs: Sequence[SimTx], now_ms: int) -> list[tuple[SimTx, Any]]:
        clock[0] = now_ms
        verdicts = s.screen(cast(Sequence[Transaction], txs))
        for tx, v in zip(txs, verdicts, strict=True):
            if v.quarantined:
                s.hold(cast(Transaction, tx), v)
        return list(zip(txs, verdicts, strict=True))

    for height, step in enumerate(scenario, start=1):
        commit: list[SimTx] = []
        if not step.scored:
            commit = list(step.ordinary)
        else:
            for i in range(0, len(step.ordinary), BATCH):
                for tx, v in screen(step.ordinary[i : i + BATCH], step.now_ms + 100 + i):
                    since = flagged.get(tx.sender_address)
                    follow = since is not None and step.now_ms - since < FANOUT_WINDOW_MS
                    if v.blocked_by is not None:
                        tally.waiting += 1
                        follow = True
                    if follow:
                        tally.follow_ups += 1
                        tally.follow_ups_held += v.quarantined
                    else:
                        tally.ordinary += 1
                        tally.held += v.quarantined
                    tally.watch += v.watch
                    if not v.quarantined and v.blocked_by is None:
                        commit.append(tx)
            for case in step.cases:
                flagged[case.txs[0].sender_address] = step.now_ms
                n = len(case.txs)
                found: list[tuple[SimTx, Any]] = []
                for j in range(0, n, 4):
                    at = step.now_ms + 600 + (case.spread_ms * j) // max(1, n)
                    found += screen(case.txs[j : j + 4], at)
                judged = found[JUDGED_FROM.get(case.kind, 0) :]
                stopped = sum(v.quarantined or v.blocked_by is not None for _, v in judged)
                tally.cases[case.kind][0] += stopped
                tally.cases[case.kind][1] += len(judged)
                tally.watch += sum(v.watch for _, v in found)
                commit += [tx for tx, v in found if not v.quarantined and v.blocked_by is None]
            tally.holds_per_min_max = max(
                tally.holds_per_min_max, s.budget.holds_last_minute(step.now_ms)
            )
        clock[0] = step.now_ms + 900
        s.on_block_committed(_Block(_Header(height, step.now_ms + 900), tuple(commit)), [])
        await s.wait_trained()
    return tally


def summarize(name: str, tallies: list[Tally]) -> dict[str, Any]:
    ordinary = sum(t.ordinary for t in tallies)
    follow = sum(t.follow_ups for t in tallies)
    out: dict[str, Any] = {
        "scenario": name,
        "seeds": len(tallies),
        "ordinary": ordinary,
        "false_quarantine": round(sum(t.held for t in tallies) / max(1, ordinary), 5),
        "false_quarantine_worst_seed": round(max(t.held / max(1, t.ordinary) for t in tallies), 5),
        "follow_ups": follow,
        "follow_ups_held": round(sum(t.follow_ups_held for t in tallies) / max(1, follow), 4),
        "waiting": sum(t.waiting for t in tallies),
        "watch": sum(t.watch for t in tallies),
        "holds_per_min_max": max(t.holds_per_min_max for t in tallies),
    }
    for kind in KINDS:
        hit = sum(t.cases[kind][0] for t in tallies)
        total = sum(t.cases[kind][1] for t in tallies)
        out[f"recall_{kind}"] = round(hit / total, 4) if total else None
    return out


def misses(row: dict[str, Any]) -> list[str]:
    out = []
    if row["false_quarantine"] > TARGETS["false_quarantine"]:
        out.append(f"{row['scenario']}: false quarantine {row['false_quarantine']:.3%}")
    for kind in KINDS:
        r = row[f"recall_{kind}"]
        if r is not None and r < TARGETS[kind]:
            out.append(f"{row['scenario']}: recall {kind} {r:.2f} < {TARGETS[kind]}")
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| scenario | seeds | ordinary txs | false quarantine (worst seed) | follow-ups (held) "
        "| waiting | watch | huge | drain | burst | fan-out |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:

        def rec(kind: str, r: dict[str, Any] = r) -> str:
            v = r[f"recall_{kind}"]
            return "-" if v is None else f"{v:.2f}"

        lines.append(
            f"| {r['scenario']} | {r['seeds']} | {r['ordinary']} "
            f"| {r['false_quarantine']:.3%} ({r['false_quarantine_worst_seed']:.2%}) "
            f"| {r['follow_ups']} ({r['follow_ups_held']:.1%}) | {r['waiting']} | {r['watch']} "
            f"| {rec('huge')} | {rec('drain')} | {rec('burst')} | {rec('fanout')} |"
        )
    return "\n".join(lines)


def run_one(name: str, seed: int) -> Tally:
    """One scenario and seed, in this process (a worker of ``main``'s pool)."""
    logging.basicConfig(level=logging.ERROR)
    return asyncio.run(replay(Scenario(name, seed)))


def _seeds(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if not 1 <= n <= 1000:
        raise argparse.ArgumentTypeError(f"expected 1..1000, got {n}")
    return n


def _scenarios(text: str) -> list[str]:
    names = [x for x in text.split(",") if x]
    for name in names:
        if name not in SCENARIOS:
            raise argparse.ArgumentTypeError(
                f"unknown scenario {name!r} (one of {', '.join(SCENARIOS)})"
            )
    if not names:
        raise argparse.ArgumentTypeError("no scenario given")
    return names


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2
        print(f"detector_drill: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    p = _Parser(prog="scripts/detector_drill", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=_seeds, default=8, help="seeds per scenario (default 8)")
    p.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    p.add_argument(
        "--scenarios",
        type=_scenarios,
        default=list(SCENARIOS),
        help=f"comma-separated, default all: {','.join(SCENARIOS)}",
    )
    p.add_argument(
        "--jobs",
        type=_seeds,
        default=max(1, os.cpu_count() or 1),
        help="worker processes (default: one per CPU)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the node's warnings are counted in the table
    if args.start < 0:
        p.error("--start must be >= 0")
    seeds = range(args.start, args.start + args.seeds)
    for name in args.scenarios:
        try:
            Scenario(name, args.start)  # bad parameters: one line before any work starts
        except ScenarioError as exc:
            p.error(str(exc))
    started = time.monotonic()
    rows = []
    # Seeds are independent: a process each (the replay is CPU-bound numpy and Python). The
    # heaviest scenarios go first so that the pool does not end on one long straggler.
    order = sorted(args.scenarios, key=lambda n: not n.startswith("bench"))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {n: [pool.submit(run_one, n, seed) for seed in seeds] for n in order}
        for name in args.scenarios:
            rows.append(summarize(name, [f.result() for f in futures[name]]))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    missed = [m for r in rows for m in misses(r)]
    print(
        json.dumps(
            {"scenarios": rows, "missed": missed, "seconds": round(time.monotonic() - started, 1)}
        )
    )
    print(table(rows), file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
