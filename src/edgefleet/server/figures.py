"""The stored time series of fleet-level model figures (latency, requests, errors per model version).

The server keeps only each device's latest heartbeat figures (``DeviceModel.metrics``); the
periodic work samples what :func:`edgefleet.server.metrics.model_figures` computes from them once
per interval (``Timing.figures_interval``, aligned to the Unix epoch) into ``model_figure_samples``:
per fleet and model version the connected devices, their cumulative request and error counters
summed, p50 (median of the devices' p50) and p99 (worst device) latency. The first replica to
sample an interval writes it; the others' rows for it are ignored (the table's key), so several
replicas store one row per series and interval.

The counters are cumulative (each device counts since it loaded the version), so the error rate of
an interval is derived from two consecutive samples of a series: errors added / requests added. It
is left out (null) when no request was added, when a sum went down or when the number of devices
changed: a device reloaded the version (its counters restarted) or joined or left the connected
set, and the difference would mix devices (as Prometheus' ``rate`` drops a counter reset). The
first point of a series has no earlier sample: its rate is the one since the devices loaded the
version (errors / requests, the counters started at zero). Samples
are deleted after ``Timing.summary_retention`` like the drift series.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, exists, select
from sqlalchemy.orm import Session

from edgefleet.core.errors import InvalidArgument
from edgefleet.server.db.engine import Database
from edgefleet.server.db.schema import Fleet, ModelFigureSample
from edgefleet.server.fleets import get_fleet
from edgefleet.server.metrics import ModelFigures, model_figures

log = logging.getLogger(__name__)

_KEY = ["fleet_id", "model_name", "model_version", "at"]


@dataclass(frozen=True)
class FigurePoint:
    """One sample of a series, with the error rate of the interval that ended with it."""

    at: datetime
    devices: int
    #: cumulative counters of the connected devices, summed
    requests: float
    errors: float
    p50_ms: float | None
    p99_ms: float | None
    #: errors / requests added since the previous sample (None: no previous comparable sample)
    error_rate: float | None = None


@dataclass(frozen=True)
class FigureSeries:
    """One fleet's model version, its samples oldest first."""

    fleet: str
    model_name: str
    model_version: str
    points: list[FigurePoint]


def interval_start(when: datetime, seconds: int) -> datetime:
    """Start of the interval of ``seconds`` (aligned to the Unix epoch) that holds ``when``."""
    stamp = int(when.timestamp())
    return datetime.fromtimestamp(stamp - stamp % seconds, UTC)


def point_of(at: datetime, figures: ModelFigures) -> FigurePoint:
    """A point (without its error rate) from figures computed now."""
    return FigurePoint(at, figures.devices, figures.requests, figures.errors, figures.p50_ms, figures.p99_ms)


def with_rates(points: list[FigurePoint]) -> list[FigurePoint]:
    """``points`` (one series, oldest first) with each interval's error rate (module docstring)."""
    rated: list[FigurePoint] = []
    previous: FigurePoint | None = None
    for p in points:
        rate = None
        if previous is None:
            rate = p.errors / p.requests if p.requests > 0 else None
        elif p.devices == previous.devices:
            added, failed = p.requests - previous.requests, p.errors - previous.errors
            if added > 0 and failed >= 0:
                rate = failed / added
        rated.append(replace(p, error_rate=rate))
        previous = p
    return rated


#: bounds of ``Timing.figures_interval``, seconds (below the monitoring tick, intervals go unsampled)
MIN_INTERVAL, MAX_INTERVAL = 10, 86400


def check_interval(seconds: int) -> int:
    """``seconds`` if it is a usable sampling interval; INVALID_ARGUMENT otherwise."""
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
        raise InvalidArgument(
            f"the figures interval must be {MIN_INTERVAL}-{MAX_INTERVAL} seconds (got {seconds})"
        )
    return seconds


def sample(db: Database, now: datetime, *, interval: int, connected_window: timedelta) -> int:
    """Store the current interval's sample of every fleet's model versions unless one is stored
    already (by this or another replica); returns the rows written."""
    check_interval(interval)
    at = interval_start(now, interval)
    with db.session() as session:
        if session.scalar(select(exists().where(ModelFigureSample.at == at))):
            return 0
        figures = model_figures(session, now - connected_window)
        if not figures:
            return 0
        names = sorted({f for f, _, _ in figures})
        ids = {
            str(n): int(i)
            for n, i in session.execute(select(Fleet.name, Fleet.id).where(Fleet.name.in_(names)))
        }
        rows = [
            {
                "fleet_id": ids[fleet],
                "model_name": model,
                "model_version": version,
                "at": at,
                "devices": f.devices,
                "requests": f.requests,
                "errors": f.errors,
                "p50_ms": f.p50_ms,
                "p99_ms": f.p99_ms,
            }
            for (fleet, model, version), f in sorted(figures.items())
            if fleet in ids
        ]
        # RETURNING names the rows this replica wrote (executemany's rowcount is not reliable)
        stmt = _insert_new(session.connection()).returning(ModelFigureSample.fleet_id)
        written = len(session.execute(stmt, rows).all())
    if written:
        log.debug("sampled %d model figure series at %s", written, at.isoformat())
    return written


def _insert_new(conn: Connection) -> Any:
    """INSERT of samples that skips the series and intervals already stored."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(ModelFigureSample).on_conflict_do_nothing(index_elements=_KEY)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(ModelFigureSample).on_conflict_do_nothing(index_elements=_KEY)


def purge(session: Session, before: datetime) -> int:
    """Delete the samples taken before ``before`` (their retention passed); returns how many."""
    result = session.execute(delete(ModelFigureSample).where(ModelFigureSample.at < before))
    count = int(getattr(result, "rowcount", 0) or 0)
    if count:
        log.info("deleted %d model figure samples older than %s", count, before.isoformat())
    return count


def figure_series(
    session: Session,
    fleet: str | None = None,
    model: str | None = None,
    version: str | None = None,
    since: datetime | None = None,
) -> list[FigureSeries]:
    """The stored series (of fleet ``fleet``, model ``model``, version ``version``, from ``since``;
    None: all), ordered by fleet, model and version, each point with its interval's error rate.
    An unknown fleet is NOT_FOUND."""
    stmt = (
        select(Fleet.name, ModelFigureSample)
        .join(Fleet, Fleet.id == ModelFigureSample.fleet_id)
        .order_by(
            Fleet.name, ModelFigureSample.model_name, ModelFigureSample.model_version, ModelFigureSample.at
        )
    )
    if fleet is not None:
        stmt = stmt.where(ModelFigureSample.fleet_id == get_fleet(session, fleet).id)
    if model is not None:
        stmt = stmt.where(ModelFigureSample.model_name == model)
    if version is not None:
        stmt = stmt.where(ModelFigureSample.model_version == version)
    if since is not None:
        stmt = stmt.where(ModelFigureSample.at >= since)
    grouped: dict[tuple[str, str, str], list[FigurePoint]] = {}
    for name, row in session.execute(stmt):
        grouped.setdefault((str(name), row.model_name, row.model_version), []).append(
            FigurePoint(row.at, row.devices, row.requests, row.errors, row.p50_ms, row.p99_ms)
        )
    return [FigureSeries(f, m, v, with_rates(points)) for (f, m, v), points in grouped.items()]


def with_live(
    series: list[FigureSeries], live: dict[tuple[str, str, str], ModelFigures], now: datetime
) -> list[FigureSeries]:
    """``series`` with a last point at ``now`` from figures computed now (``live``, from
    :func:`~edgefleet.server.metrics.model_figures`; not stored), rated against the last stored
    sample by the same rule; versions with live figures but no stored sample get a series."""
    stored = {(s.fleet, s.model_name, s.model_version): s for s in series}
    out: list[FigureSeries] = []
    for key in sorted(stored.keys() | live.keys()):
        points = list(stored[key].points) if key in stored else []
        if key in live:
            points.append(point_of(now, live[key]))
        out.append(FigureSeries(*key, with_rates(points)))
    return out
