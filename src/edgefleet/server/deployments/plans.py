"""Plan CRUD: create (validated), get, list and delete deployment plans."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgefleet.core.deviceplane import FailurePolicy, HealthGate, parse_enum
from edgefleet.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from edgefleet.server.db.paging import paginate
from edgefleet.server.db.schema import DeploymentPlan, PlanModel, PlanStage, StageDevice
from edgefleet.server.deployments.records import (
    PlanSpec,
    StageSpec,
    StageStatus,
    SubsetType,
    WatchPolicy,
    outstanding,
)
from edgefleet.server.fleets import get_fleet
from edgefleet.server.registry import resolve_version
from edgefleet.server.validation import Page, validate_name, validate_tags

MAX_STAGES = 10
MAX_MODEL_CONFIGS = 10
MAX_SELECTED_NAMES = 10000
#: the longest watch period after a stage is DEPLOYED (a year; longer is a typo, and overflows times)
MAX_WATCH_SECONDS = 365 * 86400.0


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
    if spec.watch_seconds < 0:
        raise InvalidArgument(f"WatchSeconds must not be negative (got {spec.watch_seconds:g})")
    if spec.watch_seconds > MAX_WATCH_SECONDS:
        raise InvalidArgument(f"WatchSeconds must be at most {MAX_WATCH_SECONDS:.0f} (365 days)")
    watch_policy = parse_enum(WatchPolicy, spec.watch_policy, "WatchPolicy")
    if spec.watch_seconds > 0 and not spec.health_gate.enabled:
        raise InvalidArgument("WatchSeconds needs a HealthGate with at least one limit to watch")
    plan = DeploymentPlan(
        name=spec.name,
        fleet_id=fleet.id,
        fleet=fleet,
        max_error_rate=spec.health_gate.max_error_rate,
        max_p99_latency_ms=spec.health_gate.max_p99_latency_ms,
        min_inferences=spec.health_gate.min_inferences,
        observation_seconds=spec.health_gate.observation_seconds,
        max_drift_score=spec.health_gate.max_drift_score,
        device_timeout_seconds=spec.device_timeout_seconds,
        watch_seconds=spec.watch_seconds,
        watch_policy=watch_policy.value,
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
    if gate.max_drift_score is not None and gate.max_drift_score <= 0:
        raise InvalidArgument(
            f"HealthGate.MaxDriftScore must be positive (a PSI, e.g. 0.25; got {gate.max_drift_score:g})"
        )
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
