"""Operator stage transitions (start, stop) and the stage status derived from its devices
(:func:`refresh_stage`, :func:`settle_stage`); every transition locks the stage row first."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session, joinedload
from sqlalchemy.orm.interfaces import ORMOption

from edgefleet.core.deviceplane import FailurePolicy, parse_enum
from edgefleet.core.errors import FailedPrecondition
from edgefleet.server.db.paging import paginate
from edgefleet.server.db.schema import DeploymentPlan, Device, DeviceTag, PlanStage, StageDevice
from edgefleet.server.deployments import evidence
from edgefleet.server.deployments.plans import get_plan, get_stage
from edgefleet.server.deployments.records import PENDING, StageCounts, StageStatus, SubsetType, change_values
from edgefleet.server.deployments.rollout import DeviceStatus, Rollback, StageEvent, stage_changes
from edgefleet.server.registry import Approval
from edgefleet.server.validation import Page

log = logging.getLogger(__name__)
_ACTIVE_STAGE = {StageStatus.STARTING, StageStatus.INPROGRESS, StageStatus.STOPPING}


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


def device_history(session: Session, device_id: int, limit: int) -> list[tuple[str, str, StageDevice]]:
    """A device's latest ``limit`` stage rows (plan name, stage name, row), newest assignment first."""
    rows = session.execute(
        select(DeploymentPlan.name, PlanStage.name, StageDevice)
        .join(PlanStage, PlanStage.id == StageDevice.stage_id)
        .join(DeploymentPlan, DeploymentPlan.id == PlanStage.plan_id)
        .where(StageDevice.device_id == device_id)
        .order_by(StageDevice.assigned_at.desc(), StageDevice.stage_id.desc())
        .limit(limit)
    )
    return [(plan, stage, row) for plan, stage, row in rows]


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
        if earlier.watch_until is not None and earlier.watch_until > now:
            raise FailedPrecondition(
                f"stage {earlier.name!r} is in its watch period until {earlier.watch_until.isoformat()}; "
                f"stage {stage_name!r} starts after it"
            )
    for config in plan.model_configs:
        version = config.model_version
        if version.approval_status != Approval.APPROVED:
            raise FailedPrecondition(
                f"version {version.version!r} of {version.model.name!r} is {version.approval_status}, not Approved"
            )
        if not version.packages:
            raise FailedPrecondition(f"version {version.version!r} of {version.model.name!r} has no package")
    evidence.require_baselines(session, plan)
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
    stage.watch_until = stage.watch_checked_at = stage.watch_breach = None
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
    set_rows(session, stage, StageEvent.STOP, now)
    stage.status = StageStatus.STOPPING.value
    stage.status_message = "stopped by an operator"
    stage.updated_at = now
    plan.updated_at = now
    refresh_stage(session, stage, now, locked=True)
    return stage


def set_rows(session: Session, stage: PlanStage, event: StageEvent, now: datetime) -> None:
    """Apply a stage event to every device row it changes (one UPDATE per change)."""
    for sources, change in stage_changes(event, FailurePolicy(stage.failure_policy)):
        values = {**change_values(change, "", None, now), "updated_at": now}
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
        if not _any_in(session, stage, PENDING):
            stage.status = StageStatus.STOPPED.value
            stage.finished_at = now
    elif stage.status in (StageStatus.STARTING, StageStatus.INPROGRESS):
        failed = _count_in(session, stage, [DeviceStatus.FAILED])
        total = _count_in(session, stage, None) if failed else 0  # only the threshold needs it
        if total and failed / total > stage.failure_threshold:
            threshold = f"{stage.failure_threshold:.0%}"
            fail_stage(
                session, stage, f"{failed}/{total} device(s) failed, above the threshold of {threshold}", now
            )
        elif not _any_in(session, stage, PENDING):
            _finish_stage(session, stage, now)
        elif stage.status == StageStatus.STARTING:
            fetched = _any_in(session, stage, [s for s in DeviceStatus if s != DeviceStatus.READYTODEPLOY])
            stage.status = (StageStatus.INPROGRESS if fetched else StageStatus.STARTING).value
    if stage.status != previous:
        stage.updated_at = now
        log.info("plan %s stage %s: %s -> %s", plan.name, stage.name, previous, stage.status)
    return stage


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


def _finish_stage(session: Session, stage: PlanStage, now: datetime) -> None:
    """Every device finished within the threshold: DEPLOYED, unless the drift limit says otherwise
    (FAILED on a breach; still INPROGRESS while the windows hold too few calls to judge)."""
    # with nobody deployed there is nothing to judge
    if stage.plan.max_drift_score is not None and _any_in(session, stage, [DeviceStatus.DEPLOYED]):
        judgement = evidence.drift(session, stage)
        if judgement.breaches:
            fail_stage(session, stage, "health gate breached: " + "; ".join(judgement.breaches), now)
            return
        if judgement.waiting:
            stage.status = StageStatus.INPROGRESS.value
            stage.status_message = "health gate waiting: " + "; ".join(judgement.waiting)
            return
    counts = stage_counts(session, stage)
    stage.status = StageStatus.DEPLOYED.value
    stage.status_message = (
        f"{counts.success} device(s) deployed, {counts.failed} failed, {counts.stopped} stopped"
    )
    stage.finished_at = now
    watch = stage.plan.watch_seconds
    if watch > 0:
        stage.watch_until = now + timedelta(seconds=watch)
        stage.watch_checked_at = stage.watch_breach = None


def fail_stage(session: Session, stage: PlanStage, reason: str, now: datetime) -> None:
    """The stage FAILED for ``reason``; its devices roll back under ROLLBACK_ON_FAILURE."""
    stage.status = StageStatus.FAILED.value
    stage.finished_at = now
    rolls_back = stage.failure_policy == FailurePolicy.ROLLBACK_ON_FAILURE
    stage.status_message = reason + "; rolling the stage back" if rolls_back else reason
    set_rows(session, stage, StageEvent.FAIL, now)


def settle_stage(session: Session, stage_id: int, now: datetime, *, device_failed: bool) -> None:
    """After a result was committed with ``record_result(refresh=False)``: refresh the stage if the
    result may have changed its status (the stage is starting, the device failed, or no device
    is pending any more)."""
    stage = session.get(PlanStage, stage_id, options=_stage_only())
    if stage is None or stage.status not in _ACTIVE_STAGE:
        return
    if stage.status != StageStatus.STARTING and not device_failed and _any_in(session, stage, PENDING):
        return  # devices are still at work: nothing about the stage can change yet
    refresh_stage(session, stage, now)


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
