"""``scripts/netlab``: run fault phases against validators in network namespaces; print JSON.

    scripts/netlab check                       can this machine make namespaces?
    scripts/netlab run [--phases default] [--seed 1] [--rate 150] [--delay-ms 25]
    scripts/netlab clean                       remove labs whose owner process died

``--phases`` is ``default`` (the issue-11 sequence with its durations), ``short`` (the same
faults, shorter, as the tests run them) or a comma list of ``name[:seconds]`` from
node/tools/netlab_phases.py. The JSON has one row per phase (fault, time to view change, to first
commit, to converge) and, at the end, the block-hash comparison and where every accepted tx ended.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from node.tools import netns
from node.tools.netlab import Lab, LabUnsupported
from node.tools.netlab_load import Load
from node.tools.netlab_phases import (
    ISSUE_S,
    PHASES,
    SHORT_S,
    PhaseResult,
    finish,
    run_phase,
)

WARM_HEIGHT = 3
SETTLE_S = 30.0


def parse_phases(spec: str) -> list[tuple[str, float]]:
    if spec in ("default", "short"):
        table = ISSUE_S if spec == "default" else SHORT_S
        return list(table.items())
    out = []
    for item in spec.split(","):
        name, _, secs = item.strip().partition(":")
        if name not in PHASES:
            raise SystemExit(f"netlab: unknown phase {name!r} (known: {', '.join(PHASES)})")
        out.append((name, float(secs) if secs else SHORT_S[name]))
    return out


def run_lab(
    workdir: Path,
    phases: list[tuple[str, float]],
    seed: int,
    rate: float,
    delay_ms: float,
    jitter_ms: float,
    loss_mode: str,
) -> dict[str, Any]:
    """Start a lab, run the phases in order under load, then check chains and txs."""
    started = time.monotonic()
    results: list[PhaseResult] = []
    with Lab(
        workdir, seed=seed, delay_ms=delay_ms, jitter_ms=jitter_ms, loss_mode=loss_mode
    ) as lab:
        with Load(lab, rate=rate) as load:
            lab.wait_for(
                f"height {WARM_HEIGHT}",
                lambda: (h := lab.status(0)) and h["height"] >= WARM_HEIGHT,
                60.0,
            )
            for name, secs in phases:
                results.append(run_phase(lab, load, name, secs, seed))
                print(_row(results[-1]), file=sys.stderr)
            final = finish(lab, load, SETTLE_S)
        return {
            "seed": seed,
            "rate": rate,
            "delay_ms": delay_ms,
            "jitter_ms": jitter_ms,
            "loss_mode": lab.loss_mode,
            "dir": str(workdir),
            "phases": [r.to_json() for r in results],
            "final": final.to_json(),
            "load_errors": dict(load.errors),
            "ok": all(r.converge_s is not None for r in results) and final.ok,
            "seconds": round(time.monotonic() - started, 1),
        }


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _row(r: PhaseResult) -> str:
    return (
        f"{r.name:20} vc {_cell(r.view_change_s):>5} s  first commit {_cell(r.first_commit_s):>5} s"
        f"  converge {_cell(r.converge_s):>5} s (bound {r.converge_bound_s:.0f})  views"
        f" {r.views_after} ready {r.ready_after}  | {r.fault}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="netlab", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="can this machine make network namespaces?")
    sub.add_parser("clean", help="remove labs whose owner process died")
    run = sub.add_parser("run", help="run fault phases; print JSON")
    run.add_argument("--phases", default="default")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--rate", type=float, default=150.0)
    run.add_argument("--delay-ms", type=float, default=25.0)
    run.add_argument("--jitter-ms", type=float, default=0.0)
    run.add_argument("--loss-mode", choices=("auto", "nft", "user"), default="auto")
    run.add_argument("--dir", type=Path, default=None, help="cluster dir (default: a new temp dir)")
    args = ap.parse_args(argv)
    if args.cmd == "check":
        reason = netns.unsupported_reason()
        nft = netns.nft_available() if reason is None else False
        print(json.dumps({"supported": reason is None, "reason": reason, "nftables": nft}))
        return 0 if reason is None else 1
    if args.cmd == "clean":
        print(json.dumps({"cleaned": netns.clean_stale()}))
        return 0
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="vigil-netlab-"))
    try:
        report = run_lab(
            workdir,
            parse_phases(args.phases),
            args.seed,
            args.rate,
            args.delay_ms,
            args.jitter_ms,
            args.loss_mode,
        )
    except LabUnsupported as exc:
        print(f"netlab: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
