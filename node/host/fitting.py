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

TRAINING_NICE = 10  # the training process yields the CPU to the validator (a niceness increment)
ORPHAN_CHECK_S = 1.0  # how often the fitting process checks that its node is alive


def fitting_worker(parent: int) -> None:
    """In the worker process: a low priority, and an exit as soon as the node is gone.

    A node killed with SIGKILL cannot stop its pool, and the worker would wait on its call
    queue for ever (orphans of ~75 MB each, one more per restart)."""
    os.nice(TRAINING_NICE)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()
