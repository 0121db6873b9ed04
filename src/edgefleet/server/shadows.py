"""Shadow testing on devices: the devices' shadow figures, stored and summed per fleet and model pair.

A device's agent mirrors a sample of a handle's calls to a shadow model and keeps figures per pair
(extension ``shadow-models``); the daemon sends them in every heartbeat's ``Shadows``, cumulative
since the pair started (:class:`~edgefleet.core.deviceplane.ShadowReport`). So the server keeps
the *latest* report per device and pair (``device_shadows``; a heartbeat lost or sent twice
changes nothing) and :func:`record_reports` writes a batch of heartbeats' reports on the
heartbeat's own connection and transaction, as the capture index does.

:func:`shadow_report` is what operators (``GET /api/v1/fleets/{fleet}/shadows``, ``edgefleet
fleet shadows``) and the pipeline's shadow step read: per fleet and (champion version, shadow
version), the counters summed over the fleet's registered devices, the agreement rate
(agreed / completed), and the shadow's latency against the champion's on the same device (the
ratio shadow / champion of p50 and of p99, per device, the median and the worst of them): a ratio
is taken on one device because devices differ in speed far more than models do.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select, text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from edgefleet.core import deviceplane as dp
from edgefleet.core.errors import InvalidArgument
from edgefleet.server.db.schema import Device, DeviceShadow
from edgefleet.server.fleets import get_fleet

#: largest count a report may carry: what the BIGINT columns hold
_MAX_BIGINT = 2**63 - 1
_PAIR_COLUMNS = ("handle", "champion_model", "champion_version", "shadow_model", "shadow_version")
_FIGURE_COLUMNS = (
    *(name for name, _ in dp.SHADOW_COUNTS),
    *(name for name, _ in dp.SHADOW_LATENCIES),
    "reported_at",
)
_PG_UPSERT = text(
    f"""
    INSERT INTO device_shadows (device_id, {", ".join(_PAIR_COLUMNS)}, {", ".join(_FIGURE_COLUMNS)})
    SELECT r.device_id, {", ".join(f"r.{c}" for c in (*_PAIR_COLUMNS, *_FIGURE_COLUMNS))}
    FROM json_to_recordset(CAST(:rows AS JSON)) AS r(
        device_id INTEGER, handle VARCHAR, champion_model VARCHAR, champion_version VARCHAR,
        shadow_model VARCHAR, shadow_version VARCHAR,
        {", ".join(f"{name} BIGINT" for name, _ in dp.SHADOW_COUNTS)},
        {", ".join(f"{name} DOUBLE PRECISION" for name, _ in dp.SHADOW_LATENCIES)},
        reported_at TIMESTAMPTZ)
    ON CONFLICT (device_id, {", ".join(_PAIR_COLUMNS)}) DO UPDATE SET
        {", ".join(f"{c} = EXCLUDED.{c}" for c in _FIGURE_COLUMNS)}
    """
)


def check_reports(reports: Sequence[dp.ShadowReport]) -> None:
    """INVALID_ARGUMENT unless ``reports`` fit: at most :data:`~edgefleet.core.deviceplane.MAX_HEARTBEAT_SHADOWS`,
    names within their columns, counts 0 or more (agreed and disagreed at most completed), latencies
    finite and 0 or more, and no pair twice."""
    if len(reports) > dp.MAX_HEARTBEAT_SHADOWS:
        raise InvalidArgument(
            f"a heartbeat reports at most {dp.MAX_HEARTBEAT_SHADOWS} shadow pairs, got {len(reports)}"
        )
    seen: set[tuple[str, ...]] = set()
    for report in reports:
        names = (
            ("Handle", report.handle, 1, 63),
            ("ChampionModel", report.champion_model, 1, 63),
            ("ChampionVersion", report.champion_version, 0, 30),
            ("ShadowModel", report.shadow_model, 1, 63),
            ("ShadowVersion", report.shadow_version, 0, 30),
        )
        for field, value, shortest, longest in names:
            if not shortest <= len(value) <= longest:
                raise InvalidArgument(
                    f"shadow pair of handle {report.handle!r}: {field} must be {shortest}-{longest} "
                    f"characters, got {value!r}"
                )
        for name, wire in dp.SHADOW_COUNTS:
            count = getattr(report, name)
            if not 0 <= count <= _MAX_BIGINT:
                raise InvalidArgument(
                    f"shadow pair of handle {report.handle!r}: {wire} must be a count (0 or more), got {count}"
                )
        for name, wire in dp.SHADOW_LATENCIES:
            latency = getattr(report, name)
            if not 0 <= latency < float("inf"):
                raise InvalidArgument(
                    f"shadow pair of handle {report.handle!r}: {wire} must be 0 or more ms, got {latency}"
                )
        if report.agreed > report.completed or report.disagreed > report.completed:
            raise InvalidArgument(
                f"shadow pair of handle {report.handle!r}: Agreed ({report.agreed}) and Disagreed "
                f"({report.disagreed}) cannot exceed Completed ({report.completed})"
            )
        if report.pair in seen:
            raise InvalidArgument(f"shadow pair {report.pair} is reported twice in one heartbeat")
        seen.add(report.pair)


def record_reports(
    conn: Connection, reports: Sequence[tuple[int, Sequence[dp.ShadowReport]]], now: datetime
) -> None:
    """Replace the figures of each ``(device id, reports)`` item's pairs, on the caller's connection
    and transaction. The reports must have passed :func:`check_reports`; a later item wins a pair."""
    rows: dict[tuple[int, tuple[str, ...]], dict[str, object]] = {}
    for device_id, pairs in reports:
        for report in pairs:
            rows[(device_id, report.pair)] = {
                "device_id": device_id,
                **dict(zip(_PAIR_COLUMNS, report.pair, strict=True)),
                **{name: getattr(report, name) for name, _ in dp.SHADOW_COUNTS},
                **{name: getattr(report, name) for name, _ in dp.SHADOW_LATENCIES},
                "reported_at": now,
            }
    if not rows:
        return
    # rows in key order, so that concurrent batches take the primary key's locks in one order
    ordered = [rows[key] for key in sorted(rows)]
    if conn.dialect.name == "postgresql":
        conn.execute(_PG_UPSERT, {"rows": json.dumps(ordered, default=datetime.isoformat)})
        return
    upsert = sqlite_insert(DeviceShadow)
    upsert = upsert.on_conflict_do_update(
        index_elements=["device_id", *_PAIR_COLUMNS], set_={c: upsert.excluded[c] for c in _FIGURE_COLUMNS}
    )
    conn.execute(upsert, ordered)


def record_device_reports(
    session: Session, device: Device, reports: Sequence[dp.ShadowReport], now: datetime
) -> None:
    """Check and store one heartbeat's shadow reports (the heartbeat's exact tier)."""
    check_reports(reports)
    record_reports(session.connection(), [(device.id, reports)], now)


@dataclass(frozen=True)
class ShadowPairFigures:
    """One model pair's figures over a fleet: the latest report of every device running it, summed."""

    champion_model: str
    champion_version: str
    shadow_model: str
    shadow_version: str
    #: registered devices of the fleet reporting the pair
    devices: int
    mirrored: int
    completed: int
    agreed: int
    disagreed: int
    shadow_errors: int
    dropped: int
    #: agreed / completed (None before any mirrored call was compared)
    agreement_rate: float | None
    #: shadow errors / (completed + shadow errors): the share of mirrored calls the shadow failed
    shadow_error_rate: float | None
    #: shadow / champion latency on the same device, the median and the worst over devices (None
    #: while no device has both figures)
    p50_ratio_median: float | None
    p50_ratio_worst: float | None
    p99_ratio_median: float | None
    p99_ratio_worst: float | None
    #: the highest p99 any device reported, ms
    champion_p99_ms_worst: float
    shadow_p99_ms_worst: float
    #: the newest heartbeat that reported the pair (server time)
    last_reported: datetime

    @property
    def key(self) -> tuple[str, str, str, str]:
        """(champion model, version, shadow model, version)."""
        return (self.champion_model, self.champion_version, self.shadow_model, self.shadow_version)


def _ratios(rows: Sequence[DeviceShadow], shadow: str, champion: str) -> list[float]:
    return [
        getattr(r, shadow) / getattr(r, champion)
        for r in rows
        if getattr(r, champion) > 0 and getattr(r, shadow) > 0
    ]


def _pair_figures(key: tuple[str, str, str, str], rows: Sequence[DeviceShadow]) -> ShadowPairFigures:
    sums = {name: sum(getattr(r, name) for r in rows) for name, _ in dp.SHADOW_COUNTS}
    p50 = _ratios(rows, "shadow_p50_ms", "champion_p50_ms")
    p99 = _ratios(rows, "shadow_p99_ms", "champion_p99_ms")
    attempted = sums["completed"] + sums["shadow_errors"]
    return ShadowPairFigures(
        champion_model=key[0],
        champion_version=key[1],
        shadow_model=key[2],
        shadow_version=key[3],
        devices=len({r.device_id for r in rows}),
        **sums,
        agreement_rate=sums["agreed"] / sums["completed"] if sums["completed"] else None,
        shadow_error_rate=sums["shadow_errors"] / attempted if attempted else None,
        p50_ratio_median=statistics.median(p50) if p50 else None,
        p50_ratio_worst=max(p50) if p50 else None,
        p99_ratio_median=statistics.median(p99) if p99 else None,
        p99_ratio_worst=max(p99) if p99 else None,
        champion_p99_ms_worst=max(r.champion_p99_ms for r in rows),
        shadow_p99_ms_worst=max(r.shadow_p99_ms for r in rows),
        last_reported=max(r.reported_at for r in rows),
    )


def shadow_report(
    session: Session,
    fleet: str,
    champion_model: str | None = None,
    shadow_model: str | None = None,
    *,
    since: datetime | None = None,
) -> list[ShadowPairFigures]:
    """The fleet's shadow figures per model pair, sorted by pair (NOT_FOUND for an unknown fleet).

    Only the fleet's registered devices count; ``champion_model`` and ``shadow_model`` keep the
    pairs of those models; ``since`` keeps the reports received at or after it (a pipeline's shadow
    step passes the time it started the shadows, so a device's older pair of the same versions does
    not count).
    """
    fleet_row = get_fleet(session, fleet)
    stmt = (
        select(DeviceShadow)
        .join(Device, Device.id == DeviceShadow.device_id)
        .where(Device.fleet_id == fleet_row.id, Device.deregistered_at.is_(None))
    )
    if champion_model is not None:
        stmt = stmt.where(DeviceShadow.champion_model == champion_model)
    if shadow_model is not None:
        stmt = stmt.where(DeviceShadow.shadow_model == shadow_model)
    if since is not None:
        stmt = stmt.where(DeviceShadow.reported_at >= since)
    pairs: dict[tuple[str, str, str, str], list[DeviceShadow]] = {}
    for row in session.scalars(stmt):
        key = (row.champion_model, row.champion_version, row.shadow_model, row.shadow_version)
        pairs.setdefault(key, []).append(row)
    return [_pair_figures(key, pairs[key]) for key in sorted(pairs)]
