"""A device's reported models are keyed by (device, model name, model version): a device serving two
versions of one model at once (an A/B test under two handles) keeps, shows and counts both, on the
ordinary path and the group-committed one, and migration 0004 moves existing databases to that key.
SQLite, and PostgreSQL when reachable."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from server_testkit import FakeClock, enrolled_fleet, migrate, stored_model
from sqlalchemy import func, insert, inspect, select

from edgefleet.server import captures, devices, reports
from edgefleet.server.api import render
from edgefleet.server.db.engine import Database
from edgefleet.server.db.schema import Base, Device, DeviceModel, Fleet
from edgefleet.server.deviceplane.heartbeat import HeartbeatItem, HeartbeatService

Db = Any  # the db fixture yields a Database

WINDOW = timedelta(minutes=10)


def _model(
    name: str,
    version: str,
    *,
    inference: datetime | None = None,
    sample: datetime | None = None,
    p99: float = 3.0,
) -> devices.ModelReport:
    return devices.ModelReport(
        name,
        version,
        latest_sample=sample,
        latest_inference=inference,
        metrics=[{"Dimension": "model", "MetricName": "p99", "Value": p99, "Timestamp": None}],
    )


def _beat(*models: devices.ModelReport, agent: str = "1.0") -> devices.Heartbeat:
    return devices.Heartbeat(agent_version=agent, models=list(models))


def _record(db: Db, name: str, heartbeat: devices.Heartbeat) -> None:
    """A heartbeat through the ordinary path (devices.record_heartbeat)."""
    with db.session() as s:
        devices.record_heartbeat(s, devices.get_device(s, name), heartbeat, db.now())


def _models(db: Db, name: str) -> list[tuple[Any, ...]]:
    """Everything stored of a device's models, in the order DescribeDevice shows them."""
    with db.session() as s:
        return [stored_model(m) for m in devices.get_device(s, name).models]


def _versions(db: Db, name: str) -> list[tuple[str, str]]:
    return [m[:2] for m in _models(db, name)]


def _model_stats(db: Db, fleet: str) -> list[dict[str, Any]]:
    with db.session() as s:
        report = reports.generate_report(s, fleet, db.now(), WINDOW).report
    assert report is not None
    stats: list[dict[str, Any]] = report["ModelStats"]
    return stats


def _stat(
    name: str, version: str, offline: int, connected: int, active: int, sampling: int
) -> dict[str, Any]:
    return {
        "ModelName": name,
        "ModelVersion": version,
        "OfflineDeviceCount": offline,
        "ConnectedDeviceCount": connected,
        "ActiveDeviceCount": active,
        "SamplingDeviceCount": sampling,
    }


def test_two_versions_of_a_model_are_kept_shown_and_counted(db: Db, clock: FakeClock) -> None:
    enrolled_fleet(db, "line-1", ["cam-a", "cam-b", "cam-c"])
    # cam-c reported det 2.0 an hour ago and went quiet: offline under 2.0.
    _record(db, "cam-c", _beat(_model("det", "2.0")))
    clock.advance(3600)
    now = db.now()
    # cam-a serves det 2.0 (handle "detector") and det 3.0 (handle "detector-b"); only 3.0 sees traffic.
    _record(
        db,
        "cam-a",
        _beat(_model("det", "2.0"), _model("det", "3.0", inference=now, sample=now), _model("counter", "1")),
    )
    _record(db, "cam-b", _beat(_model("det", "2.0", inference=now)))
    served = [("counter", "1"), ("det", "2.0"), ("det", "3.0")]
    assert _versions(db, "cam-a") == served
    with db.session() as s:
        row = devices.get_device(s, "cam-a")
        described = render.device(row, captures.latest_samples(s, row), None)
        assert [(m.ModelName, m.ModelVersion) for m in described.Models] == served
        assert render.device_summary(devices.get_device(s, "cam-a")).Models == [
            {"ModelName": "counter", "ModelVersion": "1"},
            {"ModelName": "det", "ModelVersion": "2.0"},
            {"ModelName": "det", "ModelVersion": "3.0"},
        ]
        # a device serving two versions of the model is listed once
        listed = devices.list_devices(s, model_name="det", limit=10).items
        assert [d.name for d in listed] == ["cam-a", "cam-b", "cam-c"]
        assert [d.name for d in devices.list_devices(s, model_name="counter", limit=10).items] == ["cam-a"]
    assert _model_stats(db, "line-1") == [
        _stat("counter", "1", 0, 1, 0, 0),
        _stat("det", "2.0", 1, 2, 1, 0),
        _stat("det", "3.0", 0, 1, 1, 1),
    ]

    # The A/B test ends: a heartbeat listing only det 3.0 removes det 2.0 (and counter).
    clock.advance(30)
    _record(db, "cam-a", _beat(_model("det", "3.0", inference=db.now())))
    assert _versions(db, "cam-a") == [("det", "3.0")]
    assert _model_stats(db, "line-1") == [_stat("det", "2.0", 1, 1, 1, 0), _stat("det", "3.0", 0, 1, 1, 0)]


def test_a_version_listed_twice_keeps_its_last_entry(db: Db, clock: FakeClock) -> None:
    enrolled_fleet(db, "line-1", ["cam-a"])
    first, last = db.now() - timedelta(seconds=20), db.now() - timedelta(seconds=5)
    _record(
        db,
        "cam-a",
        _beat(_model("det", "3.0", inference=first, p99=9.0), _model("det", "3.0", inference=last)),
    )
    [(name, version, _, inference, metrics, _)] = _models(db, "cam-a")
    assert (name, version, inference, metrics[0]["Value"]) == ("det", "3.0", last, 3.0)
    # the row is updated in place by the next heartbeat that lists it twice again
    clock.advance(30)
    _record(
        db, "cam-a", _beat(_model("det", "3.0", p99=1.0), _model("det", "2.0"), _model("det", "3.0", p99=2.0))
    )
    stored = _models(db, "cam-a")
    assert [(m[0], m[1], m[4][0]["Value"], m[5]) for m in stored] == [
        ("det", "2.0", 3.0, db.now()),
        ("det", "3.0", 2.0, db.now()),
    ]


def test_the_group_commit_stores_every_version_like_the_ordinary_path(db: Db, clock: FakeClock) -> None:
    serials = enrolled_fleet(db, "line-1", ["cam-a", "cam-b", "ref-a", "ref-b"])
    writer = HeartbeatService(db)
    now = db.now()
    a_b_test = _beat(_model("det", "2.0"), _model("det", "3.0", inference=now), _model("counter", "1"))
    doubled = _beat(_model("det", "2.0", p99=7.0), _model("det", "2.0", inference=now, p99=4.0))
    try:
        # One batch: two devices, one serving two versions, the other listing a version twice.
        assert writer.batch(
            [
                HeartbeatItem("cam-a", serials["cam-a"], "line-1", a_b_test),
                HeartbeatItem("cam-b", serials["cam-b"], "line-1", doubled),
            ]
        ) == [True, True]
        _record(db, "ref-a", a_b_test)
        _record(db, "ref-b", doubled)
        assert _models(db, "cam-a") == _models(db, "ref-a")
        assert _versions(db, "cam-a") == [("counter", "1"), ("det", "2.0"), ("det", "3.0")]
        assert _models(db, "cam-b") == _models(db, "ref-b")
        assert [(m[1], m[4][0]["Value"]) for m in _models(db, "cam-b")] == [("2.0", 4.0)]
        assert _model_stats(db, "line-1") == [
            _stat("counter", "1", 0, 2, 0, 0),
            _stat("det", "2.0", 0, 4, 2, 0),
            _stat("det", "3.0", 0, 2, 2, 0),
        ]

        # Next batch: cam-a drops det 2.0 (only det 3.0 left, updated in place); cam-b moves to 3.0
        # while keeping 2.0; a device's newest heartbeat in a batch wins.
        clock.advance(30)
        only_new = _beat(_model("det", "3.0", inference=db.now(), p99=1.5))
        both = _beat(_model("det", "3.0"), _model("det", "2.0"), _model("det", "3.0", p99=8.0))
        assert writer.batch(
            [
                HeartbeatItem("cam-a", serials["cam-a"], "line-1", a_b_test),
                HeartbeatItem("cam-b", serials["cam-b"], "line-1", both),
                HeartbeatItem("cam-a", serials["cam-a"], "line-1", only_new),
            ]
        ) == [True, True, True]
        _record(db, "ref-a", only_new)
        _record(db, "ref-b", both)
        assert _models(db, "cam-a") == _models(db, "ref-a")
        assert _versions(db, "cam-a") == [("det", "3.0")]
        assert _models(db, "cam-b") == _models(db, "ref-b")
        assert [(m[1], m[4][0]["Value"], m[5]) for m in _models(db, "cam-b")] == [
            ("2.0", 3.0, db.now()),
            ("3.0", 8.0, db.now()),
        ]
        with db.session() as s:  # nothing else is left behind
            assert s.scalar(select(func.count()).select_from(DeviceModel)) == 6

        # Through the queue as well (concurrent heartbeats, one batch or several).
        clock.advance(30)

        async def send() -> list[bool]:
            return await asyncio.gather(
                writer.submit(HeartbeatItem("cam-a", serials["cam-a"], "line-1", a_b_test)),
                writer.submit(HeartbeatItem("cam-b", serials["cam-b"], "line-1", doubled)),
            )

        assert asyncio.run(send()) == [True, True]
        assert _versions(db, "cam-a") == [("counter", "1"), ("det", "2.0"), ("det", "3.0")]
        assert [(m[1], m[4][0]["Value"]) for m in _models(db, "cam-b")] == [("2.0", 4.0)]
    finally:
        writer.close()


def test_the_migrated_schema_matches_the_models(db: Db) -> None:
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        # autogenerate does not compare primary keys: check the one migration 0004 changed
        inspector = inspect(conn)
        key = inspector.get_pk_constraint("device_models")
        assert key["constrained_columns"] == ["device_id", "model_name", "model_version"]
        assert [c.name for c in DeviceModel.__table__.primary_key.columns] == key["constrained_columns"]
        assert {i["name"]: i["column_names"] for i in inspector.get_indexes("device_models")} == {
            "ix_device_models_model": ["model_name", "model_version"]
        }


def _rows(db: Database) -> list[tuple[str, str, str]]:
    with db.engine.connect() as conn:
        return [
            (device, model, version)
            for device, model, version in conn.execute(
                select(Device.name, DeviceModel.model_name, DeviceModel.model_version)
                .join(Device, Device.id == DeviceModel.device_id)
                .order_by(Device.name, DeviceModel.model_name, DeviceModel.model_version)
            )
        ]


def _key(db: Database) -> list[str]:
    with db.engine.connect() as conn:
        columns: list[str] = inspect(conn).get_pk_constraint("device_models")["constrained_columns"]
        return columns


def test_migration_0004_keeps_the_models_and_downgrades_to_one_version_per_name(unmigrated: Database) -> None:
    db = unmigrated
    migrate(db, "0003")
    assert _key(db) == ["device_id", "model_name"]
    t0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    t1 = t0 + timedelta(seconds=30)
    with db.engine.begin() as conn:
        fleet_id = conn.execute(
            insert(Fleet.__table__)
            .values(name="line-1", output_location="s3://b/p", tags={}, created_at=t0, updated_at=t0)
            .returning(Fleet.__table__.c.id)
        ).scalar_one()
        ids = {
            name: conn.execute(
                insert(Device.__table__)
                .values(name=name, fleet_id=fleet_id, registered_at=t0, updated_at=t0, agent_metrics=[])
                .returning(Device.__table__.c.id)
            ).scalar_one()
            for name in ("cam-a", "cam-b")
        }

        def model(device: str, name: str, version: str, at: datetime) -> dict[str, Any]:
            return {
                "device_id": ids[device],
                "model_name": name,
                "model_version": version,
                "metrics": [],
                "updated_at": at,
            }

        conn.execute(
            insert(DeviceModel.__table__),
            [
                model("cam-a", "det", "2.0", t0),
                model("cam-a", "counter", "1", t0),
                model("cam-b", "det", "3.0", t0),
            ],
        )
    migrate(db, "head")
    assert _key(db) == ["device_id", "model_name", "model_version"]
    assert _rows(db) == [("cam-a", "counter", "1"), ("cam-a", "det", "2.0"), ("cam-b", "det", "3.0")]
    with db.engine.begin() as conn:  # a second version of a model fits now
        conn.execute(
            insert(DeviceModel.__table__),
            [model("cam-a", "det", "3.0", t1), model("cam-b", "det", "4.0", t0)],
        )
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []

    # Down again: per device and name the most recent report stays (of equal ones, the highest version).
    migrate(db, "0003", down=True)
    assert _key(db) == ["device_id", "model_name"]
    assert _rows(db) == [("cam-a", "counter", "1"), ("cam-a", "det", "3.0"), ("cam-b", "det", "4.0")]
    migrate(db, "head")
    assert _key(db) == ["device_id", "model_name", "model_version"]
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
