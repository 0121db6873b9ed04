"""The deployment records: stage and subset enums, the specs an operator gives, what a device is
handed, and the plan's health-gate columns (shared by plans, stage transitions and the device side)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, literal

from edgefleet.core.deviceplane import Action, FailurePolicy, HealthGate
from edgefleet.server.db.schema import DeploymentPlan, ModelPackage, PlanStage, StageDevice
from edgefleet.server.deployments.rollout import Change, DeviceStatus, Rollback


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


class WatchPolicy(enum.StrEnum):
    """What a breach of the gate's limits in a DEPLOYED stage's watch period does."""

    #: the stage's devices roll back and the stage becomes FAILED
    ROLLBACK = "ROLLBACK"
    #: a stage event is recorded and logged at WARNING; the stage stays DEPLOYED
    ALERT_ONLY = "ALERT_ONLY"


class EventKind(enum.StrEnum):
    """What a stage event records (DescribeEdgeDeploymentPlan's ``Events[].Kind``)."""

    #: the stage FAILED: too many of its devices failed, or the drift limit was breached
    STAGE_FAILED = "STAGE_FAILED"
    #: the failed stage's devices are asked to roll back (failure policy ROLLBACK_ON_FAILURE)
    STAGE_ROLLBACK = "STAGE_ROLLBACK"
    #: an operator stopped the stage: its started devices are asked to roll back
    STAGE_STOPPED = "STAGE_STOPPED"
    #: a breach in the watch period under ``ALERT_ONLY``
    WATCH_ALERT = "WATCH_ALERT"
    #: a breach in the watch period that rolled the stage back (``ROLLBACK``)
    WATCH_ROLLBACK = "WATCH_ROLLBACK"


class SubsetType(enum.StrEnum):
    """How a stage selects devices (TAGS is an edgefleet extension)."""

    PERCENTAGE = "PERCENTAGE"
    SELECTION = "SELECTION"
    NAMECONTAINS = "NAMECONTAINS"
    TAGS = "TAGS"


#: the plan columns of its health gate, in :class:`HealthGate`'s field order (every reader uses these)
GATE_COLUMNS = (
    DeploymentPlan.max_error_rate,
    DeploymentPlan.max_p99_latency_ms,
    DeploymentPlan.min_inferences,
    DeploymentPlan.observation_seconds,
    DeploymentPlan.max_drift_score,
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
    #: after a stage is DEPLOYED, how long the gate's limits keep being checked (0: no watch)
    watch_seconds: float = 0.0
    #: what a breach in the watch period does (a :class:`WatchPolicy` value)
    watch_policy: str = WatchPolicy.ROLLBACK.value


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


def plan_gate(plan: DeploymentPlan) -> HealthGate:
    """The health gate of ``plan`` (``enabled`` is False when it sets no limit)."""
    return HealthGate(*(getattr(plan, column.key) for column in GATE_COLUMNS))


#: Device states still at work on a stage (not yet fetched, in progress, stopping).
PENDING = (DeviceStatus.READYTODEPLOY, DeviceStatus.INPROGRESS, DeviceStatus.STOPPING)


def outstanding() -> ColumnElement[bool]:
    """Rows a device still has to act on: not yet fetched, in progress, to roll back.

    The values are written into the SQL (not bound), so that the database can match the condition
    to the partial index ``ix_stage_devices_outstanding`` even in a prepared, generic plan.
    """
    return StageDevice.status.in_([literal(x.value, literal_execute=True) for x in PENDING]) | (
        StageDevice.rollback == literal(Rollback.REQUESTED.value, literal_execute=True)
    )


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
