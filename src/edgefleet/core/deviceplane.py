"""The device-plane contract: the enums and value objects that cross between device and server.

One definition for the device daemon and the control plane, with the Edge Manager data plane's
field names plus edgefleet's extensions (docs/fleet-api.md); ``to_wire``/``from_wire`` give the
JSON form, which the daemon also persists. ``tests/server/test_deviceplane_schemas.py`` walks the
server's pydantic schemas against these. Imports nothing above :mod:`edgefleet.core`.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from edgefleet.core.errors import InvalidArgument

E = TypeVar("E", bound=enum.StrEnum)

#: inferences a health gate needs before it gives a verdict (below this the figures are too noisy)
DEFAULT_MIN_INFERENCES = 10
#: how long after activation a health gate observes a device before it counts as deployed, seconds
DEFAULT_OBSERVATION_SECONDS = 60.0
#: the DeploymentStatus a device may report while it is still at work (not one of :class:`Result`)
IN_PROGRESS = "INPROGRESS"


class Result(enum.StrEnum):
    """The closed set of outcomes of applying (or rolling back) a deployment on a device."""

    #: every model of the deployment serves its handle
    SUCCEEDED = "SUCCEEDED"
    #: the deployment failed and the device serves exactly what it served before
    FAILED_NO_CHANGE = "FAILED_NO_CHANGE"
    #: the deployment failed after changing the device, and every change was undone
    FAILED_ROLLED_BACK = "FAILED_ROLLED_BACK"
    #: the deployment failed and undoing it failed too (the daemon keeps converging to its last good state)
    FAILED_ROLLBACK_FAILED = "FAILED_ROLLBACK_FAILED"


class FailurePolicy(enum.StrEnum):
    """What the device does when a deployment fails part-way."""

    ROLLBACK_ON_FAILURE = "ROLLBACK_ON_FAILURE"
    DO_NOTHING = "DO_NOTHING"


class Action(enum.StrEnum):
    """What the server asks of a deployment: apply it, or undo it (stage stopped, stage or gate failed)."""

    DEPLOY = "DEPLOY"
    ROLLBACK = "ROLLBACK"


class DesiredState(enum.StrEnum):
    """Whether a definition's model should serve its handle."""

    DEPLOY = "DEPLOY"
    UNDEPLOY = "UNDEPLOY"


def parse_enum(kind: type[E], value: Any, what: str) -> E:
    """``value`` as a member of ``kind``; INVALID_ARGUMENT naming the known values otherwise."""
    try:
        return kind(value)
    except ValueError as exc:
        known = ", ".join(member.value for member in kind)
        raise InvalidArgument(f"{what} {value!r} is invalid (known: {known})") from exc


def timestamp(when: datetime | None) -> str | None:
    """ISO 8601 UTC text of ``when`` (None stays None)."""
    return None if when is None else when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_timestamp(value: Any) -> datetime | None:
    """A datetime from ISO 8601 text or Unix seconds (None stays None)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidArgument(f"{value!r} is not an ISO 8601 time") from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise InvalidArgument(f"{value!r} is not a time")


# ---------------------------------------------------------------------------------------------
# GetDeviceRegistration


@dataclass(frozen=True)
class Registration:
    """GetDeviceRegistration's answer."""

    #: ``REGISTERED`` or another state the server names (``DEREGISTERED``, ...)
    status: str
    #: how long the answer may be cached, seconds
    cache_ttl_seconds: float

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> Registration:
        """Parse ``{DeviceRegistration, CacheTTL}``."""
        ttl = raw.get("CacheTTL", 0)
        try:
            seconds = float(ttl)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"CacheTTL {ttl!r} is not a number of seconds") from exc
        return cls(status=str(raw.get("DeviceRegistration", "")), cache_ttl_seconds=seconds)


# ---------------------------------------------------------------------------------------------
# GetDeployments


@dataclass(frozen=True)
class PackageRef:
    """Where a package is and what it must hash to."""

    #: absolute URL or a path on the device endpoint
    url: str
    #: SHA-256 of the archive (hex); checked after download
    sha256: str | None = None
    #: SHA-1 of the archive (hex), the vendor's checksum; checked when no SHA-256 is given
    sha1: str | None = None
    #: archive size in bytes, when the server says
    size: int | None = None

    @property
    def key(self) -> str:
        """A name for the package in the device's cache (its digest)."""
        digest = self.sha256 or self.sha1
        if not digest:
            raise InvalidArgument(f"package {self.url} has no checksum; refusing to download it")
        return digest.lower()


@dataclass(frozen=True)
class Definition:
    """One model of a deployment: which version should serve which handle."""

    handle: str
    model_name: str
    model_version: str
    package: PackageRef
    state: DesiredState = DesiredState.DEPLOY

    def to_wire(self) -> dict[str, Any]:
        """The JSON form (vendor field names plus edgefleet's)."""
        checksum: dict[str, Any] = (
            {"Type": "SHA256", "Sum": self.package.sha256}
            if self.package.sha256
            else {"Type": "SHA1", "Sum": self.package.sha1}
        )
        return {
            "ModelHandle": self.handle,
            "ModelName": self.model_name,
            "ModelVersion": self.model_version,
            "S3Url": self.package.url,
            "Checksum": checksum,
            "Sha256": self.package.sha256,
            "Size": self.package.size,
            "State": self.state.value,
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> Definition:
        """Parse a ``Definitions`` item."""
        checksum = raw.get("Checksum") or {}
        kind = str(checksum.get("Type", "")).upper()
        sha256 = raw.get("Sha256") or (checksum.get("Sum") if kind == "SHA256" else None)
        sha1 = checksum.get("Sum") if kind == "SHA1" else raw.get("Sha1")
        url = raw.get("PackageUrl") or raw.get("S3Url") or ""
        handle = raw.get("ModelHandle") or ""
        if not handle or not url:
            raise InvalidArgument(f"deployment definition lacks ModelHandle or package URL: {dict(raw)}")
        size = raw.get("Size")
        return cls(
            handle=str(handle),
            model_name=str(raw.get("ModelName") or handle),
            model_version=str(raw.get("ModelVersion") or ""),
            package=PackageRef(
                url=str(url),
                sha256=str(sha256).lower() if sha256 else None,
                sha1=str(sha1).lower() if sha1 else None,
                size=int(size) if size is not None else None,
            ),
            state=parse_enum(DesiredState, raw.get("State", "DEPLOY"), "definition State"),
        )


@dataclass(frozen=True)
class HealthGate:
    """Limits the server judges the device's figures for a new model against (after activation).

    ``max_drift_score`` is judged by the server alone, from the stage's devices' model summary
    windows of the new version (``ModelSummaries`` on heartbeats) merged and scored against the
    version's baseline: the score is the worst PSI over the version's input and output features.
    PSI because it has the field's conventional reading (below 0.1 stable, 0.1-0.25 moderate,
    above 0.25 a significant shift) whatever the feature's scale, and because unlike KS it does not
    grow more alarming merely with more samples; the devices need not know it.
    """

    max_error_rate: float | None = None
    max_p99_latency_ms: float | None = None
    min_inferences: int = DEFAULT_MIN_INFERENCES
    observation_seconds: float = DEFAULT_OBSERVATION_SECONDS
    #: highest drift score (worst PSI over the new version's features) the stage may show
    max_drift_score: float | None = None

    @property
    def enabled(self) -> bool:
        """Whether any limit is set (a plan without one has no gate)."""
        return (
            self.max_error_rate is not None
            or self.max_p99_latency_ms is not None
            or self.max_drift_score is not None
        )

    def to_wire(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "MaxErrorRate": self.max_error_rate,
            "MaxP99LatencyMs": self.max_p99_latency_ms,
            "MinInferences": self.min_inferences,
            "ObservationSeconds": self.observation_seconds,
            "MaxDriftScore": self.max_drift_score,
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> HealthGate:
        """Parse a ``HealthGate`` object."""
        rate = raw.get("MaxErrorRate")
        p99 = raw.get("MaxP99LatencyMs")
        drift = raw.get("MaxDriftScore")
        return cls(
            max_error_rate=None if rate is None else float(rate),
            max_p99_latency_ms=None if p99 is None else float(p99),
            min_inferences=int(raw.get("MinInferences", DEFAULT_MIN_INFERENCES)),
            observation_seconds=float(raw.get("ObservationSeconds", DEFAULT_OBSERVATION_SECONDS)),
            max_drift_score=None if drift is None else float(drift),
        )


@dataclass(frozen=True)
class Deployment:
    """A deployment the server wants the device to act on."""

    #: ``<plan>.<stage>``
    name: str
    definitions: tuple[Definition, ...]
    failure_policy: FailurePolicy = FailurePolicy.ROLLBACK_ON_FAILURE
    action: Action = Action.DEPLOY
    health_gate: HealthGate | None = None

    def to_wire(self) -> dict[str, Any]:
        """The JSON form (what the journal stores)."""
        return {
            "DeploymentName": self.name,
            "Type": "Model",
            "FailureHandlingPolicy": self.failure_policy.value,
            "Action": self.action.value,
            "Definitions": [d.to_wire() for d in self.definitions],
            "HealthGate": None if self.health_gate is None else self.health_gate.to_wire(),
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> Deployment:
        """Parse a ``Deployments`` item."""
        name = raw.get("DeploymentName")
        if not name:
            raise InvalidArgument("a deployment has no DeploymentName")
        gate = raw.get("HealthGate")
        return cls(
            name=str(name),
            definitions=tuple(Definition.from_wire(d) for d in raw.get("Definitions") or []),
            failure_policy=parse_enum(
                FailurePolicy,
                raw.get("FailureHandlingPolicy", "ROLLBACK_ON_FAILURE"),
                "FailureHandlingPolicy",
            ),
            action=parse_enum(Action, raw.get("Action", "DEPLOY"), "deployment Action"),
            health_gate=HealthGate.from_wire(gate) if isinstance(gate, Mapping) else None,
        )


# ---------------------------------------------------------------------------------------------
# SendHeartbeat


@dataclass(frozen=True)
class EdgeMetric:
    """One metric value (the vendor's EdgeMetric)."""

    dimension: str
    name: str
    value: float
    at: datetime

    def to_wire(self) -> dict[str, Any]:
        """``{Dimension, MetricName, Value, Timestamp}``."""
        return {
            "Dimension": self.dimension,
            "MetricName": self.name,
            "Value": self.value,
            "Timestamp": timestamp(self.at),
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> EdgeMetric:
        """Parse ``{Dimension, MetricName, Value, Timestamp}``."""
        at = parse_timestamp(raw.get("Timestamp"))
        return cls(
            dimension=str(raw.get("Dimension") or ""),
            name=str(raw["MetricName"]),
            value=float(raw["Value"]),
            at=at or datetime.now(UTC),
        )


#: per-model heartbeat metrics (``ModelMetrics``, the model's handle as ``Dimension``) the server
#: reads: Predict calls and failed calls since the version was loaded, and its p99 latency (ms)
MODEL_REQUESTS = "requests"
MODEL_ERRORS = "errors"
MODEL_LATENCY_P99_MS = "latency_p99_ms"


@dataclass(frozen=True)
class ModelReport:
    """One model in a heartbeat."""

    model_name: str
    model_version: str
    handle: str
    latest_inference: datetime | None = None
    latest_sample: datetime | None = None
    metrics: tuple[EdgeMetric, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        """A heartbeat ``Models`` item."""
        return {
            "ModelName": self.model_name,
            "ModelVersion": self.model_version,
            "ModelHandle": self.handle,
            "LatestInference": timestamp(self.latest_inference),
            "LatestSampleTime": timestamp(self.latest_sample),
            "ModelMetrics": [m.to_wire() for m in self.metrics],
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> ModelReport:
        """Parse a heartbeat ``Models`` item."""
        return cls(
            model_name=str(raw["ModelName"]),
            model_version=str(raw.get("ModelVersion") or ""),
            handle=str(raw.get("ModelHandle") or ""),
            latest_inference=parse_timestamp(raw.get("LatestInference")),
            latest_sample=parse_timestamp(raw.get("LatestSampleTime")),
            metrics=tuple(EdgeMetric.from_wire(m) for m in raw.get("ModelMetrics") or []),
        )


@dataclass(frozen=True)
class CaptureUpload:
    """One capture object the store confirmed (a ``.jsonl`` batch): what the server's capture index holds."""

    #: the object's key under the destination (``<prefix>/<fleet>/<model>/YYYY/MM/DD/HH/<id>.jsonl``)
    key: str
    model_name: str
    model_version: str
    #: capture records in the object
    records: int
    #: the object's size in bytes (raw-data files not included)
    size: int
    #: inference times of the first and last record
    first_inference: datetime | None = None
    last_inference: datetime | None = None
    #: how many raw-data payload files (under ``raw-data/``) the object's records refer to
    raw_objects: int = 0

    def to_wire(self) -> dict[str, Any]:
        """A heartbeat ``Capture.Uploads`` item."""
        return {
            "Key": self.key,
            "ModelName": self.model_name,
            "ModelVersion": self.model_version,
            "Records": self.records,
            "Size": self.size,
            "FirstInferenceTime": timestamp(self.first_inference),
            "LastInferenceTime": timestamp(self.last_inference),
            "RawObjects": self.raw_objects,
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> CaptureUpload:
        """Parse a ``Capture.Uploads`` item."""
        return cls(
            key=str(raw["Key"]),
            model_name=str(raw["ModelName"]),
            model_version=str(raw.get("ModelVersion") or ""),
            records=int(raw.get("Records") or 0),
            size=int(raw.get("Size") or 0),
            first_inference=parse_timestamp(raw.get("FirstInferenceTime")),
            last_inference=parse_timestamp(raw.get("LastInferenceTime")),
            raw_objects=int(raw.get("RawObjects") or 0),
        )


#: Most capture uploads one heartbeat reports (devices send more in the following heartbeats).
MAX_HEARTBEAT_UPLOADS = 500


@dataclass(frozen=True)
class CaptureReport:
    """The device's capture spool and what it uploaded since the last heartbeat (edgefleet extension)."""

    #: captures acknowledged and not yet confirmed by the store, their payload bytes, the oldest's age
    backlog_records: int = 0
    backlog_bytes: int = 0
    oldest_age_seconds: float = 0.0
    #: captures given up so far (since the agent started): dropped by the full policy, and failed
    dropped: int = 0
    failed: int = 0
    #: objects the store confirmed since the previous heartbeat
    uploads: tuple[CaptureUpload, ...] = ()
    #: Disk with periodic upload: objects on Disk not yet confirmed by the cloud store, their bytes
    #: (raw-data files included), the oldest's age (all 0 when the upload is off or caught up)
    transfer_pending: int = 0
    transfer_pending_bytes: int = 0
    transfer_oldest_age_seconds: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        """The heartbeat's ``Capture`` object."""
        return {
            "BacklogRecords": self.backlog_records,
            "BacklogBytes": self.backlog_bytes,
            "OldestBacklogAgeSeconds": self.oldest_age_seconds,
            "Dropped": self.dropped,
            "Failed": self.failed,
            "Uploads": [u.to_wire() for u in self.uploads],
            "TransferPending": self.transfer_pending,
            "TransferPendingBytes": self.transfer_pending_bytes,
            "OldestTransferAgeSeconds": self.transfer_oldest_age_seconds,
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> CaptureReport:
        """Parse the heartbeat's ``Capture`` object."""
        return cls(
            backlog_records=int(raw.get("BacklogRecords") or 0),
            backlog_bytes=int(raw.get("BacklogBytes") or 0),
            oldest_age_seconds=float(raw.get("OldestBacklogAgeSeconds") or 0.0),
            dropped=int(raw.get("Dropped") or 0),
            failed=int(raw.get("Failed") or 0),
            uploads=tuple(CaptureUpload.from_wire(u) for u in raw.get("Uploads") or []),
            transfer_pending=int(raw.get("TransferPending") or 0),
            transfer_pending_bytes=int(raw.get("TransferPendingBytes") or 0),
            transfer_oldest_age_seconds=float(raw.get("OldestTransferAgeSeconds") or 0.0),
        )


#: Model summaries one heartbeat carries at most (the server refuses more: INVALID_ARGUMENT).
MAX_HEARTBEAT_SUMMARIES = 32
#: Bytes of one window's ``Summary`` as compact JSON at most (the server refuses more).
MAX_SUMMARY_BYTES = 256 * 1024
#: Bytes of all the summaries in one heartbeat at most, so a heartbeat stays well inside the
#: server's 1 MiB JSON body limit; the device sends the rest with the next heartbeat.
MAX_HEARTBEAT_SUMMARY_BYTES = 512 * 1024


def summary_bytes(summary: Mapping[str, Any]) -> int:
    """Size of a ``Summary`` object as compact JSON, the measure of :data:`MAX_SUMMARY_BYTES`."""
    return len(json.dumps(summary, separators=(",", ":")))


@dataclass(frozen=True)
class SummaryWindow:
    """One loaded model version's live input/output summary over one window (edgefleet extension).

    ``summary`` is :meth:`edgefleet.monitoring.ModelSummary.to_wire` (mergeable sketches); the
    server merges windows per fleet, device tag and model version and scores them against the
    version's baseline.
    """

    model_name: str
    model_version: str
    window_start: datetime
    window_end: datetime
    #: Predict calls summarised in the window
    calls: int
    summary: Mapping[str, Any]

    def to_wire(self) -> dict[str, Any]:
        """A heartbeat ``ModelSummaries`` item."""
        return {
            "ModelName": self.model_name,
            "ModelVersion": self.model_version,
            "WindowStart": timestamp(self.window_start),
            "WindowEnd": timestamp(self.window_end),
            "Calls": self.calls,
            "Summary": dict(self.summary),
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> SummaryWindow:
        """Parse a ``ModelSummaries`` item."""
        start = parse_timestamp(raw.get("WindowStart")) or datetime.now(UTC)
        summary = raw.get("Summary")
        if not isinstance(summary, Mapping):
            raise InvalidArgument("a ModelSummaries item needs a Summary object")
        return cls(
            model_name=str(raw["ModelName"]),
            model_version=str(raw.get("ModelVersion") or ""),
            window_start=start,
            window_end=parse_timestamp(raw.get("WindowEnd")) or start,
            calls=int(raw.get("Calls") or 0),
            summary=summary,
        )


#: Shadow pairs one heartbeat reports at most (the server refuses more: INVALID_ARGUMENT).
MAX_HEARTBEAT_SHADOWS = 32


def _count(raw: Mapping[str, Any], name: str) -> int:
    value = raw.get(name) or 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise InvalidArgument(f"Shadows.{name} must be a whole number, got {value!r}")


def _text(raw: Mapping[str, Any], name: str, *, optional: bool = False) -> str:
    value = raw.get(name)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"a Shadows item needs {name} as text, got {value!r}")
    return value


def _milliseconds(raw: Mapping[str, Any], name: str) -> float:
    value = raw.get(name) or 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"Shadows.{name} must be a number of milliseconds, got {value!r}")
    return float(value)


#: ShadowReport's counters and latencies: (attribute, wire name)
SHADOW_COUNTS = (
    ("mirrored", "Mirrored"),
    ("completed", "Completed"),
    ("agreed", "Agreed"),
    ("disagreed", "Disagreed"),
    ("shadow_errors", "ShadowErrors"),
    ("dropped", "Dropped"),
)
SHADOW_LATENCIES = (
    ("champion_p50_ms", "ChampionLatencyP50Ms"),
    ("champion_p99_ms", "ChampionLatencyP99Ms"),
    ("shadow_p50_ms", "ShadowLatencyP50Ms"),
    ("shadow_p99_ms", "ShadowLatencyP99Ms"),
)


@dataclass(frozen=True)
class ShadowReport:
    """One shadow pair of the device's agent (extension ``shadow-models``) as a heartbeat reports it.

    The counters are cumulative since the pair started on the agent, so a lost heartbeat loses
    nothing: the server keeps the latest report per device and pair. ``completed`` is
    ``agreed + disagreed`` (mirrored calls compared); latencies are the agent's p50/p99 in ms
    (champion: the handle's calls since pairing; shadow: the mirrored calls).
    """

    handle: str
    champion_model: str
    champion_version: str
    shadow_model: str
    shadow_version: str
    mirrored: int = 0
    completed: int = 0
    agreed: int = 0
    disagreed: int = 0
    shadow_errors: int = 0
    dropped: int = 0
    champion_p50_ms: float = 0.0
    champion_p99_ms: float = 0.0
    shadow_p50_ms: float = 0.0
    shadow_p99_ms: float = 0.0

    @property
    def pair(self) -> tuple[str, str, str, str, str]:
        """What names the pair on its device: (handle, champion model, version, shadow model, version)."""
        return (
            self.handle,
            self.champion_model,
            self.champion_version,
            self.shadow_model,
            self.shadow_version,
        )

    def to_wire(self) -> dict[str, Any]:
        """A heartbeat ``Shadows`` item."""
        return {
            "Handle": self.handle,
            "ChampionModel": self.champion_model,
            "ChampionVersion": self.champion_version,
            "ShadowModel": self.shadow_model,
            "ShadowVersion": self.shadow_version,
            **{wire: getattr(self, name) for name, wire in SHADOW_COUNTS},
            **{wire: getattr(self, name) for name, wire in SHADOW_LATENCIES},
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> ShadowReport:
        """Parse a ``Shadows`` item (INVALID_ARGUMENT for a missing name or a figure that is not a number)."""
        return cls(
            handle=_text(raw, "Handle"),
            champion_model=_text(raw, "ChampionModel"),
            champion_version=_text(raw, "ChampionVersion", optional=True),
            shadow_model=_text(raw, "ShadowModel"),
            shadow_version=_text(raw, "ShadowVersion", optional=True),
            mirrored=_count(raw, "Mirrored"),
            completed=_count(raw, "Completed"),
            agreed=_count(raw, "Agreed"),
            disagreed=_count(raw, "Disagreed"),
            shadow_errors=_count(raw, "ShadowErrors"),
            dropped=_count(raw, "Dropped"),
            champion_p50_ms=_milliseconds(raw, "ChampionLatencyP50Ms"),
            champion_p99_ms=_milliseconds(raw, "ChampionLatencyP99Ms"),
            shadow_p50_ms=_milliseconds(raw, "ShadowLatencyP50Ms"),
            shadow_p99_ms=_milliseconds(raw, "ShadowLatencyP99Ms"),
        )


@dataclass(frozen=True)
class Heartbeat:
    """What SendHeartbeat carries (the deployment result travels separately, see :class:`ControlPlane`)."""

    agent_version: str
    taken_at: datetime
    agent_metrics: tuple[EdgeMetric, ...] = ()
    models: tuple[ModelReport, ...] = ()
    #: (os, arch, accelerator) the device runs, so the server picks matching packages
    platform: tuple[str, str, str] | None = None
    #: the capture spool's backlog and the objects uploaded since the last heartbeat (None: not known)
    capture: CaptureReport | None = None
    #: live model summaries, one per loaded model version and window (empty unless the agent keeps them)
    summaries: tuple[SummaryWindow, ...] = ()
    #: the agent's shadow pairs and their cumulative figures (empty without the shadow-models extension)
    shadows: tuple[ShadowReport, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        """The heartbeat body without the device's name and fleet (the transport adds those)."""
        body: dict[str, Any] = {
            "AgentVersion": self.agent_version,
            "AgentMetrics": [m.to_wire() for m in self.agent_metrics],
            "Models": [m.to_wire() for m in self.models],
            "Timestamp": timestamp(self.taken_at),
        }
        if self.platform is not None:
            os_name, arch, accelerator = self.platform
            body["Platform"] = {"Os": os_name, "Arch": arch, "Accelerator": accelerator}
        if self.capture is not None:
            body["Capture"] = self.capture.to_wire()
        if self.summaries:
            body["ModelSummaries"] = [w.to_wire() for w in self.summaries]
        if self.shadows:
            body["Shadows"] = [p.to_wire() for p in self.shadows]
        return body

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> Heartbeat:
        """Parse what :meth:`to_wire` wrote."""
        platform = raw.get("Platform")
        return cls(
            agent_version=str(raw["AgentVersion"]),
            taken_at=parse_timestamp(raw.get("Timestamp")) or datetime.now(UTC),
            agent_metrics=tuple(EdgeMetric.from_wire(m) for m in raw.get("AgentMetrics") or []),
            models=tuple(ModelReport.from_wire(m) for m in raw.get("Models") or []),
            platform=None
            if not isinstance(platform, Mapping)
            else (
                str(platform.get("Os", "linux")),
                str(platform["Arch"]),
                str(platform.get("Accelerator", "none")),
            ),
            capture=CaptureReport.from_wire(raw["Capture"])
            if isinstance(raw.get("Capture"), Mapping)
            else None,
            summaries=tuple(SummaryWindow.from_wire(w) for w in raw.get("ModelSummaries") or []),
            shadows=tuple(ShadowReport.from_wire(p) for p in raw.get("Shadows") or []),
        )


# ---------------------------------------------------------------------------------------------
# Deployment results and health


@dataclass(frozen=True)
class ModelResult:
    """What happened to one handle of a deployment (a DeploymentModels item)."""

    handle: str
    model_name: str
    model_version: str
    desired_state: DesiredState
    #: DEPLOY if the model serves its handle now, UNDEPLOY otherwise
    state: DesiredState
    success: bool
    reason: str = ""
    rollback_failure_reason: str = ""

    def to_wire(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "ModelHandle": self.handle,
            "ModelName": self.model_name,
            "ModelVersion": self.model_version,
            "DesiredState": self.desired_state.value,
            "State": self.state.value,
            "Status": "SUCCESS" if self.success else "FAIL",
            "StatusReason": self.reason,
            "RollbackFailureReason": self.rollback_failure_reason,
        }


@dataclass(frozen=True)
class DeploymentResult:
    """The outcome of one deployment on this device (SendHeartbeat's DeploymentResult)."""

    deployment_name: str
    result: Result
    message: str
    started_at: datetime
    finished_at: datetime
    models: tuple[ModelResult, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        """``{DeploymentName, DeploymentStatus, DeploymentStatusMessage, ...}``."""
        return {
            "DeploymentName": self.deployment_name,
            "DeploymentStatus": self.result.value,
            "DeploymentStatusMessage": self.message[:1000],
            "DeploymentStartTime": timestamp(self.started_at),
            "DeploymentEndTime": timestamp(self.finished_at),
            "DeploymentModels": [m.to_wire() for m in self.models],
        }


@dataclass(frozen=True)
class HealthReport:
    """The device's figures for a deployment's new models since activation."""

    deployment_name: str
    inferences: int
    errors: int
    p99_latency_ms: float | None

    def to_wire(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "DeploymentName": self.deployment_name,
            "Inferences": self.inferences,
            "Errors": self.errors,
            "P99LatencyMs": self.p99_latency_ms,
        }


class Verdict(enum.StrEnum):
    """The server's judgement of a health report."""

    PASS = "PASS"
    FAIL = "FAIL"
    PENDING = "PENDING"


@dataclass(frozen=True)
class HealthVerdict:
    """The server's answer to a health report and what the device must do (``ROLLBACK`` or ``NONE``)."""

    verdict: Verdict
    reason: str
    rollback: bool

    @property
    def action(self) -> str:
        """The wire's ``Action``: ``ROLLBACK`` or ``NONE``."""
        return "ROLLBACK" if self.rollback else "NONE"

    def to_wire(self) -> dict[str, Any]:
        """``{Verdict, Reason, Action}``."""
        return {"Verdict": self.verdict.value, "Reason": self.reason, "Action": self.action}

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> HealthVerdict:
        """Parse ``{Verdict, Reason, Action}``."""
        return cls(
            verdict=parse_enum(Verdict, raw.get("Verdict", "PENDING"), "health Verdict"),
            reason=str(raw.get("Reason", "")),
            rollback=str(raw.get("Action", "NONE")).upper() == "ROLLBACK",
        )


# ---------------------------------------------------------------------------------------------
# capture uploads (edgefleet extension): POST /device/v1/capture/PresignUploads

#: most keys one PresignUploads call may ask for
MAX_UPLOAD_KEYS = 100
#: path (on the device endpoint) of the relay upload of one capture object: ``<path><key>``
CAPTURE_OBJECTS_PATH = "/device/v1/capture/objects/"


@dataclass(frozen=True)
class UploadTarget:
    """Where and how the device PUTs one capture object: a presigned store URL, or the relay path
    on the device endpoint (then ``expires`` is None and the call is made with the device certificate)."""

    key: str
    url: str
    method: str = "PUT"
    #: headers the PUT must carry exactly as given
    headers: Mapping[str, str] = field(default_factory=dict)
    expires: datetime | None = None

    @property
    def relayed(self) -> bool:
        """Whether the bytes go through the control plane (a path on its device endpoint)."""
        return self.url.startswith(CAPTURE_OBJECTS_PATH)

    def to_wire(self) -> dict[str, Any]:
        """A ``PresignUploads`` answer's ``Uploads`` item."""
        return {
            "Key": self.key,
            "Url": self.url,
            "Method": self.method,
            "Headers": dict(self.headers),
            "Expires": timestamp(self.expires),
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> UploadTarget:
        """Parse an ``Uploads`` item."""
        headers = raw.get("Headers") or {}
        if not isinstance(headers, Mapping):
            raise InvalidArgument(f"upload Headers must be an object, not {headers!r}")
        return cls(
            key=str(raw["Key"]),
            url=str(raw["Url"]),
            method=str(raw.get("Method") or "PUT"),
            headers={str(k): str(v) for k, v in headers.items()},
            expires=parse_timestamp(raw.get("Expires")),
        )


@dataclass(frozen=True)
class UploadGrant:
    """The answer to PresignUploads: one target per key asked for, and where the fleet's objects live."""

    uploads: tuple[UploadTarget, ...]
    #: the capture store's URI (``s3://bucket/prefix``, ``file:///dir``): an object's URI is
    #: ``<Location>/<key>`` (what capture records name in ``data-ref``)
    location: str
    #: the key prefix the device's keys must start with (``<fleet>/``)
    prefix: str

    def to_wire(self) -> dict[str, Any]:
        """``{Uploads, Location, Prefix}``."""
        return {
            "Uploads": [u.to_wire() for u in self.uploads],
            "Location": self.location,
            "Prefix": self.prefix,
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> UploadGrant:
        """Parse ``{Uploads, Location, Prefix}``."""
        return cls(
            uploads=tuple(UploadTarget.from_wire(u) for u in raw.get("Uploads") or []),
            location=str(raw.get("Location") or ""),
            prefix=str(raw.get("Prefix") or ""),
        )
