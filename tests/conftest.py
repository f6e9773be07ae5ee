"""Markers by folder: tests/unit (fast, fakes allowed), tests/sim (the consensus simulator),
tests/e2e (real node processes, sockets and LevelDB). Select with ``-m unit``, ``-m sim``, ``-m
e2e``.
"""

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
FOLDER_MARKERS = {"unit": "unit", "sim": "sim", "e2e": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).resolve().relative_to(TESTS).parts
        marker = FOLDER_MARKERS.get(parts[0]) if len(parts) > 1 else None
        if marker is not None:
            item.add_marker(getattr(pytest.mark, marker))
