"""The capture index: which device uploaded which capture object, of which model version, when.

Devices report the ``.jsonl`` objects their store confirmed in their heartbeats (``Capture.Uploads``,
:class:`~edgefleet.core.deviceplane.CaptureReport`); the server never reads the objects to index
them. :func:`record_reports` stores the reports of a batch of heartbeats on the heartbeat's own
connection and transaction: a key is indexed once per fleet (a retried heartbeat re-reports the
same uploads and adds nothing), the device's spool backlog is replaced.

A reported key must have the layout of docs/capture-format.md,
``<folder_prefix>/<fleet>/<model_name>/YYYY/MM/DD/HH/<32-hex id>.jsonl``, with the device's own
fleet and the upload's model name in their folders (:func:`parse_key`, :func:`check_report`). The
folder prefix is the device's configuration (any number of folders, or none), so the layout is
read from the key's end.

The index also decides one rule used in two places: a device model's *latest sample*
(:func:`latest_sample`), the newer of the ``LatestSampleTime`` the device reports (what Edge
Manager agents send) and the last inference time of its newest indexed object. The fleet report's
sampling counts and DescribeDevice's ``LatestSampleTime`` both come from it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, delete, func, select, text, type_coerce
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from edgefleet.core import deviceplane as dp
from edgefleet.core.errors import InvalidArgument, NotFound, quoted
from edgefleet.server.db.paging import paginate
from edgefleet.server.db.schema import (
    CaptureObject,
    Device,
    DeviceCaptureStatus,
    DeviceModel,
    Fleet,
    UTCDateTime,
)
from edgefleet.server.fleets import get_fleet
from edgefleet.server.validation import Page
from edgefleet.storage import validate_key

log = logging.getLogger(__name__)

#: what a capture object is called in error messages
WHAT = "capture object"
_BATCH_NAME_RE = re.compile(r"[0-9a-f]{32}\.jsonl")
_HOUR_PARTS = ((4, "year"), (2, "month"), (2, "day"), (2, "hour"))
#: largest figures a report may carry: what the INTEGER and BIGINT columns hold
_MAX_INT, _MAX_BIGINT = 2**31 - 1, 2**63 - 1


_STATUS_COLUMNS = (
    "backlog_records",
    "backlog_bytes",
    "oldest_age_seconds",
    "dropped",
    "failed",
    "transfer_pending",
    "transfer_pending_bytes",
    "transfer_oldest_age_seconds",
    "reported_at",
)
_PG_INSERT_OBJECTS = text(
    """
    INSERT INTO capture_objects
        (fleet_id, device_id, key, model_name, model_version, records, size, raw_objects,
         first_inference_at, last_inference_at, reported_at)
    SELECT d.fleet_id, r.device_id, r.key, r.model_name, r.model_version, r.records, r.size,
           r.raw_objects, r.first_inference_at, r.last_inference_at, r.reported_at
    FROM json_to_recordset(CAST(:rows AS JSON)) AS r(
        device_id INTEGER, key VARCHAR, model_name VARCHAR, model_version VARCHAR,
        records INTEGER, size BIGINT, raw_objects INTEGER, first_inference_at TIMESTAMPTZ,
        last_inference_at TIMESTAMPTZ, reported_at TIMESTAMPTZ)
    JOIN devices AS d ON d.id = r.device_id
    ORDER BY d.fleet_id, r.key
    ON CONFLICT (fleet_id, key) DO NOTHING
    """
)
_PG_UPSERT_STATUS = text(
    f"""
    INSERT INTO device_capture_status (device_id, {", ".join(_STATUS_COLUMNS)})
    SELECT r.device_id, {", ".join(f"r.{c}" for c in _STATUS_COLUMNS)}
    FROM json_to_recordset(CAST(:rows AS JSON)) AS r(
        device_id INTEGER, backlog_records BIGINT, backlog_bytes BIGINT,
        oldest_age_seconds DOUBLE PRECISION, dropped BIGINT, failed BIGINT, transfer_pending BIGINT,
        transfer_pending_bytes BIGINT, transfer_oldest_age_seconds DOUBLE PRECISION,
        reported_at TIMESTAMPTZ)
    ON CONFLICT (device_id) DO UPDATE SET
        {", ".join(f"{c} = EXCLUDED.{c}" for c in _STATUS_COLUMNS)}
    """
)


@dataclass(frozen=True)
class CaptureKey:
    """A capture object key read back into the folders of the layout."""

    key: str
    #: the device's folder prefix ("" for none)
    prefix: str
    fleet: str
    model_name: str
    #: the UTC hour folder the batch was written under
    hour: datetime
    batch_id: str


def parse_key(key: str) -> CaptureKey:
    """The folders of a capture object key; INVALID_ARGUMENT unless it is a safe key of the layout."""
    validate_key(key, WHAT)
    parts = key.split("/")
    if len(parts) < 7 or not _BATCH_NAME_RE.fullmatch(parts[-1]):
        raise InvalidArgument(
            f"{WHAT} key {quoted(key)} is not <prefix>/<fleet>/<model>/YYYY/MM/DD/HH/<32 hex digits>.jsonl"
        )
    hour_parts = parts[-5:-1]
    for value, (width, what) in zip(hour_parts, _HOUR_PARTS, strict=True):
        if len(value) != width or not value.isdigit():
            raise InvalidArgument(f"{WHAT} key {quoted(key)}: {what} folder {value!r} is not {width} digits")
    year, month, day, hour = (int(v) for v in hour_parts)
    try:
        when = datetime(year, month, day, hour, tzinfo=UTC)
    except ValueError as exc:
        raise InvalidArgument(
            f"{WHAT} key {quoted(key)}: the hour folders are not a UTC hour: {exc}"
        ) from exc
    return CaptureKey(
        key=key,
        prefix="/".join(parts[:-7]),
        fleet=parts[-7],
        model_name=parts[-6],
        hour=when,
        batch_id=parts[-1].removesuffix(".jsonl"),
    )


def check_report(report: dp.CaptureReport, fleet_name: str) -> None:
    """INVALID_ARGUMENT unless every figure fits and every upload's key is one of ``fleet_name``'s."""
    figures = {
        "BacklogRecords": report.backlog_records,
        "BacklogBytes": report.backlog_bytes,
        "Dropped": report.dropped,
        "Failed": report.failed,
        "TransferPending": report.transfer_pending,
        "TransferPendingBytes": report.transfer_pending_bytes,
    }
    for name, value in figures.items():
        if not 0 <= value <= _MAX_BIGINT:
            raise InvalidArgument(f"Capture.{name} must be a count (0 or more), got {value}")
    ages = {
        "OldestBacklogAgeSeconds": report.oldest_age_seconds,
        "OldestTransferAgeSeconds": report.transfer_oldest_age_seconds,
    }
    for name, age in ages.items():
        if not 0 <= age < float("inf"):
            raise InvalidArgument(f"Capture.{name} must be 0 or more, got {age}")
    for upload in report.uploads:
        check_upload(upload, fleet_name)


def check_upload(upload: dp.CaptureUpload, fleet_name: str) -> CaptureKey:
    """The parsed key of one reported upload of a device of ``fleet_name``; INVALID_ARGUMENT otherwise."""
    parsed = parse_key(upload.key)
    if parsed.fleet != fleet_name:
        raise InvalidArgument(
            f"{WHAT} key {quoted(upload.key)} is outside fleet {fleet_name!r}'s captures "
            f"(its fleet folder is {parsed.fleet!r})"
        )
    if parsed.model_name != upload.model_name:
        raise InvalidArgument(
            f"{WHAT} key {quoted(upload.key)} is in the folder of model {parsed.model_name!r}, "
            f"not of its ModelName {upload.model_name!r}"
        )
    if len(upload.model_version) > 30:
        raise InvalidArgument(f"{WHAT} {quoted(upload.key)}: ModelVersion is longer than 30 characters")
    counts = (
        ("Records", upload.records, _MAX_INT),
        ("Size", upload.size, _MAX_BIGINT),
        ("RawObjects", upload.raw_objects, _MAX_INT),
    )
    for name, value, limit in counts:
        if not 0 <= value <= limit:
            raise InvalidArgument(f"{WHAT} {quoted(upload.key)}: {name} must be 0 to {limit}, got {value}")
    first, last = upload.first_inference, upload.last_inference
    if first is not None and last is not None and first > last:
        raise InvalidArgument(f"{WHAT} {quoted(upload.key)}: FirstInferenceTime is after LastInferenceTime")
    return parsed


def record_reports(conn: Connection, reports: Sequence[tuple[int, dp.CaptureReport]], now: datetime) -> None:
    """Index the uploads and replace the spool figures of ``(device id, report)`` items, in the
    order received, on the caller's connection and transaction.

    The reports must have passed :func:`check_report` for the device's fleet. An item later in
    ``reports`` wins the spool figures of its device. A key indexed already in the device's fleet
    (re-reported) is left as it is.
    """
    if not reports:
        return
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    status: dict[int, dict[str, object]] = {}
    for device_id, report in reports:
        status[device_id] = {
            "device_id": device_id,
            "backlog_records": report.backlog_records,
            "backlog_bytes": report.backlog_bytes,
            "oldest_age_seconds": report.oldest_age_seconds,
            "dropped": report.dropped,
            "failed": report.failed,
            "transfer_pending": report.transfer_pending,
            "transfer_pending_bytes": report.transfer_pending_bytes,
            "transfer_oldest_age_seconds": report.transfer_oldest_age_seconds,
            "reported_at": now,
        }
        for upload in report.uploads:
            first = upload.first_inference or upload.last_inference or now
            rows.setdefault(
                (device_id, upload.key),
                {
                    "device_id": device_id,
                    "key": upload.key,
                    "model_name": upload.model_name,
                    "model_version": upload.model_version,
                    "records": upload.records,
                    "size": upload.size,
                    "raw_objects": upload.raw_objects,
                    "first_inference_at": first,
                    "last_inference_at": upload.last_inference or first,
                    "reported_at": now,
                },
            )
    # rows in key order, so that concurrent batches take the unique index's locks in one order
    spools = [status[d] for d in sorted(status)]
    if conn.dialect.name == "postgresql":
        # one statement per table for the whole batch, its rows as one JSON document (as the
        # heartbeat's own statements do), the fleet taken from the device row
        if rows:
            dumped = json.dumps(list(rows.values()), default=datetime.isoformat)
            conn.execute(_PG_INSERT_OBJECTS, {"rows": dumped})
        conn.execute(_PG_UPSERT_STATUS, {"rows": json.dumps(spools, default=datetime.isoformat)})
        return
    if rows:
        ids = sorted({device_id for device_id, _ in rows})
        fleets = dict(conn.execute(select(Device.id, Device.fleet_id).where(Device.id.in_(ids))).all())
        objects = sorted(
            ({**row, "fleet_id": fleets[row["device_id"]]} for row in rows.values()), key=_index_order
        )
        conn.execute(
            sqlite_insert(CaptureObject).on_conflict_do_nothing(index_elements=["fleet_id", "key"]), objects
        )
    upsert = sqlite_insert(DeviceCaptureStatus)
    upsert = upsert.on_conflict_do_update(
        index_elements=["device_id"], set_={c: upsert.excluded[c] for c in _STATUS_COLUMNS}
    )
    conn.execute(upsert, spools)


def _index_order(row: dict[str, Any]) -> tuple[int, str]:
    return row["fleet_id"], row["key"]


def record_device_report(session: Session, device: Device, report: dp.CaptureReport, now: datetime) -> None:
    """Check and store one heartbeat's capture report (the heartbeat's exact tier)."""
    check_report(report, device.fleet.name)
    record_reports(session.connection(), [(device.id, report)], now)


def purge_objects(session: Session, before: datetime) -> int:
    """Delete the index rows of capture objects whose newest record was inferred before ``before``
    (their retention passed); returns how many. Only the index: the objects stay in the capture
    store, whose own lifecycle rules (an S3 expiration rule, say) delete them.

    One range delete per fleet model version on ``ix_capture_objects_fleet_model`` (a batch's
    first inference precedes its last), so the periodic work never scans the whole index."""
    groups = session.execute(
        select(CaptureObject.fleet_id, CaptureObject.model_name, CaptureObject.model_version).distinct()
    ).all()
    count = 0
    for fleet_id, model_name, model_version in groups:
        result = session.execute(
            delete(CaptureObject).where(
                CaptureObject.fleet_id == fleet_id,
                CaptureObject.model_name == model_name,
                CaptureObject.model_version == model_version,
                CaptureObject.first_inference_at < before,
                CaptureObject.last_inference_at < before,
            )
        )
        count += int(getattr(result, "rowcount", 0) or 0)
    if count:
        log.info("deleted %d capture index rows of captures older than %s", count, before.isoformat())
    return count


def latest_sample(dialect: str) -> ColumnElement[datetime | None]:
    """The latest sample time of a ``device_models`` row (the module doc's rule) as a SQL expression
    on ``dialect``: the later of the device's reported ``LatestSampleTime`` and its newest indexed
    object's last inference; NULL when neither is known."""
    device_id, model_name, model_version = (
        DeviceModel.device_id,
        DeviceModel.model_name,
        DeviceModel.model_version,
    )
    reported = DeviceModel.latest_sample_at
    # one index lookup (ix_capture_objects_device_model) per device model
    indexed = (
        select(func.max(CaptureObject.last_inference_at))
        .where(
            CaptureObject.device_id == device_id,
            CaptureObject.model_name == model_name,
            CaptureObject.model_version == model_version,
        )
        .scalar_subquery()
    )
    if dialect == "postgresql":
        later = func.greatest(indexed, reported)  # GREATEST skips NULLs
    else:  # SQLite's max(a, b) is NULL if either is
        later = func.max(func.coalesce(indexed, reported), func.coalesce(reported, indexed))
    return type_coerce(later, UTCDateTime())


def latest_samples(session: Session, device: Device) -> dict[tuple[str, str], datetime | None]:
    """(model name, version) -> latest sample time, for the models ``device`` reported."""
    stmt = select(
        DeviceModel.model_name,
        DeviceModel.model_version,
        latest_sample(session.get_bind().dialect.name),
    ).where(DeviceModel.device_id == device.id)
    return {(name, version): when for name, version, when in session.execute(stmt)}


def list_objects(
    session: Session,
    *,
    fleet_name: str | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    device_name: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int,
    next_token: str | None = None,
) -> Page[CaptureObject]:
    """Indexed objects, oldest first (by first inference, then key), filtered (all must match).

    ``since``/``until`` select the objects with a record in ``[since, until)`` by inference time.
    NOT_FOUND for an unknown fleet or device; INVALID_ARGUMENT if ``until`` is not after ``since``.
    """
    if since is not None and until is not None and until <= since:
        raise InvalidArgument("until must be after since")
    # the key breaks ties: pages stay stable whatever order the objects were reported in
    stmt: Select[CaptureObject] = select(CaptureObject).order_by(
        CaptureObject.first_inference_at, CaptureObject.key
    )
    if fleet_name is not None:
        stmt = stmt.where(CaptureObject.fleet_id == get_fleet(session, fleet_name).id)
    if device_name is not None:
        ids = list(session.scalars(select(Device.id).where(Device.name == device_name)))
        if not ids:
            raise NotFound(f"device {device_name!r} is not registered")
        stmt = stmt.where(CaptureObject.device_id.in_(ids))
    if model_name is not None:
        stmt = stmt.where(CaptureObject.model_name == model_name)
    if model_version is not None:
        stmt = stmt.where(CaptureObject.model_version == model_version)
    if since is not None:
        stmt = stmt.where(CaptureObject.last_inference_at >= since)
    if until is not None:
        stmt = stmt.where(CaptureObject.first_inference_at < until)
    return paginate(session, stmt, limit, next_token)


def get_object(session: Session, key: str) -> CaptureObject:
    """The indexed object ``key``; INVALID_ARGUMENT for a key not of the layout, NOT_FOUND if not indexed."""
    parsed = parse_key(key)
    row = session.scalar(
        select(CaptureObject)
        .join(Fleet, Fleet.id == CaptureObject.fleet_id)
        .where(Fleet.name == parsed.fleet, CaptureObject.key == key)
    )
    if row is None:
        raise NotFound(f"{WHAT} {quoted(key)} is not in the capture index")
    return row


def capture_status(session: Session, device: Device) -> DeviceCaptureStatus | None:
    """The device's latest reported capture spool figures (None before its first report)."""
    return session.get(DeviceCaptureStatus, device.id)
