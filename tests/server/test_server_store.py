"""Store tests (services over a real database): run on SQLite and on PostgreSQL when reachable."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from server_testkit import TOKEN_TTL, FakeClock, make_csr, record_package_row
from sqlalchemy import select

from edgefleet.core.errors import (
    AlreadyExists,
    Code,
    EdgefleetError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from edgefleet.server import devices, fleets, registry, reports, tokens
from edgefleet.server.ca import FleetCA, device_name_from_certificate
from edgefleet.server.db.engine import Database, normalize_url
from edgefleet.server.db.schema import OperatorToken

Db = Any  # the db fixture yields a Database


def _fleet(db: Database, name: str = "line-1") -> None:
    with db.session() as s:
        fleets.create_fleet(s, fleets.FleetSpec(name=name, output_location="s3://bucket/captures"), db.now())


def test_unknown_database_scheme_lists_known_ones() -> None:
    with pytest.raises(
        InvalidArgument, match=r"scheme 'mysql' is not supported \(known: postgresql, sqlite\)"
    ):
        normalize_url("mysql://u@h/db")


def test_migrate_twice_is_a_no_op(db: Db) -> None:
    db.migrate()
    db.migrate()


def test_tokens_are_stored_hashed_and_revocable(db: Db, clock: FakeClock) -> None:
    with db.session() as s:
        secret = tokens.create_token(s, "alice", db.now())
    assert secret.startswith("eft_")
    with db.session() as s:
        assert tokens.authenticate(s, secret, db.now(), timedelta(seconds=60)) == "alice"
        stored = s.scalar(select(OperatorToken.token_hash))
        assert stored == tokens.hash_secret(secret) and secret not in stored
    with db.session() as s, pytest.raises(AlreadyExists, match="already exists"):
        tokens.create_token(s, "alice", db.now())
    with db.session() as s:
        tokens.revoke_token(s, "alice", db.now())
    with db.session() as s, pytest.raises(EdgefleetError, match="was revoked") as info:
        tokens.authenticate(s, secret, db.now(), timedelta(seconds=60))
    assert info.value.code is Code.UNAUTHENTICATED
    with db.session() as s, pytest.raises(EdgefleetError, match="unknown API token"):
        tokens.authenticate(s, "eft_nope", db.now(), timedelta(seconds=60))


def test_fleet_crud(db: Db, clock: FakeClock) -> None:
    _fleet(db, "line-1")
    clock.advance(10)
    _fleet(db, "line-2")
    with db.session() as s, pytest.raises(AlreadyExists, match="fleet 'line-1' already exists"):
        fleets.create_fleet(s, fleets.FleetSpec(name="line-1", output_location="s3://b"), db.now())
    with db.session() as s, pytest.raises(InvalidArgument, match="scheme 'ftp' is not supported"):
        fleets.create_fleet(s, fleets.FleetSpec(name="x", output_location="ftp://b"), db.now())
    with db.session() as s, pytest.raises(InvalidArgument, match="fleet name 'bad_name' is invalid"):
        fleets.create_fleet(s, fleets.FleetSpec(name="bad_name", output_location="s3://b"), db.now())
    with db.session() as s:
        fleets.update_fleet(s, "line-2", db.now(), description="second line", output_location="s3://other/p")
    with db.session() as s:
        fleet = fleets.get_fleet(s, "line-2")
        assert (fleet.description, fleet.output_location) == ("second line", "s3://other/p")
        page = fleets.list_fleets(s, sort_by="CREATION_TIME", sort_order="Descending", limit=1)
        assert [f.name for f in page.items] == ["line-2"] and page.next_token
        page2 = fleets.list_fleets(
            s, sort_by="CREATION_TIME", sort_order="Descending", limit=1, next_token=page.next_token
        )
        assert [f.name for f in page2.items] == ["line-1"] and page2.next_token is None
        assert [f.name for f in fleets.list_fleets(s, name_contains="-2", limit=10).items] == ["line-2"]
    with db.session() as s, pytest.raises(InvalidArgument, match="SortBy 'SIZE' is invalid"):
        fleets.list_fleets(s, sort_by="SIZE", limit=10)
    with db.session() as s:
        fleets.delete_fleet(s, "line-2")
    with db.session() as s, pytest.raises(NotFound, match="fleet 'line-2' does not exist"):
        fleets.get_fleet(s, "line-2")


def test_register_enrol_authenticate_deregister(db: Db, clock: FakeClock) -> None:
    _fleet(db)
    ca = FleetCA.load_or_create(db)
    assert FleetCA.load_or_create(db).fingerprint == ca.fingerprint  # one CA, shared through the DB
    with db.session() as s:
        regs = devices.register_devices(
            s,
            "line-1",
            [devices.DeviceSpec("cam-1", tags={"site": "a"}), devices.DeviceSpec("cam-2")],
            ca,
            db.now(),
            TOKEN_TTL,
            tags={"env": "prod"},
        )
        token = regs[0].enrolment_token
    assert token.startswith("efe1.") and token.endswith(ca.fingerprint)
    with db.session() as s, pytest.raises(AlreadyExists, match="devices already registered: cam-1"):
        devices.register_devices(s, "line-1", [devices.DeviceSpec("cam-1")], ca, db.now(), TOKEN_TTL)
    _, csr = make_csr()
    with db.session() as s:
        _, cert_pem = devices.enrol(s, token, csr, ca, db.now(), 365)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    name, serial = device_name_from_certificate(cert.public_bytes(Encoding.DER))
    assert name == "cam-1"
    with db.session() as s, pytest.raises(EdgefleetError, match="unknown or already used enrolment token"):
        devices.enrol(s, token, csr, ca, db.now(), 365)
    with db.session() as s:
        assert devices.authenticate_device(s, "cam-1", serial, db.now()).name == "cam-1"
        d = devices.get_device(s, "cam-1")
        assert {t.key: t.value for t in d.tags} == {"env": "prod", "site": "a"}
    with db.session() as s:
        devices.deregister_devices(s, "line-1", ["cam-1"], db.now())
    with (
        db.session() as s,
        pytest.raises(EdgefleetError, match="not registered; its certificate is revoked") as info,
    ):
        devices.authenticate_device(s, "cam-1", serial, db.now())
    assert info.value.code is Code.UNAUTHENTICATED
    # Registering the name again starts afresh; the old certificate stays revoked.
    with db.session() as s:
        again = devices.register_devices(s, "line-1", [devices.DeviceSpec("cam-1")], ca, db.now(), TOKEN_TTL)
    with db.session() as s:
        devices.enrol(s, again[0].enrolment_token, make_csr()[1], ca, db.now(), 365)
    with db.session() as s, pytest.raises(EdgefleetError, match="certificate of device 'cam-1' was revoked"):
        devices.authenticate_device(s, "cam-1", serial, db.now())


def test_enrolment_token_expires_and_bad_csr_is_refused(db: Db, clock: FakeClock) -> None:
    _fleet(db)
    ca = FleetCA.load_or_create(db)
    with db.session() as s:
        token = devices.register_devices(s, "line-1", [devices.DeviceSpec("cam-1")], ca, db.now(), TOKEN_TTL)[
            0
        ].enrolment_token
    with (
        db.session() as s,
        pytest.raises(InvalidArgument, match="not a valid PEM certificate signing request"),
    ):
        devices.enrol(
            s,
            token,
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            ca,
            db.now(),
            365,
        )
    with db.session() as s, pytest.raises(InvalidArgument, match="malformed enrolment token"):
        devices.enrol(s, "nope", make_csr()[1], ca, db.now(), 365)
    clock.advance(TOKEN_TTL.total_seconds() + 1)
    with db.session() as s, pytest.raises(EdgefleetError, match="enrolment token of device 'cam-1' expired"):
        devices.enrol(s, token, make_csr()[1], ca, db.now(), 365)
    with db.session() as s:
        fresh = devices.new_enrolment_token(s, "cam-1", ca, db.now(), TOKEN_TTL).enrolment_token
    with db.session() as s:
        assert devices.enrol(s, fresh, make_csr()[1], ca, db.now(), 365)[0].enrolled_at == db.now()


def test_heartbeats_and_list_filters(db: Db, clock: FakeClock) -> None:
    _fleet(db, "line-1")
    _fleet(db, "line-2")
    ca = FleetCA.load_or_create(db)
    with db.session() as s:
        devices.register_devices(
            s,
            "line-1",
            [devices.DeviceSpec(f"cam-{i}", tags={"rack": str(i % 2)}) for i in range(4)],
            ca,
            db.now(),
            TOKEN_TTL,
        )
        devices.register_devices(s, "line-2", [devices.DeviceSpec("other")], ca, db.now(), TOKEN_TTL)
    start = db.now()
    clock.advance(30)
    with db.session() as s:
        d = devices.get_device(s, "cam-1")
        devices.record_heartbeat(
            s,
            d,
            devices.Heartbeat(
                "1.2.0", models=[devices.ModelReport("detector", "3", latest_inference=db.now())]
            ),
            db.now(),
        )
    with db.session() as s:
        d = devices.get_device(s, "cam-1")
        assert d.agent_version == "1.2.0" and [(m.model_name, m.model_version) for m in d.models] == [
            ("detector", "3")
        ]
        # The next heartbeat replaces the model list.
        devices.record_heartbeat(
            s, d, devices.Heartbeat("1.2.1", models=[devices.ModelReport("classifier", "1")]), db.now()
        )
    with db.session() as s:
        assert [m.model_name for m in devices.get_device(s, "cam-1").models] == ["classifier"]
        names = lambda page: [x.name for x in page.items]  # noqa: E731
        assert names(devices.list_devices(s, fleet_name="line-1", limit=10)) == [
            "cam-0",
            "cam-1",
            "cam-2",
            "cam-3",
        ]
        assert names(devices.list_devices(s, model_name="classifier", limit=10)) == ["cam-1"]
        assert names(devices.list_devices(s, heartbeat_after=start, limit=10)) == ["cam-1"]
        assert names(devices.list_devices(s, tags={"rack": "1"}, limit=10)) == ["cam-1", "cam-3"]
        assert names(devices.list_devices(s, fleet_name="line-1", tags={"rack": "0"}, limit=1)) == ["cam-0"]
    long_name = devices.Heartbeat("1.0", models=[devices.ModelReport("m" * 64, "1")])
    with db.session() as s, pytest.raises(InvalidArgument, match="names are 1-63, versions 0-30 characters"):
        devices.record_heartbeat(s, devices.get_device(s, "cam-2"), long_name, db.now())
    with db.session() as s, pytest.raises(InvalidArgument, match=r"Platform\.Arch 'x86 64' must be"):
        devices.update_device(s, "cam-2", db.now(), platform=("linux", "x86 64", "none"))
    with db.session() as s:  # nothing of the refused heartbeat was kept
        assert devices.get_device(s, "cam-2").agent_version is None
    with db.session() as s, pytest.raises(InvalidArgument, match="AgentVersion must be 1-64 characters"):
        devices.record_heartbeat(s, devices.get_device(s, "cam-2"), devices.Heartbeat(""), db.now())


def test_fleet_with_devices_cannot_be_deleted(db: Db) -> None:
    _fleet(db)
    ca = FleetCA.load_or_create(db)
    with db.session() as s:
        devices.register_devices(s, "line-1", [devices.DeviceSpec("cam-1")], ca, db.now(), TOKEN_TTL)
    with db.session() as s, pytest.raises(FailedPrecondition, match="still has 1 registered device"):
        fleets.delete_fleet(s, "line-1")
    with db.session() as s:
        devices.deregister_devices(s, None, ["cam-1"], db.now())
    with db.session() as s:
        fleets.delete_fleet(s, "line-1")


def test_registry_versions_approval_and_aliases(db: Db, clock: FakeClock) -> None:
    with db.session() as s:
        s.info["now"] = db.now()
        registry.create_model(s, "detector", "alice", db.now(), description="people detector")
        registry.create_version(s, "detector", "1", "alice", db.now())
    with db.session() as s, pytest.raises(FailedPrecondition, match="has no package to approve"):
        registry.set_approval(s, "detector", "1", "Approved", "bob", db.now())
    with db.session() as s, pytest.raises(InvalidArgument, match="approval status 'Maybe' is invalid"):
        registry.set_approval(s, "detector", "1", "Maybe", "bob", db.now())
    with db.session() as s:
        s.info["now"] = db.now()
        record_package_row(s, "detector", "1", arch="x86_64")
        record_package_row(s, "detector", "1", arch="aarch64")
    clock.advance(5)
    with db.session() as s:
        version = registry.set_approval(s, "detector", "1", "Approved", "bob", db.now(), reason="passed eval")
        assert (version.approval_status, version.approval_by, version.approval_at) == (
            "Approved",
            "bob",
            db.now(),
        )
        registry.set_alias(s, "detector", "champion", "1", "bob", db.now())
    with db.session() as s:
        assert registry.resolve_version(s, "detector", None, "champion").version == "1"
        assert registry.aliases_of(s, registry.get_model(s, "detector")) == {"champion": "1"}
        assert [p.target for p in registry.get_version(s, "detector", "1").packages] == [
            "linux-aarch64-none",
            "linux-x86_64-none",
        ]
    with db.session() as s, pytest.raises(NotFound, match="has no alias 'staging'"):
        registry.resolve_version(s, "detector", None, "staging")
    with db.session() as s, pytest.raises(InvalidArgument, match="model version 'bad/version' is invalid"):
        registry.create_version(s, "detector", "bad/version", "alice", db.now())
    with db.session() as s:
        keys = registry.delete_model(s, "detector")
    assert len(keys) == 2


def test_fleet_report_counts_and_lease(db: Db, clock: FakeClock) -> None:
    _fleet(db)
    ca = FleetCA.load_or_create(db)
    with db.session() as s:
        devices.register_devices(
            s, "line-1", [devices.DeviceSpec(f"cam-{i}") for i in range(3)], ca, db.now(), TOKEN_TTL
        )
    window = timedelta(minutes=10)
    with db.session() as s:
        stale = devices.get_device(s, "cam-2")
        devices.record_heartbeat(
            s, stale, devices.Heartbeat("1.0", models=[devices.ModelReport("detector", "1")]), db.now()
        )
    clock.advance(3600)
    with db.session() as s:
        now = db.now()
        devices.record_heartbeat(
            s,
            devices.get_device(s, "cam-0"),
            devices.Heartbeat(
                "1.1", models=[devices.ModelReport("detector", "1", latest_inference=now, latest_sample=now)]
            ),
            now,
        )
        devices.record_heartbeat(
            s,
            devices.get_device(s, "cam-1"),
            devices.Heartbeat("1.1", models=[devices.ModelReport("detector", "1")]),
            now,
        )
    with db.session() as s:
        row = reports.generate_report(s, "line-1", db.now(), window)
        assert row.generated_at == db.now()
        assert row.report == {
            "DeviceStats": {"ConnectedDeviceCount": 2, "RegisteredDeviceCount": 3},
            "AgentVersions": [{"Version": "1.0", "AgentCount": 1}, {"Version": "1.1", "AgentCount": 2}],
            "ModelStats": [
                {
                    "ModelName": "detector",
                    "ModelVersion": "1",
                    "OfflineDeviceCount": 1,
                    "ConnectedDeviceCount": 2,
                    "ActiveDeviceCount": 1,
                    "SamplingDeviceCount": 1,
                }
            ],
        }
    # Periodic regeneration: nothing is due right after, and two replicas never both regenerate.
    interval, lease = timedelta(hours=24), timedelta(minutes=5)
    assert (
        reports.regenerate_due_reports(
            db, "replica-a", interval=interval, lease=lease, connected_window=window
        )
        == []
    )
    clock.advance(interval.total_seconds())
    assert reports.regenerate_due_reports(
        db, "replica-a", interval=interval, lease=lease, connected_window=window
    ) == ["line-1"]
    assert (
        reports.regenerate_due_reports(
            db, "replica-b", interval=interval, lease=lease, connected_window=window
        )
        == []
    )
    with db.session() as s:
        row = reports.get_report(s, "line-1", db.now(), window)
        assert row.generated_at == db.now()
        assert row.report is not None and row.report["DeviceStats"]["ConnectedDeviceCount"] == 0
