"""What ``scripts/bench`` measures besides latency: node CPU, memory, view changes, loop lag.

Read from outside the nodes, so the bench measures the product as it ships: CPU time and
resident size from ``/proc/PID`` (Linux; None elsewhere), view changes and event-loop lag from
each node's Prometheus metrics before and after the run. ``--profile`` adds py-spy sampling of
every node (node/tools/bench_stages.py turns the samples into microseconds per stage).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from common.crypto import SigningKey, verify
from node.tools import devnet
from node.tools.bench_stages import thread_stage_samples
from node.tools.devnet import Cluster

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
PROFILE_RATE_HZ = 97  # py-spy samples per second (prime: no lock-step with 50 ms ticks)
SPEED_CHECKS = 1_000  # Ed25519 checks timed before and after the load (60-190 ms of CPU each)
SPEED_WARM_UP = 20  # checks run first, untimed
SPEED_DOMAIN = b"vigil/bench/speed"
SPEED_MESSAGE_BYTES = 192  # a transfer's encoded size (scripts/bench_core ``tx_bytes``)


def _stat(path: Path) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) from a /proc stat file; None if it is gone or
    unreadable (a process or thread that ended meanwhile)."""
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()  # after the command name
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 4, 14, 15
    except (OSError, IndexError, ValueError):
        return None


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (all threads), from /proc/PID/stat."""
    stat = _stat(Path(f"/proc/{pid}/stat"))
    return None if stat is None else stat[1]


def children_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds of each live child process of ``pid`` (a node's model-fitting process and
    multiprocessing's resource tracker), by child pid."""
    out: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(entry / "stat")
            if stat is not None and stat[0] == pid:
                out[int(entry.name)] = stat[1]
    return out


def thread_cpu_s(pid: int) -> dict[int, float] | None:
    """User + system CPU seconds of each thread of a process (OS thread id -> seconds)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    out: dict[int, float] = {}
    for task in tasks:
        stat = _stat(task / "stat")
        if stat is not None:  # else the thread ended meanwhile
            out[int(task.name)] = stat[1]
    return out


def rss_mib(pid: int) -> float | None:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * PAGE_BYTES / 2**20, 1)


def node_pids(cluster: Cluster) -> list[int | None]:
    return [devnet.read_pid(cluster, i) for i in range(cluster.n)]


@dataclass
class Scrape:
    """The few metric values the bench compares before and after its run."""

    view_changes: float
    lag_buckets: list[tuple[float, float]]  # (upper bound s, cumulative count)


async def scrape(s: aiohttp.ClientSession, url: str) -> Scrape | None:
    try:
        async with asyncio.timeout(5), s.get(url) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
    view_changes = 0.0
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        if family.name == "vigil_consensus_view_changes":
            view_changes = sum(x.value for x in family.samples if x.name.endswith("_total"))
        elif family.name == "vigil_event_loop_lag_seconds":
            buckets = [
                (float(x.labels["le"]), x.value)
                for x in family.samples
                if x.name.endswith("_bucket")
            ]
    return Scrape(view_changes, sorted(buckets))


def lag_p99_ms(before: Scrape | None, after: Scrape | None) -> float | None:
    """Upper bound of the bucket holding the 99th percentile of the run's loop-lag samples."""
    if after is None or not after.lag_buckets:
        return None
    base = dict(before.lag_buckets) if before is not None else {}
    delta = [(le, n - base.get(le, 0.0)) for le, n in after.lag_buckets]
    total = delta[-1][1]
    if total <= 0:
        return None
    for le, n in delta:
        if n >= 0.99 * total:
            return None if le == float("inf") else round(le * 1000, 1)
    return None


def verify_cpu_us(checks: int = SPEED_CHECKS) -> float:
    """This thread's CPU microseconds per Ed25519 check (the validators' rule, common/crypto.py,
    on messages of a transfer's size): how fast the machine's cores run right now.

    The host under this bench is shared: in one hour the same check took 58 to 185 us of CPU
    (docs/performance.md, stop 26), and every figure of a run moves with it. A run reports this
    before and after its load, so two runs can be compared by the machine they had. Raises if a
    valid signature fails to check: a broken rule must not pass for a fast machine.
    """
    key = SigningKey(b"\x5a" * 32)
    messages = [i.to_bytes(4, "big") * (SPEED_MESSAGE_BYTES // 4) for i in range(checks)]
    signed = [(m, key.sign(SPEED_DOMAIN, m)) for m in messages]
    public_key = key.public_key
    warm = signed[:SPEED_WARM_UP]  # caches and branch predictors warm, not timed
    ok = sum(verify(public_key, SPEED_DOMAIN, m, sig) for m, sig in warm)
    start = time.thread_time()
    ok += sum(verify(public_key, SPEED_DOMAIN, m, sig) for m, sig in signed)
    used_s = time.thread_time() - start
    if ok != len(warm) + checks:
        bad = len(warm) + checks - ok
        raise RuntimeError(f"valid signatures failed to check: {bad} of {len(warm) + checks}")
    return round(used_s * 1e6 / checks, 1)


class Probe:
    """Per-node readings taken at the start and the end of the load phase."""

    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        self.pids = node_pids(cluster)
        self.cpu0: list[float | None] = []
        self.cpu1: list[float | None] = []
        self.scr0: list[Scrape | None] = []
        self.scr1: list[Scrape | None] = []
        self.self_cpu0 = 0.0
        self.self_cpu1 = 0.0
        self.threads0: list[dict[int, float] | None] = []
        self.threads1: list[dict[int, float] | None] = []
        self.children0: list[dict[int, float]] = []
        self.children1: list[dict[int, float]] = []
        self.verify_us: list[float] = []  # ``verify_cpu_us`` before and after the load

    async def _scrape_all(self, s: aiohttp.ClientSession) -> list[Scrape | None]:
        return list(
            await asyncio.gather(*(scrape(s, self.c.metrics_url(i)) for i in range(self.c.n)))
        )

    async def start(self, s: aiohttp.ClientSession) -> None:
        self.verify_us = [verify_cpu_us()]  # before the bench's own CPU is read: not counted
        self.scr0 = await self._scrape_all(s)
        self.cpu0 = [cpu_s(p) if p else None for p in self.pids]
        self.threads0 = [thread_cpu_s(p) if p else None for p in self.pids]
        self.children0 = [children_cpu_s(p) if p else {} for p in self.pids]
        self.self_cpu0 = _self_cpu_s()

    async def stop(self, s: aiohttp.ClientSession) -> None:
        self.cpu1 = [cpu_s(p) if p else None for p in self.pids]
        self.threads1 = [thread_cpu_s(p) if p else None for p in self.pids]
        self.children1 = [children_cpu_s(p) if p else {} for p in self.pids]
        self.self_cpu1 = _self_cpu_s()
        self.scr1 = await self._scrape_all(s)
        self.verify_us.append(verify_cpu_us())

    def process_cpu_s(self) -> list[float | None]:
        """Each node process's own CPU seconds over the run (all its threads)."""
        return [
            round(b - a, 2) if a is not None and b is not None else None
            for a, b in zip(self.cpu0, self.cpu1, strict=True)
        ]

    def node_cpu_s(self) -> list[float | None]:
        """Each node's CPU seconds over the run, its child processes' included."""
        return [
            round(own + kids, 2) if own is not None else None
            for own, kids in zip(self.process_cpu_s(), self.children_cpu_s(), strict=True)
        ]

    def children_cpu_s(self) -> list[float]:
        """Each node's child processes' CPU seconds over the run (one started meanwhile counts
        from 0; one that ended meanwhile is missing)."""
        if not self.children1:
            return [0.0] * len(self.cpu0)
        return [
            sum(max(0.0, t - a.get(pid, 0.0)) for pid, t in b.items())
            for a, b in zip(self.children0, self.children1, strict=True)
        ]

    def thread_cpu_s(self) -> list[dict[int, float] | None]:
        """Each node's CPU seconds per thread over the run (a thread started meanwhile counts
        from 0; one that ended is missing, its CPU only in ``node_cpu_s``)."""
        out: list[dict[int, float] | None] = []
        for a, b in zip(self.threads0, self.threads1, strict=True):
            if a is None or b is None:
                out.append(None)
                continue
            out.append({tid: max(0.0, t - a.get(tid, 0.0)) for tid, t in b.items()})
        return out

    def report(self, committed: int) -> dict[str, Any]:
        """The extra JSON keys (the contract's keys are the bench's own)."""
        per_tx = [
            round(c * 1e6 / committed, 1) if c is not None and committed else None
            for c in self.node_cpu_s()
        ]
        changes = [
            round(b.view_changes - a.view_changes)
            for a, b in zip(self.scr0, self.scr1, strict=True)
            if a is not None and b is not None
        ]
        bench_cpu = self.self_cpu1 - self.self_cpu0
        return {
            "view_changes": sum(changes),
            "view_changes_by_node": changes,
            "node_cpu_us_per_tx": per_tx,
            "node_children_cpu_us_per_tx": [
                round(c * 1e6 / committed, 1) if committed else None for c in self.children_cpu_s()
            ],
            "bench_cpu_us_per_tx": round(bench_cpu * 1e6 / committed, 1) if committed else None,
            "node_rss_mib": [rss_mib(p) if p else None for p in self.pids],
            "loop_lag_p99_ms": [
                lag_p99_ms(a, b) for a, b in zip(self.scr0, self.scr1, strict=True)
            ],
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "verify_cpu_us": self.verify_us,
        }


def _self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


# --- profile: py-spy on every node ------------------------------------------------------------


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class Profiler:
    """One ``py-spy record`` per node for the load phase; raw (collapsed) stacks in ``out``."""

    def __init__(self, pids: list[int | None], out: Path, duration_s: float) -> None:
        exe = py_spy()
        if exe is None:
            raise SystemExit("--profile needs py-spy (pip install py-spy)")
        self.files = [out / f"node{i}.txt" for i in range(len(pids))]
        self.procs: list[subprocess.Popen[bytes] | None] = []
        for pid, path in zip(pids, self.files, strict=True):
            if pid is None:
                self.procs.append(None)
                continue
            cmd = [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(PROFILE_RATE_HZ),
                "--duration",
                str(max(1, int(duration_s))),
                "--format",
                "raw",
                "--threads",
                "--nonblocking",
                "-o",
                str(path),
            ]
            self.procs.append(
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )

    def finish(self, timeout_s: float = 30.0) -> list[dict[int, dict[str, int]] | None]:
        """Wait for every recorder; thread -> stage -> samples per node (None: it failed)."""
        out: list[dict[int, dict[str, int]] | None] = []
        for proc, path in zip(self.procs, self.files, strict=True):
            if proc is None:
                out.append(None)
                continue
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait()
            try:
                out.append(thread_stage_samples(path.read_text().splitlines()))
            except OSError:
                out.append(None)
        return out


def profile_table(
    samples: list[dict[int, dict[str, int]] | None],
    cpu_s: list[float | None],
    thread_cpu: list[dict[int, float] | None],
    committed: int,
    children_s: list[float] | None = None,
) -> dict[str, Any]:
    """Microseconds of CPU per committed tx, per node and stage.

    Each thread's CPU time, measured by the kernel over the same phase, is split by that
    thread's py-spy samples (busy ones only). A thread blocked in ``fsync`` looks busy to
    py-spy, so one node-wide share would charge the consensus-log thread's waits as CPU: at
    100 tx/s "storage" read ~40% of a node's CPU that way, against ~20% by the kernel's count.
    CPU of threads without busy samples, and of threads that ended during the run, is "loop".
    The figures add up to ``node_cpu_us_per_tx`` (sampling under load misses samples, the
    kernel does not). A node whose sampled thread ids match none of its threads in /proc (a
    py-spy that reports other ids) falls back to one node-wide share, listed in ``node_wide``,
    instead of charging everything to "loop". ``cpu_s`` is the node process's own;
    ``children_s``, its child processes' (model fits), is "workers" (py-spy
    samples the node process only).
    """
    from node.tools.bench_stages import STAGES

    nodes: list[dict[str, float] | None] = []
    node_wide: list[int] = []
    for i, (threads, cpu, per_thread) in enumerate(zip(samples, cpu_s, thread_cpu, strict=True)):
        if not threads or cpu is None or not committed:
            nodes.append(None)
            continue
        seconds = dict.fromkeys(STAGES, 0.0)
        if per_thread is not None and not set(threads) & set(per_thread):
            per_thread = None
            node_wide.append(i)
        if per_thread is None:  # no per-thread CPU: one share for the whole process
            per_thread = {0: cpu}
            merged: dict[str, int] = {}
            for counts in threads.values():
                for st, n in counts.items():
                    merged[st] = merged.get(st, 0) + n
            threads = {0: merged}
        for tid, t_cpu in per_thread.items():
            counts = threads.get(tid, {})
            busy = sum(v for k, v in counts.items() if k != "idle")
            if not busy:
                seconds["loop"] += t_cpu
                continue
            for st, n in counts.items():
                if st != "idle":
                    seconds[st] += t_cpu * n / busy
        seconds["loop"] += max(0.0, cpu - sum(per_thread.values()))
        if children_s is not None:
            seconds["workers"] += children_s[i]
        nodes.append({st: round(v * 1e6 / committed, 1) for st, v in seconds.items()})
    table: dict[str, Any] = {"unit": "us_per_committed_tx", "stages": list(STAGES), "nodes": nodes}
    if node_wide:
        table["node_wide"] = node_wide
    return table


def format_profile(table: dict[str, Any]) -> str:
    """The profile as a text table (stderr), one column per node plus the sum over nodes."""
    nodes = table["nodes"]
    head = "stage".ljust(12) + "".join(f"node{i}".rjust(9) for i in range(len(nodes)))
    lines = [head + "all".rjust(9)]
    for st in table["stages"]:
        vals = [n.get(st, 0.0) if n else 0.0 for n in nodes]
        lines.append(st.ljust(12) + "".join(f"{v:9.1f}" for v in vals) + f"{sum(vals):9.1f}")
    totals = [sum(n.values()) if n else 0.0 for n in nodes]
    lines.append("total".ljust(12) + "".join(f"{v:9.1f}" for v in totals) + f"{sum(totals):9.1f}")
    if table.get("node_wide"):
        which = ", ".join(f"node{i}" for i in table["node_wide"])
        lines.append(f"warning: {which}: no sampled thread id in /proc, one node-wide share")
    return "\n".join(lines)
