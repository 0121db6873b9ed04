"""Rows to response bodies."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy.orm import Session

from edgefleet.server.api import schemas as s
from edgefleet.server.artifacts import ArtifactStore
from edgefleet.server.db.schema import (
    CaptureObject,
    DeploymentPlan,
    Device,
    DeviceCaptureStatus,
    Fleet,
    FleetReport,
    Model,
    ModelPackage,
    ModelVersion,
    StageDevice,
)
from edgefleet.server.deployments.records import DeviceDeployment, StageCounts, plan_gate
from edgefleet.server.deployments.stages import stage_counts, stage_events
from edgefleet.server.figures import FigureSeries
from edgefleet.server.registry import aliases_of

ARN_PREFIX = "arn:edgefleet:"


def fleet_arn(name: str) -> str:
    return f"{ARN_PREFIX}device-fleet/{name}"


def device_arn(fleet: str, name: str) -> str:
    return f"{ARN_PREFIX}device/{fleet}/{name}"


def plan_arn(name: str) -> str:
    return f"{ARN_PREFIX}edge-deployment/{name}"


def output_config(fleet: Fleet) -> s.OutputConfigModel:
    return s.OutputConfigModel(S3OutputLocation=fleet.output_location, KmsKeyId=fleet.kms_key_id)


def fleet(row: Fleet) -> s.FleetOut:
    return s.FleetOut(
        DeviceFleetName=row.name,
        DeviceFleetArn=fleet_arn(row.name),
        OutputConfig=output_config(row),
        Description=row.description,
        RoleArn=row.role_arn,
        Tags=dict(row.tags),
        CreationTime=row.created_at,
        LastModifiedTime=row.updated_at,
    )


def fleet_summary(row: Fleet) -> s.FleetSummary:
    return s.FleetSummary(
        DeviceFleetName=row.name,
        DeviceFleetArn=fleet_arn(row.name),
        CreationTime=row.created_at,
        LastModifiedTime=row.updated_at,
    )


def report(fleet_row: Fleet, row: FleetReport) -> s.FleetReportOut:
    assert row.report is not None and row.generated_at is not None
    return s.FleetReportOut(
        DeviceFleetArn=fleet_arn(fleet_row.name),
        DeviceFleetName=fleet_row.name,
        OutputConfig=output_config(fleet_row),
        Description=fleet_row.description,
        ReportGenerated=row.generated_at,
        DeviceStats=s.DeviceStatsModel(**row.report["DeviceStats"]),
        AgentVersions=[s.AgentVersionCount(**v) for v in row.report["AgentVersions"]],
        ModelStats=[s.ModelStat(**m) for m in row.report["ModelStats"]],
    )


def device(
    row: Device,
    samples: Mapping[tuple[str, str], datetime | None],
    capture: DeviceCaptureStatus | None,
) -> s.DeviceOut:
    """DescribeDevice of ``row``; ``samples``: each model's latest sample time
    (:func:`edgefleet.server.captures.latest_samples`), ``capture``: its spool figures
    (:func:`edgefleet.server.captures.capture_status`)."""
    platform = None
    if row.platform_arch is not None:
        platform = {
            "Os": row.platform_os or "linux",
            "Arch": row.platform_arch,
            "Accelerator": row.platform_accelerator or "none",
        }
    return s.DeviceOut(
        DeviceArn=device_arn(row.fleet.name, row.name),
        DeviceName=row.name,
        Description=row.description,
        DeviceFleetName=row.fleet.name,
        IotThingName=row.iot_thing_name,
        RegistrationTime=row.registered_at,
        LatestHeartbeat=row.last_heartbeat_at,
        Models=[
            s.DeviceModelOut(
                ModelName=m.model_name,
                ModelVersion=m.model_version,
                LatestSampleTime=samples.get((m.model_name, m.model_version)),
                LatestInference=m.latest_inference_at,
            )
            for m in row.models
        ],
        MaxModels=row.max_models,
        AgentVersion=row.agent_version,
        Tags={t.key: t.value for t in row.tags},
        Platform=platform,
        EnrolmentTime=row.enrolled_at,
        CertificateExpiresAt=row.cert_not_after,
        AgentMetrics=list(row.agent_metrics),
        Capture=None
        if capture is None
        else s.DeviceCaptureOut(
            BacklogRecords=capture.backlog_records,
            BacklogBytes=capture.backlog_bytes,
            OldestBacklogAgeSeconds=capture.oldest_age_seconds,
            Dropped=capture.dropped,
            Failed=capture.failed,
            TransferPending=capture.transfer_pending,
            TransferPendingBytes=capture.transfer_pending_bytes,
            OldestTransferAgeSeconds=capture.transfer_oldest_age_seconds,
            ReportedTime=capture.reported_at,
        ),
    )


def device_summary(row: Device) -> s.DeviceSummary:
    return s.DeviceSummary(
        DeviceName=row.name,
        DeviceArn=device_arn(row.fleet.name, row.name),
        Description=row.description,
        DeviceFleetName=row.fleet.name,
        IotThingName=row.iot_thing_name,
        RegistrationTime=row.registered_at,
        LatestHeartbeat=row.last_heartbeat_at,
        Models=[{"ModelName": m.model_name, "ModelVersion": m.model_version} for m in row.models],
        AgentVersion=row.agent_version,
    )


def model(session: Session, row: Model) -> s.ModelOut:
    return s.ModelOut(
        ModelName=row.name,
        Description=row.description,
        CreationTime=row.created_at,
        CreatedBy=row.created_by,
        Aliases=aliases_of(session, row),
    )


def package(row: ModelPackage, artifacts: ArtifactStore) -> s.PackageOut:
    return s.PackageOut(
        PackageId=row.id,
        Target=row.target,
        Os=row.target_os,
        Arch=row.target_arch,
        Accelerator=row.target_accelerator,
        Runtime=row.runtime,
        Size=row.size,
        Sha256=row.sha256,
        Sha1=row.sha1,
        Signer=row.signer,
        UploadTime=row.uploaded_at,
        UploadedBy=row.uploaded_by,
        ArtifactUrl=artifacts.url(row.artifact_key),
    )


def version(row: ModelVersion, artifacts: ArtifactStore) -> s.VersionOut:
    return s.VersionOut(
        ModelName=row.model.name,
        ModelVersion=row.version,
        Description=row.description,
        ApprovalStatus=row.approval_status,
        ApprovalUpdatedBy=row.approval_by,
        ApprovalUpdatedAt=row.approval_at,
        ApprovalReason=row.approval_reason,
        CreationTime=row.created_at,
        CreatedBy=row.created_by,
        Packages=[package(p, artifacts) for p in row.packages],
    )


def plan(session: Session, row: DeploymentPlan) -> s.PlanOut:
    stages = []
    totals = StageCounts()
    for stage in row.stages:
        counts = stage_counts(session, stage)
        totals = StageCounts(
            totals.success + counts.success,
            totals.pending + counts.pending,
            totals.failed + counts.failed,
            totals.stopped + counts.stopped,
        )
        stages.append(
            s.StageOut(
                StageName=stage.name,
                DeviceSelectionConfig=s.SelectionModel(
                    DeviceSubsetType=stage.subset_type,
                    Percentage=stage.percentage,
                    DeviceNames=list(stage.device_names) or None,
                    DeviceNameContains=stage.name_contains,
                    DeviceTags=dict(stage.selection_tags) or None,
                ),
                DeploymentConfig=s.StageConfigModel(
                    FailureHandlingPolicy=stage.failure_policy, FailureThreshold=stage.failure_threshold
                ),
                DeploymentStatus=s.StageStatusOut(
                    StageStatus=stage.status,
                    EdgeDeploymentSuccessInStage=counts.success,
                    EdgeDeploymentPendingInStage=counts.pending,
                    EdgeDeploymentFailedInStage=counts.failed,
                    EdgeDeploymentStoppedInStage=counts.stopped,
                    EdgeDeploymentStatusMessage=stage.status_message,
                    EdgeDeploymentStageStartTime=stage.started_at,
                ),
                Watch=None
                if stage.watch_until is None
                else s.StageWatchOut(
                    WatchUntil=stage.watch_until,
                    LastCheckTime=stage.watch_checked_at,
                    BreachReason=stage.watch_breach,
                ),
                Events=[
                    s.StageEventOut(Time=e.at, Kind=e.kind, Message=e.message)
                    for e in stage_events(session, stage)
                ],
            )
        )
    gate = plan_gate(row)
    return s.PlanOut(
        EdgeDeploymentPlanName=row.name,
        EdgeDeploymentPlanArn=plan_arn(row.name),
        DeviceFleetName=row.fleet.name,
        ModelConfigs=[
            s.ModelConfigOut(
                ModelHandle=c.handle,
                ModelName=c.model_version.model.name,
                ModelVersion=c.model_version.version,
                ModelAlias=c.requested_alias,
            )
            for c in row.model_configs
        ],
        Stages=stages,
        EdgeDeploymentSuccess=totals.success,
        EdgeDeploymentPending=totals.pending,
        EdgeDeploymentFailed=totals.failed,
        HealthGate=s.HealthGateIn(**gate.to_wire()) if gate.enabled else None,
        DeviceTimeoutSeconds=row.device_timeout_seconds,
        WatchSeconds=row.watch_seconds,
        WatchPolicy=row.watch_policy,
        CreationTime=row.created_at,
        LastModifiedTime=row.updated_at,
        CreatedBy=row.created_by,
    )


def plan_summary(row: DeploymentPlan) -> s.PlanSummary:
    return s.PlanSummary(
        EdgeDeploymentPlanName=row.name,
        EdgeDeploymentPlanArn=plan_arn(row.name),
        DeviceFleetName=row.fleet.name,
        CreationTime=row.created_at,
        LastModifiedTime=row.updated_at,
    )


def stage_device(plan_name: str, stage_name: str, row: StageDevice) -> s.DeviceDeploymentSummary:
    return s.DeviceDeploymentSummary(
        EdgeDeploymentPlanName=plan_name,
        StageName=stage_name,
        DeviceName=row.device.name,
        DeviceFleetName=row.device.fleet.name,
        DeviceDeploymentStatus=row.status,
        DeviceDeploymentStatusMessage=row.message,
        DeploymentStartTime=row.fetched_at,
        DeviceResult=row.device_result,
        Rollback=row.rollback,
        Health=dict(row.health),
    )


def deployment(item: DeviceDeployment, artifacts: ArtifactStore) -> s.DeploymentOut:
    gate = item.health_gate
    return s.DeploymentOut(
        DeploymentName=item.name,
        FailureHandlingPolicy=item.failure_policy,
        Action=item.action.value,
        Definitions=[
            s.DefinitionOut(
                ModelHandle=d.handle,
                ModelName=d.model_name,
                ModelVersion=d.model_version,
                S3Url=artifacts.url(d.package.artifact_key),
                PackageUrl=f"/device/v1/packages/{d.package.id}",
                Checksum=s.ChecksumModel(Type="SHA1", Sum=d.package.sha1),
                Sha256=d.package.sha256,
                Size=d.package.size,
                State=d.state,
            )
            for d in item.definitions
        ],
        HealthGate=None if gate is None else s.HealthGateOut(**gate.to_wire()),
    )


def capture_object(row: CaptureObject) -> s.CaptureObjectOut:
    return s.CaptureObjectOut(
        Key=row.key,
        DeviceName=row.device.name,
        DeviceFleetName=row.fleet.name,
        ModelName=row.model_name,
        ModelVersion=row.model_version,
        Records=row.records,
        Size=row.size,
        RawObjects=row.raw_objects,
        FirstInferenceTime=row.first_inference_at,
        LastInferenceTime=row.last_inference_at,
        ReportedTime=row.reported_at,
    )


def figure_series(series: FigureSeries) -> s.FigureSeriesOut:
    """One fleet's model version figures time series (``GET /fleets/{fleet}/figures``)."""
    return s.FigureSeriesOut(
        ModelName=series.model_name,
        ModelVersion=series.model_version,
        Points=[
            s.FigurePointOut(
                Time=p.at,
                DeviceCount=p.devices,
                Requests=p.requests,
                Errors=p.errors,
                ErrorRate=p.error_rate,
                LatencyP50Ms=p.p50_ms,
                LatencyP99Ms=p.p99_ms,
            )
            for p in series.points
        ],
    )
