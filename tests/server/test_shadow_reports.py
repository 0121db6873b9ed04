"""Shadow figures in heartbeats: stored per device and pair by both heartbeat tiers (SQLite and
PostgreSQL), summed per fleet and model pair by ``shadow_report``, served by the operator API and
``edgefleet fleet shadows``; every bad report a clear INVALID_ARGUMENT that stores nothing."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from server_testkit import FakeClock, enrol, enrolled_fleet, migrate
from sqlalchemy import func, inspect, select

from edgefleet.core import deviceplane as dp
from edgefleet.core.errors import InvalidArgument, NotFound
from edgefleet.server import devices, shadows
from edgefleet.server.db.engine import Database
from edgefleet.server.db.schema import DeviceShadow
from edgefleet.server.deviceplane.heartbeat import HeartbeatItem, HeartbeatService

Db = Database


def pair(
    mirrored: int,
    *,
    agreed: int | None = None,
    handle: str = "det",
    shadow: tuple[str, str] = ("det", "2"),
    champion_ms: tuple[float, float] = (2.0, 4.0),
    shadow_ms: tuple[float, float] = (3.0, 8.0),
    errors: int = 0,
) -> dp.ShadowReport:
    """A pair det:1 -> ``shadow`` that compared every mirrored call (``agreed`` of them agreeing)."""
    agreed = mirrored if agreed is None else agreed
    return dp.ShadowReport(
        handle=handle,
        champion_model="det",
        champion_version="1",
        shadow_model=shadow[0],
        shadow_version=shadow[1],
        mirrored=mirrored + errors,
        completed=mirrored,
        agreed=agreed,
        disagreed=mirrored - agreed,
        shadow_errors=errors,
        dropped=1,
        champion_p50_ms=champion_ms[0],
        champion_p99_ms=champion_ms[1],
        shadow_p50_ms=shadow_ms[0],
        shadow_p99_ms=shadow_ms[1],
    )


def beat(*pairs: dp.ShadowReport) -> devices.Heartbeat:
    return devices.Heartbeat(agent_version="1.0", shadows=pairs)


def stored(db: Db) -> dict[tuple[str, str, str], int]:
    """(device, handle, shadow version) -> completed, of every stored row."""
    from edgefleet.server.db.schema import Device

    with db.session() as s:
        rows = s.execute(
            select(
                Device.name, DeviceShadow.handle, DeviceShadow.shadow_version, DeviceShadow.completed
            ).join(Device, Device.id == DeviceShadow.device_id)
        ).all()
    return {(name, handle, version): completed for name, handle, version, completed in rows}


# --- both tiers, both databases ------------------------------------------------------------------


def test_latest_figures_per_device_and_pair_summed_per_fleet_and_model_pair(db: Db, clock: FakeClock) -> None:
    serials = enrolled_fleet(db, "line-1", ["cam-a", "cam-b", "cam-c", "cam-d"])
    other = enrolled_fleet(db, "line-2", ["cam-z"])
    writer = HeartbeatService(db)
    try:
        # one batch: cam-a twice (the later heartbeat's cumulative figures win), cam-b with two pairs
        assert writer.batch(
            [
                HeartbeatItem("cam-a", serials["cam-a"], "line-1", beat(pair(10, agreed=9))),
                HeartbeatItem(
                    "cam-b",
                    serials["cam-b"],
                    "line-1",
                    beat(
                        pair(50, agreed=40, champion_ms=(1.0, 2.0), shadow_ms=(4.0, 10.0), errors=5),
                        pair(7, handle="det-b", shadow=("det-lite", "1"), shadow_ms=(1.0, 2.0)),
                    ),
                ),
                HeartbeatItem("cam-a", serials["cam-a"], "line-1", beat(pair(30, agreed=27))),
                HeartbeatItem("cam-z", other["cam-z"], "line-2", beat(pair(1000))),
            ]
        ) == [True, True, True, True]
        # the exact tier stores the same way (cam-c), and a heartbeat without Shadows changes nothing
        clock.advance(5)
        assert writer.one(HeartbeatItem("cam-c", serials["cam-c"], "line-1", beat(pair(20))))
        assert writer.batch([HeartbeatItem("cam-a", serials["cam-a"], "line-1", beat())]) == [True]
        assert stored(db) == {
            ("cam-a", "det", "2"): 30,
            ("cam-b", "det", "2"): 50,
            ("cam-b", "det-b", "1"): 7,
            ("cam-c", "det", "2"): 20,
            ("cam-z", "det", "2"): 1000,
        }
        with db.session() as s:
            main, lite = shadows.shadow_report(s, "line-1")
        assert main.key == ("det", "1", "det", "2") and lite.key == ("det", "1", "det-lite", "1")
        assert (main.devices, main.mirrored, main.completed, main.agreed, main.disagreed) == (
            3,
            105,
            100,
            87,
            13,
        )
        assert (main.shadow_errors, main.dropped) == (5, 3)
        assert main.agreement_rate == pytest.approx(0.87)
        assert main.shadow_error_rate == pytest.approx(5 / 105)
        # per device shadow / champion: p50 1.5, 4.0, 1.5; p99 2.0, 5.0, 2.0
        assert (main.p50_ratio_median, main.p50_ratio_worst) == (1.5, 4.0)
        assert (main.p99_ratio_median, main.p99_ratio_worst) == (2.0, 5.0)
        assert (main.champion_p99_ms_worst, main.shadow_p99_ms_worst) == (4.0, 10.0)
        assert main.last_reported == db.now()
        assert (lite.devices, lite.completed, lite.agreement_rate, lite.p50_ratio_worst) == (1, 7, 1.0, 0.5)

        with db.session() as s:
            assert [p.key for p in shadows.shadow_report(s, "line-1", shadow_model="det-lite")] == [lite.key]
            assert shadows.shadow_report(s, "line-1", champion_model="other") == []
            assert [p.devices for p in shadows.shadow_report(s, "line-1", "det", "det")] == [3]
            # since: cam-c's report is the only one received after the batch
            assert [(p.devices, p.completed) for p in shadows.shadow_report(s, "line-1", since=db.now())] == [
                (1, 20)
            ]
            (z,) = shadows.shadow_report(s, "line-2")
            assert (z.devices, z.completed) == (1, 1000)
            with pytest.raises(NotFound, match="fleet 'nowhere' does not exist"):
                shadows.shadow_report(s, "nowhere")

        # a pair started again on the agent reports smaller counters: the latest report is kept
        assert writer.batch([HeartbeatItem("cam-a", serials["cam-a"], "line-1", beat(pair(2)))]) == [True]
        assert stored(db)[("cam-a", "det", "2")] == 2
        # a deregistered device's figures no longer count (its rows go with the device's)
        with db.session() as s:
            devices.deregister_devices(s, "line-1", ["cam-b"], db.now())
        with db.session() as s:
            main, *rest = shadows.shadow_report(s, "line-1")
        assert (main.devices, main.completed, rest) == (2, 22, [])
        # a pair whose shadow has compared nothing yet: no rates, no ratios
        assert writer.one(
            HeartbeatItem(
                "cam-d", serials["cam-d"], "line-1", beat(pair(0, shadow=("new", "1"), shadow_ms=(0.0, 0.0)))
            )
        )
        with db.session() as s:
            (fresh,) = shadows.shadow_report(s, "line-1", shadow_model="new")
        assert (
            fresh.agreement_rate,
            fresh.shadow_error_rate,
            fresh.p50_ratio_median,
            fresh.p99_ratio_worst,
        ) == (
            None,
            None,
            None,
            None,
        )
    finally:
        writer.close()


BAD: list[tuple[Any, str]] = [
    (
        lambda p: (p,) * (dp.MAX_HEARTBEAT_SHADOWS + 1),
        f"a heartbeat reports at most {dp.MAX_HEARTBEAT_SHADOWS} shadow pairs, got {dp.MAX_HEARTBEAT_SHADOWS + 1}",
    ),
    (
        lambda p: (replace(p, mirrored=-1),),
        "shadow pair of handle 'det': Mirrored must be a count (0 or more), got -1",
    ),
    (lambda p: (replace(p, dropped=2**63),), f"Dropped must be a count (0 or more), got {2**63}"),
    (lambda p: (replace(p, shadow_errors=-3),), "ShadowErrors must be a count (0 or more), got -3"),
    (lambda p: (replace(p, shadow_p99_ms=-1.0),), "ShadowLatencyP99Ms must be 0 or more ms, got -1.0"),
    (
        lambda p: (replace(p, champion_p50_ms=float("inf")),),
        "ChampionLatencyP50Ms must be 0 or more ms, got inf",
    ),
    (
        lambda p: (replace(p, agreed=p.completed + 1),),
        "Agreed (11) and Disagreed (0) cannot exceed Completed (10)",
    ),
    (lambda p: (replace(p, handle=""),), "Handle must be 1-63 characters, got ''"),
    (lambda p: (replace(p, shadow_version="v" * 31),), "ShadowVersion must be 0-30 characters"),
    (lambda p: (p, replace(p, mirrored=99)), "shadow pair ('det', 'det', '1', 'det', '2') is reported twice"),
]


@pytest.mark.parametrize(("bad", "message"), BAD)
def test_bad_reports_are_refused_and_nothing_is_stored(db: Db, bad: Any, message: str) -> None:
    serials = enrolled_fleet(db, "line-1", ["cam-a"])
    writer = HeartbeatService(db)
    try:
        item = HeartbeatItem("cam-a", serials["cam-a"], "line-1", beat(*bad(pair(10))))
        assert not writer.batchable(item)  # left to the exact tier, which names the error
        with pytest.raises(InvalidArgument, match=re.escape(message)):
            writer.one(item)
        assert stored(db) == {}
    finally:
        writer.close()


# --- migration 0014 -------------------------------------------------------------------------------


def test_migration_0014_adds_device_shadows_and_takes_it_away_again(unmigrated: Database) -> None:
    db = unmigrated
    migrate(db, "0012")
    enrolled_fleet(db, "line-1", ["cam-a"])
    migrate(db, "0014")
    with db.session() as s:
        shadows.record_device_reports(s, devices.get_device(s, "cam-a"), [pair(4)], db.now())
    assert stored(db) == {("cam-a", "det", "2"): 4}

    def tables() -> set[str]:
        with db.engine.connect() as conn:
            return set(inspect(conn).get_table_names())

    migrate(db, "0012", down=True)
    assert "device_shadows" not in tables() and "devices" in tables()
    with db.session() as s:
        assert devices.get_device(s, "cam-a").name == "cam-a"  # the devices are untouched
    migrate(db, "head")
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(DeviceShadow)) == 0


# --- the operator API and CLI through a real server -----------------------------------------------


def test_devices_heartbeats_reach_the_api_and_the_cli(
    fleet_server: Any,
    op: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    operator_token: str,
) -> None:
    from edgefleet.cli import main as cli_main

    op.create_fleet("shadowed", "s3://bucket/shadowed")
    registered = op.register_devices("shadowed", [{"DeviceName": f"sh-{i}"} for i in range(3)])
    cams = [
        enrol(fleet_server.endpoints.api_url, r["EnrolmentToken"], tmp_path / r["DeviceName"])
        for r in registered
    ]
    try:
        for cam, figures in zip(
            cams, (pair(10, agreed=9), pair(20, agreed=20), pair(30, agreed=21)), strict=True
        ):
            for _ in range(2):  # sent twice (a retry): still one device's figures
                response = cam.call("SendHeartbeat", {"AgentVersion": "1.0", "Shadows": [figures.to_wire()]})
                assert response.status_code == 200, response.text
        (got,) = op.fleet_shadows("shadowed")["ShadowPairs"]
        assert {k: got[k] for k in ("ChampionModel", "ChampionVersion", "ShadowModel", "ShadowVersion")} == {
            "ChampionModel": "det",
            "ChampionVersion": "1",
            "ShadowModel": "det",
            "ShadowVersion": "2",
        }
        assert (got["DeviceCount"], got["Completed"], got["Agreed"], got["Disagreed"]) == (3, 60, 50, 10)
        assert got["AgreementRate"] == pytest.approx(50 / 60)
        assert (got["LatencyRatioP50Median"], got["LatencyRatioP99Worst"]) == (1.5, 2.0)
        assert op.fleet_shadows("shadowed", shadow_model="other")["ShadowPairs"] == []
        assert op.fleet_shadows("shadowed", champion_model="det", since="2000-01-01T00:00:00")["ShadowPairs"]

        # bad reports: 400 INVALID_ARGUMENT with the reason; the stored figures stay
        for bad, message in (
            ({**pair(5).to_wire(), "Agreed": -1}, "Agreed must be a count (0 or more), got -1"),
            ({**pair(5).to_wire(), "Mirrored": 1.5}, "Shadows.0.Mirrored: Input should be a valid integer"),
            ({"Handle": "det", "ChampionModel": "det"}, "Shadows.0.ShadowModel: Field required"),
        ):
            response = cams[0].call("SendHeartbeat", {"AgentVersion": "1.0", "Shadows": [bad]})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "INVALID_ARGUMENT"
            assert message in response.json()["error"]["message"]
        many = [replace(pair(1), handle=f"h{i}").to_wire() for i in range(dp.MAX_HEARTBEAT_SHADOWS + 1)]
        response = cams[0].call("SendHeartbeat", {"AgentVersion": "1.0", "Shadows": many})
        assert (
            response.status_code == 400 and "at most 32 shadow pairs" in response.json()["error"]["message"]
        )
        assert op.fleet_shadows("shadowed")["ShadowPairs"][0]["Completed"] == 60
        with pytest.raises(NotFound, match="fleet 'nowhere' does not exist"):
            op.fleet_shadows("nowhere")
        with pytest.raises(InvalidArgument):
            op.fleet_shadows("shadowed", since="yesterday")

        # the CLI: a table, and the API's JSON with --json
        endpoints = fleet_server.endpoints
        monkeypatch.setenv("EDGEFLEET_CLIENT_CONFIG", str(tmp_path / "client.json"))
        monkeypatch.setenv("EDGEFLEET_SERVER", endpoints.api_url)
        monkeypatch.setenv("EDGEFLEET_CA_CERT", str(endpoints.ca_cert))
        monkeypatch.setenv("EDGEFLEET_TOKEN", operator_token)
        capsys.readouterr()
        assert cli_main.main(["fleet", "shadows", "shadowed"]) == 0
        out = capsys.readouterr().out
        header, row = out.splitlines()[:2]
        assert header.split()[:5] == ["CHAMPION", "SHADOW", "DEVICES", "MIRRORED", "COMPLETED"]
        assert row.split()[:6] == ["det:1", "det:2", "3", "60", "60", "0.8333"]
        assert cli_main.main(["fleet", "shadows", "shadowed", "--json", "--shadow-model", "det"]) == 0
        assert json.loads(capsys.readouterr().out)["ShadowPairs"][0]["DeviceCount"] == 3
        assert cli_main.main(["fleet", "shadows", "shadowed", "--champion-model", "none"]) == 0
        assert "no device reports a shadow pair" in capsys.readouterr().out
    finally:
        for cam in cams:
            cam.close()
