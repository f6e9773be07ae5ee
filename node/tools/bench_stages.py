"""Which stage of a tx's path a sampled stack belongs to (``scripts/bench --profile``).

A stack is a list of frames ``function (path:line)``, root first, as py-spy writes them in its
raw (collapsed) format. Every frame may name a stage through the rules below; the stack goes to
the matched stage of highest priority (earliest in ``STAGES``), so a LevelDB read under a
``block_get`` answer counts as "reads" while the same read under admission counts as "mempool"
only when nothing more specific matched. Stacks that wait (epoll, an idle worker thread) are
"idle" and are left out of the totals. docs/performance.md describes each stage.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Priority order. "loop" is the rest: asyncio scheduling, TLS, logging, metrics.
STAGES = (
    "storage",
    "verify",
    "screening",
    "reads",
    "decode",
    "execution",
    "proposal",
    "votes",
    "mempool",
    "gossip",
    "rpc",
    "workers",  # the node's child processes (model fits): no rule, py-spy does not sample them
    "loop",  # last: what no rule matched
)

# (stage, path pattern, function pattern); the function pattern may be "" (any function).
_RULES: list[tuple[str, str, str]] = [
    ("storage", r"storage/db\.py$", ""),
    ("storage", r"plyvel", ""),
    ("storage", r"node/host/signguard\.py$", r"^(SignGuard\.(save|append)|guard_round)"),
    ("verify", r"node/chain/tx\.py$", r"verify_signature"),
    ("verify", r"common/crypto\.py$", r"^verify"),
    ("verify", r"nacl/", r"crypto_sign_open"),
    ("verify", r"node/chain/ethtx\.py$", r"recover|sender"),
    ("screening", r"node/detect/", ""),
    ("screening", r"(^|/)ml/", ""),
    ("screening", r"node/host/screening\.py$", ""),
    ("reads", r"node/host/service_impl\.py$", r"^(?!NodeServiceImpl\.(tx_submit|submit))"),
    ("reads", r"node/api/eth", ""),
    ("reads", r"node/host/resolver\.py$", r"_committed_txs|serve_get_txs|serve_get_blocks"),
    ("reads", r"node/net/catchup\.py$", ""),
    ("decode", r"node/chain/tx\.py$", r"decode"),
    ("decode", r"node/chain/ethtx\.py$", r"decode"),
    ("decode", r"node/host/admission\.py$", r"_decode_and_verify"),
    ("execution", r"node/chain/(ledger|chain|block)\.py$", ""),
    ("execution", r"node/host/committer\.py$", ""),
    ("execution", r"common/merkle\.py$", ""),
    ("proposal", r"node/host/driver\.py$", r"run_proposer|validate"),
    ("proposal", r"node/host/resolver\.py$", ""),
    ("proposal", r"node/chain/mempool\.py$", r"select|mark_inflight|set_inflight"),
    ("votes", r"(^|/)consensus/", ""),
    ("votes", r"node/host/driver\.py$", ""),
    ("mempool", r"node/chain/mempool\.py$", ""),
    ("mempool", r"node/host/admission\.py$", ""),
    ("gossip", r"node/net/", ""),
    ("gossip", r"aiohttp/(_websocket|client_ws|web_ws|http_websocket)", ""),
    ("rpc", r"node/api/", ""),
    ("rpc", r"aiohttp/(web_protocol|http_parser|web_request|web_response|web_app)", ""),
    ("rpc", r"(^|/)json/", ""),
]
_COMPILED = [(st, re.compile(p), re.compile(f) if f else None) for st, p, f in _RULES]
_PRIORITY = {st: i for i, st in enumerate(STAGES)}
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(:\d+)?\)$")
# Leaf frames of a waiting thread or loop.
_IDLE_LEAVES = re.compile(
    r"^(EpollSelector\.select|KqueueSelector\.select|select|_worker|Condition\.wait|"
    r"Event\.wait|Thread\._wait_for_tstate_lock|SimpleQueue\.get|Queue\.get)\b"
)


def _frame(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame)
    return (m["func"], m["path"]) if m else (frame, "")


def stage_of(frames: list[str]) -> str:
    """The stage of one sampled stack (root first)."""
    if not frames:
        return "loop"
    leaf_func, leaf_path = _frame(frames[-1])
    if _IDLE_LEAVES.match(leaf_func) and (
        "selectors" in leaf_path
        or "threading" in leaf_path
        or "concurrent" in leaf_path
        or "queue" in leaf_path
    ):
        return "idle"
    best = len(STAGES) - 1  # "loop"
    for frame in frames:
        func, path = _frame(frame)
        for stage, path_re, func_re in _COMPILED:  # in priority order
            if _PRIORITY[stage] >= best:
                break
            if path_re.search(path) and (func_re is None or func_re.search(func)):
                best = _PRIORITY[stage]
                break
    return STAGES[best]


_THREAD = re.compile(r"^thread \((?P<tid>\d+)\)")


def thread_stage_samples(lines: Iterable[str]) -> dict[int, dict[str, int]]:
    """Samples per stage for each thread (OS thread id), from py-spy's raw output recorded with
    ``--threads``: each stack's first frame is ``thread (TID): NAME``. Stacks without it go to
    thread 0."""
    out: dict[int, dict[str, int]] = {}
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        m = _THREAD.match(frames[0])
        tid = int(m["tid"]) if m else 0
        if m:
            frames = frames[1:]
        stage = stage_of(frames)
        per = out.setdefault(tid, {})
        per[stage] = per.get(stage, 0) + int(count)
    return out


def stage_samples(lines: Iterable[str]) -> dict[str, int]:
    """Samples per stage (plus "idle") from py-spy's raw output lines ``a;b;c COUNT``."""
    out: dict[str, int] = {}
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stage = stage_of(stack.split(";"))
        out[stage] = out.get(stage, 0) + int(count)
    return out
