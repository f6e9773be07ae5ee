"""A Prometheus scrape config (prometheus.yml) for the metrics ports of a local cluster.

``scripts/cluster up`` writes one next to the cluster so an operator can run
``prometheus --config.file=.cluster/prometheus.yml`` and import deploy/grafana/vigil-dashboard.json
(docs/operations.md). Written by hand rather than with a YAML library (not a dependency): the
shape is fixed and every string is double-quoted, which YAML reads like JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

SCRAPE_INTERVAL_S_DEFAULT = 5
JOB_NAME = "vigil"
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
_CLUSTER_NAME_BAD = re.compile(r"[^A-Za-z0-9_.\-]")
CLUSTER_NAME_LEN_MAX = 64


class PromConfigError(ValueError):
    """A target or cluster name that cannot go into a scrape config."""


def _split_target(target: str) -> tuple[str, str]:
    """``host:port`` and metrics path of a target given as ``host:port`` or a URL."""
    if "://" in target:
        parts = urlsplit(target)
        if parts.scheme != "http" or not parts.netloc:
            raise PromConfigError(f"metrics target must be http://host:port[/path], got {target!r}")
        address, path = parts.netloc, parts.path or "/metrics"
    else:
        address, path = target, "/metrics"
    if not _HOST_PORT.match(address) or not 0 < int(address.rsplit(":", 1)[1]) < 65536:
        raise PromConfigError(f"metrics target must be host:port, got {target!r}")
    return address, path


def cluster_label(cluster_name: str) -> str:
    """``cluster_name`` made safe as a label value (a directory name like ``.cluster`` is fine)."""
    name = _CLUSTER_NAME_BAD.sub("_", cluster_name.strip())[:CLUSTER_NAME_LEN_MAX]
    if not name.strip("_"):
        raise PromConfigError(f"cluster name needs a letter or digit, got {cluster_name!r}")
    return name


def render_prometheus_config(
    targets: list[str], cluster_name: str, scrape_interval_s: int = SCRAPE_INTERVAL_S_DEFAULT
) -> str:
    """prometheus.yml text scraping ``targets`` (node i is ``targets[i]``), labelled by cluster
    and node index so dashboards can group by node without relying on ports."""
    if not targets:
        raise PromConfigError("no metrics targets")
    name = cluster_label(cluster_name)
    if not 1 <= scrape_interval_s <= 3600:
        raise PromConfigError(f"scrape interval must be 1..3600 s, got {scrape_interval_s}")
    split = [_split_target(t) for t in targets]
    paths = {path for _, path in split}
    if len(paths) != 1:
        raise PromConfigError(f"all targets must share one metrics path, got {sorted(paths)}")
    q = json.dumps  # a JSON string is a valid double-quoted YAML scalar
    lines = [
        f"# Prometheus scrape config for Vigil cluster {name}; written by scripts/cluster up.",
        "# Run: prometheus --config.file=<this file>  (see docs/operations.md)",
        "global:",
        f"  scrape_interval: {scrape_interval_s}s",
        f"  evaluation_interval: {scrape_interval_s}s",
        "scrape_configs:",
        f"  - job_name: {q(JOB_NAME)}",
        f"    metrics_path: {q(paths.pop())}",
        "    static_configs:",
    ]
    for index, (address, _) in enumerate(split):
        lines += [
            f"      - targets: [{q(address)}]",
            "        labels:",
            f"          cluster: {q(name)}",
            f"          node: {q(str(index))}",
        ]
    return "\n".join(lines) + "\n"


def write_prometheus_config(
    path: str | Path,
    targets: list[str],
    cluster_name: str,
    scrape_interval_s: int = SCRAPE_INTERVAL_S_DEFAULT,
) -> Path:
    """Write ``render_prometheus_config(...)`` to ``path`` (parents created); returns the path."""
    text = render_prometheus_config(targets, cluster_name, scrape_interval_s)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)  # atomic: a running Prometheus reloading the file never sees half of it
    return out
