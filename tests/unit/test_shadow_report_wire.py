"""The heartbeat's ``Shadows`` (core.deviceplane.ShadowReport): wire round trip and bad inputs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from edgefleet.core.deviceplane import MAX_HEARTBEAT_SHADOWS, Heartbeat, ShadowReport
from edgefleet.core.errors import InvalidArgument

PAIR = ShadowReport(
    handle="detector",
    champion_model="det",
    champion_version="1",
    shadow_model="det",
    shadow_version="2",
    mirrored=120,
    completed=110,
    agreed=100,
    disagreed=10,
    shadow_errors=3,
    dropped=7,
    champion_p50_ms=1.25,
    champion_p99_ms=4.5,
    shadow_p50_ms=1.5,
    shadow_p99_ms=6.0,
)


def test_a_pair_round_trips_with_the_documented_names() -> None:
    wire = PAIR.to_wire()
    assert wire == {
        "Handle": "detector",
        "ChampionModel": "det",
        "ChampionVersion": "1",
        "ShadowModel": "det",
        "ShadowVersion": "2",
        "Mirrored": 120,
        "Completed": 110,
        "Agreed": 100,
        "Disagreed": 10,
        "ShadowErrors": 3,
        "Dropped": 7,
        "ChampionLatencyP50Ms": 1.25,
        "ChampionLatencyP99Ms": 4.5,
        "ShadowLatencyP50Ms": 1.5,
        "ShadowLatencyP99Ms": 6.0,
    }
    assert ShadowReport.from_wire(wire) == PAIR
    assert PAIR.pair == ("detector", "det", "1", "det", "2")
    # omitted figures read as 0, omitted versions as ""
    bare = ShadowReport.from_wire({"Handle": "h", "ChampionModel": "a", "ShadowModel": "b"})
    assert bare == ShadowReport("h", "a", "", "b", "")
    # whole floats are counts (JSON writers may say 3.0)
    assert ShadowReport.from_wire({**wire, "Mirrored": 120.0}).mirrored == 120


def test_heartbeats_carry_shadows_only_when_there_are_some() -> None:
    at = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
    plain = Heartbeat(agent_version="1", taken_at=at)
    assert "Shadows" not in plain.to_wire()  # an agent without the extension: no field at all
    assert Heartbeat.from_wire(plain.to_wire()).shadows == ()
    beat = Heartbeat(agent_version="1", taken_at=at, shadows=(PAIR,) * 2)
    assert beat.to_wire()["Shadows"] == [PAIR.to_wire()] * 2
    assert Heartbeat.from_wire(beat.to_wire()) == beat
    assert MAX_HEARTBEAT_SHADOWS == 32


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"Handle": None}, r"a Shadows item needs Handle as text, got None"),
        ({"ChampionModel": 7}, r"a Shadows item needs ChampionModel as text, got 7"),
        ({"ShadowVersion": ["2"]}, r"a Shadows item needs ShadowVersion as text, got \['2'\]"),
        ({"Mirrored": "many"}, r"Shadows\.Mirrored must be a whole number, got 'many'"),
        ({"Agreed": 1.5}, r"Shadows\.Agreed must be a whole number, got 1\.5"),
        ({"Dropped": True}, r"Shadows\.Dropped must be a whole number, got True"),
        ({"Completed": float("nan")}, r"Shadows\.Completed must be a whole number, got nan"),
        (
            {"ShadowLatencyP99Ms": "slow"},
            r"Shadows\.ShadowLatencyP99Ms must be a number of milliseconds, got 'slow'",
        ),
    ],
)
def test_bad_items_are_invalid_arguments(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        ShadowReport.from_wire({**PAIR.to_wire(), **change})
    with pytest.raises(InvalidArgument, match=message):
        Heartbeat.from_wire({"AgentVersion": "1", "Shadows": [{**PAIR.to_wire(), **change}]})
