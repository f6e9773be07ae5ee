"""``scripts/cluster up``'s options (node/tools/cluster.py), without starting nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.tools import cluster, devnet


class _Made(Exception):
    pass


def test_bench_accounts_reach_the_new_clusters_genesis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: dict[str, Any] = {}

    def init_cluster(root: Path, ports: list[Any], **kwargs: Any) -> None:
        made.update(kwargs, root=root, n=len(ports))
        raise _Made

    monkeypatch.setattr(devnet, "init_cluster", init_cluster)
    with pytest.raises(_Made):
        cluster.main(["up", "--dir", str(tmp_path / "c"), "--bench-accounts", "5000"])
    assert made["bench_accounts"] == 5000
    assert made["n"] == 4
    made.clear()
    with pytest.raises(_Made):
        cluster.main(["up", "--dir", str(tmp_path / "d")])
    assert made["bench_accounts"] == devnet.BENCH_ACCOUNTS


@pytest.mark.parametrize("value", ["1", "-3", "many", str(cluster.BENCH_ACCOUNTS_MAX + 1)])
def test_a_bad_bench_accounts_value_is_a_usage_error(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cluster.main(["up", "--dir", str(tmp_path), "--bench-accounts", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--bench-accounts" in err
    assert ("between 2 and" in err) or ("not a whole number" in err)
    assert not (tmp_path / "cluster.json").exists()
