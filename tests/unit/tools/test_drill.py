"""The detector drill: bad arguments get one line and exit 2; a short replay of two scenarios
on two seeds keeps false quarantine and recall above their floors."""

from __future__ import annotations

import asyncio

import pytest

from node.detect.scenarios import Scenario, ScenarioError
from node.tools import drill


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--seeds", "0"], "--seeds"),
        (["--seeds", "many"], "--seeds"),
        (["--scenarios", "steady,nope"], "unknown scenario 'nope'"),
        (["--scenarios", ","], "no scenario given"),
        (["--start", "-1"], "--start must be >= 0"),
        (["--jobs", "0"], "--jobs"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        drill.main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("detector_drill: error: ")
    assert needle in lines[0]


def test_scenario_parameters_are_checked() -> None:
    with pytest.raises(ScenarioError, match="unknown scenario"):
        Scenario("nope", 0)
    with pytest.raises(ScenarioError, match="seed"):
        Scenario("steady", -1)
    with pytest.raises(ScenarioError, match="scored_steps"):
        Scenario("steady", 0, scored_steps=0)


def test_short_replay_meets_the_floors() -> None:
    # 160 scored steps: 4 cases of each kind per seed, next to ~900 ordinary txs.
    name = "steady"
    tallies = [asyncio.run(drill.replay(Scenario(name, seed, scored_steps=160))) for seed in (0, 1)]
    row = drill.summarize(name, tallies)
    assert row["ordinary"] > 1500
    assert row["false_quarantine"] <= drill.TARGETS["false_quarantine"]
    for kind in ("huge", "drain", "burst", "fanout"):
        assert row[f"recall_{kind}"] is not None
        assert row[f"recall_{kind}"] >= drill.TARGETS[kind], (kind, row)
    assert drill.misses(row) == []
