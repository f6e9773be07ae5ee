"""The detector's fitting process: what its worker runs first (node/host/screening.py
``training_pool``; "spawn" starts it at the first fit).

A module of its own, importing nothing heavy: the worker imports it to run ``fitting_worker``
before anything else, so the worker lowers its priority first and loads numpy and the model code
(~0.7 s of CPU) after, at that priority. With the initializer in node/host/screening.py, that
import (numpy through it) ran at the validators' priority, in every validator at once: they
all reach their first training height in the same second of the chain's first load.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

TRAINING_NICE = 10  # the training process yields the CPU to the validator (a niceness increment)
ORPHAN_CHECK_S = 1.0  # how often the fitting process checks that its node is alive
# A fit uses at most about this share of one core: it sleeps between its steps (``Pacer``).
FIT_CPU_SHARE = 0.1
PACE_SLEEP_MAX_S = 1.0  # the longest pause after one step
# In the fitting process: the node's "stopping" event (a multiprocessing Event, which can only
# reach a process as it starts: ``fitting_worker``'s argument). None elsewhere.
_stopping: Any = None


class FitStopped(Exception):
    """The node is stopping: the fit in progress gave up at a pause (its model is not wanted)."""


class Pacer:
    """``train_model``'s ``pause`` (node/detect/model.py): after each step of a fit, sleep so
    that the fit's thread runs about ``share`` of the time.

    A niceness does not keep a fit from hurting the validators. All of them fit at the same
    heights, ~0.2 s of CPU each: with four validators on two cores at 100 tx/s, the four fits at
    niceness 10 (SCHED_IDLE alike) made the validators' loops run 40-100 ms late, and the txs
    sent during a fit committed in 200-250 ms at the median against 32-45 ms otherwise; paced
    at a tenth of a core, 60-74 ms (docs/performance.md, stop 23). A fit comes at most every
    ``retrain_min_rows`` committed txs, so it can take seconds: the same CPU, spread out.
    Picklable: made by the node, called in the fitting process (or in a thread if that died),
    where ``time.thread_time`` counts the fit's own CPU.

    A fit gives up (``FitStopped``) at a pause once the node is stopping, told by the event the
    fitting process got as it started (``fitting_worker``) or, for a fit in a thread of the
    node, by ``stopping`` (not pickled: it stays in the node's process). The node waits at exit
    for the fit it started, and paced, that is seconds.
    """

    def __init__(self, share: float = FIT_CPU_SHARE, stopping: Any = None) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError("share must be in (0, 1]")
        self.share = share
        self._cpu_s: float | None = None
        self._local_stopping = stopping

    def __getstate__(self) -> dict[str, Any]:
        return {"share": self.share, "_cpu_s": self._cpu_s, "_local_stopping": None}

    def __call__(self) -> None:
        stopping = _stopping if _stopping is not None else self._local_stopping
        if stopping is not None and stopping.is_set():
            raise FitStopped("the node is stopping")
        now = time.thread_time()
        last, self._cpu_s = self._cpu_s, now
        if last is None or self.share >= 1.0:
            return  # the first call marks the start
        used = max(0.0, now - last)
        delay = min(PACE_SLEEP_MAX_S, used * (1.0 - self.share) / self.share)
        if stopping is None:
            time.sleep(delay)
        elif stopping.wait(delay):
            raise FitStopped("the node is stopping")
        self._cpu_s = time.thread_time()


def fitting_worker(parent: int, stopping: Any = None) -> None:
    """In the worker process: a low priority, and an exit as soon as the node is gone.

    A node killed with SIGKILL cannot stop its pool, and the worker would wait on its call
    queue for ever (orphans of ~75 MB each, one more per restart). ``stopping``, set by the
    node as it stops, makes a fit in progress give up at its next pause (``Pacer``)."""
    global _stopping
    _stopping = stopping
    os.nice(TRAINING_NICE)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()
