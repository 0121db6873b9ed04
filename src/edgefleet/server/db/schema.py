"""The relational schema (SQLAlchemy 2 declarative). Changes here need an Alembic revision.

Times are stored as timezone-aware UTC; :class:`UTCDateTime` restores the zone that SQLite drops.
Rows that devices or replicas race on are guarded either by a row lock taken in the service
(``with_for_update``) or by conditional updates, so several stateless replicas may share a database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """A ``DateTime(timezone=True)`` that always hands back aware UTC datetimes."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


#: SQL of "a device still has to act on this stage row" (deployments.outstanding), for the partial index
OUTSTANDING_SQL = "status IN ('READYTODEPLOY', 'INPROGRESS', 'STOPPING') OR rollback = 'REQUESTED'"


class Base(DeclarativeBase):
    """Declarative base of every table."""

    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class OperatorToken(Base):
    """An operator API token. Only the SHA-256 of the secret is stored."""

    __tablename__ = "operator_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class CertificateAuthority(Base):
    """The fleet CA (one row, id 1). Shared by every replica through the database."""

    __tablename__ = "certificate_authority"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cert_pem: Mapped[str] = mapped_column(Text)
    key_pem: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class Fleet(Base):
    """A device fleet with its capture output configuration."""

    __tablename__ = "fleets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str | None] = mapped_column(String(800))
    role_arn: Mapped[str | None] = mapped_column(String(2048))
    output_location: Mapped[str] = mapped_column(String(1024))
    kms_key_id: Mapped[str | None] = mapped_column(String(2048))
    tags: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Device(Base):
    """A registered device. Deregistered devices keep their row (``deregistered_at`` set)."""

    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"), index=True)
    description: Mapped[str | None] = mapped_column(String(40))
    iot_thing_name: Mapped[str | None] = mapped_column(String(128))
    registered_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    deregistered_at: Mapped[datetime | None]
    enrolment_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    enrolment_expires_at: Mapped[datetime | None]
    enrolled_at: Mapped[datetime | None]
    cert_serial: Mapped[str | None] = mapped_column(String(64))
    cert_not_after: Mapped[datetime | None]
    # a renewed certificate issued but not used yet: the current one stays valid until it is
    renewed_cert_serial: Mapped[str | None] = mapped_column(String(64))
    renewed_cert_not_after: Mapped[datetime | None]
    agent_version: Mapped[str | None] = mapped_column(String(64))
    # not indexed: every heartbeat rewrites it (see migration 0002)
    last_heartbeat_at: Mapped[datetime | None]
    agent_metrics: Mapped[list[Any]]
    platform_os: Mapped[str | None] = mapped_column(String(32))
    platform_arch: Mapped[str | None] = mapped_column(String(32))
    platform_accelerator: Mapped[str | None] = mapped_column(String(64))
    max_models: Mapped[int | None]

    fleet: Mapped[Fleet] = relationship(lazy="joined")
    tags: Mapped[list[DeviceTag]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="DeviceTag.key"
    )
    models: Mapped[list[DeviceModel]] = relationship(
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="[DeviceModel.model_name, DeviceModel.model_version]",
    )


class DeviceTag(Base):
    """One key/value tag of a device (a table so list filters run in SQL)."""

    __tablename__ = "device_tags"
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
    __table_args__ = (Index("ix_device_tags_key_value", "key", "value"),)


class DeviceModel(Base):
    """A model version a device reported in its latest heartbeat.

    Keyed by name *and* version: a device may serve several versions of one model at once (an A/B
    test under two handles), and each counts (fleet report, DescribeDevice, ListDevices).
    """

    __tablename__ = "device_models"
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(30), primary_key=True)
    latest_sample_at: Mapped[datetime | None]
    latest_inference_at: Mapped[datetime | None]
    metrics: Mapped[list[Any]]
    updated_at: Mapped[datetime]
    # The primary key serves a device's own rows (loading, replacing, the heartbeat upsert); this
    # index the other direction, the devices that report a model (version).
    __table_args__ = (Index("ix_device_models_model", "model_name", "model_version"),)


class RevokedCertificate(Base):
    """A device certificate that must no longer be accepted."""

    __tablename__ = "revoked_certificates"
    serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_name: Mapped[str] = mapped_column(String(63))
    revoked_at: Mapped[datetime]
    reason: Mapped[str] = mapped_column(String(200))


class Model(Base):
    """A model in the registry."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100))


class ModelVersion(Base):
    """A version of a model: a set of signed packages (one per target) and an approval status."""

    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(30))
    description: Mapped[str | None] = mapped_column(String(1000))
    approval_status: Mapped[str] = mapped_column(String(32))
    approval_by: Mapped[str | None] = mapped_column(String(100))
    approval_at: Mapped[datetime | None]
    approval_reason: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100))

    model: Mapped[Model] = relationship(lazy="joined")
    packages: Mapped[list[ModelPackage]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="ModelPackage.target"
    )
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),)


class ModelPackage(Base):
    """One signed package of a model version, for one target (``os-arch-accelerator``)."""

    __tablename__ = "model_packages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    target: Mapped[str] = mapped_column(String(160))
    target_os: Mapped[str] = mapped_column(String(32))
    target_arch: Mapped[str] = mapped_column(String(32))
    target_accelerator: Mapped[str] = mapped_column(String(64))
    runtime: Mapped[str] = mapped_column(String(64))
    artifact_key: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    sha1: Mapped[str] = mapped_column(String(40))
    manifest: Mapped[dict[str, Any]]
    signer: Mapped[str] = mapped_column(String(1000))
    uploaded_at: Mapped[datetime]
    uploaded_by: Mapped[str] = mapped_column(String(100))
    __table_args__ = (
        UniqueConstraint("model_version_id", "target", name="uq_model_packages_version_target"),
    )


class ModelAlias(Base):
    """A named pointer (e.g. ``champion``) from a model to one of its versions."""

    __tablename__ = "model_aliases"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(63), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(String(100))

    model_version: Mapped[ModelVersion] = relationship(lazy="joined")


class DeploymentPlan(Base):
    """An edge deployment plan: model configs, ordered stages and health limits."""

    __tablename__ = "deployment_plans"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id"), index=True)
    max_error_rate: Mapped[float | None] = mapped_column(Float)
    max_p99_latency_ms: Mapped[float | None] = mapped_column(Float)
    min_inferences: Mapped[int] = mapped_column(Integer)
    observation_seconds: Mapped[float] = mapped_column(Float)
    device_timeout_seconds: Mapped[float | None] = mapped_column(Float)
    #: health gate: highest drift score (worst PSI) of the new version on a stage's devices
    max_drift_score: Mapped[float | None] = mapped_column(Float)
    #: after a stage is DEPLOYED, how long the gate's limits keep being checked (0: no watch)
    watch_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    #: what a breach in the watch period does: ROLLBACK or ALERT_ONLY
    watch_policy: Mapped[str] = mapped_column(String(16), default="ROLLBACK")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100))

    fleet: Mapped[Fleet] = relationship(lazy="joined")
    model_configs: Mapped[list[PlanModel]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="PlanModel.handle"
    )
    stages: Mapped[list[PlanStage]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="PlanStage.position"
    )


class PlanModel(Base):
    """A model config of a plan: the handle applications use and the pinned model version."""

    __tablename__ = "plan_models"
    plan_id: Mapped[int] = mapped_column(
        ForeignKey("deployment_plans.id", ondelete="CASCADE"), primary_key=True
    )
    handle: Mapped[str] = mapped_column(String(63), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    requested_alias: Mapped[str | None] = mapped_column(String(63))

    model_version: Mapped[ModelVersion] = relationship(lazy="joined")


class PlanStage(Base):
    """One stage of a plan: how it selects devices, its failure policy and its status."""

    __tablename__ = "plan_stages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("deployment_plans.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(63))
    subset_type: Mapped[str] = mapped_column(String(16))
    percentage: Mapped[int | None] = mapped_column(Integer)
    device_names: Mapped[list[Any]]
    name_contains: Mapped[str | None] = mapped_column(String(63))
    selection_tags: Mapped[dict[str, Any]]
    failure_policy: Mapped[str] = mapped_column(String(32))
    failure_threshold: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    status_message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    #: a DEPLOYED stage's watch period ends then (None: not watched)
    watch_until: Mapped[datetime | None]
    #: when the watch last checked the gate's limits
    watch_checked_at: Mapped[datetime | None]
    #: the first breach the watch found (names the limit and the figure)
    watch_breach: Mapped[str | None] = mapped_column(Text)

    plan: Mapped[DeploymentPlan] = relationship(back_populates="stages", lazy="joined")
    __table_args__ = (
        UniqueConstraint("plan_id", "name", name="uq_plan_stages_plan_name"),
        UniqueConstraint("plan_id", "position", name="uq_plan_stages_plan_position"),
    )


class StageEventRow(Base):
    """Something that happened to a stage that its status does not say (a watch alert, a breach)."""

    __tablename__ = "stage_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("plan_stages.id", ondelete="CASCADE"))
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    __table_args__ = (Index("ix_stage_events_stage", "stage_id", "at"),)


class StageDevice(Base):
    """The status of one device in one started stage."""

    __tablename__ = "stage_devices"
    stage_id: Mapped[int] = mapped_column(ForeignKey("plan_stages.id", ondelete="CASCADE"), primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    rollback: Mapped[str] = mapped_column(String(16))
    device_result: Mapped[str | None] = mapped_column(String(32))
    assigned_at: Mapped[datetime]
    fetched_at: Mapped[datetime | None]
    activated_at: Mapped[datetime | None]
    reported_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    health: Mapped[dict[str, Any]]
    observing: Mapped[bool] = mapped_column(Boolean, default=False)

    device: Mapped[Device] = relationship(lazy="joined")
    __table_args__ = (
        Index("ix_stage_devices_device_status", "device_id", "status"),
        Index("ix_stage_devices_stage_status", "stage_id", "status"),
        # The rows a device still has to act on (deployments.outstanding), indexed by themselves:
        # every poll asks for them, and almost every device has none.
        Index(
            "ix_stage_devices_outstanding",
            "device_id",
            postgresql_where=text(OUTSTANDING_SQL),
            sqlite_where=text(OUTSTANDING_SQL),
        ),
    )


class FleetReport(Base):
    """The latest generated fleet report and the lease that keeps replicas from duplicating work."""

    __tablename__ = "fleet_reports"
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"), primary_key=True)
    generated_at: Mapped[datetime | None]
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None]


class SummaryWindowRow(Base):
    """One device's live summary of one model version over one window (drift monitoring).

    ``summary`` is :meth:`edgefleet.monitoring.ModelSummary.to_wire`. A window is stored once:
    a heartbeat sent again (its answer lost) names the same (device, model, version, start).
    """

    __tablename__ = "summary_windows"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"))
    model_name: Mapped[str] = mapped_column(String(63))
    model_version: Mapped[str] = mapped_column(String(30))
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    calls: Mapped[int] = mapped_column(BigInteger)
    summary: Mapped[dict[str, Any]]
    received_at: Mapped[datetime]
    __table_args__ = (
        UniqueConstraint(
            "device_id", "model_name", "model_version", "window_start", name="uq_summary_windows_window"
        ),
        # the drift report reads one fleet's windows of one model version over a time range
        Index("ix_summary_windows_fleet_model", "fleet_id", "model_name", "model_version", "window_end"),
        # the periodic work deletes windows past their retention (docs/fleet-api.md §6)
        Index("ix_summary_windows_window_end", "window_end"),
        # the drift scorer reads the windows that arrived since its last round
        Index("ix_summary_windows_received_at", "received_at"),
    )


class Baseline(Base):
    """The reference summary of a model version's inputs and outputs that drift is scored against."""

    __tablename__ = "baselines"
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    summary: Mapped[dict[str, Any]]
    #: reference samples summarised
    samples: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100))

    model_version: Mapped[ModelVersion] = relationship(lazy="joined")


class CaptureObject(Base):
    """One capture object (a ``.jsonl`` batch) a device reported uploaded: the capture index.

    Fed by heartbeats (``Capture.Uploads``, :mod:`edgefleet.server.captures`); a key is indexed
    once per fleet, so a device re-reporting an upload (a retried heartbeat) adds nothing. The
    inference times are the report time when the device gave none.
    """

    __tablename__ = "capture_objects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(1024))
    model_name: Mapped[str] = mapped_column(String(63))
    model_version: Mapped[str] = mapped_column(String(30))
    records: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(BigInteger)
    raw_objects: Mapped[int] = mapped_column(Integer)
    first_inference_at: Mapped[datetime]
    last_inference_at: Mapped[datetime]
    reported_at: Mapped[datetime]

    device: Mapped[Device] = relationship(lazy="joined")
    fleet: Mapped[Fleet] = relationship(lazy="joined")
    __table_args__ = (
        UniqueConstraint("fleet_id", "key", name="uq_capture_objects_fleet_key"),
        # browsing a fleet's captures of a model (version) by time
        Index(
            "ix_capture_objects_fleet_model", "fleet_id", "model_name", "model_version", "first_inference_at"
        ),
        # a device model's latest sample (fleet report, DescribeDevice)
        Index(
            "ix_capture_objects_device_model", "device_id", "model_name", "model_version", "last_inference_at"
        ),
    )


class DeviceCaptureStatus(Base):
    """A device's capture spool as its latest heartbeat with a ``Capture`` report gave it.

    A table of its own rather than columns of ``devices``: most heartbeats carry no capture report,
    and the group-committed device UPDATE stays as it is.
    """

    __tablename__ = "device_capture_status"
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    backlog_records: Mapped[int] = mapped_column(BigInteger)
    backlog_bytes: Mapped[int] = mapped_column(BigInteger)
    oldest_age_seconds: Mapped[float] = mapped_column(Float)
    dropped: Mapped[int] = mapped_column(BigInteger)
    failed: Mapped[int] = mapped_column(BigInteger)
    # Disk with periodic upload: the transfer queue to the cloud store
    transfer_pending: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    transfer_pending_bytes: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    transfer_oldest_age_seconds: Mapped[float] = mapped_column(Float, server_default=text("0"))
    reported_at: Mapped[datetime]


class DeviceShadow(Base):
    """A device's shadow pair as its latest heartbeat reported it: the figures are the agent's,
    cumulative since the pair started, so the latest report is all the server needs to keep.

    A pair is named on its device by the handle and both model versions; a pair that ends stays
    (its last figures), a pair started again on the same handle and versions starts its counters
    afresh. ``reported_at`` is the server's time of the heartbeat.
    """

    __tablename__ = "device_shadows"
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    handle: Mapped[str] = mapped_column(String(63), primary_key=True)
    champion_model: Mapped[str] = mapped_column(String(63), primary_key=True)
    champion_version: Mapped[str] = mapped_column(String(30), primary_key=True)
    shadow_model: Mapped[str] = mapped_column(String(63), primary_key=True)
    shadow_version: Mapped[str] = mapped_column(String(30), primary_key=True)
    mirrored: Mapped[int] = mapped_column(BigInteger)
    completed: Mapped[int] = mapped_column(BigInteger)
    agreed: Mapped[int] = mapped_column(BigInteger)
    disagreed: Mapped[int] = mapped_column(BigInteger)
    shadow_errors: Mapped[int] = mapped_column(BigInteger)
    dropped: Mapped[int] = mapped_column(BigInteger)
    champion_p50_ms: Mapped[float] = mapped_column(Float)
    champion_p99_ms: Mapped[float] = mapped_column(Float)
    shadow_p50_ms: Mapped[float] = mapped_column(Float)
    shadow_p99_ms: Mapped[float] = mapped_column(Float)
    reported_at: Mapped[datetime]
    # the fleet's report reads one shadow model's pairs (the pipeline's shadow step)
    __table_args__ = (Index("ix_device_shadows_models", "shadow_model", "champion_model"),)


class DriftBucketRow(Base):
    """One scored bucket of the drift time series: a fleet's windows of one model version merged
    over one complete time bucket (by window end) and scored against the version's baseline.

    ``windows`` and ``last_received_at`` name the inputs it was scored from (windows are stored
    once and never change), ``baseline_at`` the baseline's ``created_at``: a bucket whose windows or
    baseline changed since is scored again, and the drift report uses a stored bucket only while
    they still match.
    """

    __tablename__ = "drift_buckets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"))
    model_name: Mapped[str] = mapped_column(String(63))
    model_version: Mapped[str] = mapped_column(String(30))
    bucket_start: Mapped[datetime]
    bucket_end: Mapped[datetime]
    windows: Mapped[int] = mapped_column(Integer)
    devices: Mapped[int] = mapped_column(Integer)
    calls: Mapped[int] = mapped_column(BigInteger)
    last_received_at: Mapped[datetime]
    baseline_at: Mapped[datetime]
    mismatches: Mapped[list[Any]]
    scored_at: Mapped[datetime]
    __table_args__ = (
        UniqueConstraint(
            "fleet_id", "model_name", "model_version", "bucket_start", "bucket_end", name="uq_drift_buckets"
        ),
        # retention deletes by bucket end
        Index("ix_drift_buckets_bucket_end", "bucket_end"),
    )


class DriftScoreRow(Base):
    """One score of one bucket: PSI or KS of a feature, or JS of an output's predicted classes.

    ``feature`` names it as ``input x[3]``, ``output y[0]`` (PSI, KS) or ``output y`` (JS).
    """

    __tablename__ = "drift_scores"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket_id: Mapped[int] = mapped_column(ForeignKey("drift_buckets.id", ondelete="CASCADE"))
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"))
    model_name: Mapped[str] = mapped_column(String(63))
    model_version: Mapped[str] = mapped_column(String(30))
    bucket_start: Mapped[datetime]
    bucket_end: Mapped[datetime]
    feature: Mapped[str] = mapped_column(String(200))
    #: PSI, KS or JS
    kind: Mapped[str] = mapped_column(String(3))
    score: Mapped[float] = mapped_column(Float)
    devices: Mapped[int] = mapped_column(Integer)
    calls: Mapped[int] = mapped_column(BigInteger)
    #: what the drift report shows besides the score: tensor, direction, index and counts (PSI, KS)
    #: or the class counts (JS)
    detail: Mapped[dict[str, Any]]
    __table_args__ = (
        Index("ix_drift_scores_bucket", "bucket_id"),
        Index("ix_drift_scores_series", "fleet_id", "model_name", "model_version", "bucket_start"),
    )


class ModelFigureSample(Base):
    """One sample of a fleet's model version figures, per interval (``Timing.figures_interval``):
    what :func:`edgefleet.server.metrics.model_figures` computed from the connected devices'
    latest heartbeats when the periodic work first sampled the interval (``at``: its start).

    ``requests`` and ``errors`` are the devices' cumulative counters (since each device loaded
    the version) summed; the error rate of an interval is derived from two consecutive samples
    (:func:`edgefleet.server.figures.figure_series`). One row per series and interval (the unique
    key), however many replicas sample it.
    """

    __tablename__ = "model_figure_samples"
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(30), primary_key=True)
    at: Mapped[datetime] = mapped_column(primary_key=True)
    devices: Mapped[int] = mapped_column(Integer)
    requests: Mapped[float] = mapped_column(Float)
    errors: Mapped[float] = mapped_column(Float)
    p50_ms: Mapped[float | None] = mapped_column(Float)
    p99_ms: Mapped[float | None] = mapped_column(Float)
    # the retention purge deletes by time across series
    __table_args__ = (Index("ix_model_figure_samples_at", "at"),)


class AlertRuleRow(Base):
    """Drift thresholds of a model (optionally one fleet, one version) and where events are posted."""

    __tablename__ = "alert_rules"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    fleet_id: Mapped[int | None] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"))
    model_version: Mapped[str | None] = mapped_column(String(30))
    max_psi: Mapped[float | None] = mapped_column(Float)
    max_ks: Mapped[float | None] = mapped_column(Float)
    max_js: Mapped[float | None] = mapped_column(Float)
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    #: HMAC-SHA256 key of the webhook's signature header (stored as given: the server signs with it)
    webhook_secret: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(String(100))
    __table_args__ = (UniqueConstraint("model_id", "name", name="uq_alert_rules_model_name"),)


#: SQL of "an alert event is open", for the partial unique index that allows one open event per series
OPEN_EVENT_SQL = "cleared_at IS NULL"


class AlertEventRow(Base):
    """A score above a rule's threshold: opened when it crossed, cleared when it fell back."""

    __tablename__ = "alert_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("alert_rules.id", ondelete="SET NULL"))
    rule_name: Mapped[str] = mapped_column(String(63))
    fleet_name: Mapped[str] = mapped_column(String(63))
    model_name: Mapped[str] = mapped_column(String(63))
    model_version: Mapped[str] = mapped_column(String(30))
    feature: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(3))
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    bucket_start: Mapped[datetime]
    bucket_end: Mapped[datetime]
    opened_at: Mapped[datetime]
    cleared_at: Mapped[datetime | None]
    #: the score of the bucket that cleared it
    cleared_score: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (
        # one open event per (rule, fleet, version, feature, kind): no event storms, even with replicas
        Index(
            "uq_alert_events_open",
            "rule_id",
            "fleet_name",
            "model_version",
            "feature",
            "kind",
            unique=True,
            postgresql_where=text(OPEN_EVENT_SQL),
            sqlite_where=text(OPEN_EVENT_SQL),
        ),
        Index("ix_alert_events_model", "model_name", "opened_at"),
    )


class WebhookDeliveryRow(Base):
    """The outbox of webhook posts: written with the event, posted by the periodic work until
    delivered or given up. ``signature`` is computed when the payload is written."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int | None] = mapped_column(ForeignKey("alert_events.id", ondelete="SET NULL"))
    url: Mapped[str] = mapped_column(String(2000))
    payload: Mapped[dict[str, Any]]
    signature: Mapped[str | None] = mapped_column(String(100))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (Index("ix_webhook_deliveries_due", "next_attempt_at"),)


class JobRow(Base):
    """A job on the task queue (server/tasks.py): its request, state, current attempt and lease,
    progress and outcome. Workers change it only with conditional updates fenced by ``attempt``
    (and ``worker_id`` while RUNNING), so a duplicate or late delivery cannot finish it twice."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(30))
    params: Mapped[dict[str, Any]]
    #: QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED
    state: Mapped[str] = mapped_column(String(10))
    #: the attempt queued or running (1 for the first)
    attempt: Mapped[int] = mapped_column(Integer)
    max_attempts: Mapped[int] = mapped_column(Integer)
    #: the worker running the attempt (None while QUEUED)
    worker_id: Mapped[str | None] = mapped_column(String(100))
    #: a RUNNING attempt whose lease ran out lost its worker (the periodic work's reaper)
    lease_expires_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_message: Mapped[str | None] = mapped_column(String(500))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error_code: Mapped[str | None] = mapped_column(String(30))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    __table_args__ = (
        Index("ix_jobs_created", "created_at"),
        Index("ix_jobs_state_lease", "state", "lease_expires_at"),
    )


class JobLogRow(Base):
    """One line of a job's log, append-only, in order of ``id``."""

    __tablename__ = "job_logs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    logged_at: Mapped[datetime]
    line: Mapped[str] = mapped_column(Text)
    __table_args__ = (Index("ix_job_logs_job", "job_id", "id"),)


class UISession(Base):
    """A web dashboard login (server/ui/sessions.py): the cookie's secret is stored only as its
    SHA-256, with the operator token it was opened with (a revoked token ends its sessions) and the
    session's CSRF token, which every form and htmx request of the session must send back."""

    __tablename__ = "ui_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("operator_tokens.id", ondelete="CASCADE"))
    operator: Mapped[str] = mapped_column(String(100))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    __table_args__ = (
        Index("ix_ui_sessions_token", "token_id"),
        # expired sessions are deleted by expiry
        Index("ix_ui_sessions_expires_at", "expires_at"),
    )


class PipelineRow(Base):
    """A model's pipeline configuration (server/pipelines/config.py): the TOML as given and its
    checked form, one per model name."""

    __tablename__ = "pipelines"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    source_text: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100))
    updated_at: Mapped[datetime]


class PipelineRunRow(Base):
    """One run of a pipeline (server/pipelines/runs.py): the configuration it ran with, its state,
    the job that advances it, and who approved or rejected it."""

    __tablename__ = "pipeline_runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(63))
    number: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[str] = mapped_column(String(64))
    #: QUEUED, RUNNING, WAITING_APPROVAL, SUCCEEDED, FAILED, REJECTED
    state: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)
    trigger: Mapped[str] = mapped_column(String(100))
    config: Mapped[dict[str, Any]]
    #: the job (server/tasks.py) advancing the run now or last
    job_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    #: Approved or Rejected, by whom, when, why
    decision: Mapped[str | None] = mapped_column(String(10))
    decided_by: Mapped[str | None] = mapped_column(String(100))
    decided_at: Mapped[datetime | None]
    decision_note: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (
        UniqueConstraint("pipeline", "number", name="uq_pipeline_runs_number"),
        Index("ix_pipeline_runs_created", "created_at"),
    )


class PipelineStepRow(Base):
    """One step of a run, in order: state, timings, artifacts (job ids, compile reports, package
    ids, plan names) and figures (validation, shadow)."""

    __tablename__ = "pipeline_steps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("pipeline_runs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(20))
    #: PENDING, RUNNING, WAITING, SUCCEEDED, FAILED, SKIPPED
    state: Mapped[str] = mapped_column(String(10))
    message: Mapped[str | None] = mapped_column(Text)
    artifacts: Mapped[dict[str, Any]]
    figures: Mapped[dict[str, Any]]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    __table_args__ = (UniqueConstraint("run_id", "position", name="uq_pipeline_steps_position"),)


class PipelineLogRow(Base):
    """One line of a run's log, append-only, in order of ``id``."""

    __tablename__ = "pipeline_logs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("pipeline_runs.id", ondelete="CASCADE"))
    step: Mapped[str | None] = mapped_column(String(20))
    logged_at: Mapped[datetime]
    line: Mapped[str] = mapped_column(Text)
    __table_args__ = (Index("ix_pipeline_logs_run", "run_id", "id"),)
