"""Drift monitoring on the control plane: live summary windows from heartbeats, baselines, reports.

Devices send each loaded model version's live summary (mergeable KLL sketches and class counts,
:mod:`edgefleet.monitoring`) per window with their heartbeats (``ModelSummaries``);
:func:`check_windows` bounds them (refused as INVALID_ARGUMENT) and :func:`store_windows` keeps
them, once each, on the heartbeat's own transaction (the ordinary path and the group commit alike).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from edgefleet.core import deviceplane as dp
from edgefleet.core.errors import InvalidArgument
from edgefleet.monitoring import ModelSummary
from edgefleet.server.db.engine import one_of
from edgefleet.server.db.schema import Device, SummaryWindowRow

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


def _insert_new(conn: Connection) -> Any:
    """INSERT of summary windows that skips the ones already stored."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(SummaryWindowRow).on_conflict_do_nothing(index_elements=_WINDOW_KEY)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(SummaryWindowRow).on_conflict_do_nothing(index_elements=_WINDOW_KEY)
