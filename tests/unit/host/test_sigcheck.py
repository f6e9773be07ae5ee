"""Signature checks in a worker process (node/host/sigcheck.py, node/host/workers.py)."""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import pytest

from common.crypto import SigningKey
from node.chain.tx import Transaction, make_transfer
from node.host import sigcheck
from node.host.sigcheck import INLINE_VERIFY_MAX, SignatureChecks
from node.host.workers import process_pool

CHAIN = "vigil-local"
KEY = SigningKey(b"\x07" * 32)


def _raws() -> tuple[list[bytes], list[Transaction]]:
    good = [make_transfer(KEY, CHAIN, b"\x02" * 20, 5, 1, n) for n in range(3)]
    forged = replace(good[0], amount=6)  # the same signature over other bytes
    forged.encode()
    return [
        good[0].encode(),
        forged.encode(),
        good[1].encode(),
        b"\x01junk",
        good[2].encode(),
    ], good


def _die(raws: list[bytes]) -> list[str | None]:
    os._exit(3)  # in the worker: as if it were killed


async def test_a_batch_is_checked_in_the_worker_with_every_verdict_in_order() -> None:
    raws, good = _raws()
    checks = SignatureChecks(0)
    try:
        first = await checks(raws)  # the worker is starting: this batch goes to a thread
        assert checks.batches == 0
        assert await checks.warm()
        out = await checks(raws)
    finally:
        checks.close()
    assert checks.batches == 1  # more than INLINE_VERIFY_MAX: in the worker
    assert first == out
    assert [o.hash if isinstance(o, Transaction) else o for o in out] == [
        good[0].hash,
        "bad signature",
        good[1].hash,
        out[3],
        good[2].hash,
    ]
    assert isinstance(out[3], str)
    assert out[3].startswith("does not decode")
    assert out[0] == good[0]
    assert out[0].encode() == raws[0]


async def test_a_few_txs_are_checked_on_the_loop() -> None:
    raws, good = _raws()
    checks = SignatureChecks(0)
    out = await checks(raws[:INLINE_VERIFY_MAX])
    assert checks.batches == 0
    assert out == [good[0], "bad signature"]


async def test_a_lost_worker_costs_its_batch_nothing_and_the_next_batch_gets_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raws, good = _raws()
    checks = SignatureChecks(0)
    try:
        assert await checks.warm()
        monkeypatch.setattr(sigcheck, "check_signatures", _die)
        out = await checks(raws)  # the worker dies: checked in a thread instead
        assert checks.workers_lost == 1
        assert checks.batches == 0
        assert out[0] == good[0]
        assert out[1] == "bad signature"
        assert out[4] == good[2]
        monkeypatch.undo()
        assert await checks.warm()  # a new worker
        again = await checks(raws)
        assert checks.batches == 1
        assert again[2] == good[1]
    finally:
        checks.close()


@pytest.mark.skipif(sys.platform != "linux", reason="niceness as Linux keeps it")
def test_a_worker_process_runs_at_the_niceness_asked_for() -> None:
    """Admission's checks yield the CPU to the validators' loops (node/host/runtime.py)."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    pool = process_pool(sigcheck.ADMISSION_NICE)
    try:
        niceness = pool.submit(os.getpriority, os.PRIO_PROCESS, 0).result(timeout=60)
    finally:
        pool.shutdown()
    assert niceness == min(19, before + sigcheck.ADMISSION_NICE)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
