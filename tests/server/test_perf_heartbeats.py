"""Group-committed heartbeats (edgefleet.server.deviceplane.heartbeat): same result as the ordinary path,
revocation honoured, nothing acknowledged unless stored. SQLite, and PostgreSQL when reachable."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from server_testkit import TOKEN_TTL, FakeClock, enrolled_fleet, make_csr, stored_model
from sqlalchemy import text

from edgefleet.core.errors import Code, EdgefleetError
from edgefleet.server import devices
from edgefleet.server.ca import FleetCA
from edgefleet.server.deviceplane.heartbeat import HeartbeatItem, HeartbeatService

Db = Any  # the db fixture yields a Database


def _beat(version: str, models: dict[str, str], *, platform: tuple[str, str, str] | None = None) -> Any:
    stamp = datetime(2030, 1, 1, 11, 59, tzinfo=UTC)
    return devices.Heartbeat(
        agent_version=version,
        agent_metrics=[
            {"Dimension": "device", "MetricName": "cpu", "Value": 12.5, "Timestamp": stamp.isoformat()}
        ],
        models=[
            devices.ModelReport(
                name,
                v,
                latest_inference=stamp,
                metrics=[{"Dimension": "model", "MetricName": "p99", "Value": 3.0, "Timestamp": None}],
            )
            for name, v in models.items()
        ],
        platform=platform,
    )


def _snapshot(db: Db, name: str) -> dict[str, Any]:
    with db.session() as s:
        d = devices.get_device(s, name)
        return {
            "agent_version": d.agent_version,
            "agent_metrics": d.agent_metrics,
            "last_heartbeat_at": d.last_heartbeat_at,
            "platform": (d.platform_os, d.platform_arch, d.platform_accelerator),
            "models": [stored_model(m) for m in d.models],
        }


def test_a_batch_stores_what_the_ordinary_path_stores(db: Db, clock: FakeClock) -> None:
    serials = enrolled_fleet(db, "line-1", ["cam-a", "cam-b", "cam-c"])
    writer = HeartbeatService(db)
    try:
        first = _beat("1.0", {"detector": "1", "counter": "4"}, platform=("linux", "x86_64", "none"))
        assert writer.batch([HeartbeatItem(n, serials[n], "line-1", first) for n in ("cam-a", "cam-b")]) == [
            True,
            True,
        ]
        with db.session() as s:  # the reference: cam-c through devices.record_heartbeat
            devices.record_heartbeat(s, devices.get_device(s, "cam-c"), first, db.now())
        reference = _snapshot(db, "cam-c")
        assert _snapshot(db, "cam-a") == reference == _snapshot(db, "cam-b")
        assert reference["platform"] == ("linux", "x86_64", "none")
        # The next heartbeat replaces the model list (counter gone, classifier new, detector updated);
        # a heartbeat without Platform keeps the known one; a device's newest heartbeat in a batch wins.
        clock.advance(30)
        second = _beat("1.1", {"detector": "2", "classifier": "1"})
        newer = _beat("1.2", {"detector": "2", "classifier": "1"})
        assert writer.batch(
            [
                HeartbeatItem("cam-a", serials["cam-a"], "line-1", second),
                HeartbeatItem("cam-a", serials["cam-a"], "line-1", newer),
            ]
        ) == [True, True]
        with db.session() as s:
            devices.record_heartbeat(s, devices.get_device(s, "cam-c"), newer, db.now())
        assert _snapshot(db, "cam-a") == _snapshot(db, "cam-c")
        assert [m[:2] for m in _snapshot(db, "cam-a")["models"]] == [("classifier", "1"), ("detector", "2")]
        assert _snapshot(db, "cam-a")["last_heartbeat_at"] == clock.current
        assert _snapshot(db, "cam-b")["agent_version"] == "1.0"  # untouched by the second batch
    finally:
        writer.close()


def test_unknown_foreign_and_revoked_identities_are_handed_back(db: Db) -> None:
    serials = enrolled_fleet(db, "line-1", ["cam-a", "cam-b"])
    enrolled_fleet(db, "line-2", ["cam-z"])
    writer = HeartbeatService(db)
    beat = _beat("1.0", {})
    try:
        assert writer.batch(
            [
                HeartbeatItem("cam-a", serials["cam-a"], "line-1", beat),
                HeartbeatItem("cam-b", serials["cam-b"], "line-2", beat),  # names another fleet
                HeartbeatItem("cam-b", "ffff", "line-1", beat),  # not its certificate
                HeartbeatItem("ghost", "abcd", "line-1", beat),  # not registered
            ]
        ) == [True, False, False, False]
        assert _snapshot(db, "cam-b")["agent_version"] is None
        # cam-a's identity is cached now; deregistration must still stop its heartbeats at once.
        with db.session() as s:
            devices.deregister_devices(s, None, ["cam-a"], db.now())
        assert writer.batch([HeartbeatItem("cam-a", serials["cam-a"], "line-1", _beat("2.0", {}))]) == [False]
        # A re-enrolment revokes the old certificate: the new serial works, the old one does not.
        with db.session() as s:
            token = devices.new_enrolment_token(s, "cam-b", FleetCA.load_or_create(db), db.now(), TOKEN_TTL)
        assert writer.batch([HeartbeatItem("cam-b", serials["cam-b"], "line-1", beat)]) == [True]
        with db.session() as s:
            device, _ = devices.enrol(
                s, token.enrolment_token, make_csr()[1], FleetCA.load_or_create(db), db.now(), 365
            )
            new_serial = device.cert_serial
        assert new_serial is not None
        assert writer.batch(
            [
                HeartbeatItem("cam-b", serials["cam-b"], "line-1", _beat("old", {})),
                HeartbeatItem("cam-b", new_serial, "line-1", _beat("new", {})),
            ]
        ) == [False, True]
        assert _snapshot(db, "cam-b")["agent_version"] == "new"
    finally:
        writer.close()


def test_concurrent_writes_are_acknowledged_only_once_stored(db: Db) -> None:
    names = [f"cam-{i}" for i in range(40)]
    serials = enrolled_fleet(db, "line-1", names)
    writer = HeartbeatService(db, max_batch=7)

    async def send_all() -> list[bool]:
        return await asyncio.gather(
            *(
                writer.submit(HeartbeatItem(n, serials[n], "line-1", _beat(f"v{i}", {"detector": str(i)})))
                for i, n in enumerate(names)
            ),
            writer.submit(HeartbeatItem("ghost", "abcd", "line-1", _beat("x", {}))),
        )

    try:
        results = asyncio.run(send_all())
        assert results == [True] * len(names) + [False]
        for i, name in enumerate(names):  # every acknowledged heartbeat is in the database
            snapshot = _snapshot(db, name)
            assert snapshot["agent_version"] == f"v{i}" and snapshot["models"][0][1] == str(i)
        assert writer.stored == len(names) and writer.batches >= len(names) // 7
    finally:
        writer.close()

    async def after_close() -> bool:
        return await writer.submit(HeartbeatItem(names[0], serials[names[0]], "line-1", _beat("late", {})))

    assert asyncio.run(after_close()) is False  # a closed writer hands heartbeats to the ordinary path


def test_a_failed_transaction_fails_every_heartbeat_of_the_batch(db: Db) -> None:
    if db.dialect != "postgresql":
        pytest.skip("needs a database that enforces column lengths (PostgreSQL) to make a batch fail")
    serials = enrolled_fleet(db, "line-1", ["cam-a", "cam-b"])
    writer = HeartbeatService(db)
    oversized = devices.Heartbeat(agent_version="v" * 65)  # skips the checks: the database refuses it
    try:
        with pytest.raises(EdgefleetError, match="a value does not fit the database") as info:
            writer.batch(
                [
                    HeartbeatItem("cam-a", serials["cam-a"], "line-1", _beat("1.0", {})),
                    HeartbeatItem("cam-b", serials["cam-b"], "line-1", oversized),
                ]
            )
        assert info.value.code is Code.INVALID_ARGUMENT
        assert _snapshot(db, "cam-a")["agent_version"] is None  # nothing of the batch was kept

        async def both() -> list[Any]:  # through the queue, every waiter of the batch gets the error
            return await asyncio.gather(
                writer.submit(HeartbeatItem("cam-a", serials["cam-a"], "line-1", _beat("1.0", {}))),
                writer.submit(HeartbeatItem("cam-b", serials["cam-b"], "line-1", oversized)),
                return_exceptions=True,
            )

        outcomes = asyncio.run(both())
        assert all(isinstance(o, EdgefleetError) or o is True for o in outcomes)
        assert any(isinstance(o, EdgefleetError) for o in outcomes)
        assert writer.batch([HeartbeatItem("cam-a", serials["cam-a"], "line-1", _beat("1.1", {}))]) == [True]
    finally:
        writer.close()


def test_the_writer_survives_its_connection_being_dropped(db: Db) -> None:
    if db.dialect != "postgresql":
        pytest.skip("needs a database server that can drop a client's connection (PostgreSQL)")
    serials = enrolled_fleet(db, "line-1", ["cam-a"])
    writer = HeartbeatService(db)
    try:
        assert writer.batch([HeartbeatItem("cam-a", serials["cam-a"], "line-1", _beat("1.0", {}))]) == [True]
        with db.engine.connect() as admin:  # e.g. a database restart or an idle-connection reaper
            admin.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        assert writer.batch([HeartbeatItem("cam-a", serials["cam-a"], "line-1", _beat("1.1", {}))]) == [True]
        assert _snapshot(db, "cam-a")["agent_version"] == "1.1"
    finally:
        writer.close()
