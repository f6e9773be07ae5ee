"""Config parsing (node/host/config.py): defaults, paths, and errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.host.config import ConfigError, parse_config

NODE: dict[str, Any] = {"index": 0, "data_dir": ".", "genesis": "g.json", "key_file": "k.json"}
BASE: dict[str, Any] = {
    "node": NODE,
    "p2p": {"insecure": True},
}


def test_config_defaults_and_relative_paths() -> None:
    cfg = parse_config(BASE, Path("/srv/n0"))
    assert cfg.genesis_file == Path("/srv/n0/g.json")
    assert cfg.block_txs_max == 2000
    assert cfg.block_empty_interval_ms == 0  # no heartbeat unless asked: an idle chain is still
    assert cfg.event_loop == "uvloop"
    chosen = parse_config({**BASE, "node": {**NODE, "event_loop": "asyncio"}}, Path("/"))
    assert chosen.event_loop == "asyncio"


@pytest.mark.parametrize("value", [0, 100, 2000, 3_600_000])
def test_config_block_empty_interval_ms_accepts_off_or_a_period(value: int) -> None:
    cfg = parse_config({**BASE, "block": {"empty_interval_ms": value}}, Path("/"))
    assert cfg.block_empty_interval_ms == value


@pytest.mark.parametrize("value", [-1, 1, 99, 3_600_001, True, False, "2000", 2.5])
def test_config_block_empty_interval_ms_refuses_other_values(value: object) -> None:
    with pytest.raises(ConfigError, match=r"block\.empty_interval_ms: expected 0 \(off\) or"):
        parse_config({**BASE, "block": {"empty_interval_ms": value}}, Path("/"))


def test_config_block_interval_max_ms_defaults_to_100_and_refuses_what_is_not_a_duration() -> None:
    assert parse_config(BASE, Path("/")).block_interval_max_ms == 100
    cfg = parse_config({**BASE, "block": {"interval_max_ms": 25}}, Path("/"))
    assert cfg.block_interval_max_ms == 25
    for bad in (-1, 60_001, True, "100", 0.5):
        with pytest.raises(ConfigError, match=r"block\.interval_max_ms: expected an integer"):
            parse_config({**BASE, "block": {"interval_max_ms": bad}}, Path("/"))


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({**BASE, "rpc": {"port": 0}}, "rpc.port"),
        ({**BASE, "rpc": {"prot": 1}}, "rpc.prot"),
        ({**BASE, "bogus": {}}, "bogus"),
        ({"node": {"index": 0, "data_dir": "."}}, "node.genesis"),
        ({**BASE, "consensus": {"log_window": 4}}, "consensus.log_window"),
        ({**BASE, "node": {**NODE, "event_loop": "tokio"}}, "node.event_loop"),
    ],
)
def test_config_errors_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(data, Path("/"))


@pytest.mark.parametrize("token", ["short", "x" * 15])
def test_config_refuses_short_admin_token(token: str) -> None:
    with pytest.raises(ConfigError, match=r"rpc\.admin_token"):
        parse_config({**BASE, "rpc": {"admin_token": token}}, Path("/"))
    assert parse_config({**BASE, "rpc": {"admin_token": "y" * 16}}, Path("/")).admin_token
