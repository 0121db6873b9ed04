"""GetDeployments: deployment polls answered in batches.

Every device polls GetDeployments (the daemon every 30 s). Almost always the answer is "nothing to
do"; during a rollout it is "this deployment", once per device and stage. Through the exact tier
either costs a transaction and half a dozen ORM queries per device. :class:`PollService` takes
many devices' polls at once:

1. one query on a read-only connection finds, for every polling device, whether this certificate
   is still the device's (revocation is read now, as on the exact tier), its fleet and platform,
   and its outstanding stage rows with their stage and plan;
2. devices with nothing outstanding get the empty list; devices whose rows are all *plain* — not
   yet fetched in a stage that is already INPROGRESS, or fetched and not rolling back, every model
   having a package for the device's platform — get their deployments: one query loads the plans'
   model configs and packages, one conditional UPDATE marks the unfetched rows INPROGRESS (only rows
   still READYTODEPLOY, so a concurrent stop wins), one COMMIT;
3. anything else (a starting stage, a rollback, a missing package, an unknown or revoked
   certificate, another fleet, a row changed meanwhile) is left to the exact tier
   (:meth:`PollService.one`: :func:`edgefleet.server.deployments.device_side.device_deployments`), which
   handles every case.

The answers are exactly what the exact tier answers for these cases.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, select, update

from edgefleet.core.deviceplane import Action, HealthGate
from edgefleet.server.db.engine import Database, one_of
from edgefleet.server.db.schema import (
    DeploymentPlan,
    Device,
    Fleet,
    Model,
    ModelPackage,
    ModelVersion,
    PlanModel,
    PlanStage,
    StageDevice,
)
from edgefleet.server.deployments.device_side import best_package, device_deployments
from edgefleet.server.deployments.records import (
    GATE_COLUMNS,
    Definition,
    DeviceDeployment,
    StageStatus,
    outstanding,
)
from edgefleet.server.deployments.rollout import DeviceStatus, Rollback
from edgefleet.server.deviceplane.service import DeviceCall, Service


@dataclass(frozen=True)
class PollItem(DeviceCall):
    """A GetDeployments call: who (from the certificate) and the fleet the body names."""

    fleet_name: str


@dataclass
class _Row:
    """An outstanding stage row of a polling device, with its stage and plan."""

    stage_id: int
    status: str
    rollback: str
    stage_name: str
    stage_status: str
    failure_policy: str
    plan_id: int
    plan_name: str
    gate: HealthGate


@dataclass
class _Device:
    id: int
    serial: str
    fleet: str
    platform: tuple[str | None, str | None, str | None]
    rows: list[_Row] = field(default_factory=list)


class PollService(Service[PollItem, list[DeviceDeployment]]):
    """GetDeployments for many devices at a time (see the module doc): the deployments the device
    must act on, oldest first (empty: nothing to do)."""

    name = "polls"

    def __init__(self, db: Database, *, max_batch: int = 500) -> None:
        super().__init__(db, max_batch=max_batch)
        self._reader = self.held(read_only=True)
        self._writer = self.held()

    def batchable(self, item: PollItem) -> bool:
        """Only the caller's own deployments are answered in batches."""
        return item.own

    def batch(self, polls: Sequence[PollItem]) -> list[list[DeviceDeployment] | None]:
        """Answers for ``polls`` (what the batch thread does with each batch); None: the exact tier."""
        found = self._reader.run(lambda conn: _outstanding_rows(conn, polls))
        answers: dict[PollItem, list[DeviceDeployment] | None] = {}
        work: dict[PollItem, _Device] = {}
        for poll in polls:
            device = found.get(poll.device_name)
            if device is None or device.serial != poll.serial or device.fleet != poll.fleet_name:
                answers[poll] = None
            elif not device.rows:
                answers[poll] = []
            elif all(_plain(row) for row in device.rows):
                work[poll] = device
            else:
                answers[poll] = None
        if work:
            answers.update(self._writer.run(lambda conn: _fetch(conn, work, self.db.now())))
        return [answers[poll] for poll in polls]

    def one(self, item: PollItem) -> list[DeviceDeployment]:
        """The device's deployments in a transaction of its own; fetching one marks it INPROGRESS."""
        with self.db.session() as session:
            device = item.authenticate(session, self.db.now(), item.fleet_name)
            return device_deployments(session, device, self.db.now())


def _plain(row: _Row) -> bool:
    if row.rollback == Rollback.REQUESTED or row.status == DeviceStatus.STOPPING:
        return False  # a rollback to ask for
    if row.status == DeviceStatus.READYTODEPLOY:
        return row.stage_status == StageStatus.INPROGRESS  # a first fetch changes a STARTING stage
    return row.status == DeviceStatus.INPROGRESS


def _outstanding_rows(conn: Connection, polls: Sequence[PollItem]) -> dict[str, _Device]:
    names = sorted({p.device_name for p in polls})
    result = conn.execute(
        select(
            Device.id,
            Device.name,
            Device.cert_serial,
            Fleet.name,
            Device.platform_os,
            Device.platform_arch,
            Device.platform_accelerator,
            StageDevice.stage_id,
            StageDevice.status,
            StageDevice.rollback,
            PlanStage.name,
            PlanStage.status,
            PlanStage.failure_policy,
            DeploymentPlan.id,
            DeploymentPlan.name,
            *GATE_COLUMNS,
        )
        .select_from(Device)
        .join(Fleet, Fleet.id == Device.fleet_id)
        .outerjoin(StageDevice, and_(StageDevice.device_id == Device.id, outstanding()))
        .outerjoin(PlanStage, PlanStage.id == StageDevice.stage_id)
        .outerjoin(DeploymentPlan, DeploymentPlan.id == PlanStage.plan_id)
        .where(one_of(conn, Device.name, names), Device.deregistered_at.is_(None))
        .order_by(Device.name, StageDevice.assigned_at, PlanStage.id)  # the exact tier's order
    )
    devices: dict[str, _Device] = {}
    rows: list[Any] = list(result)  # wider than the typed tuples go
    for r in rows:
        device = devices.get(r[1])
        if device is None:
            device = devices[r[1]] = _Device(r[0], r[2] or "", r[3], (r[4], r[5], r[6]))
        if r[7] is not None:
            gate = HealthGate(*r[15 : 15 + len(GATE_COLUMNS)])
            device.rows.append(_Row(r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], gate))
    return devices


Definitions = dict[int, list[tuple[str, str, str, list[Any]]]]


def _fetch(
    conn: Connection, work: dict[PollItem, _Device], now: datetime
) -> dict[PollItem, list[DeviceDeployment] | None]:
    plans = _definitions(conn, sorted({row.plan_id for d in work.values() for row in d.rows}))
    answers: dict[PollItem, list[DeviceDeployment] | None] = {}
    for poll, device in work.items():
        deployments = [_deployment(row, device, plans) for row in device.rows]
        complete = [d for d in deployments if d is not None]
        answers[poll] = complete if len(complete) == len(deployments) else None
    wanted = [
        (row.stage_id, d.id)
        for poll, d in work.items()
        if answers[poll] is not None
        for row in d.rows
        if row.status == DeviceStatus.READYTODEPLOY
    ]
    fetched: set[tuple[int, int]] = set()
    by_stage: dict[int, list[int]] = defaultdict(list)
    for stage_id, device_id in sorted(wanted):  # a batch's devices are mostly in one stage
        by_stage[stage_id].append(device_id)
    for stage_id, device_ids in by_stage.items():
        fetched.update(
            (stage_id, device_id)
            for device_id in conn.execute(
                update(StageDevice)
                .where(
                    StageDevice.stage_id == stage_id,
                    one_of(conn, StageDevice.device_id, device_ids),
                    StageDevice.status == DeviceStatus.READYTODEPLOY.value,
                )
                .values(status=DeviceStatus.INPROGRESS.value, message=None, fetched_at=now, updated_at=now)
                .returning(StageDevice.device_id)
            ).scalars()
        )
    if wanted:
        for poll, device in work.items():  # a row that changed meanwhile (e.g. a stop): the exact tier
            unfetched = [r for r in device.rows if r.status == DeviceStatus.READYTODEPLOY]
            if any((row.stage_id, device.id) not in fetched for row in unfetched):
                answers[poll] = None
    return answers


def _deployment(row: _Row, device: _Device, plans: Definitions) -> DeviceDeployment | None:
    """The deployment of ``row`` for ``device``; None if a model has no package for its platform
    (the exact tier then fails the device, or leaves the row out)."""
    definitions = []
    for handle, model_name, version, packages in plans.get(row.plan_id, []):
        package = best_package(packages, *device.platform)
        if package is None:
            return None
        definitions.append(Definition(handle, model_name, version, package, "DEPLOY"))
    return DeviceDeployment(
        name=f"{row.plan_name}.{row.stage_name}",
        failure_policy=row.failure_policy,
        action=Action.DEPLOY,
        definitions=definitions,
        health_gate=row.gate if row.gate.enabled else None,
        status=DeviceStatus.INPROGRESS.value,
    )


def _definitions(conn: Connection, plan_ids: list[int]) -> Definitions:
    """Per plan, its model configs by handle: (handle, model name, version, packages by target)."""
    if not plan_ids:
        return {}
    result = conn.execute(
        select(
            PlanModel.plan_id,
            PlanModel.handle,
            Model.name,
            ModelVersion.version,
            ModelPackage.id,
            ModelPackage.target,
            ModelPackage.target_os,
            ModelPackage.target_arch,
            ModelPackage.target_accelerator,
            ModelPackage.artifact_key,
            ModelPackage.size,
            ModelPackage.sha256,
            ModelPackage.sha1,
        )
        .join(ModelVersion, ModelVersion.id == PlanModel.model_version_id)
        .join(Model, Model.id == ModelVersion.model_id)
        .outerjoin(ModelPackage, ModelPackage.model_version_id == ModelVersion.id)
        .where(one_of(conn, PlanModel.plan_id, plan_ids))
        .order_by(PlanModel.plan_id, PlanModel.handle, ModelPackage.target)
    )
    configs: dict[tuple[int, str], tuple[str, str, list[Any]]] = {}
    order: dict[int, list[str]] = defaultdict(list)
    rows: list[Any] = list(result)  # wider than the typed tuples go
    for r in rows:
        key = (r[0], r[1])
        if key not in configs:
            configs[key] = (r[2], r[3], [])
            order[r[0]].append(r[1])
        if r[4] is not None:
            # a transient row object: what rendering and package choice read of a package
            configs[key][2].append(
                ModelPackage(
                    id=r[4],
                    target=r[5],
                    target_os=r[6],
                    target_arch=r[7],
                    target_accelerator=r[8],
                    artifact_key=r[9],
                    size=r[10],
                    sha256=r[11],
                    sha1=r[12],
                )
            )
    return {
        plan_id: [(handle, *configs[(plan_id, handle)]) for handle in handles]
        for plan_id, handles in order.items()
    }
