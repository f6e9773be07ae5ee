"""Admission pushes clients back on a commit backlog, before the request timer is in sight."""

from __future__ import annotations

import pytest

from node.errors import MEMPOOL_FULL, VigilError
from node.host import admission as adm
from node.host.admission import Admission


class _Mempool:
    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def oldest_age_s(self, now_s: float) -> float:
        return 5.0 if self.size else 0.0


def _admission(mempool_txs: int) -> Admission:
    a = Admission(_Mempool(mempool_txs), None, lambda h: False, print, print, None)  # type: ignore[arg-type]
    clock = [0.0]
    a.clock = lambda: clock[0]
    a._test_clock = clock  # type: ignore[attr-defined]
    return a


def _commit(a: Admission, txs: int, dt_s: float) -> None:
    a._test_clock[0] += dt_s  # type: ignore[attr-defined]
    a.on_committed(txs)


def test_backlog_allowance_follows_the_commit_rate() -> None:
    a = _admission(0)
    assert a.backlog_max() == adm.BACKLOG_TXS_MIN
    _commit(a, 0, 0.0)
    for _ in range(80):
        _commit(a, 500, 0.1)  # 5000 tx/s for 8 s
    assert 0.9 * 5000 * adm.BACKLOG_S <= a.backlog_max() <= 5000 * adm.BACKLOG_S


async def test_client_tx_refused_with_retryable_error_when_backlogged() -> None:
    a = _admission(adm.BACKLOG_TXS_MIN)
    with pytest.raises(VigilError) as info:
        await a.submit(b"\x88")
    assert info.value.code == MEMPOOL_FULL
    # Gossip from peers is never pushed back: it was admitted by its entry validator.
    a.gossip = type("G", (), {"seen": set()})()  # type: ignore[assignment]
    a.gossiped([b"\x88\x01"], origin=1)
    assert a._queue.qsize() == 1
