"""The shared cluster fixture: one real 4-node cluster per test module.

A module tunes it with ``CLUSTER_OPTIONS = {"n": 4, "bench_accounts": 8, "overrides": {...}}``
(the arguments of tests.cluster_util.LocalCluster).
"""

from collections.abc import Iterator

import pytest

from tests.cluster_util import LocalCluster


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    options = dict(getattr(request.module, "CLUSTER_OPTIONS", {}))
    name = request.module.__name__.rsplit(".", 1)[-1]
    with LocalCluster(tmp_path_factory.mktemp(name), **options) as c:
        yield c
