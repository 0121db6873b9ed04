"""Deployment results (ReportDeploymentResult) recorded in batches.

During a rollout every device of a stage reports once, mostly ``SUCCEEDED``. Through the ordinary
path (:func:`edgefleet.server.deployments.record_result`) that is a transaction of half a dozen ORM
queries per device, then a second one to settle the stage. :class:`ResultRecorder` records many
devices' *plain* successes at once: the device's row is INPROGRESS, not rolling back, in a stage
that is INPROGRESS, of a plan without a health gate. For those the ordinary path does exactly
this: the row becomes DEPLOYED with the device's result, report and activation times and message.
One query checks the devices' certificates (revocation read now) and fleets, one conditional UPDATE
per stage records the results (only rows still in that state, so a concurrent stop wins), one
COMMIT. Afterwards each stage that got results is settled the ordinary way
(:func:`edgefleet.server.deployments.settle_stage`: a probe, and when no device is left pending,
the locked refresh that finishes the stage).

Every other report (failures, rollbacks, health gates, a starting stage, an unknown or revoked
certificate, another fleet) is handed back: the caller takes the ordinary path.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select, update

from edgefleet.core.deviceplane import HealthGate, Result
from edgefleet.core.errors import EdgefleetError
from edgefleet.server.batching import Batcher, one_of
from edgefleet.server.db.engine import Database, HeldConnection
from edgefleet.server.db.schema import DeploymentPlan, Device, Fleet, PlanStage, StageDevice
from edgefleet.server.deployments import StageStatus, settle_stage
from edgefleet.server.rollout import DeviceStatus, Rollback

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Report:
    """A ReportDeploymentResult call: who (from the certificate), where, and what."""

    device_name: str
    serial: str
    fleet_name: str
    deployment_name: str
    status: str
    message: str | None


class ResultRecorder:
    """Records plain successful results for many devices at a time (see the module doc)."""

    def __init__(self, db: Database, *, max_batch: int = 500) -> None:
        self.db = db
        self._writer = HeldConnection(db)
        self._batcher: Batcher[Report, str | None] = Batcher(
            "edgefleet-results", self.record_many, max_batch=max_batch
        )

    @staticmethod
    def plain(status: str) -> bool:
        """Whether a result of this status may be batched at all (only successes are)."""
        return status == Result.SUCCEEDED.value

    async def record(self, report: Report) -> str | None:
        """The device's new DeviceDeploymentStatus once committed, or None: take the ordinary path."""
        if self._batcher.closed or not self.plain(report.status):
            return None
        return await self._batcher.submit(report)

    def record_many(self, reports: Sequence[Report]) -> list[str | None]:
        """Record ``reports`` in one transaction, then settle the stages they were in.

        Settling happens after the commit, in a transaction of its own, so that of two batches
        committed at the same time (two workers) the later settle sees both: the last results of
        a stage always finish it.
        """
        now = self.db.now()
        done, stages = self._writer.run(lambda conn: _record(conn, reports, now))
        for stage_id in stages:
            try:
                with self.db.session() as session:
                    settle_stage(session, stage_id, self.db.now(), device_failed=False)
            except EdgefleetError as exc:  # the results are stored; the periodic refresh settles it
                log.warning("settling stage %d after results failed: %s", stage_id, exc)
        return [DeviceStatus.DEPLOYED.value if i in done else None for i in range(len(reports))]

    def close(self, timeout: float = 10.0) -> None:
        """Record what is queued, then stop the thread and release the connection."""
        self._batcher.close(timeout)
        self._writer.close()


def _record(conn: Connection, reports: Sequence[Report], now: datetime) -> tuple[set[int], list[int]]:
    """Indexes of the reports recorded, and the stages they were recorded in."""
    names = sorted({r.device_name for r in reports})
    devices = {
        name: (device_id, serial, fleet)
        for device_id, name, serial, fleet in conn.execute(
            select(Device.id, Device.name, Device.cert_serial, Fleet.name)
            .join(Fleet, Fleet.id == Device.fleet_id)
            .where(one_of(conn, Device.name, names), Device.deregistered_at.is_(None))
        )
    }
    stages: dict[str, int | None] = {}
    for deployment in sorted({r.deployment_name for r in reports}):
        plan_name, dot, stage_name = deployment.partition(".")
        stage = conn.execute(
            select(
                PlanStage.id,
                PlanStage.status,
                DeploymentPlan.max_error_rate,
                DeploymentPlan.max_p99_latency_ms,
            )
            .join(DeploymentPlan, DeploymentPlan.id == PlanStage.plan_id)
            .where(DeploymentPlan.name == plan_name, PlanStage.name == stage_name)
        ).first()
        plain = (
            dot
            and stage is not None
            and stage[1] == StageStatus.INPROGRESS
            and not HealthGate(stage[2], stage[3]).enabled
        )
        stages[deployment] = stage[0] if plain and stage is not None else None
    # (stage, message) -> {device id: report indexes}; a device reporting twice in a batch is fine
    groups: dict[tuple[int, str], dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for index, report in enumerate(reports):
        if report.status != Result.SUCCEEDED.value:
            continue  # only plain successes are recorded here
        device = devices.get(report.device_name)
        stage_id = stages.get(report.deployment_name)
        if device is None or stage_id is None or device[1] != report.serial or device[2] != report.fleet_name:
            continue
        groups[(stage_id, report.message or report.status)][device[0]].append(index)
    done: set[int] = set()
    touched: set[int] = set()
    for (stage_id, message), by_device in sorted(groups.items()):
        recorded = conn.execute(
            update(StageDevice)
            .where(
                StageDevice.stage_id == stage_id,
                one_of(conn, StageDevice.device_id, sorted(by_device)),
                StageDevice.status == DeviceStatus.INPROGRESS.value,
                StageDevice.rollback == Rollback.NONE.value,
                StageDevice.observing.is_(False),
            )
            .values(
                status=DeviceStatus.DEPLOYED.value,
                device_result=Result.SUCCEEDED.value,
                message=message,
                reported_at=now,
                activated_at=now,
                updated_at=now,
            )
            .returning(StageDevice.device_id)
        ).scalars()
        for device_id in recorded:
            done.update(by_device[device_id])
            touched.add(stage_id)
    return done, sorted(touched)
