"""The node's worker processes: what each runs first, and the signature checks they run.

Two kinds, each a ``process_pool`` of one worker started at its first job ("spawn": the node has
threads and an event loop, which fork would copy):

- the detector's fits (node/host/screening.py ``training_pool``, niceness 10);
- signature checks of tx batches (node/host/sigcheck.py ``SignatureChecks``): admission's at
  niceness 5, a backup's checks of a proposal's txs at the node's own priority.

A module of its own, importing nothing heavy: a worker imports it to run ``child_init`` before
anything else, so the worker lowers its priority first and loads its real work (numpy and the
model code for a fit, ~0.7 s of CPU) after, at that priority. With the initializer in
node/host/screening.py, that import (numpy through it) ran at the validators' priority, in every
validator at once: they all reach their first training height in the same second of the chain's
first load.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

ORPHAN_CHECK_S = 1.0  # how often a worker checks that its node is alive
TRACKER_QUIET = "ignore:resource_tracker:UserWarning"  # see process_pool


def child_init(parent: int, nice: int) -> None:
    """In the worker process: a lower priority (``nice``, an increment), and an exit as soon as
    the node is gone.

    A node killed with SIGKILL cannot stop its pool, and the worker would wait on its call
    queue for ever (orphans of ~75 MB each, one more per restart)."""
    if nice:
        os.nice(nice)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def process_pool(nice: int) -> ProcessPoolExecutor:
    """One worker process, started at the first job, at ``nice`` below the node's priority."""
    # multiprocessing's resource tracker (a helper process started with the pool, sharing our
    # stderr, i.e. the JSON log) outlives a node killed with SIGKILL, cleans up the pool's
    # semaphores as it should, and says so in a plain-text warning: a line that is not JSON
    # (tests/e2e/test_e2e_observability.py). It takes its warning filters from our -W options,
    # read when it starts.
    if TRACKER_QUIET not in sys.warnoptions:
        sys.warnoptions.append(TRACKER_QUIET)
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=child_init,
        initargs=(os.getpid(), nice),
    )


def check_signatures(raws: list[bytes]) -> list[str | None]:
    """In a worker: per raw tx, None when it decodes and its signature holds, else why not.

    Only the verdicts go back: the caller decodes the good ones again, which costs it less
    than unpickling them would and keeps the tx objects' cached encodings its own."""
    from node.chain.tx import decode_verified  # here: the worker's first import stays light

    return [v if isinstance(v, str) else None for v in decode_verified(raws)]
