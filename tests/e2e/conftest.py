"""The shared cluster fixture: one real 4-node cluster per test module.

A module tunes it with ``CLUSTER_OPTIONS = {"n": 4, "bench_accounts": 8, "overrides": {...}}``
(the arguments of tests.cluster_util.LocalCluster).
"""

import gc
import warnings
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


@pytest.fixture(autouse=True)
def _collect_client_transports() -> Iterator[None]:
    """Finalize this test's leftover client sockets here, not inside the next test.

    An aiohttp TLS transport finishes closing a moment after its session; when the test's event
    loop ends first, the transport is finalized later with a ResourceWarning, which pytest
    (warnings are errors) would report against whatever test runs then. The nodes are separate
    processes, so this concerns only the test's own clients.
    """
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
