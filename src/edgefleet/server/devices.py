"""Devices: registration, enrolment (token + CSR -> client certificate), identity checks, heartbeats.

A registered device gets a one-time enrolment token ``efe1.<secret>.<ca-sha256>``: the secret
authorises one certificate signing, the CA fingerprint lets the device pin the fleet CA before it
trusts the server's TLS certificate. Only the secret's SHA-256 is stored. Deregistration revokes the
device's certificate; every device request checks that the presented certificate is the device's
current one.

Renewal: a device asks for a new certificate for a new key over mutual TLS with its current one
(:func:`renew_certificate`). The current certificate stays valid until the device first uses the
renewed one; that request makes the renewed certificate current and revokes the old one
(:func:`authenticate_device`). A renewal that is never used is replaced by the next one.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, aliased, lazyload

from edgefleet.core import deviceplane as dp
from edgefleet.core.deviceplane import MAX_HEARTBEAT_UPLOADS
from edgefleet.core.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from edgefleet.server import drift, shadows
from edgefleet.server.ca import FleetCA, IssuedCertificate, check_new_key
from edgefleet.server.db.paging import paginate
from edgefleet.server.db.schema import Device, DeviceModel, DeviceTag, RevokedCertificate
from edgefleet.server.fleets import get_fleet
from edgefleet.server.tokens import Unauthenticated, hash_secret
from edgefleet.server.validation import Page, validate_name, validate_tags

log = logging.getLogger(__name__)

ENROLMENT_TOKEN_PREFIX = "efe1"
MAX_HEARTBEAT_MODELS = 100
MAX_METRICS = 200


@dataclass(frozen=True)
class DeviceSpec:
    """One device of a RegisterDevices call."""

    name: str
    description: str | None = None
    iot_thing_name: str | None = None
    tags: dict[str, str] | None = None


@dataclass(frozen=True)
class Registration:
    """A registered device and its one-time enrolment token (shown only now)."""

    device: Device
    enrolment_token: str
    expires_at: datetime


@dataclass(frozen=True)
class ModelReport:
    """One model in a heartbeat."""

    name: str
    version: str
    latest_sample: datetime | None = None
    latest_inference: datetime | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Heartbeat:
    """What SendHeartbeat carries about the device (the deployment result is handled separately)."""

    agent_version: str
    agent_metrics: list[dict[str, Any]] = field(default_factory=list)
    models: list[ModelReport] = field(default_factory=list)
    platform: tuple[str, str, str] | None = None
    #: the capture spool and the objects uploaded since the last heartbeat (edgefleet extension)
    capture: dp.CaptureReport | None = None
    #: live model summaries per loaded model version and window (edgefleet extension)
    summaries: tuple[dp.SummaryWindow, ...] = ()
    #: the agent's shadow pairs and their cumulative figures (edgefleet extension)
    shadows: tuple[dp.ShadowReport, ...] = ()


def split_enrolment_token(token: str) -> tuple[str, str]:
    """(secret, CA fingerprint) of an enrolment token; INVALID_ARGUMENT if malformed."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != ENROLMENT_TOKEN_PREFIX or not parts[1] or len(parts[2]) != 64:
        raise InvalidArgument("malformed enrolment token (expected efe1.<secret>.<ca-sha256>)")
    return parts[1], parts[2]


def _new_token(device: Device, ca: FleetCA, now: datetime, ttl: timedelta) -> tuple[str, datetime]:
    secret = secrets.token_urlsafe(32)
    device.enrolment_token_hash = hash_secret(secret)
    device.enrolment_expires_at = now + ttl
    return f"{ENROLMENT_TOKEN_PREFIX}.{secret}.{ca.fingerprint}", now + ttl


def register_devices(
    session: Session,
    fleet_name: str,
    specs: Sequence[DeviceSpec],
    ca: FleetCA,
    now: datetime,
    token_ttl: timedelta,
    *,
    tags: dict[str, str] | None = None,
    max_batch: int = 1000,
) -> list[Registration]:
    """Register devices in a fleet (all or none); each gets a one-time enrolment token.

    ``tags`` apply to every device (a device's own tags win). A name that is registered already is
    ALREADY_EXISTS; a deregistered name is registered again with fresh state.
    """
    if not specs:
        raise InvalidArgument("Devices must list at least one device")
    if len(specs) > max_batch:
        raise InvalidArgument(f"at most {max_batch} devices per call, got {len(specs)}")
    fleet = get_fleet(session, fleet_name)
    common = validate_tags(tags)
    names = [validate_name(spec.name, "device name") for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidArgument(f"device names listed twice: {', '.join(duplicates)}")
    existing = {d.name: d for d in session.scalars(select(Device).where(Device.name.in_(names)))}
    taken = sorted(n for n, d in existing.items() if d.deregistered_at is None)
    if taken:
        raise AlreadyExists(f"devices already registered: {', '.join(taken)}")
    registrations = []
    for spec in specs:
        _check_description(spec.description)
        _check_thing(spec.iot_thing_name)
        device_tags = {**common, **validate_tags(spec.tags, f"tags of {spec.name}")}
        device = existing.get(spec.name)
        if device is None:
            device = Device(name=spec.name, agent_metrics=[])
            session.add(device)
        else:
            _reset(device)
        device.fleet_id = fleet.id
        device.fleet = fleet
        device.description = spec.description
        device.iot_thing_name = spec.iot_thing_name
        device.registered_at = now
        device.updated_at = now
        device.deregistered_at = None
        device.tags = [DeviceTag(key=k, value=v) for k, v in sorted(device_tags.items())]
        token, expires = _new_token(device, ca, now, token_ttl)
        registrations.append(Registration(device, token, expires))
    session.flush()
    return registrations


def _reset(device: Device) -> None:
    device.enrolled_at = None
    device.cert_serial = None
    device.cert_not_after = None
    device.renewed_cert_serial = None
    device.renewed_cert_not_after = None
    device.agent_version = None
    device.last_heartbeat_at = None
    device.agent_metrics = []
    device.models = []
    device.tags = []
    device.platform_os = device.platform_arch = device.platform_accelerator = None


def get_device(session: Session, name: str, fleet_name: str | None = None, *, lock: bool = False) -> Device:
    """The registered device ``name`` (in ``fleet_name`` when given); NOT_FOUND otherwise."""
    stmt = select(Device).where(Device.name == name, Device.deregistered_at.is_(None))
    if lock:
        stmt = stmt.with_for_update(of=Device)
    device = session.scalar(stmt)
    if device is None or (fleet_name is not None and device.fleet.name != fleet_name):
        where = f" in fleet {fleet_name!r}" if fleet_name is not None else ""
        raise NotFound(f"device {name!r} is not registered{where}")
    return device


def update_device(
    session: Session,
    name: str,
    now: datetime,
    *,
    fleet_name: str | None = None,
    description: str | None = None,
    iot_thing_name: str | None = None,
    tags: dict[str, str] | None = None,
    platform: tuple[str, str, str] | None = None,
) -> Device:
    """Change a device's description, thing name, tags (replaced as a whole) or platform."""
    device = get_device(session, name, fleet_name, lock=True)
    if description is not None:
        _check_description(description)
        device.description = description
    if iot_thing_name is not None:
        _check_thing(iot_thing_name)
        device.iot_thing_name = iot_thing_name
    if tags is not None:
        valid = validate_tags(tags)
        device.tags = [DeviceTag(key=k, value=v) for k, v in sorted(valid.items())]
    if platform is not None:
        device.platform_os, device.platform_arch, device.platform_accelerator = check_platform(platform)
    device.updated_at = now
    return device


def deregister_devices(
    session: Session, fleet_name: str | None, names: Sequence[str], now: datetime
) -> list[Device]:
    """Deregister devices: their certificates are revoked at once and unfinished rollouts stop for them."""
    from edgefleet.server.deployments.device_side import on_device_deregistered

    devices = [get_device(session, name, fleet_name, lock=True) for name in names]
    for device in devices:
        _revoke(session, device, now, "device deregistered")
        device.deregistered_at = now
        device.updated_at = now
        device.enrolment_token_hash = None
        device.enrolment_expires_at = None
        on_device_deregistered(session, device, now)
    return devices


def _revoke(session: Session, device: Device, now: datetime, reason: str) -> None:
    """Revoke the device's current certificate and a renewed one it has not used yet."""
    for serial in (device.cert_serial, device.renewed_cert_serial):
        if serial is not None:
            _record_revoked(session, device.name, serial, now, reason)
    device.cert_serial = None
    device.cert_not_after = None
    device.renewed_cert_serial = None
    device.renewed_cert_not_after = None


def _record_revoked(session: Session, device_name: str, serial: str, now: datetime, reason: str) -> None:
    if session.get(RevokedCertificate, serial) is None:
        session.add(RevokedCertificate(serial=serial, device_name=device_name, revoked_at=now, reason=reason))


def new_enrolment_token(
    session: Session, name: str, ca: FleetCA, now: datetime, ttl: timedelta
) -> Registration:
    """A fresh one-time enrolment token (e.g. after a device lost its key); the old token stops working."""
    device = get_device(session, name, lock=True)
    token, expires = _new_token(device, ca, now, ttl)
    device.updated_at = now
    return Registration(device, token, expires)


def enrol(
    session: Session, token: str, csr_pem: str, ca: FleetCA, now: datetime, cert_days: int
) -> tuple[Device, str]:
    """Exchange an enrolment token and a CSR for a client certificate (PEM). The token is used up.

    Any certificate the device held before is revoked. UNAUTHENTICATED for an unknown, used or
    expired token.
    """
    secret, ca_fingerprint = split_enrolment_token(token)
    if ca_fingerprint != ca.fingerprint:
        raise InvalidArgument("the enrolment token was issued by another fleet CA (wrong server?)")
    device = session.scalar(
        select(Device).where(Device.enrolment_token_hash == hash_secret(secret)).with_for_update(of=Device)
    )
    if device is None or device.deregistered_at is not None:
        raise Unauthenticated("unknown or already used enrolment token")
    if device.enrolment_expires_at is None or device.enrolment_expires_at <= now:
        raise Unauthenticated(f"the enrolment token of device {device.name!r} expired; ask for a new one")
    issued = ca.issue_device_certificate(csr_pem, device.name, now, cert_days)
    _revoke(session, device, now, "replaced by a new enrolment")
    device.cert_serial = issued.serial
    device.cert_not_after = issued.not_after
    device.enrolled_at = now
    device.updated_at = now
    device.enrolment_token_hash = None
    device.enrolment_expires_at = None
    log.info(
        "device %s enrolled (certificate serial %s)",
        device.name,
        issued.serial,
        extra={"device": device.name},
    )
    return device, issued.cert_pem


def authenticate_device(session: Session, cert_name: str, serial: str, now: datetime) -> Device:
    """The device a verified client certificate belongs to; UNAUTHENTICATED if revoked or replaced.

    The first request with a renewed certificate makes it the device's current one and revokes the
    certificate it replaces (see :func:`renew_certificate`). Tags and models are loaded only if used
    (most device calls need neither).
    """
    device = session.scalar(
        select(Device).where(Device.name == cert_name).options(lazyload(Device.tags), lazyload(Device.models))
    )
    if device is None or device.deregistered_at is not None:
        raise Unauthenticated(f"device {cert_name!r} is not registered; its certificate is revoked")
    if device.cert_serial != serial and device.renewed_cert_serial == serial:
        device = _lock(session, device)  # two first requests at once: one switches, the other sees it
        if device.renewed_cert_serial == serial:
            _switch_to_renewed(session, device, now)
    if device.cert_serial != serial:
        raise Unauthenticated(f"this certificate of device {cert_name!r} was revoked")
    return device


def _lock(session: Session, device: Device) -> Device:
    locked = session.scalar(
        select(Device)
        .where(Device.id == device.id)
        .with_for_update(of=Device)
        .execution_options(populate_existing=True)
        .options(lazyload(Device.tags), lazyload(Device.models))
    )
    assert locked is not None
    return locked


def _switch_to_renewed(session: Session, device: Device, now: datetime) -> None:
    assert device.renewed_cert_serial is not None
    if device.cert_serial is not None:
        _record_revoked(session, device.name, device.cert_serial, now, "replaced by its renewal")
    log.info(
        "device %s uses its renewed certificate %s; %s is revoked",
        device.name,
        device.renewed_cert_serial,
        device.cert_serial,
        extra={"device": device.name},
    )
    device.cert_serial = device.renewed_cert_serial
    device.cert_not_after = device.renewed_cert_not_after
    device.renewed_cert_serial = None
    device.renewed_cert_not_after = None
    device.updated_at = now


def renew_certificate(
    session: Session,
    device: Device,
    presented_cert_pem: str,
    csr_pem: str,
    ca: FleetCA,
    now: datetime,
    cert_days: int,
) -> IssuedCertificate:
    """A new certificate for a new key of an authenticated ``device`` (:func:`authenticate_device`).

    ``presented_cert_pem`` is the certificate the request was made with (the device's current one);
    the CSR's key must differ from it (INVALID_ARGUMENT). The current certificate stays valid until
    the renewed one is first used; a renewed certificate not used yet is revoked and replaced by
    this one. UNAUTHENTICATED if the current certificate has expired (by the server's clock): the
    device must enrol again with a new token.
    """
    device = _lock(session, device)
    if device.cert_not_after is not None and device.cert_not_after <= now:
        raise Unauthenticated(
            f"the certificate of device {device.name!r} expired at {device.cert_not_after.isoformat()}; "
            "it cannot be renewed: enrol the device again with a new enrolment token"
        )
    check_new_key(csr_pem, presented_cert_pem)
    issued = ca.issue_device_certificate(csr_pem, device.name, now, cert_days)
    if device.renewed_cert_serial is not None:
        _record_revoked(session, device.name, device.renewed_cert_serial, now, "superseded before use")
    device.renewed_cert_serial = issued.serial
    device.renewed_cert_not_after = issued.not_after
    device.updated_at = now
    log.info(
        "device %s renewed its certificate (new serial %s, not used yet)",
        device.name,
        issued.serial,
        extra={"device": device.name},
    )
    return issued


def check_identity(device: Device, device_name: str, fleet_name: str) -> None:
    """PERMISSION_DENIED unless the body's DeviceName/DeviceFleetName are the caller's own."""
    if device_name != device.name:
        raise PermissionDenied(f"device {device.name!r} may not act for device {device_name!r}")
    if fleet_name != device.fleet.name:
        raise PermissionDenied(f"device {device.name!r} is not in fleet {fleet_name!r}")


def check_heartbeat(heartbeat: Heartbeat) -> None:
    """INVALID_ARGUMENT unless every field of ``heartbeat`` fits (lengths, counts, platform words)."""
    if not heartbeat.agent_version or len(heartbeat.agent_version) > 64:
        raise InvalidArgument("AgentVersion must be 1-64 characters")
    if len(heartbeat.models) > MAX_HEARTBEAT_MODELS:
        raise InvalidArgument(f"a heartbeat lists at most {MAX_HEARTBEAT_MODELS} models")
    if len(heartbeat.agent_metrics) > MAX_METRICS:
        raise InvalidArgument(f"a heartbeat carries at most {MAX_METRICS} agent metrics")
    if heartbeat.platform is not None:
        check_platform(heartbeat.platform)
    for model in heartbeat.models:
        if not 1 <= len(model.name) <= 63 or len(model.version) > 30:
            raise InvalidArgument(
                f"model {model.name!r} version {model.version!r}: names are 1-63, versions 0-30 characters"
            )
        if len(model.metrics) > MAX_METRICS:
            raise InvalidArgument(f"model {model.name!r}: at most {MAX_METRICS} metrics")
    if heartbeat.capture is not None and len(heartbeat.capture.uploads) > MAX_HEARTBEAT_UPLOADS:
        raise InvalidArgument(f"a heartbeat reports at most {MAX_HEARTBEAT_UPLOADS} capture uploads")
    drift.check_windows(heartbeat.summaries)
    shadows.check_reports(heartbeat.shadows)


def record_heartbeat(session: Session, device: Device, heartbeat: Heartbeat, now: datetime) -> None:
    """Store a heartbeat: agent version and metrics, the model versions loaded now (replacing the list)."""
    check_heartbeat(heartbeat)
    device.agent_version = heartbeat.agent_version
    device.agent_metrics = list(heartbeat.agent_metrics)
    device.last_heartbeat_at = now
    if heartbeat.platform is not None:
        device.platform_os, device.platform_arch, device.platform_accelerator = heartbeat.platform
    # Keyed by name and version: a device may serve several versions of one model at once (an A/B
    # test under two handles). The last report of the same name and version wins.
    current = {(m.model_name, m.model_version): m for m in device.models}
    reported = {(m.name, m.version): m for m in heartbeat.models}
    for key, row in current.items():
        if key not in reported:
            device.models.remove(row)
    for (model_name, model_version), report in reported.items():
        existing = current.get((model_name, model_version))
        if existing is None:
            row = DeviceModel(model_name=model_name, model_version=model_version)
            device.models.append(row)
        else:
            row = existing
        row.latest_sample_at = report.latest_sample
        row.latest_inference_at = report.latest_inference
        row.metrics = list(report.metrics)
        row.updated_at = now


def list_devices(
    session: Session,
    *,
    fleet_name: str | None = None,
    model_name: str | None = None,
    heartbeat_after: datetime | None = None,
    heartbeat_before: datetime | None = None,
    tags: dict[str, str] | None = None,
    limit: int,
    next_token: str | None = None,
) -> Page[Device]:
    """Registered devices by name, filtered by fleet, loaded model, latest heartbeat and tags (all must match).

    ``heartbeat_after``: the latest heartbeat is newer; ``heartbeat_before``: it is not newer, or
    the device never sent one (with the connected window's cutoff: the offline devices).
    """
    stmt: Select[Device] = select(Device).where(Device.deregistered_at.is_(None)).order_by(Device.name)
    if fleet_name is not None:
        fleet = get_fleet(session, fleet_name)
        stmt = stmt.where(Device.fleet_id == fleet.id)
    if model_name is not None:
        # EXISTS rather than a join: a device serving several versions of the model is listed once
        stmt = stmt.where(
            select(DeviceModel.device_id)
            .where(DeviceModel.device_id == Device.id, DeviceModel.model_name == model_name)
            .exists()
        )
    if heartbeat_after is not None:
        stmt = stmt.where(Device.last_heartbeat_at > heartbeat_after)
    if heartbeat_before is not None:
        stmt = stmt.where(Device.last_heartbeat_at.is_(None) | (Device.last_heartbeat_at <= heartbeat_before))
    for key, value in (tags or {}).items():
        tag = aliased(DeviceTag)
        stmt = stmt.join(tag, (tag.device_id == Device.id) & (tag.key == key) & (tag.value == value))
    return paginate(session, stmt, limit, next_token)


def check_platform(platform: tuple[str, str, str]) -> tuple[str, str, str]:
    """``(os, arch, accelerator)`` if each is a short non-empty word; INVALID_ARGUMENT otherwise."""
    for value, what, limit in zip(platform, ("Os", "Arch", "Accelerator"), (32, 32, 64), strict=True):
        if (
            not value
            or len(value) > limit
            or not value.replace("_", "").replace("-", "").replace(".", "").isalnum()
        ):
            raise InvalidArgument(
                f"Platform.{what} {value!r} must be 1-{limit} letters, digits, '_', '-' or '.'"
            )
    return platform


def _check_thing(name: str | None) -> None:
    if name is not None and not 1 <= len(name) <= 128:
        raise InvalidArgument("IotThingName must be 1-128 characters")


def _check_description(description: str | None) -> None:
    if description is not None and not 1 <= len(description) <= 40:
        raise InvalidArgument("device description must be 1-40 characters")
