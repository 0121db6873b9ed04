"""ReportDeploymentResult: deployment results recorded in batches.

During a rollout every device of a stage reports once, mostly ``SUCCEEDED``. Through the exact tier
(:meth:`ResultService.one`: :func:`edgefleet.server.deployments.device_side.record_result`, then
:func:`~edgefleet.server.deployments.stages.settle_stage`) that is a transaction of half a dozen ORM
queries per device, then a second one to settle the stage. :class:`ResultService` records many
devices' *plain* successes at once: the device's row is INPROGRESS, not rolling back, in a stage
that is INPROGRESS, of a plan without a health gate. Their change is the state machine's
(:func:`edgefleet.server.deployments.rollout.transition` from that state), written for every device of a stage
with one conditional UPDATE (only rows still in that state, so a concurrent stop wins), after one
query that checks the devices' certificates (revocation read now) and fleets; one COMMIT.
Afterwards each stage that got results is settled as the exact tier does (a probe, and when no
device is left pending, the locked refresh that finishes the stage).

Every other report (failures, rollbacks, health gates, a starting stage, an unknown or revoked
certificate, another fleet) is left to the exact tier.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select, update

from edgefleet.core.deviceplane import FailurePolicy, HealthGate, Result
from edgefleet.core.errors import EdgefleetError
from edgefleet.server.db.engine import Database, one_of
from edgefleet.server.db.schema import DeploymentPlan, Device, Fleet, PlanStage, StageDevice
from edgefleet.server.deployments.device_side import record_result
from edgefleet.server.deployments.records import GATE_COLUMNS, ResultReport, StageStatus, change_values
from edgefleet.server.deployments.rollout import Change, DeviceStatus, Rollback, transition
from edgefleet.server.deployments.stages import settle_stage
from edgefleet.server.deviceplane.service import DeviceCall, Service

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultItem(DeviceCall):
    """A ReportDeploymentResult call: who (from the certificate), where, and what."""

    fleet_name: str
    deployment_name: str
    status: str
    message: str | None


class ResultService(Service[ResultItem, str]):
    """ReportDeploymentResult (see the module doc); the answer is the device's new
    DeviceDeploymentStatus."""

    name = "results"

    def __init__(self, db: Database, *, max_batch: int = 500) -> None:
        super().__init__(db, max_batch=max_batch)
        self._writer = self.held()

    def batchable(self, item: ResultItem) -> bool:
        """Only the caller's own plain successes are recorded in batches."""
        return item.own and item.status == Result.SUCCEEDED.value

    def batch(self, reports: Sequence[ResultItem]) -> list[str | None]:
        """Record ``reports`` in one transaction, then settle the stages they were in."""
        now = self.db.now()
        done, stages = self._writer.run(lambda conn: _record(conn, reports, now))
        for stage_id in stages:
            self._settle(stage_id, failed=False)
        return [done.get(i) for i in range(len(reports))]

    def one(self, item: ResultItem) -> str:
        """The device's row written and committed first; its stage refreshed in a second
        transaction only if the result may change it (so a large stage's reports run in parallel)."""
        with self.db.session() as session:
            device = item.authenticate(session, self.db.now(), item.fleet_name)
            report = ResultReport(item.deployment_name, item.status, item.message)
            row = record_result(session, device, report, self.db.now(), refresh=False)
            status, stage_id = row.status, row.stage_id
        self._settle(stage_id, failed=status == DeviceStatus.FAILED)
        return status

    def _settle(self, stage_id: int, *, failed: bool) -> None:
        """Settle a stage after results were committed, in a transaction of its own: of two batches
        committed at the same time (two workers) the later settle sees both, so the last results of
        a stage always finish it."""
        try:
            with self.db.session() as session:
                settle_stage(session, stage_id, self.db.now(), device_failed=failed)
        except EdgefleetError as exc:  # the results are stored; the periodic refresh settles it
            log.warning("settling stage %d after results failed: %s", stage_id, exc)


def _record(
    conn: Connection, reports: Sequence[ResultItem], now: datetime
) -> tuple[dict[int, str], list[int]]:
    """The new status of each report recorded (by index), and the stages they were recorded in."""
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
    changes: dict[int, Change] = {}
    for deployment in sorted({r.deployment_name for r in reports}):
        plan_name, dot, stage_name = deployment.partition(".")
        stage = conn.execute(
            select(PlanStage.id, PlanStage.status, PlanStage.failure_policy, *GATE_COLUMNS)
            .join(DeploymentPlan, DeploymentPlan.id == PlanStage.plan_id)
            .where(DeploymentPlan.name == plan_name, PlanStage.name == stage_name)
        ).first()
        stages[deployment] = None
        if not dot or stage is None or stage[1] != StageStatus.INPROGRESS or HealthGate(*stage[3:]).enabled:
            continue
        # the state every row recorded here is in (the UPDATE below checks it)
        change = transition(
            DeviceStatus.INPROGRESS,
            Rollback.NONE,
            Result.SUCCEEDED,
            policy=FailurePolicy(stage[2]),
            gated=False,
        )
        if change is not None:
            stages[deployment], changes[stage[0]] = stage[0], change
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
    done: dict[int, str] = {}
    touched: set[int] = set()
    for (stage_id, message), by_device in sorted(groups.items()):
        change = changes[stage_id]
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
                device_result=Result.SUCCEEDED.value,
                reported_at=now,
                updated_at=now,
                **change_values(change, message, None, now),
            )
            .returning(StageDevice.device_id)
        ).scalars()
        for device_id in recorded:
            done.update(dict.fromkeys(by_device[device_id], change.status.value))
            touched.add(stage_id)
    return done, sorted(touched)
