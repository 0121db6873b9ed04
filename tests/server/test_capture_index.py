"""The capture index: heartbeats' ``Capture.Uploads`` are indexed once per key (a retried heartbeat
adds nothing), keys outside the device's fleet are refused with nothing stored, and each device's
spool backlog is kept; through the group commit, the exact tier and a real server. SQLite, and
PostgreSQL when reachable."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from server_testkit import FakeClock, enrol, enrolled_fleet, migrate
from sqlalchemy import func, inspect, select, text

from edgefleet.core import deviceplane as dp
from edgefleet.core.errors import InvalidArgument
from edgefleet.server import captures, devices, reports
from edgefleet.server.api import render
from edgefleet.server.db.engine import Database
from edgefleet.server.db.schema import CaptureObject, DeviceCaptureStatus
from edgefleet.server.deviceplane.heartbeat import HeartbeatItem, HeartbeatService

Db = Any
Server = Any
Client = Any

HOUR = datetime(2030, 1, 1, 11, tzinfo=UTC)


def capture_key(fleet: str, model: str, *, prefix: str = "captures", hour: datetime = HOUR) -> str:
    """A key of the capture layout (docs/capture-format.md) with a fresh batch id."""
    folders = hour.strftime("%Y/%m/%d/%H")
    return "/".join(p for p in (prefix, fleet, model, folders, f"{uuid.uuid4().hex}.jsonl") if p)


def upload(
    key: str, model: str = "det", version: str = "1", *, records: int = 3, at: datetime = HOUR
) -> dp.CaptureUpload:
    return dp.CaptureUpload(
        key=key,
        model_name=model,
        model_version=version,
        records=records,
        size=100 * records,
        first_inference=at,
        last_inference=at + timedelta(seconds=records),
        raw_objects=1,
    )


def beat(*uploads: dp.CaptureUpload, backlog: int = 0) -> devices.Heartbeat:
    report = dp.CaptureReport(backlog_records=backlog, backlog_bytes=10 * backlog, uploads=uploads)
    return devices.Heartbeat(agent_version="1.0", capture=report)


def indexed(db: Db) -> list[tuple[str, str, str, int, int]]:
    with db.session() as s:
        rows = s.scalars(select(CaptureObject).order_by(CaptureObject.key))
        return [(r.key, r.device.name, r.model_version, r.records, r.size) for r in rows]


# --- keys -----------------------------------------------------------------------------------------


def test_keys_are_read_from_their_end_whatever_the_prefix() -> None:
    batch = uuid.uuid4().hex
    for prefix in ("", "captures", "a/b/c"):
        key = "/".join(p for p in (prefix, f"line-1/det/2030/01/31/09/{batch}.jsonl") if p)
        parsed = captures.parse_key(key)
        assert (parsed.prefix, parsed.fleet, parsed.model_name, parsed.batch_id) == (
            prefix,
            "line-1",
            "det",
            batch,
        )
        assert parsed.hour == datetime(2030, 1, 31, 9, tzinfo=UTC)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("line-1/det/2030/01/31/09/zz.jsonl", "is not <prefix>/<fleet>/<model>"),
        (f"det/2030/01/31/09/{'a' * 32}.jsonl", "is not <prefix>/<fleet>/<model>"),
        (f"line-1/det/2030/01/31/09/raw-data/{'a' * 32}.jsonl", "year folder '01' is not 4 digits"),
        (f"line-1/det/2030/13/31/09/{'a' * 32}.jsonl", "the hour folders are not a UTC hour"),
        (f"line-1/det/2030/1/31/09/{'a' * 32}.jsonl", "month folder '1' is not 2 digits"),
        (f"line-1/../2030/01/31/09/{'a' * 32}.jsonl", "unsafe component '..'"),
        (f"/line-1/det/2030/01/31/09/{'a' * 32}.jsonl", "must be a non-empty relative"),
    ],
)
def test_keys_not_of_the_layout_are_refused(key: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        captures.parse_key(key)


def test_an_upload_outside_the_fleet_or_the_model_folder_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="is outside fleet 'line-1'"):
        captures.check_upload(upload(capture_key("line-2", "det")), "line-1")
    with pytest.raises(InvalidArgument, match="folder of model 'other', not of its ModelName 'det'"):
        captures.check_upload(upload(capture_key("line-1", "other")), "line-1")
    late = dp.CaptureUpload(
        capture_key("line-1", "det"),
        "det",
        "1",
        1,
        1,
        first_inference=HOUR,
        last_inference=HOUR - timedelta(1),
    )
    with pytest.raises(InvalidArgument, match="FirstInferenceTime is after LastInferenceTime"):
        captures.check_upload(late, "line-1")
    with pytest.raises(InvalidArgument, match="Records must be 0 to 2147483647, got -1"):
        captures.check_upload(dp.CaptureUpload(capture_key("line-1", "det"), "det", "1", -1, 0), "line-1")
    too_many = dp.CaptureUpload(capture_key("line-1", "det"), "det", "1", 2**31, 0)
    with pytest.raises(InvalidArgument, match="Records must be 0 to 2147483647, got 2147483648"):
        captures.check_upload(too_many, "line-1")
    with pytest.raises(InvalidArgument, match=r"Capture\.BacklogRecords must be a count"):
        captures.check_report(dp.CaptureReport(backlog_records=-1), "line-1")


# --- the heartbeat's two tiers --------------------------------------------------------------------


def test_uploads_are_indexed_once_by_either_tier(db: Db, clock: FakeClock) -> None:
    serials = enrolled_fleet(db, "line-1", ["cam-a", "cam-b"])
    writer = HeartbeatService(db)
    k1, k2, k3 = (capture_key("line-1", "det") for _ in range(3))
    try:
        # one batch: cam-a twice (its older heartbeat's uploads count too), cam-b once, k1 twice
        first = beat(upload(k1), backlog=5)
        second = beat(upload(k1), upload(k2, version="2"), backlog=2)
        assert writer.batch(
            [
                HeartbeatItem("cam-a", serials["cam-a"], "line-1", first),
                HeartbeatItem("cam-b", serials["cam-b"], "line-1", beat(upload(k3, records=7))),
                HeartbeatItem("cam-a", serials["cam-a"], "line-1", second),
            ]
        ) == [True, True, True]
        expected = sorted(
            [(k1, "cam-a", "1", 3, 300), (k2, "cam-a", "2", 3, 300), (k3, "cam-b", "1", 7, 700)]
        )
        assert indexed(db) == expected
        # a retried heartbeat (either tier, either device) adds nothing and changes no row
        clock.advance(30)
        assert writer.batch([HeartbeatItem("cam-a", serials["cam-a"], "line-1", second)]) == [True]
        assert writer.run(
            [HeartbeatItem("cam-b", serials["cam-b"], "line-1", beat(upload(k1, records=9)))]
        ) == [True]
        assert indexed(db) == expected
        # the exact tier indexes new keys the same way
        k4 = capture_key("line-1", "det", prefix="")
        assert writer.one(HeartbeatItem("cam-b", serials["cam-b"], "line-1", beat(upload(k4), backlog=4)))
        assert indexed(db) == sorted([*expected, (k4, "cam-b", "1", 3, 300)])
        with db.session() as s:
            status = {row.device_id: row for row in s.scalars(select(DeviceCaptureStatus))}
            by_name = {devices.get_device(s, n).id: n for n in ("cam-a", "cam-b")}
            backlog = {
                by_name[i]: (r.backlog_records, r.backlog_bytes, r.reported_at) for i, r in status.items()
            }
        # the newest report of a device wins its spool figures
        assert backlog == {"cam-a": (2, 20, db.now()), "cam-b": (4, 40, db.now())}
    finally:
        writer.close()


def test_index_rows_past_the_retention_are_deleted_and_newer_ones_kept(db: Db, clock: FakeClock) -> None:
    """The periodic work's purge forgets the objects whose newest record is older than the
    retention, in every fleet and model version, and keeps the rest (an object straddling the
    cut-off among them)."""
    serials = enrolled_fleet(db, "line-1", ["cam-a"]) | enrolled_fleet(db, "line-2", ["cam-b"])
    writer = HeartbeatService(db)
    old, cut = HOUR - timedelta(days=100), HOUR - timedelta(days=90)
    keys = {
        "old-a": capture_key("line-1", "det", hour=old),
        "old-b": capture_key("line-2", "det", hour=old),
        "old-v2": capture_key("line-1", "det", hour=old),
        "straddles": capture_key("line-1", "det", hour=cut - timedelta(hours=1)),
        "new": capture_key("line-1", "det"),
    }
    try:
        writer.one(
            HeartbeatItem(
                "cam-a", serials["cam-a"], "line-1",
                beat(
                    upload(keys["old-a"], at=old), upload(keys["old-v2"], version="2", at=old),
                    # first record an hour before the cut-off, last a day after it
                    dp.CaptureUpload(
                        key=keys["straddles"], model_name="det", model_version="1", records=2, size=200,
                        first_inference=cut - timedelta(hours=1), last_inference=cut + timedelta(days=1),
                        raw_objects=1,
                    ),
                    upload(keys["new"]),
                ),
            )
        )  # fmt: skip
        writer.one(HeartbeatItem("cam-b", serials["cam-b"], "line-2", beat(upload(keys["old-b"], at=old))))
        assert len(indexed(db)) == 5
        with db.session() as s:
            assert captures.purge_objects(s, cut) == 3
        assert sorted(k for k, *_ in indexed(db)) == sorted([keys["straddles"], keys["new"]])
        with db.session() as s:  # nothing more to forget
            assert captures.purge_objects(s, cut) == 0
    finally:
        writer.close()


def test_the_server_refuses_a_negative_capture_retention(capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.cli import main as cli_main

    with pytest.raises(SystemExit) as exited:
        cli_main.main(["server", "--capture-retention", "-1"])
    assert exited.value.code == 2
    assert "must be a number of seconds, 0 or more, got '-1'" in capsys.readouterr().err


def test_a_heartbeat_with_a_key_outside_its_fleet_is_refused_whole(db: Db, clock: FakeClock) -> None:
    serials = enrolled_fleet(db, "line-1", ["cam-a"])
    with db.session() as s:
        before = devices.get_device(s, "cam-a").last_heartbeat_at
    writer = HeartbeatService(db)
    try:
        clock.advance(30)
        good, foreign = capture_key("line-1", "det"), capture_key("line-2", "det")
        item = HeartbeatItem("cam-a", serials["cam-a"], "line-1", beat(upload(good), upload(foreign)))
        assert not writer.batchable(item)  # left to the exact tier, which gives the error
        [error] = writer.run([item])
        assert isinstance(error, InvalidArgument)
        assert f"key {foreign!r} is outside fleet 'line-1'" in str(error)
        # nothing of it was kept: no object, no backlog, not the heartbeat itself
        assert indexed(db) == []
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(DeviceCaptureStatus)) == 0
            assert devices.get_device(s, "cam-a").last_heartbeat_at == before
    finally:
        writer.close()


def test_real_heartbeats_carry_uploads_to_the_index(fleet_server: Server, op: Client, tmp_path: Path) -> None:
    op.create_fleet("cap-hb", "s3://bucket/cap-hb")
    [registered] = op.register_devices("cap-hb", [{"DeviceName": "cap-hb-1"}])
    assert op.describe_device("cap-hb-1")["Capture"] is None  # nothing reported yet
    cam = enrol(fleet_server.endpoints.api_url, registered["EnrolmentToken"], tmp_path / "cam")
    key = capture_key("cap-hb", "det")
    wire = dp.CaptureReport(
        backlog_records=1,
        uploads=(upload(key),),
        transfer_pending=4,
        transfer_pending_bytes=4096,
        transfer_oldest_age_seconds=12.5,
    ).to_wire()
    try:
        models = [{"ModelName": "det", "ModelVersion": "1"}]
        for _ in range(2):  # sent twice (a retry): one row
            response = cam.call("SendHeartbeat", {"AgentVersion": "1.0", "Models": models, "Capture": wire})
            assert response.status_code == 200, response.text
        # DescribeDevice and the fleet report see the sample
        described = op.describe_device("cap-hb-1")
        backlog = {k: v for k, v in described["Capture"].items() if k != "ReportedTime"}
        assert backlog == {
            "BacklogRecords": 1,
            "BacklogBytes": 0,
            "OldestBacklogAgeSeconds": 0.0,
            "Dropped": 0,
            "Failed": 0,
            "TransferPending": 4,
            "TransferPendingBytes": 4096,
            "OldestTransferAgeSeconds": 12.5,
        }
        [model] = described["Models"]
        assert datetime.fromisoformat(model["LatestSampleTime"]) == HOUR + timedelta(seconds=3)
        [stats] = op.fleet_report("cap-hb", regenerate=True)["ModelStats"]
        assert (stats["ModelName"], stats["SamplingDeviceCount"]) == ("det", 1)
        db = fleet_server.state.db
        with db.session() as s:
            rows = list(s.scalars(select(CaptureObject).where(CaptureObject.key == key)))
        assert [(r.device.name, r.fleet.name, r.records, r.raw_objects) for r in rows] == [
            ("cap-hb-1", "cap-hb", 3, 1)
        ]
        foreign = dp.CaptureReport(uploads=(upload(capture_key("other", "det")),)).to_wire()
        response = cam.call("SendHeartbeat", {"AgentVersion": "1.0", "Capture": foreign})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "INVALID_ARGUMENT"
        assert "is outside fleet 'cap-hb'" in response.json()["error"]["message"]
        for bad, message in (
            ({"TransferPending": -1}, "Capture.TransferPending must be a count (0 or more), got -1"),
            (
                {"OldestTransferAgeSeconds": -2.0},
                "Capture.OldestTransferAgeSeconds must be 0 or more, got -2.0",
            ),
        ):
            response = cam.call("SendHeartbeat", {"AgentVersion": "1.0", "Capture": bad})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["message"] == message
        # the refused heartbeats changed nothing
        assert op.describe_device("cap-hb-1")["Capture"]["TransferPending"] == 4
    finally:
        cam.close()


# --- what the index feeds: the fleet report's sampling counts, DescribeDevice's LatestSampleTime ---

WINDOW = timedelta(minutes=10)


def _sampling(db: Db, fleet: str) -> dict[tuple[str, str], int]:
    with db.session() as s:
        report = reports.generate_report(s, fleet, db.now(), WINDOW).report
    assert report is not None
    return {(m["ModelName"], m["ModelVersion"]): m["SamplingDeviceCount"] for m in report["ModelStats"]}


def _samples(db: Db, name: str) -> dict[tuple[str, str], datetime | None]:
    with db.session() as s:
        row = devices.get_device(s, name)
        return {
            (m.ModelName, m.ModelVersion): m.LatestSampleTime
            for m in render.device(row, captures.latest_samples(s, row), None).Models
        }


def test_the_index_feeds_sampling_counts_and_latest_sample_times(db: Db, clock: FakeClock) -> None:
    enrolled_fleet(db, "line-1", ["cam-a", "cam-b", "cam-c"])
    now = db.now()
    models = [devices.ModelReport("det", "1"), devices.ModelReport("det", "2")]

    def send(name: str, *uploads: dp.CaptureUpload, sample: datetime | None = None) -> None:
        reported = [devices.ModelReport(m.name, m.version, latest_sample=sample) for m in models]
        heartbeat = devices.Heartbeat("1.0", models=reported, capture=dp.CaptureReport(uploads=uploads))
        with db.session() as s:
            device = devices.get_device(s, name)
            devices.record_heartbeat(s, device, heartbeat, db.now())
            captures.record_device_report(s, device, heartbeat.capture, db.now())  # type: ignore[arg-type]

    recent, old = now - timedelta(minutes=2), now - timedelta(hours=2)
    # cam-a uploaded det 1 captures just now (its last record 3 s after the first), det 2 long ago
    send(
        "cam-a",
        upload(capture_key("line-1", "det"), at=recent),
        upload(capture_key("line-1", "det"), "det", "2", at=old),
    )
    # cam-b says nothing of samples: it uploaded an older det 1 object only
    send("cam-b", upload(capture_key("line-1", "det"), at=old))
    # cam-c is an Edge Manager agent: no uploads, its own LatestSampleTime
    send("cam-c", sample=recent)
    assert _sampling(db, "line-1") == {("det", "1"): 2, ("det", "2"): 1}
    assert _samples(db, "cam-a") == {
        ("det", "1"): recent + timedelta(seconds=3),
        ("det", "2"): old + timedelta(seconds=3),
    }
    assert _samples(db, "cam-b") == {("det", "1"): old + timedelta(seconds=3), ("det", "2"): None}
    assert _samples(db, "cam-c") == {("det", "1"): recent, ("det", "2"): recent}
    # the later of the two wins: a reported time newer than the index, and an index newer than it
    send("cam-b", sample=recent)
    assert _samples(db, "cam-b") == {("det", "1"): recent, ("det", "2"): recent}
    send("cam-a", sample=old)
    assert _samples(db, "cam-a")[("det", "1")] == recent + timedelta(seconds=3)
    # the window moves on: nobody sampled in the last ten minutes; offline devices never count
    clock.advance(3600)
    send("cam-a", upload(capture_key("line-1", "det"), at=db.now() - timedelta(minutes=1)))
    assert _sampling(db, "line-1") == {("det", "1"): 1, ("det", "2"): 0}


# --- migration 0006 -------------------------------------------------------------------------------


def test_migration_0006_adds_the_index_and_takes_it_away_again(unmigrated: Database) -> None:
    db = unmigrated
    migrate(db, "0005")
    enrolled_fleet(db, "line-1", ["cam-a"])
    migrate(db, "head")
    with db.session() as s:
        device = devices.get_device(s, "cam-a")
        captures.record_device_report(
            s,
            device,
            dp.CaptureReport(backlog_records=1, uploads=(upload(capture_key("line-1", "det")),)),
            db.now(),
        )
    assert [row[1] for row in indexed(db)] == ["cam-a"]
    migrate(db, "0005", down=True)
    with db.engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
    assert {"capture_objects", "device_capture_status"}.isdisjoint(tables) and "devices" in tables
    with db.session() as s:
        assert devices.get_device(s, "cam-a").name == "cam-a"  # the devices are untouched
    migrate(db, "head")
    assert indexed(db) == []


def test_migration_0012_adds_the_transfer_backlog_and_takes_it_away_again(unmigrated: Database) -> None:
    db = unmigrated
    migrate(db, "0009")
    serials = enrolled_fleet(db, "line-1", ["cam-a"])
    assert serials
    with db.engine.begin() as conn:  # a status row written before the migration
        device_id = conn.execute(text("SELECT id FROM devices WHERE name = 'cam-a'")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO device_capture_status (device_id, backlog_records, backlog_bytes, "
                "oldest_age_seconds, dropped, failed, reported_at) VALUES (:d, 5, 50, 1.0, 0, 0, :t)"
            ),
            {"d": device_id, "t": HOUR},
        )
    migrate(db, "head")
    with db.session() as s:
        row = s.get(DeviceCaptureStatus, device_id)
        assert row is not None and (
            row.backlog_records,
            row.transfer_pending,
            row.transfer_pending_bytes,
        ) == (
            5,
            0,
            0,
        )
        assert row.transfer_oldest_age_seconds == 0.0

    def columns() -> set[str]:
        with db.engine.connect() as conn:
            return {c["name"] for c in inspect(conn).get_columns("device_capture_status")}

    migrate(db, "0009", down=True)
    assert not {c for c in columns() if c.startswith("transfer_")} and "backlog_records" in columns()
    migrate(db, "head")
    assert {"transfer_pending", "transfer_pending_bytes", "transfer_oldest_age_seconds"} <= columns()
