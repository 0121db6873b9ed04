"""Request and response bodies. Field names follow the SageMaker Edge Manager shapes (PascalCase).

Operator requests reject unknown fields (typos fail loudly); device requests ignore them so that
newer daemons can talk to older servers. No request number may be NaN or infinite (JSON has no
such numbers, PostgreSQL's JSON refuses them, SQLite stores them as NULL), and integers that reach
the database are bounded by its column types.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.core import deviceplane as dp
from edgefleet.server.validation import MAX_ID, MAX_INT32


class Strict(BaseModel):
    """An operator request body: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Lenient(BaseModel):
    """A device request body: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class Out(BaseModel):
    """A response body."""


# ------------------------------------------------------------------------------------------ fleets


class OutputConfigModel(Strict):
    """Where devices of the fleet upload captured data."""

    S3OutputLocation: str = Field(description="s3://bucket/prefix (or file:///dir for local set-ups)")
    KmsKeyId: str | None = None


class CreateFleetRequest(Strict):
    DeviceFleetName: str
    OutputConfig: OutputConfigModel
    Description: str | None = None
    RoleArn: str | None = None
    Tags: dict[str, str] | None = None


class UpdateFleetRequest(Strict):
    OutputConfig: OutputConfigModel | None = None
    Description: str | None = None
    RoleArn: str | None = None
    Tags: dict[str, str] | None = None


class FleetOut(Out):
    DeviceFleetName: str
    DeviceFleetArn: str
    OutputConfig: OutputConfigModel
    Description: str | None
    RoleArn: str | None
    Tags: dict[str, str]
    CreationTime: datetime
    LastModifiedTime: datetime


class FleetSummary(Out):
    DeviceFleetName: str
    DeviceFleetArn: str
    CreationTime: datetime
    LastModifiedTime: datetime


class FleetList(Out):
    DeviceFleetSummaries: list[FleetSummary]
    NextToken: str | None = None


class DeviceStatsModel(Out):
    ConnectedDeviceCount: int
    RegisteredDeviceCount: int


class AgentVersionCount(Out):
    Version: str
    AgentCount: int


class ModelStat(Out):
    ModelName: str
    ModelVersion: str
    OfflineDeviceCount: int
    ConnectedDeviceCount: int
    ActiveDeviceCount: int
    SamplingDeviceCount: int


class FleetReportOut(Out):
    DeviceFleetArn: str
    DeviceFleetName: str
    OutputConfig: OutputConfigModel
    Description: str | None
    ReportGenerated: datetime
    DeviceStats: DeviceStatsModel
    AgentVersions: list[AgentVersionCount]
    ModelStats: list[ModelStat]


# ----------------------------------------------------------------------------------------- devices


class PlatformModel(Strict):
    """What a device runs on; chooses the package of a model version."""

    Os: str = "linux"
    Arch: str
    Accelerator: str = "none"


class DeviceIn(Strict):
    DeviceName: str
    Description: str | None = None
    IotThingName: str | None = None
    Tags: dict[str, str] | None = None


class RegisterDevicesRequest(Strict):
    DeviceFleetName: str
    Devices: list[DeviceIn]
    Tags: dict[str, str] | None = Field(default=None, description="tags applied to every device")


class EnrolmentTokenOut(Out):
    DeviceName: str
    EnrolmentToken: str = Field(description="one-time token for `edgefleet device enroll`; shown only now")
    EnrolmentTokenExpiresAt: datetime


class RegisterDevicesResponse(Out):
    Devices: list[EnrolmentTokenOut]


class UpdateDeviceRequest(Strict):
    Description: str | None = None
    IotThingName: str | None = None
    Tags: dict[str, str] | None = Field(default=None, description="replaces the device's tags")
    Platform: PlatformModel | None = None


class DeviceModelOut(Out):
    ModelName: str
    ModelVersion: str
    LatestSampleTime: datetime | None
    LatestInference: datetime | None


class DeviceCaptureOut(Out):
    BacklogRecords: int = Field(description="captures acknowledged, not yet confirmed by the store")
    BacklogBytes: int
    OldestBacklogAgeSeconds: float
    Dropped: int = Field(description="captures dropped by the full-spool policy (since the agent started)")
    Failed: int = Field(description="captures that failed for good (since the agent started)")
    TransferPending: int = Field(
        0, description="Disk with periodic upload: objects on Disk not yet confirmed by the cloud store"
    )
    TransferPendingBytes: int = 0
    OldestTransferAgeSeconds: float = 0.0
    ReportedTime: datetime


class DeviceOut(Out):
    DeviceArn: str
    DeviceName: str
    Description: str | None
    DeviceFleetName: str
    IotThingName: str | None
    RegistrationTime: datetime
    LatestHeartbeat: datetime | None
    Models: list[DeviceModelOut]
    MaxModels: int | None
    AgentVersion: str | None
    Tags: dict[str, str]
    Platform: dict[str, str] | None
    EnrolmentTime: datetime | None
    CertificateExpiresAt: datetime | None
    AgentMetrics: list[dict[str, Any]]
    Capture: DeviceCaptureOut | None = Field(
        default=None, description="the capture spool as the latest heartbeat reported it (extension)"
    )


class DeviceSummary(Out):
    DeviceName: str
    DeviceArn: str
    Description: str | None
    DeviceFleetName: str
    IotThingName: str | None
    RegistrationTime: datetime
    LatestHeartbeat: datetime | None
    Models: list[dict[str, str]]
    AgentVersion: str | None


class DeviceList(Out):
    DeviceSummaries: list[DeviceSummary]
    NextToken: str | None = None


# ---------------------------------------------------------------------------------------- registry


class CreateModelRequest(Strict):
    ModelName: str
    Description: str | None = None


class ModelOut(Out):
    ModelName: str
    Description: str | None
    CreationTime: datetime
    CreatedBy: str
    Aliases: dict[str, str]


class ModelList(Out):
    Models: list[ModelOut]
    NextToken: str | None = None


class CreateVersionRequest(Strict):
    ModelVersion: str
    Description: str | None = None


class PackageOut(Out):
    PackageId: int
    Target: str
    Os: str
    Arch: str
    Accelerator: str
    Runtime: str
    Size: int
    Sha256: str
    Sha1: str
    Signer: str
    UploadTime: datetime
    UploadedBy: str
    ArtifactUrl: str


class VersionOut(Out):
    ModelName: str
    ModelVersion: str
    Description: str | None
    ApprovalStatus: str
    ApprovalUpdatedBy: str | None
    ApprovalUpdatedAt: datetime | None
    ApprovalReason: str | None
    CreationTime: datetime
    CreatedBy: str
    Packages: list[PackageOut]


class VersionList(Out):
    ModelVersions: list[VersionOut]
    NextToken: str | None = None


class ApprovalRequest(Strict):
    ApprovalStatus: str = Field(description="PendingManualApproval | Approved | Rejected")
    Reason: str | None = None


class AliasRequest(Strict):
    ModelVersion: str


# -------------------------------------------------------------------------------------- deployment


class SelectionModel(Strict):
    DeviceSubsetType: str = Field(description="PERCENTAGE | SELECTION | NAMECONTAINS | TAGS")
    Percentage: int | None = Field(default=None, le=MAX_INT32)
    DeviceNames: list[str] | None = None
    DeviceNameContains: str | None = None
    DeviceTags: dict[str, str] | None = None


class StageConfigModel(Strict):
    FailureHandlingPolicy: str = Field(
        default="ROLLBACK_ON_FAILURE", description="ROLLBACK_ON_FAILURE | DO_NOTHING"
    )
    FailureThreshold: float = Field(
        default=0.0, description="the stage fails when its failed share exceeds this"
    )


class StageIn(Strict):
    StageName: str
    DeviceSelectionConfig: SelectionModel
    DeploymentConfig: StageConfigModel = Field(default_factory=StageConfigModel)


class ModelConfigIn(Strict):
    ModelHandle: str
    ModelName: str
    ModelVersion: str | None = None
    ModelAlias: str | None = None


class HealthGateIn(Strict):
    MaxErrorRate: float | None = None
    MaxP99LatencyMs: float | None = None
    MinInferences: int = Field(default=dp.DEFAULT_MIN_INFERENCES, le=MAX_INT32)
    ObservationSeconds: float = dp.DEFAULT_OBSERVATION_SECONDS
    MaxDriftScore: float | None = Field(
        default=None,
        description="highest worst-feature PSI of the new version on the stage's devices (server-judged)",
    )


class CreatePlanRequest(Strict):
    EdgeDeploymentPlanName: str
    DeviceFleetName: str
    ModelConfigs: list[ModelConfigIn]
    Stages: list[StageIn]
    HealthGate: HealthGateIn | None = None
    DeviceTimeoutSeconds: float | None = None
    WatchSeconds: float = Field(
        default=0.0, description="after a stage is DEPLOYED, keep checking the gate this long (0: no watch)"
    )
    WatchPolicy: str = Field(default="ROLLBACK", description="ROLLBACK | ALERT_ONLY")


class StageStatusOut(Out):
    StageStatus: str
    EdgeDeploymentSuccessInStage: int
    EdgeDeploymentPendingInStage: int
    EdgeDeploymentFailedInStage: int
    EdgeDeploymentStoppedInStage: int
    EdgeDeploymentStatusMessage: str | None
    EdgeDeploymentStageStartTime: datetime | None


class StageWatchOut(Out):
    WatchUntil: datetime = Field(description="the watch period of the DEPLOYED stage ends then")
    LastCheckTime: datetime | None = Field(description="when the periodic work last checked the limits")
    BreachReason: str | None = Field(description="the breach the last check found (names limit and figure)")


class StageEventOut(Out):
    Time: datetime
    Kind: str = Field(
        description="STAGE_FAILED | STAGE_ROLLBACK | STAGE_STOPPED | WATCH_ALERT | WATCH_ROLLBACK"
    )
    Message: str


class StageOut(Out):
    StageName: str
    DeviceSelectionConfig: SelectionModel
    DeploymentConfig: StageConfigModel
    DeploymentStatus: StageStatusOut
    Watch: StageWatchOut | None = Field(default=None, description="extension: the stage's watch period")
    Events: list[StageEventOut] = Field(default_factory=list, description="extension: newest first")


class ModelConfigOut(Out):
    ModelHandle: str
    ModelName: str
    ModelVersion: str
    ModelAlias: str | None


class PlanOut(Out):
    EdgeDeploymentPlanName: str
    EdgeDeploymentPlanArn: str
    DeviceFleetName: str
    ModelConfigs: list[ModelConfigOut]
    Stages: list[StageOut]
    EdgeDeploymentSuccess: int
    EdgeDeploymentPending: int
    EdgeDeploymentFailed: int
    HealthGate: HealthGateIn | None
    DeviceTimeoutSeconds: float | None
    WatchSeconds: float
    WatchPolicy: str
    CreationTime: datetime
    LastModifiedTime: datetime
    CreatedBy: str


class PlanSummary(Out):
    EdgeDeploymentPlanName: str
    EdgeDeploymentPlanArn: str
    DeviceFleetName: str
    CreationTime: datetime
    LastModifiedTime: datetime


class PlanList(Out):
    EdgeDeploymentPlanSummaries: list[PlanSummary]
    NextToken: str | None = None


class DeviceDeploymentSummary(Out):
    EdgeDeploymentPlanName: str
    StageName: str
    DeviceName: str
    DeviceFleetName: str
    DeviceDeploymentStatus: str
    DeviceDeploymentStatusMessage: str | None
    DeploymentStartTime: datetime | None
    DeviceResult: str | None
    Rollback: str
    Health: dict[str, Any]


class StageDeviceList(Out):
    DeviceDeploymentSummaries: list[DeviceDeploymentSummary]
    NextToken: str | None = None


# -------------------------------------------------------------------------------------- enrolment


class EnrolRequest(Lenient):
    EnrolmentToken: str
    CertificateSigningRequest: str = Field(description="PEM PKCS#10 request for the device's own key")


class CertificateOut(Out):
    """A client certificate issued to a device (at enrolment or renewal)."""

    DeviceName: str
    DeviceFleetName: str
    Certificate: str = Field(description="the device's client certificate (PEM)")
    CertificateChain: list[str] = Field(description="the fleet CA certificate(s) (PEM)")
    CertificateExpiresAt: datetime


class EnrolResponse(CertificateOut):
    DeviceEndpoint: str = Field(description="base URL of the device data plane (mutual TLS)")


# ---------------------------------------------------------------------------------------- captures


class CaptureObjectOut(Out):
    """One capture object (a ``.jsonl`` batch of records) in the capture index."""

    Key: str = Field(description="the object's key in the capture store (docs/capture-format.md layout)")
    DeviceName: str
    DeviceFleetName: str
    ModelName: str
    ModelVersion: str
    Records: int = Field(description="capture records in the object")
    Size: int = Field(description="the object's size in bytes (raw-data files not included)")
    RawObjects: int = Field(description="raw-data payload files its records refer to")
    FirstInferenceTime: datetime
    LastInferenceTime: datetime
    ReportedTime: datetime = Field(description="when the device reported the upload")


class CaptureList(Out):
    Captures: list[CaptureObjectOut]
    NextToken: str | None = None


# ----------------------------------------------------------------------------------- device plane


class DeviceRef(Lenient):
    DeviceName: str
    DeviceFleetName: str


class RenewRequest(DeviceRef):
    CertificateSigningRequest: str = Field(description="PEM PKCS#10 request for the device's NEW key")


class RenewResponse(CertificateOut):
    """The renewed certificate: the one the request was made with stays valid until this one is used."""


class RegistrationOut(Out):
    DeviceRegistration: str
    CacheTTL: str


class EdgeMetric(Lenient):
    Dimension: str | None = None
    MetricName: str
    Value: float
    Timestamp: datetime | None = None


class HeartbeatModel(Lenient):
    ModelName: str
    ModelVersion: str = ""
    LatestSampleTime: datetime | None = None
    LatestInference: datetime | None = None
    ModelMetrics: list[EdgeMetric] = Field(default_factory=list)


class DeploymentModelResult(Lenient):
    ModelHandle: str | None = None
    ModelName: str | None = None
    ModelVersion: str | None = None
    DesiredState: str | None = None
    State: str | None = None
    Status: str | None = None
    StatusReason: str | None = None
    RollbackFailureReason: str | None = None


class DeploymentResultModel(Lenient):
    DeploymentName: str
    DeploymentStatus: str = Field(description=" | ".join([dp.IN_PROGRESS, *dp.Result]))
    DeploymentStatusMessage: str | None = None
    DeploymentStartTime: datetime | None = None
    DeploymentEndTime: datetime | None = None
    DeploymentModels: list[DeploymentModelResult] = Field(default_factory=list)


class DevicePlatform(Lenient):
    Os: str = "linux"
    Arch: str
    Accelerator: str = "none"


class CaptureUploadModel(Lenient):
    Key: str
    ModelName: str
    ModelVersion: str = ""
    Records: int = 0
    Size: int = 0
    FirstInferenceTime: datetime | None = None
    LastInferenceTime: datetime | None = None
    RawObjects: int = 0


class CaptureReportModel(Lenient):
    BacklogRecords: int = 0
    BacklogBytes: int = 0
    OldestBacklogAgeSeconds: float = 0.0
    Dropped: int = 0
    Failed: int = 0
    Uploads: list[CaptureUploadModel] = Field(default_factory=list)
    TransferPending: int = 0
    TransferPendingBytes: int = 0
    OldestTransferAgeSeconds: float = 0.0


class SummaryWindowModel(Lenient):
    ModelName: str
    ModelVersion: str = ""
    WindowStart: datetime
    WindowEnd: datetime
    Calls: int = 0
    Summary: dict[str, Any]


class ShadowReportModel(Lenient):
    Handle: str
    ChampionModel: str
    ChampionVersion: str = ""
    ShadowModel: str
    ShadowVersion: str = ""
    Mirrored: int = 0
    Completed: int = 0
    Agreed: int = 0
    Disagreed: int = 0
    ShadowErrors: int = 0
    Dropped: int = 0
    ChampionLatencyP50Ms: float = 0.0
    ChampionLatencyP99Ms: float = 0.0
    ShadowLatencyP50Ms: float = 0.0
    ShadowLatencyP99Ms: float = 0.0


class HeartbeatRequest(Lenient):
    AgentVersion: str
    DeviceName: str
    DeviceFleetName: str
    AgentMetrics: list[EdgeMetric] = Field(default_factory=list)
    Models: list[HeartbeatModel] = Field(default_factory=list)
    DeploymentResult: DeploymentResultModel | None = None
    Platform: DevicePlatform | None = Field(default=None, description="edgefleet extension: picks packages")
    Capture: CaptureReportModel | None = Field(default=None, description="edgefleet extension: capture spool")
    ModelSummaries: list[SummaryWindowModel] = Field(
        default_factory=list, description="edgefleet extension: live model summaries for drift"
    )
    Shadows: list[ShadowReportModel] = Field(
        default_factory=list, description="edgefleet extension: shadow pairs' cumulative figures"
    )


class ChecksumModel(Out):
    Type: str
    Sum: str


class DefinitionOut(Out):
    ModelHandle: str
    ModelName: str
    ModelVersion: str
    S3Url: str
    PackageUrl: str = Field(description="path on the device endpoint; supports HTTP Range")
    Checksum: ChecksumModel
    Sha256: str
    Size: int
    State: str = Field(description="DEPLOY | UNDEPLOY (UNDEPLOY: restore what ran before)")


class HealthGateOut(Out):
    MaxErrorRate: float | None
    MaxP99LatencyMs: float | None
    MinInferences: int
    ObservationSeconds: float
    MaxDriftScore: float | None = None


class DeploymentOut(Out):
    DeploymentName: str
    Type: str = "Model"
    FailureHandlingPolicy: str
    Action: str = Field(description=" | ".join(dp.Action))
    Definitions: list[DefinitionOut]
    HealthGate: HealthGateOut | None


class DeploymentsOut(Out):
    Deployments: list[DeploymentOut]


class ResultRequest(Lenient):
    DeviceName: str
    DeviceFleetName: str
    DeploymentResult: DeploymentResultModel


class ResultOut(Out):
    DeploymentName: str
    DeviceDeploymentStatus: str


class HealthRequest(Lenient):
    DeviceName: str
    DeviceFleetName: str
    DeploymentName: str
    Inferences: int = Field(le=MAX_ID)
    Errors: int = Field(le=MAX_ID)
    P99LatencyMs: float | None = None


class HealthOut(Out):
    Verdict: str = Field(description=" | ".join(dp.Verdict))
    Reason: str
    Action: str = Field(description="NONE | ROLLBACK")


# ------------------------------------------------------------------------------------------- drift


class BaselineRequest(Strict):
    Summary: dict[str, Any] = Field(
        description="the reference data's summary: edgefleet.monitoring.ModelSummary.to_wire()"
    )


class BaselineOut(Out):
    ModelName: str
    ModelVersion: str
    Samples: int = Field(description="reference samples summarised")
    CreationTime: datetime
    CreatedBy: str
    Summary: dict[str, Any]


class DriftBucketOut(Out):
    ModelVersion: str
    BucketStart: datetime
    BucketEnd: datetime
    Windows: int = Field(description="summary windows merged")
    Devices: int
    Calls: int = Field(description="Predict calls summarised")
    MaxPsi: float
    MaxKs: float
    MaxJs: float
    Mismatches: list[str] = Field(
        description="tensors only in the baseline or only live, feature counts that differ"
    )


class FeatureDriftOut(Out):
    ModelVersion: str
    BucketStart: datetime
    Kind: str = Field(description="input or output")
    Tensor: str
    Feature: int
    Psi: float
    Ks: float
    BaselineCount: int
    LiveCount: int


class ClassDriftOut(Out):
    ModelVersion: str
    BucketStart: datetime
    Output: str
    Js: float = Field(description="Jensen-Shannon divergence (base 2, 0-1) of the predicted classes")
    Baseline: dict[str, int]
    Live: dict[str, int]


class DriftReportOut(Out):
    DeviceFleetName: str
    ModelName: str
    Since: datetime
    BucketSeconds: int
    Buckets: list[DriftBucketOut]
    Features: list[FeatureDriftOut] = Field(description="worst (PSI, then KS) first")
    Classes: list[ClassDriftOut] = Field(description="worst (JS) first")
    MissingBaselines: list[str] = Field(description="versions seen in the range that have no baseline")


class ShadowPairOut(Out):
    ChampionModel: str
    ChampionVersion: str
    ShadowModel: str
    ShadowVersion: str
    DeviceCount: int = Field(description="registered devices of the fleet reporting the pair")
    Mirrored: int
    Completed: int
    Agreed: int
    Disagreed: int
    ShadowErrors: int
    Dropped: int
    AgreementRate: float | None = Field(description="Agreed / Completed; null before any comparison")
    ShadowErrorRate: float | None = Field(description="ShadowErrors / (Completed + ShadowErrors)")
    LatencyRatioP50Median: float | None = Field(description="shadow / champion p50 per device, median")
    LatencyRatioP50Worst: float | None
    LatencyRatioP99Median: float | None = Field(description="shadow / champion p99 per device, median")
    LatencyRatioP99Worst: float | None
    ChampionLatencyP99MsWorst: float
    ShadowLatencyP99MsWorst: float
    LastReportTime: datetime


class FleetShadowsOut(Out):
    DeviceFleetName: str
    ShadowPairs: list[ShadowPairOut]


class FigurePointOut(Out):
    Time: datetime = Field(description="start of the sampled interval")
    DeviceCount: int = Field(description="connected devices reporting the version")
    Requests: float = Field(description="the devices' cumulative Predict counters, summed")
    Errors: float = Field(description="the devices' cumulative failed-Predict counters, summed")
    ErrorRate: float | None = Field(
        description="errors / requests added since the previous sample; null when none were added, a "
        "sum went down or the device count changed (a counter restarted or the device set changed)"
    )
    LatencyP50Ms: float | None = Field(description="median of the devices' p50 latencies")
    LatencyP99Ms: float | None = Field(description="highest of the devices' p99 latencies (worst device)")


class FigureSeriesOut(Out):
    ModelName: str
    ModelVersion: str
    Points: list[FigurePointOut] = Field(description="oldest first")


class FleetFiguresOut(Out):
    DeviceFleetName: str
    IntervalSeconds: int
    Series: list[FigureSeriesOut]


# ------------------------------------------------------------------------------------ capture plane


class PresignRequest(DeviceRef):
    """Keys of capture objects the device is about to upload (edgefleet extension)."""

    Keys: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="object keys, each under the device's fleet prefix '<fleet>/' (at most 100; none: "
        "only the Location and Prefix)",
    )


# ------------------------------------------------------------------------------------------ alerts


class WebhookIn(Strict):
    Url: str = Field(description="http or https URL the alert events are posted to")
    Secret: str | None = Field(
        default=None, description="key of the X-Edgefleet-Signature HMAC-SHA256 header (never shown again)"
    )


class AlertRuleRequest(Strict):
    DeviceFleetName: str | None = Field(default=None, description="only this fleet (default: every fleet)")
    ModelVersion: str | None = Field(default=None, description="only this version (default: every version)")
    MaxPsi: float | None = None
    MaxKs: float | None = None
    MaxJs: float | None = None
    Webhook: WebhookIn | None = None


class WebhookOut(Out):
    Url: str
    HasSecret: bool


class AlertRuleOut(Out):
    AlertRuleName: str
    ModelName: str
    DeviceFleetName: str | None
    ModelVersion: str | None
    MaxPsi: float | None
    MaxKs: float | None
    MaxJs: float | None
    Webhook: WebhookOut | None
    CreationTime: datetime
    LastModifiedTime: datetime
    UpdatedBy: str


class AlertRuleList(Out):
    AlertRules: list[AlertRuleOut]


class AlertEventOut(Out):
    EventId: int
    AlertRuleName: str
    DeviceFleetName: str
    ModelName: str
    ModelVersion: str
    Feature: str = Field(description="'input x[3]', 'output y[0]' (PSI, KS) or 'output y' (JS)")
    ScoreKind: str = Field(description="PSI, KS or JS")
    Score: float = Field(description="the score that opened the event")
    Threshold: float
    BucketStart: datetime
    BucketEnd: datetime
    OpenedAt: datetime
    ClearedAt: datetime | None
    ClearedScore: float | None


class AlertEventList(Out):
    AlertEvents: list[AlertEventOut]
    NextToken: str | None


# -------------------------------------------------------------------------------------------- jobs


class CompileJobSpec(Strict):
    """A compile job (docs/compiler.md): the files are paths on the workers' machines."""

    Model: str = Field(description="absolute path of the trained model file")
    Framework: str = Field(description="onnx, pytorch, sklearn, xgboost, lightgbm or tflite")
    Target: str = Field(description="device class (docs/targets.md)")
    Inputs: list[str] = Field(default_factory=list, description="NAME:SHAPE[:DTYPE][:batch=AXIS|none] each")
    Backend: str = "auto"
    Quantize: str = "auto"
    Calibration: str | None = None
    Validation: str | None = None
    MaxAccuracyDrop: float = Field(default=1.0, ge=0)
    Threads: int = Field(default=0, ge=0, le=1024)
    BenchmarkSeconds: float = Field(default=2.0, gt=0, le=3600)
    TuneTrials: int = Field(default=0, ge=0, le=MAX_INT32)
    TuneMinutes: float = Field(default=0.0, ge=0)


class WaitJobSpec(Strict):
    """A diagnostic job: waits until the file ``Path`` exists on the worker's machine, then writes
    ``Touch`` (when given) and succeeds; fails after ``TimeoutSeconds``."""

    Path: str
    Touch: str | None = None
    TimeoutSeconds: float = Field(default=600.0, gt=0)


class JobRequest(Strict):
    """``Kind`` and the parameters of that kind (``Compile`` or ``Wait``)."""

    Kind: str = Field(description="compile or wait")
    Compile: CompileJobSpec | None = None
    Wait: WaitJobSpec | None = None
    MaxAttempts: int | None = Field(default=None, ge=1, le=20, description="default: the server's")


class JobProgress(Out):
    Fraction: float
    Message: str | None


class JobErrorOut(Out):
    Code: str
    Message: str


class JobOut(Out):
    JobId: str
    Kind: str
    State: str
    Params: dict[str, Any]
    Attempt: int
    MaxAttempts: int
    WorkerId: str | None
    LeaseExpiresAt: datetime | None
    LastHeartbeatAt: datetime | None
    Progress: JobProgress
    Result: dict[str, Any] | None
    Error: JobErrorOut | None
    CreationTime: datetime
    CreatedBy: str
    StartTime: datetime | None
    EndTime: datetime | None


class JobList(Out):
    Jobs: list[JobOut]
    NextToken: str | None


class JobLogLine(Out):
    Id: int
    Attempt: int
    Time: datetime
    Line: str


class JobLogs(Out):
    JobId: str
    State: str
    Lines: list[JobLogLine]
    #: give it as ``After`` to read the lines that follow
    LastId: int


# ------------------------------------------------------------------------------------------ pipelines


class PipelineRequest(Strict):
    PipelineConfig: str = Field(
        description="the pipeline configuration, TOML (see server/pipelines/config.py)"
    )
    Replace: bool = Field(default=False, description="replace an existing pipeline of the same model")


class PipelineOut(Out):
    PipelineName: str
    Configuration: dict[str, Any]
    Steps: list[str]
    Source: str
    CreationTime: datetime
    CreatedBy: str
    LastModifiedTime: datetime


class PipelineList(Out):
    Pipelines: list[PipelineOut]


class StartRunRequest(Strict):
    ModelVersion: str | None = Field(
        default=None, description="the version registered (default: r<run number>)"
    )
    Source: str | None = Field(
        default=None, description="a model file replacing the configured source (absolute)"
    )
    Trigger: str = "manual"


class DecisionRequest(Strict):
    Note: str | None = None


class PipelineStepOut(Out):
    StepName: str
    State: str
    Message: str | None
    Artifacts: dict[str, Any]
    Figures: dict[str, Any]
    StartTime: datetime | None
    EndTime: datetime | None


class PipelineRunOut(Out):
    RunId: str
    PipelineName: str
    RunNumber: int
    ModelVersion: str
    State: str
    Reason: str | None
    Trigger: str
    JobId: str | None
    Steps: list[PipelineStepOut]
    Decision: str | None
    DecidedBy: str | None
    DecisionTime: datetime | None
    DecisionNote: str | None
    CreationTime: datetime
    CreatedBy: str
    StartTime: datetime | None
    EndTime: datetime | None


class PipelineRunList(Out):
    Runs: list[PipelineRunOut]
    NextToken: str | None = None


class PipelineLogLine(Out):
    Id: int
    Step: str | None
    Time: datetime
    Line: str


class PipelineLogs(Out):
    RunId: str
    State: str
    Lines: list[PipelineLogLine]
    LastId: int
