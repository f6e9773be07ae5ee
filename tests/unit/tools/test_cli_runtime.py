"""How ``vigil node`` sets up its process (node/tools/cli.py): the event loop and the collector."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
import uvloop

from node.tools.cli import GC_THRESHOLDS, loop_factory, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_gc_freezes_startup_objects_and_collects_less_often(restore_gc: None) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    survivor = {"built": "at start-up"}
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # fewer young collections than Python's default
    assert gc.get_freeze_count() > 0
    assert not any(o is survivor for o in gc.get_objects())  # frozen: no collection walks it


@pytest.mark.parametrize(("name", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_loop_factory_gives_the_named_loop(name: str, module: str) -> None:
    loop = loop_factory(name)()
    try:
        assert type(loop).__module__.partition(".")[0] == module
        assert isinstance(loop, uvloop.Loop) is (name == "uvloop")
        assert loop.run_until_complete(asyncio.sleep(0, result=7)) == 7
    finally:
        loop.close()
