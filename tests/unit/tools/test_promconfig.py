"""node.tools.promconfig: the prometheus.yml that scripts/cluster up writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from node.tools.promconfig import PromConfigError, render_prometheus_config, write_prometheus_config


def test_written_config_lists_every_node(tmp_path: Path) -> None:
    targets = [f"http://127.0.0.1:{26800 + i}/metrics" for i in range(4)]
    path = write_prometheus_config(tmp_path / "sub" / "prometheus.yml", targets, "local")
    text = path.read_text()
    assert path == tmp_path / "sub" / "prometheus.yml"
    assert "scrape_configs:" in text
    assert '  - job_name: "vigil"' in text
    assert '    metrics_path: "/metrics"' in text
    found = [json.loads(t)[0] for t in re.findall(r"- targets: (\[.*\])", text)]
    assert found == [f"127.0.0.1:{26800 + i}" for i in range(4)]
    nodes = re.findall(r'node: "(\d+)"', text)
    assert nodes == ["0", "1", "2", "3"]
    assert text.count('cluster: "local"') == 4
    # YAML indentation: only spaces, even widths.
    for line in text.splitlines():
        assert "\t" not in line
        assert (len(line) - len(line.lstrip(" "))) % 2 == 0


def test_cluster_name_sanitised() -> None:
    text = render_prometheus_config(["127.0.0.1:1"], 'my cluster/"x"')
    assert 'cluster: "my_cluster__x_"' in text
    assert 'cluster: ".cluster"' in render_prometheus_config(["127.0.0.1:1"], ".cluster")


def test_host_port_targets_and_interval() -> None:
    text = render_prometheus_config(["localhost:9000"], "c-1", scrape_interval_s=15)
    assert "scrape_interval: 15s" in text
    assert '["localhost:9000"]' in text


@pytest.mark.parametrize(
    ("targets", "name"),
    [
        ([], "ok"),
        (["127.0.0.1"], "ok"),
        (["127.0.0.1:99999"], "ok"),
        (["ftp://127.0.0.1:1/metrics"], "ok"),
        (["127.0.0.1:1"], ""),
        (["127.0.0.1:1"], " / "),
        (["127.0.0.1:1", "http://127.0.0.1:2/other"], "ok"),
        (['127.0.0.1:1"\n- evil'], "ok"),
    ],
)
def test_bad_input_refused(targets: list[str], name: str) -> None:
    with pytest.raises(PromConfigError):
        render_prometheus_config(targets, name)
