"""The stored time series of fleet-level model figures: sampled by the periodic work from real
heartbeats (SQLite and PostgreSQL), one row per series and interval however often and by however
many replicas it runs, each interval's error rate from consecutive samples, deleted after the
summary retention, served by ``GET /api/v1/fleets/{fleet}/figures`` and the dashboard's
``/ui/data/figures/history``; migration 0015 both ways."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from server_testkit import FakeClock, enrolled_fleet, migrate
from sqlalchemy import func, inspect, select

from edgefleet.core.errors import InvalidArgument, NotFound
from edgefleet.server import devices, figures
from edgefleet.server.db.engine import Database
from edgefleet.server.db.schema import ModelFigureSample
from edgefleet.server.deviceplane.heartbeat import HeartbeatItem, HeartbeatService

Db = Database
INTERVAL = 60


def beat(
    requests: int, errors: int, *, p50: float = 1.0, p99: float = 4.0, version: str = "1"
) -> devices.Heartbeat:
    return devices.Heartbeat(
        agent_version="1.0",
        models=[
            devices.ModelReport(
                "det",
                version,
                metrics=[
                    {"MetricName": "requests", "Value": requests},
                    {"MetricName": "errors", "Value": errors},
                    {"MetricName": "latency_p50_ms", "Value": p50},
                    {"MetricName": "latency_p99_ms", "Value": p99},
                ],
            )
        ],
    )


def send(db: Db, serials: dict[str, str], fleet: str, beats: dict[str, devices.Heartbeat]) -> None:
    writer = HeartbeatService(db)
    try:
        for name, hb in beats.items():
            assert writer.one(HeartbeatItem(name, serials[name], fleet, hb))
    finally:
        writer.close()


def replica(db: Db, tmp_path: Path, **timing: Any) -> Any:
    """One replica's state on ``db`` (the periodic work's input)."""
    from edgefleet.server.api.state import AppState
    from edgefleet.server.artifacts import open_artifact_store
    from edgefleet.server.ca import FleetCA
    from edgefleet.server.config import ServerConfig, Timing

    return AppState(
        config=ServerConfig(data_dir=tmp_path, timing=Timing(figures_interval=INTERVAL, **timing)),
        db=db,
        artifacts=open_artifact_store(str(tmp_path / "artifacts")),
        ca=FleetCA.load_or_create(db),
    )


def rows(db: Db) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(ModelFigureSample)) or 0)


@pytest.fixture
def aligned(clock: FakeClock) -> FakeClock:
    """The clock 5 s into an interval (so a few seconds later is still the same interval)."""
    clock.current = datetime(2030, 1, 1, 12, 0, 5, tzinfo=UTC)
    return clock


def test_the_periodic_work_samples_each_interval_once(db: Db, aligned: FakeClock, tmp_path: Path) -> None:
    from edgefleet.server.jobs import run_monitoring, run_once

    serials = enrolled_fleet(db, "line-1", ["cam-a", "cam-b"])
    other = enrolled_fleet(db, "line-2", ["cam-z"])
    send(db, serials, "line-1", {"cam-a": beat(100, 2, p99=4.0), "cam-b": beat(300, 6, p50=3.0, p99=9.0)})
    send(db, other, "line-2", {"cam-z": beat(10, 0)})
    one, two = replica(db, tmp_path / "a"), replica(db, tmp_path / "b")
    assert run_monitoring(one).figures_sampled == 2
    # the same interval again, on this replica and on another one: nothing more is written
    aligned.advance(20)
    send(db, serials, "line-1", {"cam-a": beat(150, 3)})
    assert run_monitoring(one).figures_sampled == 0
    assert run_monitoring(two).figures_sampled == 0
    run_once(two)
    assert rows(db) == 2
    # the next interval: 200 requests and 10 errors more on the same two devices
    aligned.advance(INTERVAL)
    send(db, serials, "line-1", {"cam-a": beat(200, 4), "cam-b": beat(400, 14, p50=3.0, p99=12.0)})
    assert run_monitoring(two).figures_sampled == 2
    assert run_monitoring(one).figures_sampled == 0
    assert rows(db) == 4
    with db.session() as s:
        (series,) = figures.figure_series(s, "line-1")
        everything = figures.figure_series(s)
        assert figures.figure_series(s, "line-1", "det", "2") == []
        assert figures.figure_series(s, since=aligned.current) == []
        with pytest.raises(NotFound, match="nope"):
            figures.figure_series(s, "nope")
    assert [(x.fleet, x.model_name, x.model_version) for x in everything] == [
        ("line-1", "det", "1"),
        ("line-2", "det", "1"),
    ]
    first, second = series.points
    start = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert (first.at, first.devices, first.requests, first.errors) == (start, 2, 400.0, 8.0)
    assert (first.p50_ms, first.p99_ms) == (2.0, 9.0)  # median of the devices' p50, the worst p99
    assert first.error_rate == pytest.approx(8 / 400)  # since the devices loaded the version
    assert second.at == start + timedelta(seconds=INTERVAL)
    assert (second.requests, second.errors, second.p99_ms) == (600.0, 18.0, 12.0)
    assert second.error_rate == pytest.approx(10 / 200)  # the interval's, not 18 / 600


def test_a_counter_reset_or_a_changed_device_set_leaves_the_interval_out(
    db: Db, aligned: FakeClock, tmp_path: Path
) -> None:
    from edgefleet.server.jobs import run_monitoring

    serials = enrolled_fleet(db, "line-1", ["cam-a", "cam-b"])
    state = replica(db, tmp_path, connected_window=90)
    send(db, serials, "line-1", {"cam-a": beat(100, 1)})
    run_monitoring(state)
    aligned.advance(INTERVAL)
    send(db, serials, "line-1", {"cam-a": beat(20, 0)})  # cam-a reloaded the version
    run_monitoring(state)
    aligned.advance(INTERVAL)
    send(db, serials, "line-1", {"cam-a": beat(20, 0)})  # no request in this interval
    run_monitoring(state)
    aligned.advance(INTERVAL)
    send(db, serials, "line-1", {"cam-a": beat(120, 5), "cam-b": beat(50, 0)})  # cam-b joined
    run_monitoring(state)
    aligned.advance(INTERVAL)
    send(db, serials, "line-1", {"cam-a": beat(220, 7), "cam-b": beat(150, 1)})
    run_monitoring(state)
    with db.session() as s:
        (series,) = figures.figure_series(s, "line-1")
    assert [p.devices for p in series.points] == [1, 1, 1, 2, 2]
    rates = [p.error_rate for p in series.points]
    assert rates[:4] == [0.01, None, None, None]
    assert rates[4] == pytest.approx(3 / 200)


def test_replicas_sampling_at_once_write_each_interval_once(
    db: Db, aligned: FakeClock, tmp_path: Path
) -> None:
    """Two replicas sample the same intervals at the same moment: each series gets one row per
    interval, written by one of them (the other's insert is ignored on the key)."""
    import threading

    serials = enrolled_fleet(db, "line-1", ["cam-a", "cam-b"])
    send(db, serials, "line-1", {"cam-a": beat(10, 0), "cam-b": beat(10, 0, version="2")})
    window = timedelta(days=1)
    totals: list[int] = []
    for _ in range(3):
        barrier = threading.Barrier(2)
        written: list[int] = []

        def one_replica(barrier: threading.Barrier, written: list[int]) -> None:
            barrier.wait()
            written.append(figures.sample(db, db.now(), interval=INTERVAL, connected_window=window))

        threads = [threading.Thread(target=one_replica, args=(barrier, written)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(written) == 2
        totals.append(sum(written))
        aligned.advance(INTERVAL)
    assert totals == [2, 2, 2]
    assert rows(db) == 6


def test_retention_deletes_old_samples(db: Db, aligned: FakeClock, tmp_path: Path) -> None:
    from edgefleet.server.jobs import run_monitoring, run_once

    serials = enrolled_fleet(db, "line-1", ["cam-a"])
    state = replica(db, tmp_path, summary_retention=3600)
    send(db, serials, "line-1", {"cam-a": beat(10, 0)})
    run_monitoring(state)
    aligned.advance(1800)
    send(db, serials, "line-1", {"cam-a": beat(20, 0)})
    run_monitoring(state)
    aligned.advance(2400)  # the first sample is 70 minutes old, the second 40
    run_once(state)
    with db.session() as s:
        kept = s.scalars(select(ModelFigureSample.at)).all()
    assert kept == [datetime(2030, 1, 1, 12, 30, tzinfo=UTC)]


def test_no_connected_device_no_sample_and_a_bad_interval_is_refused(db: Db, aligned: FakeClock) -> None:
    enrolled_fleet(db, "line-1", ["cam-a"])  # never sent a heartbeat
    assert figures.sample(db, db.now(), interval=INTERVAL, connected_window=timedelta(minutes=10)) == 0
    with pytest.raises(InvalidArgument, match=r"the figures interval must be 10-86400 seconds \(got 0\)"):
        figures.sample(db, db.now(), interval=0, connected_window=timedelta(minutes=10))
    assert rows(db) == 0


def test_server_refuses_a_bad_figures_interval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.cli import main as cli_main

    code = cli_main.main(["server", "--data-dir", str(tmp_path), "--port", "0", "--figures-interval", "5"])
    assert code == 1 and "the figures interval must be 10-86400 seconds (got 5)" in capsys.readouterr().err
    assert not (tmp_path / "edgefleet.db").exists()


# --- the API and the dashboard through a real server ------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Any]:
    from ui_testkit import start_ui

    # starting now: the server's TLS certificate is issued on this clock and checked on the real one
    dashboard = start_ui(tmp_path / "server", FakeClock(datetime.now(UTC)), figures_interval=INTERVAL)
    try:
        yield dashboard
    finally:
        dashboard.close()


def test_the_series_reaches_the_api_and_the_dashboard(served: Any) -> None:
    from ui_testkit import fill_fleet

    from edgefleet.server.jobs import run_monitoring

    state = served.state
    names = fill_fleet(state, "cams", 3)  # two devices with 100 requests and 2 errors each
    assert run_monitoring(state).figures_sampled == 1
    served.clock.advance(INTERVAL)
    with state.db.session() as s:
        for name in names[:-1]:
            devices.record_heartbeat(
                s, devices.get_device(s, name), beat(200, 7, version="1"), state.db.now()
            )
    # the detector's figures now come from beat(): model "det"; the old version's rows are gone
    assert run_monitoring(state).figures_sampled == 1
    auth = {"Authorization": f"Bearer {served.token}"}
    api = served.client.get("/api/v1/fleets/cams/figures", headers=auth)
    assert api.status_code == 200, api.text
    body = api.json()
    assert body["DeviceFleetName"] == "cams" and body["IntervalSeconds"] == INTERVAL
    assert [(x["ModelName"], x["ModelVersion"], len(x["Points"])) for x in body["Series"]] == [
        ("det", "1", 1),
        ("detector", "1", 1),
    ]
    detector = body["Series"][1]["Points"][0]
    assert (detector["DeviceCount"], detector["Requests"], detector["Errors"]) == (2, 200.0, 4.0)
    assert detector["ErrorRate"] == pytest.approx(0.02) and detector["LatencyP99Ms"] == 4.0
    only = served.client.get(
        "/api/v1/fleets/cams/figures", headers=auth, params={"ModelName": "det", "ModelVersion": "1"}
    ).json()
    assert [x["ModelName"] for x in only["Series"]] == ["det"]
    later = served.client.get(
        "/api/v1/fleets/cams/figures", headers=auth, params={"Since": "2999-01-01T00:00:00"}
    ).json()
    assert later["Series"] == []
    assert served.client.get("/api/v1/fleets/nope/figures", headers=auth).status_code == 404
    assert served.client.get("/api/v1/fleets/cams/figures").status_code == 401

    anonymous = served.new_client()
    try:
        assert anonymous.get("/ui/data/figures/history").status_code == 401
    finally:
        anonymous.close()
    assert served.login().status_code == 303
    history = served.client.get("/ui/data/figures/history").json()
    assert history["interval"] == INTERVAL
    by_model = {x["ModelName"]: x for x in history["series"]}
    assert set(by_model) == {"det", "detector"} and by_model["det"]["fleet"] == "cams"
    # the stored sample, then a point computed now from the latest heartbeats (nothing added: no rate)
    stored, live = by_model["det"]["Points"]
    assert stored == {**api.json()["Series"][0]["Points"][0]}
    assert (live["Requests"], live["ErrorRate"]) == (400.0, None)
    # the old version is no longer reported by a connected device: only its stored point
    assert len(by_model["detector"]["Points"]) == 1
    assert served.client.get("/ui/data/figures/history", params={"hours": 0}).status_code == 400
    assert served.client.get("/ui/data/figures/history", params={"fleet": "nope"}).status_code == 404


# --- migration 0015 ---------------------------------------------------------------------------------


def test_migration_0015_adds_the_samples_and_takes_them_away_again(unmigrated: Database) -> None:
    db = unmigrated
    migrate(db, "0014")
    serials = enrolled_fleet(db, "line-1", ["cam-a"])
    migrate(db, "0015")
    send(db, serials, "line-1", {"cam-a": beat(10, 1)})
    assert figures.sample(db, db.now(), interval=INTERVAL, connected_window=timedelta(minutes=10)) == 1

    def tables() -> set[str]:
        with db.engine.connect() as conn:
            return set(inspect(conn).get_table_names())

    migrate(db, "0014", down=True)
    assert "model_figure_samples" not in tables() and "devices" in tables()
    migrate(db, "head")
    assert rows(db) == 0
