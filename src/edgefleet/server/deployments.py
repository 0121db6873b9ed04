"""Edge deployment plans and their state machine.

A plan pins model versions to handles and rolls them out in up to ten stages. Starting a stage
selects its devices (percentage of the fleet, explicit names, name substring or tags; a device is in
at most one stage of a plan) and gives each a per-device row, whose rules are
:func:`edgefleet.server.rollout.transition`.

The stage status follows from its devices: ``STARTING`` (nobody fetched yet), ``INPROGRESS``,
``DEPLOYED`` (all finished, failed share within the threshold), ``FAILED`` (failed share above the
threshold, decided as soon as it is exceeded), ``STOPPING`` -> ``STOPPED``. A stage can start when
every earlier stage is ``DEPLOYED``; a ``STOPPED`` stage can be started again.

Concurrency: every transition locks the stage row first, then touches device rows, so replicas and
concurrent device reports serialise per stage and the derived stage status is never computed from a
stale count.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, insert, literal, select, update
from sqlalchemy.orm import Session, joinedload, lazyload
from sqlalchemy.orm.interfaces import ORMOption

from edgefleet.core.deviceplane import (
    IN_PROGRESS,
    Action,
    FailurePolicy,
    HealthGate,
    HealthReport,
    HealthVerdict,
    Result,
    Verdict,
    parse_enum,
)
from edgefleet.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from edgefleet.server.db.paging import paginate
from edgefleet.server.db.schema import (
    DeploymentPlan,
    Device,
    DeviceTag,
    ModelPackage,
    ModelVersion,
    PlanModel,
    PlanStage,
    StageDevice,
)
from edgefleet.server.fleets import get_fleet
from edgefleet.server.registry import Approval, resolve_version
from edgefleet.server.rollout import Change, DeviceStatus, Rollback, StageEvent, stage_changes, transition
from edgefleet.server.validation import Page, validate_name, validate_tags

log = logging.getLogger(__name__)

MAX_STAGES = 10
MAX_MODEL_CONFIGS = 10
MAX_SELECTED_NAMES = 10000


class StageStatus(enum.StrEnum):
    """Stage states (DescribeEdgeDeploymentPlan's StageStatus)."""

    CREATING = "CREATING"
    READYTODEPLOY = "READYTODEPLOY"
    STARTING = "STARTING"
    INPROGRESS = "INPROGRESS"
    DEPLOYED = "DEPLOYED"
    FAILED = "FAILED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"


class SubsetType(enum.StrEnum):
    """How a stage selects devices (TAGS is an edgefleet extension)."""

    PERCENTAGE = "PERCENTAGE"
    SELECTION = "SELECTION"
    NAMECONTAINS = "NAMECONTAINS"
    TAGS = "TAGS"


_ACTIVE_STAGE = {StageStatus.STARTING, StageStatus.INPROGRESS, StageStatus.STOPPING}
#: the plan columns of its health gate, in :class:`HealthGate`'s field order (every reader uses these)
GATE_COLUMNS = (
    DeploymentPlan.max_error_rate,
    DeploymentPlan.max_p99_latency_ms,
    DeploymentPlan.min_inferences,
    DeploymentPlan.observation_seconds,
)


@dataclass(frozen=True)
class ModelConfigSpec:
    """A model config: handle -> a model version named directly or by alias."""

    handle: str
    model_name: str
    version: str | None = None
    alias: str | None = None


@dataclass(frozen=True)
class StageSpec:
    """A stage as the operator describes it."""

    name: str
    subset_type: str
    percentage: int | None = None
    device_names: Sequence[str] = ()
    name_contains: str | None = None
    tags: dict[str, str] | None = None
    failure_policy: str = FailurePolicy.ROLLBACK_ON_FAILURE.value
    #: the stage fails once its failed share of devices exceeds this fraction (0 = any failure)
    failure_threshold: float = 0.0


@dataclass(frozen=True)
class PlanSpec:
    """What CreateEdgeDeploymentPlan takes."""

    name: str
    fleet_name: str
    model_configs: Sequence[ModelConfigSpec]
    stages: Sequence[StageSpec]
    health_gate: HealthGate = field(default_factory=HealthGate)
    #: a device still unfinished this long after its stage started counts as failed (None: wait forever)
    device_timeout_seconds: float | None = None


@dataclass(frozen=True)
class StageCounts:
    """Device counts of a stage."""

    success: int = 0
    pending: int = 0
    failed: int = 0
    stopped: int = 0


@dataclass(frozen=True)
class Definition:
    """One model of a deployment as a device sees it."""

    handle: str
    model_name: str
    model_version: str
    package: ModelPackage
    state: str


@dataclass(frozen=True)
class DeviceDeployment:
    """A deployment handed to a device by GetDeployments."""

    name: str
    failure_policy: str
    action: Action
    definitions: list[Definition]
    health_gate: HealthGate | None
    status: str


@dataclass(frozen=True)
class ResultReport:
    """A device's DeploymentResult."""

    deployment_name: str
    status: str
    message: str | None = None


def deployment_name(plan: DeploymentPlan, stage: PlanStage) -> str:
    """``<plan>.<stage>``: unambiguous because neither name may contain a dot."""
    return f"{plan.name}.{stage.name}"


# ---------------------------------------------------------------------------------------------
# plans


def create_plan(session: Session, spec: PlanSpec, actor: str, now: datetime) -> DeploymentPlan:
    """Validate and store a plan; every stage starts READYTODEPLOY."""
    validate_name(spec.name, "deployment plan name")
    fleet = get_fleet(session, spec.fleet_name)
    if session.scalar(select(DeploymentPlan.id).where(DeploymentPlan.name == spec.name)) is not None:
        raise AlreadyExists(f"deployment plan {spec.name!r} already exists")
    if not 1 <= len(spec.model_configs) <= MAX_MODEL_CONFIGS:
        raise InvalidArgument(f"ModelConfigs must list 1-{MAX_MODEL_CONFIGS} models")
    if not 1 <= len(spec.stages) <= MAX_STAGES:
        raise InvalidArgument(f"Stages must list 1-{MAX_STAGES} stages, got {len(spec.stages)}")
    _check_gate(spec.health_gate)
    if spec.device_timeout_seconds is not None and spec.device_timeout_seconds <= 0:
        raise InvalidArgument("DeviceTimeoutSeconds must be positive")
    plan = DeploymentPlan(
        name=spec.name,
        fleet_id=fleet.id,
        fleet=fleet,
        max_error_rate=spec.health_gate.max_error_rate,
        max_p99_latency_ms=spec.health_gate.max_p99_latency_ms,
        min_inferences=spec.health_gate.min_inferences,
        observation_seconds=spec.health_gate.observation_seconds,
        device_timeout_seconds=spec.device_timeout_seconds,
        created_at=now,
        updated_at=now,
        created_by=actor,
    )
    handles: set[str] = set()
    for config in spec.model_configs:
        validate_name(config.handle, "model handle")
        if config.handle in handles:
            raise InvalidArgument(f"model handle {config.handle!r} is listed twice")
        handles.add(config.handle)
        version = resolve_version(session, config.model_name, config.version, config.alias)
        plan.model_configs.append(
            PlanModel(
                handle=config.handle,
                model_version_id=version.id,
                model_version=version,
                requested_alias=config.alias,
            )
        )
    stage_names: set[str] = set()
    for position, stage in enumerate(spec.stages):
        validate_name(stage.name, "stage name")
        if stage.name in stage_names:
            raise InvalidArgument(f"stage name {stage.name!r} is listed twice")
        stage_names.add(stage.name)
        plan.stages.append(_stage_row(stage, position, now))
    session.add(plan)
    session.flush()
    return plan


def _check_gate(gate: HealthGate) -> None:
    if gate.max_error_rate is not None and not 0 <= gate.max_error_rate <= 1:
        raise InvalidArgument("HealthGate.MaxErrorRate must be a fraction in [0, 1]")
    if gate.max_p99_latency_ms is not None and gate.max_p99_latency_ms <= 0:
        raise InvalidArgument("HealthGate.MaxP99LatencyMs must be positive")
    if gate.min_inferences < 1:
        raise InvalidArgument("HealthGate.MinInferences must be at least 1")
    if gate.observation_seconds < 0:
        raise InvalidArgument("HealthGate.ObservationSeconds must not be negative")


def _stage_row(stage: StageSpec, position: int, now: datetime) -> PlanStage:
    subset = parse_enum(SubsetType, stage.subset_type, f"stage {stage.name!r}: DeviceSubsetType")
    policy = parse_enum(FailurePolicy, stage.failure_policy, f"stage {stage.name!r}: FailureHandlingPolicy")
    if not 0 <= stage.failure_threshold < 1:
        raise InvalidArgument(f"stage {stage.name!r}: FailureThreshold must be in [0, 1)")
    names: list[str] = []
    tags: dict[str, str] = {}
    if subset == SubsetType.PERCENTAGE:
        if stage.percentage is None or not 1 <= stage.percentage <= 100:
            raise InvalidArgument(f"stage {stage.name!r}: PERCENTAGE needs Percentage in 1-100")
    elif subset == SubsetType.SELECTION:
        if not stage.device_names or len(stage.device_names) > MAX_SELECTED_NAMES:
            raise InvalidArgument(f"stage {stage.name!r}: SELECTION needs 1-{MAX_SELECTED_NAMES} DeviceNames")
        names = sorted({validate_name(n, "device name") for n in stage.device_names})
    elif subset == SubsetType.NAMECONTAINS:
        if not stage.name_contains or len(stage.name_contains) > 63:
            raise InvalidArgument(
                f"stage {stage.name!r}: NAMECONTAINS needs DeviceNameContains (1-63 characters)"
            )
    elif not stage.tags:
        raise InvalidArgument(f"stage {stage.name!r}: TAGS needs DeviceTags")
    else:
        tags = validate_tags(stage.tags, f"stage {stage.name!r} DeviceTags")
    return PlanStage(
        position=position,
        name=stage.name,
        subset_type=subset,
        percentage=stage.percentage if subset == SubsetType.PERCENTAGE else None,
        device_names=names,
        name_contains=stage.name_contains if subset == SubsetType.NAMECONTAINS else None,
        selection_tags=tags,
        failure_policy=policy,
        failure_threshold=stage.failure_threshold,
        status=StageStatus.READYTODEPLOY.value,
        updated_at=now,
    )


def get_plan(session: Session, name: str, *, lock: bool = False) -> DeploymentPlan:
    """The plan called ``name``; NOT_FOUND otherwise."""
    stmt = select(DeploymentPlan).where(DeploymentPlan.name == name)
    if lock:
        stmt = stmt.with_for_update(of=DeploymentPlan)
    plan = session.scalar(stmt)
    if plan is None:
        raise NotFound(f"deployment plan {name!r} does not exist")
    return plan


def get_stage(plan: DeploymentPlan, stage_name: str) -> PlanStage:
    """The stage ``stage_name`` of ``plan``; NOT_FOUND otherwise."""
    for stage in plan.stages:
        if stage.name == stage_name:
            return stage
    raise NotFound(f"deployment plan {plan.name!r} has no stage {stage_name!r}")


def list_plans(
    session: Session,
    *,
    fleet_name: str | None = None,
    name_contains: str | None = None,
    limit: int,
    next_token: str | None,
) -> Page[DeploymentPlan]:
    """Plans by name, optionally of one fleet."""
    stmt = select(DeploymentPlan).order_by(DeploymentPlan.name)
    if fleet_name is not None:
        stmt = stmt.where(DeploymentPlan.fleet_id == get_fleet(session, fleet_name).id)
    if name_contains:
        stmt = stmt.where(DeploymentPlan.name.contains(name_contains, autoescape=True))
    return paginate(session, stmt, limit, next_token)


def delete_plan(session: Session, name: str) -> None:
    """Delete a plan with nothing in flight (FAILED_PRECONDITION otherwise)."""
    plan = get_plan(session, name, lock=True)
    busy = session.scalar(
        select(func.count())
        .select_from(StageDevice)
        .join(PlanStage, PlanStage.id == StageDevice.stage_id)
        .where(PlanStage.plan_id == plan.id, outstanding())
    )
    if busy:
        raise FailedPrecondition(
            f"deployment plan {name!r} has {busy} device deployment(s) in flight; stop them first"
        )
    session.delete(plan)


def outstanding() -> ColumnElement[bool]:
    """Rows a device still has to act on: not yet fetched, in progress, to roll back.

    The values are written into the SQL (not bound), so that the database can match the condition
    to the partial index ``ix_stage_devices_outstanding`` even in a prepared, generic plan.
    """
    pending = [DeviceStatus.READYTODEPLOY, DeviceStatus.INPROGRESS, DeviceStatus.STOPPING]
    return StageDevice.status.in_([literal(x.value, literal_execute=True) for x in pending]) | (
        StageDevice.rollback == literal(Rollback.REQUESTED.value, literal_execute=True)
    )


def stage_counts(session: Session, stage: PlanStage) -> StageCounts:
    """Success / pending / failed / stopped device counts of a stage."""
    grouped = session.execute(
        select(StageDevice.status, func.count())
        .where(StageDevice.stage_id == stage.id)
        .group_by(StageDevice.status)
    )
    counts = {status: count for status, count in grouped}
    return StageCounts(
        success=counts.get(DeviceStatus.DEPLOYED.value, 0),
        pending=sum(
            counts.get(s.value, 0)
            for s in (DeviceStatus.READYTODEPLOY, DeviceStatus.INPROGRESS, DeviceStatus.STOPPING)
        ),
        failed=counts.get(DeviceStatus.FAILED.value, 0),
        stopped=counts.get(DeviceStatus.STOPPED.value, 0),
    )


def list_stage_devices(
    session: Session,
    plan_name: str,
    stage_name: str,
    *,
    status: str | None = None,
    limit: int,
    next_token: str | None,
) -> Page[StageDevice]:
    """The per-device rows of a stage, by device name."""
    stage = get_stage(get_plan(session, plan_name), stage_name)
    stmt = (
        select(StageDevice)
        .join(Device, Device.id == StageDevice.device_id)
        .where(StageDevice.stage_id == stage.id)
    )
    if status is not None:
        stmt = stmt.where(StageDevice.status == parse_enum(DeviceStatus, status, "DeviceDeploymentStatus"))
    return paginate(session, stmt.order_by(Device.name), limit, next_token)


# ---------------------------------------------------------------------------------------------
# operator transitions


def start_stage(session: Session, plan_name: str, stage_name: str, now: datetime) -> PlanStage:
    """Select the stage's devices and make the deployment available to them."""
    plan = get_plan(session, plan_name, lock=True)
    stage = _lock_stage(session, get_stage(plan, stage_name))
    if stage.status not in (StageStatus.READYTODEPLOY, StageStatus.STOPPED):
        raise FailedPrecondition(
            f"stage {stage_name!r} is {stage.status}; only READYTODEPLOY or STOPPED stages start"
        )
    for earlier in plan.stages[: stage.position]:
        if earlier.status != StageStatus.DEPLOYED:
            raise FailedPrecondition(
                f"stage {earlier.name!r} is {earlier.status}; stage {stage_name!r} starts after it is DEPLOYED"
            )
    for config in plan.model_configs:
        version = config.model_version
        if version.approval_status != Approval.APPROVED:
            raise FailedPrecondition(
                f"version {version.version!r} of {version.model.name!r} is {version.approval_status}, not Approved"
            )
        if not version.packages:
            raise FailedPrecondition(f"version {version.version!r} of {version.model.name!r} has no package")
    if stage.status == StageStatus.STOPPED:
        _restart_rows(session, stage, now)
    else:
        device_ids = _select_devices(session, plan, stage)
        session.execute(
            insert(StageDevice),
            [
                {
                    "stage_id": stage.id,
                    "device_id": device_id,
                    "status": DeviceStatus.READYTODEPLOY.value,
                    "rollback": Rollback.NONE.value,
                    "assigned_at": now,
                    "updated_at": now,
                    "health": {},
                    "observing": False,
                }
                for device_id in device_ids
            ],
        )
    stage.status = StageStatus.STARTING.value
    stage.status_message = None
    stage.started_at = now
    stage.finished_at = None
    stage.updated_at = now
    plan.updated_at = now
    session.flush()
    refresh_stage(session, stage, now, locked=True)
    return stage


def _restart_rows(session: Session, stage: PlanStage, now: datetime) -> None:
    session.execute(
        update(StageDevice)
        .where(
            StageDevice.stage_id == stage.id,
            StageDevice.status != DeviceStatus.DEPLOYED.value,
            StageDevice.device_id.in_(select(Device.id).where(Device.deregistered_at.is_(None))),
        )
        .values(
            status=DeviceStatus.READYTODEPLOY.value,
            message=None,
            rollback=Rollback.NONE.value,
            device_result=None,
            assigned_at=now,
            fetched_at=None,
            activated_at=None,
            reported_at=None,
            updated_at=now,
            health={},
            observing=False,
        )
    )
    remaining = session.scalar(
        select(func.count())
        .select_from(StageDevice)
        .where(StageDevice.stage_id == stage.id, StageDevice.status == DeviceStatus.READYTODEPLOY.value)
    )
    if not remaining:
        raise FailedPrecondition(f"stage {stage.name!r} has no device left to deploy to")


def _select_devices(session: Session, plan: DeploymentPlan, stage: PlanStage) -> list[int]:
    active = (Device.fleet_id == plan.fleet_id) & Device.deregistered_at.is_(None)
    taken = (
        select(StageDevice.device_id)
        .join(PlanStage, PlanStage.id == StageDevice.stage_id)
        .where(PlanStage.plan_id == plan.id)
    )
    candidates = select(Device.id, Device.name).where(active, Device.id.not_in(taken))
    subset = SubsetType(stage.subset_type)
    if subset == SubsetType.SELECTION:
        wanted = list(stage.device_names)
        found = {
            name for (name,) in session.execute(select(Device.name).where(active, Device.name.in_(wanted)))
        }
        missing = [n for n in wanted if n not in found]
        if missing:
            raise FailedPrecondition(
                f"stage {stage.name!r} names devices not registered in fleet {plan.fleet.name!r}: {', '.join(missing[:20])}"
            )
        candidates = candidates.where(Device.name.in_(wanted))
    elif subset == SubsetType.NAMECONTAINS:
        assert stage.name_contains is not None
        candidates = candidates.where(Device.name.contains(stage.name_contains, autoescape=True))
    elif subset == SubsetType.TAGS:
        for key, value in stage.selection_tags.items():
            candidates = candidates.where(
                select(DeviceTag.device_id)
                .where(DeviceTag.device_id == Device.id, DeviceTag.key == key, DeviceTag.value == str(value))
                .exists()
            )
    rows = list(session.execute(candidates))
    if subset == SubsetType.PERCENTAGE:
        assert stage.percentage is not None
        fleet_size = session.scalar(select(func.count()).select_from(Device).where(active)) or 0
        wanted_count = math.ceil(stage.percentage * fleet_size / 100)
        # A stable, plan-specific shuffle so that percentages spread over the fleet.
        rows.sort(key=lambda r: hashlib.sha256(f"{plan.name}/{r[1]}".encode()).digest())
        rows = rows[:wanted_count]
    if not rows:
        raise FailedPrecondition(
            f"stage {stage.name!r} selects no device (every match may be in an earlier stage)"
        )
    return [device_id for device_id, _ in rows]


def stop_stage(session: Session, plan_name: str, stage_name: str, now: datetime) -> PlanStage:
    """Stop a running stage: devices that have not started are STOPPED, started ones roll back."""
    plan = get_plan(session, plan_name)
    stage = _lock_stage(session, get_stage(plan, stage_name))
    if stage.status not in (StageStatus.STARTING, StageStatus.INPROGRESS):
        raise FailedPrecondition(
            f"stage {stage_name!r} is {stage.status}; only STARTING or INPROGRESS stages stop"
        )
    _set_rows(session, stage, StageEvent.STOP, now)
    stage.status = StageStatus.STOPPING.value
    stage.status_message = "stopped by an operator"
    stage.updated_at = now
    plan.updated_at = now
    refresh_stage(session, stage, now, locked=True)
    return stage


def _set_rows(session: Session, stage: PlanStage, event: StageEvent, now: datetime) -> None:
    """Apply a stage event to every device row it changes (one UPDATE per change)."""
    for sources, change in stage_changes(event, FailurePolicy(stage.failure_policy)):
        values: dict[str, object] = {"status": change.status.value, "updated_at": now}
        if change.message is not None:
            values["message"] = change.render("", None)
        if change.rollback is not None:
            values["rollback"] = change.rollback.value
        if change.observing is not None:
            values["observing"] = change.observing
        session.execute(
            update(StageDevice)
            .where(StageDevice.stage_id == stage.id, StageDevice.status.in_([s.value for s in sources]))
            .values(**values)
        )


def _stage_only() -> tuple[ORMOption, ...]:
    """Loader options: a stage with its plan's columns, but not the plan's collections (stages,
    model configs with their versions and packages), which most stage transitions never read."""
    return (
        joinedload(PlanStage.plan).lazyload(DeploymentPlan.stages),
        joinedload(PlanStage.plan).lazyload(DeploymentPlan.model_configs),
    )


def _lock_stage(session: Session, stage: PlanStage) -> PlanStage:
    locked = session.scalar(
        select(PlanStage)
        .where(PlanStage.id == stage.id)
        .options(*_stage_only())
        .with_for_update(of=PlanStage)
        .execution_options(populate_existing=True)
    )
    assert locked is not None
    return locked


def refresh_stage(session: Session, stage: PlanStage, now: datetime, *, locked: bool = False) -> PlanStage:
    """Recompute a stage's status from its devices (and apply device timeouts)."""
    if not locked:
        stage = _lock_stage(session, stage)
    plan = stage.plan
    if stage.status in (
        StageStatus.READYTODEPLOY,
        StageStatus.CREATING,
        StageStatus.DEPLOYED,
        StageStatus.STOPPED,
    ):
        return stage
    if plan.device_timeout_seconds is not None and stage.status != StageStatus.STOPPING:
        deadline = now - timedelta(seconds=plan.device_timeout_seconds)
        session.execute(
            update(StageDevice)
            .where(
                StageDevice.stage_id == stage.id,
                StageDevice.status.in_([DeviceStatus.READYTODEPLOY.value, DeviceStatus.INPROGRESS.value]),
                StageDevice.assigned_at < deadline,
            )
            .values(
                status=DeviceStatus.FAILED.value,
                message=f"no result within {plan.device_timeout_seconds:g} s",
                updated_at=now,
                observing=False,
            )
        )
    # Each device report refreshes its stage, so this must not count the whole stage every time
    # (quadratic over a rollout): it asks the (stage_id, status) index small questions instead,
    # and counts everything once, when the stage finishes.
    previous = stage.status
    if stage.status == StageStatus.STOPPING:
        if not _any_in(session, stage, _PENDING):
            stage.status = StageStatus.STOPPED.value
            stage.finished_at = now
    elif stage.status in (StageStatus.STARTING, StageStatus.INPROGRESS):
        failed = _count_in(session, stage, [DeviceStatus.FAILED])
        total = _count_in(session, stage, None) if failed else 0  # only the threshold needs it
        if total and failed / total > stage.failure_threshold:
            _fail_stage(session, stage, failed, total, now)
        elif not _any_in(session, stage, _PENDING):
            counts = stage_counts(session, stage)
            stage.status = StageStatus.DEPLOYED.value
            stage.status_message = (
                f"{counts.success} device(s) deployed, {counts.failed} failed, {counts.stopped} stopped"
            )
            stage.finished_at = now
        elif stage.status == StageStatus.STARTING:
            fetched = _any_in(session, stage, [s for s in DeviceStatus if s != DeviceStatus.READYTODEPLOY])
            stage.status = (StageStatus.INPROGRESS if fetched else StageStatus.STARTING).value
    if stage.status != previous:
        stage.updated_at = now
        log.info("plan %s stage %s: %s -> %s", plan.name, stage.name, previous, stage.status)
    return stage


_PENDING = [DeviceStatus.READYTODEPLOY, DeviceStatus.INPROGRESS, DeviceStatus.STOPPING]


def _any_in(session: Session, stage: PlanStage, statuses: Sequence[DeviceStatus]) -> bool:
    """Whether any device of ``stage`` is in one of ``statuses`` (an index probe, not a count)."""
    return (
        session.scalar(
            select(StageDevice.device_id)
            .where(StageDevice.stage_id == stage.id, StageDevice.status.in_([x.value for x in statuses]))
            .limit(1)
        )
        is not None
    )


def _count_in(session: Session, stage: PlanStage, statuses: Sequence[DeviceStatus] | None) -> int:
    """How many devices of ``stage`` are in ``statuses`` (all of them for None)."""
    stmt = select(func.count()).select_from(StageDevice).where(StageDevice.stage_id == stage.id)
    if statuses is not None:
        stmt = stmt.where(StageDevice.status.in_([x.value for x in statuses]))
    return session.scalar(stmt) or 0


def _fail_stage(session: Session, stage: PlanStage, failed: int, total: int, now: datetime) -> None:
    stage.status = StageStatus.FAILED.value
    stage.finished_at = now
    share = f"{failed}/{total} device(s) failed, above the threshold of {stage.failure_threshold:.0%}"
    rolls_back = stage.failure_policy == FailurePolicy.ROLLBACK_ON_FAILURE
    stage.status_message = share + "; rolling the stage back" if rolls_back else share
    _set_rows(session, stage, StageEvent.FAIL, now)


# ---------------------------------------------------------------------------------------------
# device side


def choose_package(version: ModelVersion, device: Device) -> ModelPackage | None:
    """The most specific package of ``version`` that runs on ``device``'s platform.

    A device that has not reported its platform is taken to run Linux on an unknown CPU with no
    accelerator, so only portable (``any``) packages match it.
    """
    return best_package(
        version.packages, device.platform_os, device.platform_arch, device.platform_accelerator
    )


def best_package(
    packages: Iterable[ModelPackage], os: str | None, arch: str | None, accelerator: str | None
) -> ModelPackage | None:
    """:func:`choose_package` over ``packages`` (in target order) for a platform given field by field."""
    os_name = os or "linux"
    best: tuple[int, ModelPackage] | None = None
    for package in packages:
        if package.target_os not in (os_name, "any"):
            continue
        if package.target_arch not in (arch, "any"):
            continue
        if package.target_accelerator not in (accelerator, "none"):
            continue
        score = (
            (package.target_os == os_name)
            + 2 * (package.target_arch == arch)
            + 4 * (package.target_accelerator == accelerator)
        )
        if best is None or score > best[0]:
            best = (score, package)
    return None if best is None else best[1]


def plan_gate(plan: DeploymentPlan) -> HealthGate:
    """The health gate of ``plan`` (``enabled`` is False when it sets no limit)."""
    return HealthGate(*(getattr(plan, column.key) for column in GATE_COLUMNS))


def device_deployments(session: Session, device: Device, now: datetime) -> list[DeviceDeployment]:
    """The deployments ``device`` must act on (oldest first); fetching marks them INPROGRESS."""
    rows = list(
        session.scalars(
            select(StageDevice)
            .join(PlanStage, PlanStage.id == StageDevice.stage_id)
            .where(StageDevice.device_id == device.id, outstanding())
            .order_by(StageDevice.assigned_at, PlanStage.id)
            .options(lazyload(StageDevice.device))  # that is ``device``
        )
    )
    deployments: list[DeviceDeployment] = []
    for row in rows:
        # the plan's model configs (with versions and packages) are needed, its other stages not
        stage = session.get(
            PlanStage, row.stage_id, options=[joinedload(PlanStage.plan).lazyload(DeploymentPlan.stages)]
        )
        assert stage is not None
        plan = stage.plan
        rolling_back = row.status == DeviceStatus.STOPPING or row.rollback == Rollback.REQUESTED
        definitions: list[Definition] = []
        missing: list[str] = []
        for config in plan.model_configs:
            package = choose_package(config.model_version, device)
            if package is None:
                missing.append(config.handle)
                continue
            definitions.append(
                Definition(
                    handle=config.handle,
                    model_name=config.model_version.model.name,
                    model_version=config.model_version.version,
                    package=package,
                    state="UNDEPLOY" if rolling_back else "DEPLOY",
                )
            )
        if row.status == DeviceStatus.READYTODEPLOY:
            # A fetch changes the stage's status only while it is STARTING (-> INPROGRESS) or when
            # it fails the device; otherwise the conditional row update alone is race-free, and
            # not locking the stage lets the devices of a large stage fetch in parallel.
            lock = missing or stage.status != StageStatus.INPROGRESS
            if lock:
                stage = _lock_stage(session, stage)
            if missing:
                platform = f"{device.platform_os or '?'}/{device.platform_arch or '?'}/{device.platform_accelerator or '?'}"
                _transition(
                    session,
                    stage,
                    device,
                    DeviceStatus.READYTODEPLOY,
                    DeviceStatus.FAILED,
                    now,
                    f"no package for platform {platform} (handles: {', '.join(missing)})",
                )
                refresh_stage(session, stage, now, locked=True)
                continue
            if not _transition(
                session,
                stage,
                device,
                DeviceStatus.READYTODEPLOY,
                DeviceStatus.INPROGRESS,
                now,
                None,
                fetched=True,
            ):
                continue
            if lock:
                refresh_stage(session, stage, now, locked=True)
        elif missing and not rolling_back:
            continue
        gate = plan_gate(plan)
        deployments.append(
            DeviceDeployment(
                name=deployment_name(plan, stage),
                failure_policy=stage.failure_policy,
                action=Action.ROLLBACK if rolling_back else Action.DEPLOY,
                definitions=definitions,
                health_gate=gate if gate.enabled else None,
                status=DeviceStatus.INPROGRESS.value
                if row.status == DeviceStatus.READYTODEPLOY
                else row.status,
            )
        )
    return deployments


def _transition(
    session: Session,
    stage: PlanStage,
    device: Device,
    from_status: DeviceStatus,
    to_status: DeviceStatus,
    now: datetime,
    message: str | None,
    *,
    fetched: bool = False,
) -> bool:
    values: dict[str, object] = {"status": to_status.value, "message": message, "updated_at": now}
    if fetched:
        values["fetched_at"] = now
    result = session.execute(
        update(StageDevice)
        .where(
            StageDevice.stage_id == stage.id,
            StageDevice.device_id == device.id,
            StageDevice.status == from_status.value,
        )
        .values(**values)
    )
    return bool(getattr(result, "rowcount", 0))


def _locate(
    session: Session, device: Device, name: str, *, lock_stage: bool = True
) -> tuple[PlanStage, StageDevice]:
    """The stage and the device's row of deployment ``name``: the stage locked (every transition of
    the stage serialises on it), or with ``lock_stage=False`` only the device's row."""
    plan_name, dot, stage_name = name.partition(".")
    if not dot:
        raise InvalidArgument(f"DeploymentName {name!r} is not of the form <plan>.<stage>")
    stage = session.scalar(
        select(PlanStage)
        .join(DeploymentPlan, DeploymentPlan.id == PlanStage.plan_id)
        .where(DeploymentPlan.name == plan_name, PlanStage.name == stage_name)
        .options(*_stage_only())
    )
    if stage is None:
        raise NotFound(f"deployment {name!r} does not exist")
    stmt = (
        select(StageDevice)
        .where(StageDevice.stage_id == stage.id, StageDevice.device_id == device.id)
        .options(lazyload(StageDevice.device))  # that is ``device``
    )
    if lock_stage:
        stage = _lock_stage(session, stage)
    else:
        stmt = stmt.with_for_update(of=StageDevice)
    row = session.scalar(stmt.execution_options(populate_existing=True))
    if row is None:
        raise NotFound(f"deployment {name!r} does not include device {device.name!r}")
    return stage, row


def record_result(
    session: Session, device: Device, report: ResultReport, now: datetime, *, refresh: bool = True
) -> StageDevice:
    """Apply a device's DeploymentResult to its row and the stage.

    With ``refresh=False`` only the device's row is locked and written, and the stage is not
    refreshed: the caller commits, then calls :func:`settle_stage` in a new transaction. Thousands
    of devices of one stage then report in parallel instead of queueing on the stage's lock (and
    on each other's commits); the refresh that follows a commit sees every report committed before
    it, so the last report of a stage always finishes it.
    """
    # INPROGRESS (None) is a report too, though not one of the closed result set
    said = report.status
    result = (
        None
        if said == IN_PROGRESS
        else parse_enum(Result, said, f"DeploymentStatus ({IN_PROGRESS} or a result)")
    )
    stage, row = _locate(session, device, report.deployment_name, lock_stage=refresh)
    plan = stage.plan
    status = DeviceStatus(row.status)
    row.device_result = report.status
    row.reported_at = now
    row.updated_at = now
    change = transition(
        status,
        Rollback(row.rollback),
        result,
        policy=FailurePolicy(stage.failure_policy),
        gated=plan_gate(plan).enabled,
    )
    if change is not None:
        _apply(row, change, report.message or report.status, now)
    session.flush()
    if refresh:
        refresh_stage(session, stage, now, locked=True)
    return row


def _apply(row: StageDevice, change: Change, reported: str, now: datetime) -> None:
    """Apply a device report's change to its row."""
    if row.status == DeviceStatus.READYTODEPLOY:
        row.fetched_at = row.fetched_at or now  # a result implies the device fetched the deployment
    for column, value in change_values(change, reported, row.message, now).items():
        setattr(row, column, value)


def change_values(change: Change, reported: str, previous: str | None, now: datetime) -> dict[str, object]:
    """The columns of a device's row that a device report's ``change`` writes, and their values."""
    values: dict[str, object] = {"status": change.status.value}
    message = change.render(reported, previous)
    if message is not None:
        values["message"] = message
    if change.rollback is not None:
        values["rollback"] = change.rollback.value
    if change.observing is not None:
        values["observing"] = change.observing
    if change.activated:
        values["activated_at"] = now
    return values


def settle_stage(session: Session, stage_id: int, now: datetime, *, device_failed: bool) -> None:
    """After a result was committed with ``record_result(refresh=False)``: refresh the stage if the
    result may have changed its status (the stage is starting, the device failed, or no device
    is pending any more)."""
    stage = session.get(PlanStage, stage_id, options=_stage_only())
    if stage is None or stage.status not in _ACTIVE_STAGE:
        return
    if stage.status != StageStatus.STARTING and not device_failed and _any_in(session, stage, _PENDING):
        return  # devices are still at work: nothing about the stage can change yet
    refresh_stage(session, stage, now)


def record_health(session: Session, device: Device, report: HealthReport, now: datetime) -> HealthVerdict:
    """Judge a device's post-activation figures against the plan's health gate."""
    if report.inferences < 0 or report.errors < 0 or report.errors > report.inferences:
        raise InvalidArgument("Inferences and Errors must be non-negative with Errors <= Inferences")
    if report.p99_latency_ms is not None and report.p99_latency_ms < 0:
        raise InvalidArgument("P99LatencyMs must not be negative")
    stage, row = _locate(session, device, report.deployment_name)
    plan = stage.plan
    gate = plan_gate(plan)
    rollback = stage.failure_policy == FailurePolicy.ROLLBACK_ON_FAILURE
    error_rate = report.errors / report.inferences if report.inferences else 0.0
    row.health = {
        "Inferences": report.inferences,
        "Errors": report.errors,
        "ErrorRate": error_rate,
        "P99LatencyMs": report.p99_latency_ms,
        "ReportedAt": now.isoformat(),
    }
    row.updated_at = now
    if row.status == DeviceStatus.DEPLOYED:
        return HealthVerdict(Verdict.PASS, "already deployed", False)
    if row.status != DeviceStatus.INPROGRESS or not row.observing:
        return HealthVerdict(
            Verdict.FAIL if row.status == DeviceStatus.FAILED else Verdict.PENDING,
            f"device is {row.status}",
            row.status == DeviceStatus.STOPPING or row.rollback == Rollback.REQUESTED,
        )
    if not gate.enabled:  # pragma: no cover - observing is only set with a gate
        return HealthVerdict(Verdict.PASS, "no health gate", False)
    if report.inferences < gate.min_inferences:
        return HealthVerdict(
            Verdict.PENDING, f"{report.inferences}/{gate.min_inferences} inferences observed", False
        )
    breaches = []
    if gate.max_error_rate is not None and error_rate > gate.max_error_rate:
        breaches.append(f"error rate {error_rate:.2%} > {gate.max_error_rate:.2%}")
    if (
        gate.max_p99_latency_ms is not None
        and report.p99_latency_ms is not None
        and report.p99_latency_ms > gate.max_p99_latency_ms
    ):
        breaches.append(f"p99 latency {report.p99_latency_ms:g} ms > {gate.max_p99_latency_ms:g} ms")
    if gate.max_p99_latency_ms is not None and report.p99_latency_ms is None:
        return HealthVerdict(Verdict.PENDING, "P99LatencyMs is needed by this plan's health gate", False)
    if breaches:
        reason = "health gate breached: " + "; ".join(breaches)
        row.status = DeviceStatus.FAILED.value
        row.observing = False
        row.message = reason
        row.rollback = (Rollback.REQUESTED if rollback else Rollback.NONE).value
        session.flush()
        refresh_stage(session, stage, now, locked=True)
        return HealthVerdict(Verdict.FAIL, reason, rollback)
    assert row.activated_at is not None
    observed = (now - row.activated_at).total_seconds()
    if observed < gate.observation_seconds:
        return HealthVerdict(
            Verdict.PENDING, f"observed {observed:.0f}/{gate.observation_seconds:.0f} s", False
        )
    row.status = DeviceStatus.DEPLOYED.value
    row.observing = False
    row.message = "health gate passed"
    session.flush()
    refresh_stage(session, stage, now, locked=True)
    return HealthVerdict(Verdict.PASS, "health gate passed", False)


def on_device_deregistered(session: Session, device: Device, now: datetime) -> None:
    """Stop the unfinished deployments of a device that was deregistered."""
    stage_ids = list(
        session.scalars(
            select(StageDevice.stage_id)
            .where(StageDevice.device_id == device.id, outstanding())
            .order_by(StageDevice.stage_id)
        )
    )
    for stage_id in stage_ids:
        stage = session.get(PlanStage, stage_id)
        assert stage is not None
        stage = _lock_stage(session, stage)
        session.execute(
            update(StageDevice)
            .where(StageDevice.stage_id == stage_id, StageDevice.device_id == device.id)
            .where(StageDevice.status.not_in([DeviceStatus.DEPLOYED.value, DeviceStatus.FAILED.value]))
            .values(
                status=DeviceStatus.STOPPED.value,
                message="device deregistered",
                updated_at=now,
                observing=False,
            )
        )
        session.execute(
            update(StageDevice)
            .where(
                StageDevice.stage_id == stage_id,
                StageDevice.device_id == device.id,
                StageDevice.rollback == Rollback.REQUESTED.value,
            )
            .values(rollback=Rollback.NONE.value)
        )
        refresh_stage(session, stage, now, locked=True)


def refresh_active_stages(session: Session, now: datetime) -> int:
    """Refresh every running stage (applies device timeouts); returns how many were looked at."""
    stages = list(
        session.scalars(
            select(PlanStage)
            .where(PlanStage.status.in_([s.value for s in _ACTIVE_STAGE]))
            .order_by(PlanStage.id)
        )
    )
    for stage in stages:
        refresh_stage(session, stage, now)
    return len(stages)
