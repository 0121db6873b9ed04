"""The device side of a deployment: what a device gets when it polls, and applying its results and
health reports (through :func:`~edgefleet.server.deployments.rollout.transition`)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, joinedload, lazyload

from edgefleet.core.deviceplane import (
    IN_PROGRESS,
    Action,
    FailurePolicy,
    HealthReport,
    HealthVerdict,
    Result,
    Verdict,
    parse_enum,
)
from edgefleet.core.errors import InvalidArgument, NotFound
from edgefleet.server.db.schema import (
    DeploymentPlan,
    Device,
    ModelPackage,
    ModelVersion,
    PlanStage,
    StageDevice,
)
from edgefleet.server.deployments.records import (
    Definition,
    DeviceDeployment,
    ResultReport,
    StageStatus,
    change_values,
    deployment_name,
    outstanding,
    plan_gate,
)
from edgefleet.server.deployments.rollout import Change, DeviceStatus, Rollback, transition
from edgefleet.server.deployments.stages import _lock_stage, _stage_only, refresh_stage


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
