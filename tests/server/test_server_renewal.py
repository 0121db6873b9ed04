"""Certificate renewal in the device service (SQLite and PostgreSQL): the old certificate stays
valid until the renewed one is used, then only the renewed one is; unused renewals are superseded;
expired certificates, reused keys and revoked devices are refused; migration 0005 both ways."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from server_testkit import TOKEN_TTL, FakeClock, make_csr, migrate
from sqlalchemy import func, insert, inspect, select

from edgefleet.core.errors import Code, EdgefleetError, InvalidArgument
from edgefleet.server import devices, fleets
from edgefleet.server.ca import FleetCA
from edgefleet.server.db.engine import Database
from edgefleet.server.db.schema import Device, DeviceModel, Fleet, RevokedCertificate

CERT_DAYS = 3


def _enrolled(db: Database, name: str = "cam-1") -> tuple[FleetCA, str, str, object]:
    """(CA, certificate PEM, serial, key) of a freshly enrolled device ``name`` in fleet line-1."""
    with db.session() as s:
        fleets.create_fleet(s, fleets.FleetSpec(name="line-1", output_location="s3://b/p"), db.now())
    ca = FleetCA.load_or_create(db)
    with db.session() as s:
        (registration,) = devices.register_devices(
            s, "line-1", [devices.DeviceSpec(name)], ca, db.now(), TOKEN_TTL
        )
    key, csr = make_csr()
    with db.session() as s:
        device, cert_pem = devices.enrol(s, registration.enrolment_token, csr, ca, db.now(), CERT_DAYS)
        assert device.cert_serial is not None
        return ca, cert_pem, device.cert_serial, key


def _renew(db: Database, ca: FleetCA, serial: str, cert_pem: str, csr: str) -> str:
    with db.session() as s:
        device = devices.authenticate_device(s, "cam-1", serial, db.now())
        return devices.renew_certificate(s, device, cert_pem, csr, ca, db.now(), CERT_DAYS).serial


def _accepts(db: Database, serial: str) -> bool:
    """Whether the server accepts certificate ``serial`` of cam-1 (else it is refused as revoked)."""
    try:
        with db.session() as s:
            devices.authenticate_device(s, "cam-1", serial, db.now())
    except EdgefleetError as exc:
        refused = exc
    else:
        return True
    assert refused.code is Code.UNAUTHENTICATED and "was revoked" in str(refused)
    return False


def test_the_old_certificate_is_valid_until_the_renewed_one_is_used(db: Database, clock: FakeClock) -> None:
    ca, cert_pem, old, _ = _enrolled(db)
    clock.advance(2 * 86400)
    new = _renew(db, ca, old, cert_pem, make_csr()[1])
    assert new != old
    with db.session() as s:
        device = devices.get_device(s, "cam-1")
        assert (device.cert_serial, device.renewed_cert_serial) == (old, new)
        assert device.renewed_cert_not_after == clock.current + timedelta(days=CERT_DAYS)
    assert _accepts(db, old) and _accepts(db, old)  # any number of calls before the switch
    clock.advance(60)
    assert _accepts(db, new)  # first use: the renewed certificate becomes the current one
    assert not _accepts(db, old)
    assert _accepts(db, new)
    with db.session() as s:
        device = devices.get_device(s, "cam-1")
        assert (device.cert_serial, device.renewed_cert_serial) == (new, None)
        assert device.cert_not_after is not None and device.cert_not_after > clock.current
        revoked = s.get(RevokedCertificate, old)
        assert revoked is not None and revoked.reason == "replaced by its renewal"
        assert revoked.revoked_at == clock.current


def test_a_renewal_not_used_is_superseded_by_the_next(db: Database, clock: FakeClock) -> None:
    ca, cert_pem, old, _ = _enrolled(db)
    first = _renew(db, ca, old, cert_pem, make_csr()[1])
    second = _renew(db, ca, old, cert_pem, make_csr()[1])  # e.g. the device crashed before storing the first
    assert not _accepts(db, first)
    assert _accepts(db, old)
    assert _accepts(db, second) and not _accepts(db, old)
    with db.session() as s:
        reasons = {r.serial: r.reason for r in s.scalars(select(RevokedCertificate))}
    assert reasons == {first: "superseded before use", old: "replaced by its renewal"}


def test_renewal_needs_a_new_key_and_a_certificate_that_has_not_expired(
    db: Database, clock: FakeClock
) -> None:
    from edgefleet.device.identity import make_csr as device_csr

    ca, cert_pem, old, key = _enrolled(db)
    with pytest.raises(InvalidArgument, match="a renewal needs a new key"):
        _renew(db, ca, old, cert_pem, device_csr(key))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="not a valid PEM certificate signing request"):
        _renew(db, ca, old, cert_pem, "not a CSR")
    clock.advance(CERT_DAYS * 86400)
    with pytest.raises(EdgefleetError, match=r"expired at .*enrol the device again") as expired:
        _renew(db, ca, old, cert_pem, make_csr()[1])
    assert expired.value.code is Code.UNAUTHENTICATED
    with db.session() as s:  # nothing changed
        device = devices.get_device(s, "cam-1")
        assert (device.cert_serial, device.renewed_cert_serial) == (old, None)


def test_deregistration_and_re_enrolment_revoke_an_unused_renewal(db: Database, clock: FakeClock) -> None:
    ca, cert_pem, old, _ = _enrolled(db)
    pending = _renew(db, ca, old, cert_pem, make_csr()[1])
    with db.session() as s:
        token = devices.new_enrolment_token(s, "cam-1", ca, db.now(), TOKEN_TTL).enrolment_token
    with db.session() as s:
        device, enrolled_pem = devices.enrol(s, token, make_csr()[1], ca, db.now(), CERT_DAYS)
        enrolled = device.cert_serial
    assert not _accepts(db, old) and not _accepts(db, pending)
    assert enrolled is not None and _accepts(db, enrolled)
    with db.session() as s:
        reasons = {r.serial: r.reason for r in s.scalars(select(RevokedCertificate))}
    assert reasons == {old: "replaced by a new enrolment", pending: "replaced by a new enrolment"}

    again = _renew(db, ca, enrolled, enrolled_pem, make_csr()[1])
    with db.session() as s:
        devices.deregister_devices(s, "line-1", ["cam-1"], db.now())
    with db.session() as s, pytest.raises(EdgefleetError, match="not registered; its certificate is revoked"):
        devices.authenticate_device(s, "cam-1", again, db.now())
    with db.session() as s:
        assert s.get(RevokedCertificate, again) is not None


def test_migration_0005_keeps_devices_and_their_rows_both_ways(unmigrated: Database) -> None:
    db = unmigrated
    migrate(db, "0004")
    t0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    devices_table, models_table = Device.__table__, DeviceModel.__table__
    with db.engine.begin() as conn:
        fleet_id = conn.execute(
            insert(Fleet.__table__)
            .values(name="line-1", output_location="s3://b/p", tags={}, created_at=t0, updated_at=t0)
            .returning(Fleet.__table__.c.id)
        ).scalar_one()
        device_id = conn.execute(
            insert(devices_table)
            .values(
                name="cam-1",
                fleet_id=fleet_id,
                registered_at=t0,
                updated_at=t0,
                agent_metrics=[],
                cert_serial="abc",
                cert_not_after=t0,
            )
            .returning(devices_table.c.id)
        ).scalar_one()
        conn.execute(
            insert(models_table).values(
                device_id=device_id, model_name="det", model_version="1", metrics=[], updated_at=t0
            )
        )
    migrate(db, "head")
    with db.session() as s:
        device = devices.get_device(s, "cam-1")
        assert (device.cert_serial, device.renewed_cert_serial, device.renewed_cert_not_after) == (
            "abc",
            None,
            None,
        )
        device.renewed_cert_serial, device.renewed_cert_not_after = "def", t0
    migrate(db, "0004", down=True)  # an unused renewal is forgotten; nothing else is
    with db.engine.connect() as conn:
        assert conn.execute(select(devices_table.c.name, devices_table.c.cert_serial)).all() == [
            ("cam-1", "abc")
        ]
        assert "renewed_cert_serial" not in {c["name"] for c in inspect(conn).get_columns("devices")}
        assert conn.execute(select(func.count()).select_from(models_table)).scalar_one() == 1
