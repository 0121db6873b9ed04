"""SendHeartbeat: many devices' heartbeats stored in one transaction (group commit), none lost.

Heartbeats are the bulk of a fleet's traffic (every device, every 30 s) and each one is tiny, so
their cost is almost all per-transaction overhead: a connection checkout, BEGIN, a few statements
through the ORM, COMMIT (an fsync on PostgreSQL). :class:`HeartbeatService` stores a batch of
plain heartbeats (no result, the caller's own name, valid fields) on its thread and connection. On
PostgreSQL a batch is three set-based statements whatever its size (devices updated from one JSON
document, stale models deleted, models upserted) and one COMMIT; on SQLite an executemany UPDATE
and a DELETE + INSERT of the models.

Nothing is acknowledged before it is committed: a handler awaits its heartbeat's batch, so a
device only gets ``200`` for a stored heartbeat, and a failed batch answers every heartbeat in it
with the error (the device keeps it queued and sends it again). There is no write-behind loss.

Authentication stays exact: a device's row id and fleet are cached per *certificate* (a serial is
issued once, to one registration, so that mapping never changes), while revocation is checked by
the UPDATE itself (``cert_serial`` must still be the device's and the device registered), in the
same transaction that stores the heartbeat. Anything unusual (an unknown or revoked certificate,
another fleet) is left to the exact tier (:meth:`HeartbeatService.one`), which gives the exact error.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Connection, String, bindparam, delete, func, insert, select, text, update

from edgefleet.core.errors import InvalidArgument, NotFound
from edgefleet.server import captures, devices, drift, shadows
from edgefleet.server.db.engine import Database, one_of
from edgefleet.server.db.schema import Device, DeviceModel, Fleet
from edgefleet.server.deployments.device_side import record_result
from edgefleet.server.deployments.records import ResultReport
from edgefleet.server.deviceplane.service import DeviceCall, Service
from edgefleet.server.devices import Heartbeat, ModelReport

log = logging.getLogger(__name__)

#: certificates whose device id and fleet are remembered (an entry is ~200 bytes)
IDENTITY_CACHE_SIZE = 200_000

# Portable statements (SQLite): executemany runs in the driver's C loop, one statement per row.
_UPDATE_DEVICE = (
    update(Device)
    .where(
        Device.id == bindparam("b_id"),
        Device.cert_serial == bindparam("b_serial"),
        Device.deregistered_at.is_(None),
    )
    .values(
        agent_version=bindparam("b_agent_version"),
        agent_metrics=bindparam("b_agent_metrics"),
        last_heartbeat_at=bindparam("b_now"),
        platform_os=func.coalesce(bindparam("b_os", type_=String), Device.platform_os),
        platform_arch=func.coalesce(bindparam("b_arch", type_=String), Device.platform_arch),
        platform_accelerator=func.coalesce(
            bindparam("b_accelerator", type_=String), Device.platform_accelerator
        ),
    )
)

# PostgreSQL: one set-based statement per table for the whole batch, its rows passed as one JSON
# document (one json.dumps in C, parsed by the server) instead of a statement or an array per row.
# Models are upserted in place rather than deleted and inserted again, which keeps index churn
# (and vacuum work) down. A device's models are keyed by (device, name, version): it may serve two
# versions of one model at once (an A/B test), and both are kept.
_PG_UPDATE_DEVICES = text(
    """
    UPDATE devices AS d SET
        agent_version = v.b_agent_version,
        agent_metrics = v.b_agent_metrics,
        last_heartbeat_at = :now,
        platform_os = COALESCE(v.b_os, d.platform_os),
        platform_arch = COALESCE(v.b_arch, d.platform_arch),
        platform_accelerator = COALESCE(v.b_accelerator, d.platform_accelerator)
    FROM json_to_recordset(CAST(:rows AS JSON)) AS v(
        b_id INTEGER, b_serial VARCHAR, b_agent_version VARCHAR, b_agent_metrics JSON,
        b_os VARCHAR, b_arch VARCHAR, b_accelerator VARCHAR)
    WHERE d.id = v.b_id AND d.cert_serial = v.b_serial AND d.deregistered_at IS NULL
    RETURNING d.id
    """
)
_PG_DELETE_STALE_MODELS = text(
    """
    DELETE FROM device_models AS m
    WHERE m.device_id = ANY(CAST(:ids AS INTEGER[]))
      AND NOT EXISTS (
        SELECT 1 FROM json_to_recordset(CAST(:models AS JSON))
            AS r(device_id INTEGER, model_name VARCHAR, model_version VARCHAR)
        WHERE r.device_id = m.device_id AND r.model_name = m.model_name
          AND r.model_version = m.model_version)
    """
)
_PG_UPSERT_MODELS = text(
    """
    INSERT INTO device_models
        (device_id, model_name, model_version, latest_sample_at, latest_inference_at, metrics, updated_at)
    SELECT r.device_id, r.model_name, r.model_version, r.latest_sample_at, r.latest_inference_at,
           r.metrics, :now
    FROM json_to_recordset(CAST(:models AS JSON)) AS r(
        device_id INTEGER, model_name VARCHAR, model_version VARCHAR,
        latest_sample_at TIMESTAMPTZ, latest_inference_at TIMESTAMPTZ, metrics JSON)
    ON CONFLICT (device_id, model_name, model_version) DO UPDATE SET
        latest_sample_at = EXCLUDED.latest_sample_at,
        latest_inference_at = EXCLUDED.latest_inference_at,
        metrics = EXCLUDED.metrics,
        updated_at = EXCLUDED.updated_at
    """
)


@dataclass(frozen=True)
class HeartbeatItem(DeviceCall):
    """A SendHeartbeat call: the heartbeat, the fleet its body names, and the DeploymentResult it
    may carry (applied like ReportDeploymentResult)."""

    fleet_name: str
    heartbeat: Heartbeat
    result: ResultReport | None = field(default=None, kw_only=True)


class HeartbeatService(Service[HeartbeatItem, bool]):
    """SendHeartbeat (see the module doc): True once the heartbeat is committed; the batch tier
    answers False for one it did not store (the exact tier decides it)."""

    name = "heartbeats"
    UNDECIDED: ClassVar[object] = False

    def __init__(self, db: Database, *, max_batch: int = 500) -> None:
        super().__init__(db, max_batch=max_batch)
        self._held = self.held()
        self._lock = threading.Lock()  # guards the identity cache
        # (device name, certificate serial) -> (device id, fleet name); bounded, oldest out first
        self._identities: OrderedDict[tuple[str, str], tuple[int, str]] = OrderedDict()
        #: batches written and heartbeats stored (for logs and tests)
        self.batches = 0
        self.stored = 0

    def batchable(self, item: HeartbeatItem) -> bool:
        """No result to apply, the caller's own name, valid fields: everything else takes the exact
        tier, which reports errors in the documented order (identity first, then the fields)."""
        if item.result is not None or not item.own:
            return False
        try:
            devices.check_heartbeat(item.heartbeat)
            if item.heartbeat.capture is not None:
                captures.check_report(item.heartbeat.capture, item.fleet_name)
        except InvalidArgument:
            return False
        return True

    def batch(self, items: Sequence[HeartbeatItem]) -> list[bool | None]:
        """Store ``items`` in one transaction: per item True if stored, False if its identity is not
        a registered device of that fleet with that certificate."""
        outcome = self._held.run(lambda conn: self._store(conn, items))
        self.batches += 1
        self.stored += sum(outcome)
        return list(outcome)

    def one(self, item: HeartbeatItem) -> bool:
        """The heartbeat (and its result) in a transaction of its own, every check in order."""
        with self.db.session() as session:
            device = item.authenticate(session, self.db.now(), item.fleet_name)
            devices.record_heartbeat(session, device, item.heartbeat, self.db.now())
            drift.store_windows(session.connection(), [(device.id, item.heartbeat.summaries)], self.db.now())
            if item.heartbeat.capture is not None:
                captures.record_device_report(session, device, item.heartbeat.capture, self.db.now())
            if item.heartbeat.shadows:
                shadows.record_device_reports(session, device, item.heartbeat.shadows, self.db.now())
            if item.result is not None:
                try:
                    record_result(session, device, item.result, self.db.now())
                except NotFound as exc:
                    # A queued result for a plan deleted since must not block heartbeats forever.
                    name = item.result.deployment_name
                    log.warning(
                        "device %s: ignoring the result for %s: %s",
                        device.name,
                        name,
                        exc,
                        extra={"device": device.name, "deployment": name},
                    )
        return True

    def _store(self, conn: Connection, batch: Sequence[HeartbeatItem]) -> list[bool]:
        now = self.db.now()
        ids = self._resolve(conn, batch)
        # The newest heartbeat of a device wins when it sent several; rows are written in id
        # order so that concurrent batches (other workers) lock device rows in the same order.
        latest: dict[int, HeartbeatItem] = {}
        for item, device_id in zip(batch, ids, strict=True):
            if device_id is not None:
                latest[device_id] = item
        order = sorted(latest)
        stored: set[int] = set()
        if order:
            if conn.dialect.name == "postgresql":
                stored = _store_postgresql(conn, order, latest, now)
            else:
                stored = _store_portable(conn, order, latest, now)
        lost = [latest[i] for i in order if i not in stored]
        if lost:  # revoked (or deregistered) since their identity was cached
            self._evict(lost)
        # an item counts as stored if its device's row was written with the item's own certificate
        outcome = [
            device_id is not None and device_id in stored and latest[device_id].serial == item.serial
            for item, device_id in zip(batch, ids, strict=True)
        ]
        # every stored heartbeat's summary windows, uploads and shadow figures count, not only a
        # device's newest one's (a later heartbeat's figures of a pair replace an earlier one's)
        kept = [(p, i) for p, i, ok in zip(batch, ids, outcome, strict=True) if ok and i is not None]
        drift.store_windows(conn, [(i, p.heartbeat.summaries) for p, i in kept], now)
        captures.record_reports(
            conn, [(i, p.heartbeat.capture) for p, i in kept if p.heartbeat.capture is not None], now
        )
        shadows.record_reports(conn, [(i, p.heartbeat.shadows) for p, i in kept if p.heartbeat.shadows], now)
        return outcome

    def _resolve(self, conn: Connection, batch: Sequence[HeartbeatItem]) -> list[int | None]:
        """Device id per item, or None when the identity is not a registered device of that fleet."""
        with self._lock:
            known = {key: self._identities.get(key) for key in {(p.device_name, p.serial) for p in batch}}
        missing = sorted({key[0] for key, value in known.items() if value is None})
        if missing:
            rows = conn.execute(
                select(Device.id, Device.name, Device.cert_serial, Fleet.name)
                .join(Fleet, Fleet.id == Device.fleet_id)
                .where(one_of(conn, Device.name, missing), Device.deregistered_at.is_(None))
            )
            found = {(name, serial): (device_id, fleet) for device_id, name, serial, fleet in rows if serial}
            with self._lock:
                for key, value in found.items():
                    if key in known:
                        known[key] = value
                        self._identities[key] = value
                while len(self._identities) > IDENTITY_CACHE_SIZE:
                    self._identities.popitem(last=False)
        ids: list[int | None] = []
        for item in batch:
            entry = known[(item.device_name, item.serial)]
            ids.append(entry[0] if entry is not None and entry[1] == item.fleet_name else None)
        return ids

    def _evict(self, items: Sequence[HeartbeatItem]) -> None:
        with self._lock:
            for item in items:
                self._identities.pop((item.device_name, item.serial), None)


def _store_postgresql(
    conn: Connection, order: list[int], latest: dict[int, HeartbeatItem], now: datetime
) -> set[int]:
    # the portable path's rows, as JSON documents (times in ISO 8601)
    rows = [_device_params(device_id, latest[device_id], now) for device_id in order]
    dumped = json.dumps(rows, default=datetime.isoformat)
    stored: set[int] = set(conn.execute(_PG_UPDATE_DEVICES, {"now": now, "rows": dumped}).scalars())
    written = [i for i in order if i in stored]
    if written:
        models = [row for device_id in written for row in _model_rows(device_id, latest[device_id], now)]
        dumped = json.dumps(models, default=datetime.isoformat)
        conn.execute(_PG_DELETE_STALE_MODELS, {"ids": written, "models": dumped})
        conn.execute(_PG_UPSERT_MODELS, {"now": now, "models": dumped})
    return stored


def _store_portable(
    conn: Connection, order: list[int], latest: dict[int, HeartbeatItem], now: datetime
) -> set[int]:
    params = [_device_params(device_id, latest[device_id], now) for device_id in order]
    result = conn.execute(_UPDATE_DEVICE, params)
    if result.rowcount == len(order):
        stored = set(order)
    else:  # some certificate was revoked meanwhile: find out which rows were written
        stored = set(
            conn.scalars(
                select(Device.id).where(
                    Device.id.in_(order),
                    Device.deregistered_at.is_(None),
                    Device.cert_serial.in_([latest[i].serial for i in order]),
                )
            )
        )
    written = [i for i in order if i in stored]
    if written:
        conn.execute(delete(DeviceModel).where(DeviceModel.device_id.in_(written)))
        rows = [row for device_id in written for row in _model_rows(device_id, latest[device_id], now)]
        if rows:
            conn.execute(insert(DeviceModel), rows)
    return stored


def _latest_models(heartbeat: Heartbeat) -> list[ModelReport]:
    # One row per (name, version), the last report of it winning, as in devices.record_heartbeat;
    # a batch must not name a row twice (PostgreSQL refuses an upsert that updates a row twice).
    return list({(m.name, m.version): m for m in heartbeat.models}.values())


def _device_params(device_id: int, item: HeartbeatItem, now: datetime) -> dict[str, Any]:
    heartbeat = item.heartbeat
    platform = heartbeat.platform or (None, None, None)
    return {
        "b_id": device_id,
        "b_serial": item.serial,
        "b_agent_version": heartbeat.agent_version,
        "b_agent_metrics": list(heartbeat.agent_metrics),
        "b_now": now,
        "b_os": platform[0],
        "b_arch": platform[1],
        "b_accelerator": platform[2],
    }


def _model_rows(device_id: int, item: HeartbeatItem, now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "device_id": device_id,
            "model_name": m.name,
            "model_version": m.version,
            "latest_sample_at": m.latest_sample,
            "latest_inference_at": m.latest_inference,
            "metrics": list(m.metrics),
            "updated_at": now,
        }
        for m in _latest_models(item.heartbeat)
    ]
