"""Drift monitoring on the control plane: live summary windows from heartbeats, baselines, reports.

Devices send each loaded model version's live summary (mergeable KLL sketches and class counts,
:mod:`edgefleet.monitoring`) per window with their heartbeats (``ModelSummaries``);
:func:`check_windows` bounds them (refused as INVALID_ARGUMENT) and :func:`store_windows` keeps
them, once each, on the heartbeat's own transaction (the ordinary path and the group commit alike).

A model version's **baseline** (:func:`put_baseline`) is the same kind of summary made from
reference data (``edgefleet baseline create``). The **drift report** (:func:`fleet_drift`) merges
a fleet's windows of a model per version and time bucket (optionally only devices with a tag) and
scores each bucket against the version's baseline with :func:`edgefleet.monitoring.compare`: PSI and
KS per input and output feature, Jensen-Shannon per output's predicted classes, worst first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, delete, select
from sqlalchemy.orm import Session

from edgefleet.core import deviceplane as dp
from edgefleet.core.errors import FailedPrecondition, InvalidArgument, NotFound
from edgefleet.monitoring import ClassDrift, DriftReport, FeatureDrift, ModelSummary, compare
from edgefleet.server import registry
from edgefleet.server.db.engine import one_of
from edgefleet.server.db.schema import Baseline, Device, DeviceTag, ModelVersion, SummaryWindowRow
from edgefleet.server.fleets import get_fleet

log = logging.getLogger(__name__)

_WINDOW_KEY = ["device_id", "model_name", "model_version", "window_start"]


def check_windows(windows: Sequence[dp.SummaryWindow]) -> None:
    """INVALID_ARGUMENT naming the first window that does not fit: too many windows, a summary
    over :data:`~edgefleet.core.deviceplane.MAX_SUMMARY_BYTES` (or all of them over
    :data:`~edgefleet.core.deviceplane.MAX_HEARTBEAT_SUMMARY_BYTES`), names too long, a window that
    ends before it starts, or a summary that is not a model summary."""
    if len(windows) > dp.MAX_HEARTBEAT_SUMMARIES:
        raise InvalidArgument(
            f"a heartbeat carries at most {dp.MAX_HEARTBEAT_SUMMARIES} model summaries (got {len(windows)})"
        )
    total = 0
    for index, window in enumerate(windows):
        what = f"ModelSummaries[{index}] ({window.model_name!r} {window.model_version!r})"
        if not 1 <= len(window.model_name) <= 63 or len(window.model_version) > 30:
            raise InvalidArgument(f"{what}: model names are 1-63, versions 0-30 characters")
        if window.calls < 0:
            raise InvalidArgument(f"{what}: Calls must not be negative")
        if window.window_end < window.window_start:
            raise InvalidArgument(f"{what}: WindowEnd is before WindowStart")
        size = dp.summary_bytes(window.summary)
        if size > dp.MAX_SUMMARY_BYTES:
            raise InvalidArgument(f"{what}: a summary is at most {dp.MAX_SUMMARY_BYTES} bytes (got {size})")
        total += size
        if total > dp.MAX_HEARTBEAT_SUMMARY_BYTES:
            raise InvalidArgument(
                f"a heartbeat's model summaries are at most {dp.MAX_HEARTBEAT_SUMMARY_BYTES} bytes in all"
            )
        try:
            ModelSummary.from_wire(window.summary)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{what}: {exc}") from exc


def store_windows(
    conn: Connection, windows: Sequence[tuple[int, Sequence[dp.SummaryWindow]]], now: datetime
) -> int:
    """Store ``(device id, windows)`` pairs (checked by :func:`check_windows`) on ``conn``'s
    transaction; a window already stored (same device, model, version and start) is kept as it
    was. Returns the number of windows offered."""
    wanted = [(device_id, w) for device_id, ws in windows for w in ws]
    if not wanted:
        return 0
    device_ids = sorted({device_id for device_id, _ in wanted})
    query = select(Device.id, Device.fleet_id).where(one_of(conn, Device.id, device_ids))
    fleets = {device_id: fleet_id for device_id, fleet_id in conn.execute(query)}
    rows = [
        {
            "device_id": device_id,
            "fleet_id": fleets[device_id],
            "model_name": w.model_name,
            "model_version": w.model_version,
            "window_start": w.window_start,
            "window_end": w.window_end,
            "calls": w.calls,
            "summary": dict(w.summary),
            "received_at": now,
        }
        for device_id, w in wanted
        if device_id in fleets
    ]
    if rows:
        conn.execute(_insert_new(conn), rows)
    return len(rows)


def purge_windows(session: Session, before: datetime) -> int:
    """Delete the summary windows that ended before ``before`` (their retention passed); returns how many."""
    result = session.execute(delete(SummaryWindowRow).where(SummaryWindowRow.window_end < before))
    count = int(getattr(result, "rowcount", 0) or 0)
    if count:
        log.info("deleted %d model summary windows that ended before %s", count, before.isoformat())
    return count


def _insert_new(conn: Connection) -> Any:
    """INSERT of summary windows that skips the ones already stored."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(SummaryWindowRow).on_conflict_do_nothing(index_elements=_WINDOW_KEY)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(SummaryWindowRow).on_conflict_do_nothing(index_elements=_WINDOW_KEY)


# ------------------------------------------------------------------------------------- baselines


def put_baseline(
    session: Session, model_name: str, version: str, summary: Mapping[str, Any], actor: str, now: datetime
) -> Baseline:
    """Attach (or replace) the baseline of a registered model version; NOT_FOUND for an unknown
    model or version, INVALID_ARGUMENT for a summary that is not one or summarises nothing."""
    row = registry.get_version(session, model_name, version)
    parsed = ModelSummary.from_wire(summary)
    if parsed.calls <= 0 or not (parsed.inputs or parsed.outputs):
        raise InvalidArgument("a baseline must summarise at least one reference sample")
    baseline = session.get(Baseline, row.id)
    if baseline is None:
        baseline = Baseline(model_version_id=row.id)
        session.add(baseline)
    baseline.summary = dict(summary)
    baseline.samples = parsed.calls
    baseline.created_at = now
    baseline.created_by = actor
    session.flush()
    return baseline


def get_baseline(session: Session, model_name: str, version: str) -> Baseline:
    """The baseline of a model version; NOT_FOUND if the version is unknown or has none."""
    baseline = _baseline(session, model_name, version)
    if baseline is None:
        raise NotFound(
            f"model {model_name!r} version {version!r} has no baseline (edgefleet baseline create)"
        )
    return baseline


def _baseline(session: Session, model_name: str, version: str) -> Baseline | None:
    """The version's baseline or None; NOT_FOUND for an unknown model or version."""
    return session.get(Baseline, registry.get_version(session, model_name, version).id)


# ---------------------------------------------------------------------------------- drift report

#: Default and bounds of the report's time buckets (seconds).
DEFAULT_BUCKET_SECONDS = 3600
MIN_BUCKET_SECONDS = 60
MAX_BUCKET_SECONDS = 31 * 24 * 3600
#: Default look-back of a report.
DEFAULT_SINCE = timedelta(days=1)
#: Windows one report merges at most (a longer range must be asked for in parts).
MAX_REPORT_WINDOWS = 50_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Bucket:
    """One model version's windows merged over one time bucket, scored against its baseline."""

    model_version: str
    start: datetime
    end: datetime
    windows: int
    devices: int
    calls: int
    report: DriftReport


@dataclass(frozen=True)
class FleetDrift:
    """A fleet's drift for one model: per version and bucket, and versions that have no baseline."""

    fleet: str
    model_name: str
    since: datetime
    bucket_seconds: int
    buckets: tuple[Bucket, ...]
    missing_baselines: tuple[str, ...]

    def features(self) -> list[tuple[Bucket, FeatureDrift]]:
        """Every feature's scores in every bucket, worst (PSI, then KS) first."""
        rows = [(b, f) for b in self.buckets for f in b.report.features]
        rows.sort(key=lambda r: (-r[1].psi, -r[1].ks, r[0].start, r[1].tensor, r[1].feature))
        return rows

    def classes(self) -> list[tuple[Bucket, ClassDrift]]:
        """Every output's class-distribution score in every bucket, worst (JS) first."""
        rows = [(b, c) for b in self.buckets for c in b.report.classes]
        rows.sort(key=lambda r: (-r[1].js, r[0].start, r[1].output))
        return rows


def check_bucket(seconds: int | None) -> int:
    """The bucket length to use; INVALID_ARGUMENT outside the bounds."""
    if seconds is None:
        return DEFAULT_BUCKET_SECONDS
    if not MIN_BUCKET_SECONDS <= seconds <= MAX_BUCKET_SECONDS:
        raise InvalidArgument(
            f"the bucket must be {MIN_BUCKET_SECONDS}-{MAX_BUCKET_SECONDS} seconds (got {seconds})"
        )
    return seconds


def fleet_drift(
    session: Session,
    fleet_name: str,
    model_name: str,
    *,
    version: str | None,
    since: datetime | None,
    now: datetime,
    bucket_seconds: int | None = None,
    tag: tuple[str, str] | None = None,
) -> FleetDrift:
    """Merge the fleet's stored windows of ``model_name`` (one ``version``, or each version seen)
    per time bucket (by window end, buckets aligned to the epoch), only of devices tagged ``tag``
    if given, and score each bucket against its version's baseline.

    NOT_FOUND for an unknown fleet, model or version; FAILED_PRECONDITION when no version asked
    for has a baseline; INVALID_ARGUMENT for a bad bucket or range.
    """
    fleet = get_fleet(session, fleet_name)
    model = registry.get_model(session, model_name)
    seconds = check_bucket(bucket_seconds)
    start = since if since is not None else now - DEFAULT_SINCE
    if start.tzinfo is None:
        raise InvalidArgument("Since must carry a time zone (e.g. 2030-01-01T00:00:00Z)")
    baselines: dict[str, ModelSummary] = {}
    if version is not None:
        baseline = _baseline(session, model_name, version)
        if baseline is None:
            raise FailedPrecondition(
                f"model {model_name!r} version {version!r} has no baseline to compare with: "
                "edgefleet baseline create"
            )
        baselines[version] = ModelSummary.from_wire(baseline.summary)
    else:
        stored = session.execute(
            select(ModelVersion.version, Baseline.summary)
            .join(Baseline, Baseline.model_version_id == ModelVersion.id)
            .where(ModelVersion.model_id == model.id)
        )
        baselines = {str(v): ModelSummary.from_wire(cast(dict[str, Any], summary)) for v, summary in stored}
    query = select(SummaryWindowRow).where(
        SummaryWindowRow.fleet_id == fleet.id,
        SummaryWindowRow.model_name == model_name,
        SummaryWindowRow.window_end >= start,
    )
    if version is not None:
        query = query.where(SummaryWindowRow.model_version == version)
    if tag is not None:
        query = query.join(
            DeviceTag,
            (DeviceTag.device_id == SummaryWindowRow.device_id)
            & (DeviceTag.key == tag[0])
            & (DeviceTag.value == tag[1]),
        )
    rows = session.scalars(query.order_by(SummaryWindowRow.window_end).limit(MAX_REPORT_WINDOWS + 1)).all()
    if len(rows) > MAX_REPORT_WINDOWS:
        raise InvalidArgument(
            f"more than {MAX_REPORT_WINDOWS} summary windows since {start.isoformat()}: ask for a later Since"
        )
    seen = sorted({r.model_version for r in rows})
    missing = tuple(v for v in seen if v not in baselines)
    if version is None and seen and not set(seen) & set(baselines):
        raise FailedPrecondition(
            f"no version of model {model_name!r} seen in fleet {fleet_name!r} has a baseline "
            f"({', '.join(seen)}): edgefleet baseline create"
        )
    groups: dict[tuple[str, int], list[SummaryWindowRow]] = {}
    for row in rows:
        if row.model_version in baselines:
            index = int((row.window_end - _EPOCH).total_seconds() // seconds)
            groups.setdefault((row.model_version, index), []).append(row)
    buckets = []
    for (model_version, index), members in sorted(groups.items()):
        merged = ModelSummary.empty()
        for member in members:
            merged.merge(ModelSummary.from_wire(member.summary))
        begin = _EPOCH + timedelta(seconds=index * seconds)
        buckets.append(
            Bucket(
                model_version,
                begin,
                begin + timedelta(seconds=seconds),
                len(members),
                len({m.device_id for m in members}),
                sum(m.calls for m in members),
                compare(baselines[model_version], merged),
            )
        )
    return FleetDrift(fleet_name, model_name, start, seconds, tuple(buckets), missing)
