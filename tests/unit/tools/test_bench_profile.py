"""``scripts/bench --profile``: each thread's kernel CPU is split by that thread's samples."""

from __future__ import annotations

import time

import pytest

from node.tools.bench_probe import children_cpu_s, profile_table, thread_cpu_s
from node.tools.bench_stages import thread_stage_samples

VERIFY = "verify_raw (common/crypto.py:80)"
LOOP = "Handle._run (asyncio/events.py:80)"
IDLE = "EpollSelector.select (selectors.py:468)"
WRITE = "Store.log_write (storage/db.py:120)"
WAIT = "_worker (concurrent/futures/thread.py:83);Queue.get (queue.py:171)"


def test_samples_are_kept_per_thread() -> None:
    lines = [
        f"thread (11): MainThread;{LOOP};{VERIFY} 1",
        f"thread (11): MainThread;{LOOP} 2",
        f"thread (11): MainThread;{IDLE} 5",
        f"thread (12): clog_0;{WRITE} 9",
        f"thread (12): clog_0;{WAIT} 1",
        f"{VERIFY} 4",  # recorded without --threads
    ]
    assert thread_stage_samples(lines) == {
        11: {"verify": 1, "loop": 2, "idle": 5},
        12: {"storage": 9, "idle": 1},
        0: {"verify": 4},
    }


def test_a_thread_waiting_in_fsync_is_charged_its_own_cpu_only() -> None:
    """The log thread is "busy" in every sample (py-spy counts a thread blocked in fsync as
    active) but used 1 s of CPU: storage is 1 s, not 9/12 of the node's 4.5 s."""
    samples = {11: {"verify": 1, "loop": 2, "idle": 5}, 12: {"storage": 9, "idle": 1}}
    threads = {11: 3.0, 12: 1.0, 13: 0.25}  # 13: CPU but never sampled busy
    table = profile_table([samples], [4.5], [threads], 1000)
    node = table["nodes"][0]
    assert node["verify"] == 1000.0
    assert node["storage"] == 1000.0
    assert node["loop"] == 2000.0 + 250.0 + 250.0  # its samples, thread 13, an ended thread
    assert sum(node.values()) == 4500.0  # adds up to node_cpu_us_per_tx
    # Without per-thread CPU, the old single share: storage takes 9 of 12 busy samples.
    [whole] = profile_table([samples], [4.5], [None], 1000)["nodes"]
    assert whole["storage"] == 3375.0


def test_thread_cpu_of_this_process() -> None:
    import os
    import threading

    mine = thread_cpu_s(os.getpid())
    assert mine is not None
    assert threading.get_native_id() in mine
    assert all(v >= 0.0 for v in mine.values())


def test_thread_ids_that_match_nothing_fall_back_to_one_node_wide_share() -> None:
    """py-spy's thread ids not found in /proc: not everything "loop", the node-wide split."""
    samples = {901: {"verify": 1, "storage": 3}}
    table = profile_table([samples], [4.0], [{11: 3.0, 12: 1.0}], 1000)
    assert table["nodes"][0]["verify"] == 1000.0
    assert table["nodes"][0]["storage"] == 3000.0
    assert table["node_wide"] == [0]
    matched = profile_table([{11: {"verify": 1}}], [4.0], [{11: 3.0, 12: 1.0}], 1000)
    assert "node_wide" not in matched


def test_child_processes_cpu_is_the_workers_stage() -> None:
    """A node's child processes (the model fits) are not sampled: their CPU is "workers"."""
    table = profile_table([{11: {"verify": 1}}], [3.0], [{11: 3.0}], 1000, [0.5])
    [node] = table["nodes"]
    assert node["verify"] == 3000.0
    assert node["workers"] == 500.0
    assert sum(node.values()) == 3500.0


def test_a_child_process_is_found_with_its_cpu() -> None:
    import os
    import subprocess
    import sys

    busy_then_wait = "import time; sum(range(3_000_000)); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", busy_then_wait])
    try:
        found: dict[int, float] = {}
        for _ in range(100):
            found = children_cpu_s(os.getpid())
            if found.get(child.pid, 0.0) > 0:
                break
            time.sleep(0.05)
        assert child.pid in found
        assert found[child.pid] > 0
        assert children_cpu_s(child.pid) == {}
    finally:
        child.kill()
        child.wait()


def test_the_speed_probe_times_the_cpu_of_each_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """``verify_cpu_us``: this thread's CPU per check, the product's rule checked for real."""
    from node.tools import bench_probe

    assert 1.0 < bench_probe.verify_cpu_us(50) < 100_000.0  # real Ed25519 checks

    def dear_check(*args: object) -> bool:  # burns ~300 us of this thread's CPU, then agrees
        until = time.thread_time() + 300e-6
        while time.thread_time() < until:
            pass
        return True

    monkeypatch.setattr(bench_probe, "verify", dear_check)
    assert 300.0 <= bench_probe.verify_cpu_us(20) < 5_000.0


def test_the_speed_probe_refuses_a_rule_that_fails_valid_signatures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from node.tools import bench_probe

    for failing in (3, 15):  # one check fails, warming up or timed (10 + 10 checks)
        calls = iter(range(1_000))
        monkeypatch.setattr(bench_probe, "verify", lambda *a, c=calls, f=failing: next(c) != f)
        with pytest.raises(RuntimeError, match="failed to check: 1 of 20"):
            bench_probe.verify_cpu_us(10)
