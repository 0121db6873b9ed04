"""Agent configuration: the vendor's flat JSON file (accepted unchanged) and edgefleet's native file.

Every knob is declared once in :class:`AgentConfig` with its type, default and a line of doc.
A vendor file is recognised by its ``sagemaker_edge_*`` keys (see docs/agent-config.md); a native
file is TOML (or JSON) with ``[device]``, ``[agent]`` and ``[capture]`` tables.
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import psutil

from edgefleet.capture.auto import AutoCapturePolicy
from edgefleet.capture.service import FullPolicy
from edgefleet.core.errors import InvalidArgument, NotFound
from edgefleet.protocol.agent.framing import FAST_PATH_MAX_FRAME_BYTES, MAX_FRAME_LENGTH

log = logging.getLogger(__name__)

VENDOR_PREFIX = "sagemaker_edge_"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/edgefleet/agent`` when set; else /var/lib/edgefleet/agent for root, else
    ``~/.local/share/edgefleet/agent``."""
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg) / "edgefleet" / "agent"
    if os.geteuid() == 0:
        return Path("/var/lib/edgefleet/agent")
    return Path.home() / ".local" / "share" / "edgefleet" / "agent"


def metrics_host_port(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port); INVALID_ARGUMENT if it is not one."""
    host, sep, port_text = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise InvalidArgument(
            f"metrics_address must be host:port (e.g. 127.0.0.1:9464; port 0 picks a free one), "
            f"not {address!r}"
        )
    return host, int(port_text)


def default_memory_budget() -> int:
    """Half of the machine's physical memory: room for models, leaving the rest to applications."""
    return int(psutil.virtual_memory().total // 2)


@dataclass(frozen=True)
class CaptureSettings:
    """Data capture knobs (vendor keys ``sagemaker_edge_core_capture_data_*``)."""

    #: ``Disk`` writes records under ``disk_path``; ``Cloud`` to the S3-protocol bucket ``s3_bucket``.
    destination: str = "Disk"
    #: Root directory of Disk captures (default: ``<data_dir>/capture``).
    disk_path: Path | None = None
    #: Folder/key prefix under the destination root.
    folder_prefix: str = ""
    #: Capacity of the on-disk capture buffer, in requests.
    buffer_size: int = 30
    #: Capacity of the buffer in payload bytes (0: a tenth of the data directory's free disk at start).
    buffer_bytes: int = 0
    #: A capture meeting a full buffer: ``reject`` (RESOURCE_EXHAUSTED) or ``drop-oldest`` (counted).
    full_policy: str = "reject"
    #: Captures written together as one ``.jsonl`` object.
    batch_size: int = 10
    #: Longest time a capture waits before its batch is written.
    push_period_seconds: float = 4.0
    #: Payloads up to this many bytes are embedded as base64 (max 3072); larger go to raw-data files.
    base64_embed_limit: int = 3072
    #: fsync the spool on every capture so acknowledged captures survive power loss.
    fsync: bool = True
    #: How Cloud captures reach the store: ``aws`` (the standard AWS credential chain on the device),
    #: ``presigned`` (short-lived URLs from the control plane, no credentials on the device) or
    #: ``relay`` (through the control plane). Empty: ``presigned`` when ``control_plane_url`` and
    #: the device certificate, key and CA are set, else ``aws``.
    upload: str = ""
    #: The control plane's device endpoint (``https://host:8444``) for presigned and relay uploads.
    control_plane_url: str = ""
    #: The device certificate, its key and the fleet CA (PEM) for mutual TLS with the control plane.
    device_cert_file: Path | None = None
    device_key_file: Path | None = None
    ca_cert_file: Path | None = None
    #: Bucket for Cloud captures with ``upload = aws``.
    s3_bucket: str = ""
    #: S3-protocol endpoint for Cloud captures (MinIO, Ceph ...; empty: AWS).
    s3_endpoint_url: str = ""
    #: Capture policies for Predict traffic by the package's model name (``*``: every model).
    auto: dict[str, AutoCapturePolicy] = field(default_factory=dict)
    #: With Disk: also upload what was written to Disk, every ``periodic_upload_period_seconds``, to
    #: the cloud store Cloud would use (``upload``, ``s3_bucket`` or the control plane settings).
    periodic_upload: bool = False
    #: Seconds between two rounds of the periodic upload.
    periodic_upload_period_seconds: float = 8.0


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent reads at start-up."""

    #: Device name, as registered in the fleet (<= 63 characters).
    device_name: str
    #: Fleet the device belongs to.
    fleet_name: str
    #: Region label (informational).
    region: str = ""
    #: Directory of trusted model-signing root certificates (must not be writable by others).
    trust_dir: Path | None = None
    #: Where the agent keeps unpacked packages and its capture spool.
    data_dir: Path = field(default_factory=default_data_dir)
    #: Bytes of memory all loaded models may use together (estimated at load).
    memory_budget_bytes: int = field(default_factory=default_memory_budget)
    #: Predict calls one model runs at once; further calls wait in its queue.
    max_concurrent_per_model: int = 4
    #: Predict calls that may wait per model before new ones get RESOURCE_EXHAUSTED.
    max_queued_per_model: int = 256
    #: Threads one inference may use (0 = the runtime's default).
    intra_op_threads: int = 0
    #: Let idle inference threads spin between the parallel parts of one inference (ONNX Runtime's
    #: own default): the lowest latency per request. Off gives some throughput back when many
    #: requests overlap on few cores (see docs/agent-config.md, "Latency or throughput").
    intra_op_spinning: bool = True
    #: ONNX Runtime models: a request that runs alone may use every core, requests that overlap
    #: others run on one core each. Each model is held twice (a second, single-threaded session):
    #: lone-request latency and concurrent throughput, for that memory.
    adaptive_threads: bool = False
    #: Also serve Predict on ``<socket>.fast``, a plain Unix socket with one thread per connection
    #: (extension ``fast-predict``, docs/agent-protocol.md): far fewer thread wake-ups per call
    #: than gRPC. edgefleet's client uses it when it is there; gRPC clients are unaffected.
    fast_path: bool = True
    #: Keep mergeable summaries (quantile sketches per feature, predicted-class counts) of each
    #: loaded model's live inputs and outputs for drift monitoring (extension ``model-summaries``);
    #: built off the request path. Off by default until its cost on small models' Predict meets
    #: its budget (measured: +44 us p50 on the digits model, +1.7 % on ResNet-18).
    model_summaries: bool = False
    #: Fraction of Predict calls summarised (1: all).
    model_summary_sample: float = 1.0
    #: Largest fast-path request frame accepted, in bytes; a longer one gets RESOURCE_EXHAUSTED and
    #: the connection is closed. Memory grows only with the bytes that really arrive, so this bounds
    #: one connection's buffer (the client sends larger requests over gRPC or shared memory).
    fast_path_max_frame_bytes: int = FAST_PATH_MAX_FRAME_BYTES
    #: A fast-path connection with no request for this many seconds is closed (the Python client
    #: opens a new one on its next call); idle connections count against the limit of 64.
    fast_path_idle_seconds: float = 60.0
    #: Seconds a fast-path client has to send its greeting after connecting, to send a request frame
    #: whole after its first byte, and to take its reply; a connection that stalls longer is closed.
    fast_path_frame_seconds: float = 10.0
    #: gRPC worker threads (bounds concurrent RPCs of all kinds).
    grpc_workers: int = 32
    #: Permission bits of the Unix socket (default owner and group only).
    socket_mode: int = 0o660
    #: Largest gRPC message accepted or sent (inline tensors), in bytes.
    max_message_bytes: int = 1 << 30
    #: Debug logging.
    log_verbose: bool = False
    #: ``text`` or ``json`` (one JSON object per log line; fields in docs/agent-config.md).
    log_format: str = "text"
    #: Serve Prometheus ``GET /metrics`` on this ``host:port`` (e.g. ``127.0.0.1:9464``; port 0: a
    #: free one, logged). Empty: off, nothing listens. Needs the ``metrics`` extra (docs/metrics.md).
    metrics_address: str = ""
    capture: CaptureSettings = field(default_factory=CaptureSettings)

    def __post_init__(self) -> None:
        if not self.device_name or len(self.device_name) > 63:
            raise InvalidArgument("device name is required and must be at most 63 characters")
        if not self.fleet_name:
            raise InvalidArgument("fleet name is required")
        if self.max_concurrent_per_model < 1 or self.max_queued_per_model < 0:
            raise InvalidArgument("max_concurrent_per_model must be >= 1 and max_queued_per_model >= 0")
        if self.memory_budget_bytes <= 0:
            raise InvalidArgument("memory budget must be positive")
        if not 1 <= self.capture.batch_size <= self.capture.buffer_size:
            raise InvalidArgument(
                f"capture batch size ({self.capture.batch_size}) must be between 1 and the buffer size "
                f"({self.capture.buffer_size})"
            )
        if not 0 <= self.capture.base64_embed_limit <= 3072:
            raise InvalidArgument("capture base64 embed limit must be between 0 and 3072 bytes")
        if not 1 <= self.fast_path_max_frame_bytes <= MAX_FRAME_LENGTH:
            raise InvalidArgument(
                f"fast_path_max_frame_bytes must be between 1 and {MAX_FRAME_LENGTH} (the frame's u32 length)"
            )
        if not (self.fast_path_idle_seconds > 0 and self.fast_path_frame_seconds > 0):
            raise InvalidArgument("fast_path_idle_seconds and fast_path_frame_seconds must be positive")
        if not 0 < self.model_summary_sample <= 1:
            raise InvalidArgument("model_summary_sample must be above 0 and at most 1")
        if self.log_format not in ("text", "json"):
            raise InvalidArgument("log_format must be 'text' or 'json'")
        if self.metrics_address:
            metrics_host_port(self.metrics_address)
        if self.capture.destination not in ("Disk", "Cloud"):
            raise InvalidArgument(
                f"capture destination {self.capture.destination!r} unknown (known: Disk, Cloud)"
            )
        if self.capture.periodic_upload_period_seconds <= 0:
            raise InvalidArgument(
                "capture periodic_upload_period_seconds (sagemaker_edge_core_capture_data_periodic_upload_"
                f"period_seconds) must be positive, not {self.capture.periodic_upload_period_seconds}"
            )
        self._check_upload()
        if self.capture.buffer_bytes < 0:
            raise InvalidArgument("capture buffer_bytes must be >= 0 (0: a tenth of the free disk)")
        FullPolicy.parse(self.capture.full_policy)

    def _check_upload(self) -> None:
        capture = self.capture
        known = ("aws", "presigned", "relay")
        if capture.upload not in ("", *known):
            raise InvalidArgument(f"capture.upload {capture.upload!r} is unknown (known: {', '.join(known)})")
        mode = self.capture_upload
        if not self.uploads_to_cloud:
            if capture.upload not in ("", "aws"):
                raise InvalidArgument(
                    f"capture.upload = {capture.upload} applies to the Cloud destination, not "
                    f"{capture.destination} (or to Disk with periodic_upload = true)"
                )
            return
        what = "Cloud" if capture.destination == "Cloud" else "Disk with periodic upload"
        if mode == "aws":
            if not capture.s3_bucket:
                raise InvalidArgument(
                    f"capture destination {what} needs a bucket: sagemaker_edge_provider_s3_bucket_name "
                    "(or capture.s3_bucket in a native config), or capture.upload = presigned/relay "
                    "with the control plane"
                )
            return
        missing = [
            name
            for name, value in (
                ("capture.control_plane_url", capture.control_plane_url),
                (
                    "capture.device_cert_file (sagemaker_edge_provider_aws_cert_file)",
                    capture.device_cert_file,
                ),
                (
                    "capture.device_key_file (sagemaker_edge_provider_aws_cert_pk_file)",
                    capture.device_key_file,
                ),
                ("capture.ca_cert_file (sagemaker_edge_provider_aws_ca_cert_file)", capture.ca_cert_file),
            )
            if not value
        ]
        if missing:
            raise InvalidArgument(
                f"capture.upload = {mode} sends captures through the control plane over mutual TLS and "
                f"needs: {', '.join(missing)}{'' if what == 'Cloud' else f' (for {what})'}"
            )
        if capture.folder_prefix.strip("/"):
            raise InvalidArgument(
                f"capture.upload = {mode}: the control plane keeps each fleet's captures under "
                f"'<fleet>/' in its capture store (its --captures URI carries any prefix), so "
                f"folder_prefix must be empty, not {capture.folder_prefix!r}"
            )

    @property
    def periodic_upload(self) -> bool:
        """Disk with periodic upload (the key is ignored, with a warning at load, with Cloud)."""
        return self.capture.destination == "Disk" and self.capture.periodic_upload

    @property
    def uploads_to_cloud(self) -> bool:
        """Whether captures go to a cloud store: the Cloud destination, or Disk with periodic upload."""
        return self.capture.destination == "Cloud" or self.periodic_upload

    @property
    def capture_upload(self) -> str:
        """How Cloud captures (or Disk's periodic upload) are uploaded: ``aws``, ``presigned`` or
        ``relay`` (the default resolved)."""
        capture = self.capture
        if capture.upload:
            return capture.upload
        identity = capture.device_cert_file and capture.device_key_file and capture.ca_cert_file
        if self.uploads_to_cloud and capture.control_plane_url and identity:
            return "presigned"
        return "aws"

    @property
    def capture_cloud_target(self) -> str:
        """The cloud side of Cloud or of Disk's periodic upload: ``s3://<bucket>``, or for uploads
        through the control plane its URL."""
        if self.capture_upload != "aws":
            return self.capture.control_plane_url
        return f"s3://{self.capture.s3_bucket}"

    @property
    def capture_disk_path(self) -> Path:
        """Root of Disk captures."""
        return self.capture.disk_path or self.data_dir / "capture"

    @property
    def packages_dir(self) -> Path:
        """Where ``.tar.gz`` packages given to LoadModel are unpacked."""
        return self.data_dir / "packages"

    @property
    def spool_dir(self) -> Path:
        """The durable capture buffer."""
        return self.data_dir / "capture-spool"

    @property
    def capture_destination(self) -> str:
        """Where captures go: the Disk directory, ``s3://<bucket>`` for Cloud, or for uploads through
        the control plane its URL."""
        if self.capture.destination == "Cloud":
            return self.capture_cloud_target
        return str(self.capture_disk_path)

    def capture_buffer_bytes(self) -> int:
        """The buffer's byte bound: as configured, or a tenth of the free disk where the spool lives."""
        if self.capture.buffer_bytes:
            return self.capture.buffer_bytes
        probe = self.data_dir
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return max(psutil.disk_usage(str(probe)).free // 10, 1)


# vendor key -> (section, field, converter). Section "" is AgentConfig itself.
_VENDOR_KEYS: dict[str, tuple[str, str, str]] = {
    "sagemaker_edge_core_device_name": ("", "device_name", "str"),
    "sagemaker_edge_core_device_uuid": ("", "device_name", "str"),
    "sagemaker_edge_core_device_fleet_name": ("", "fleet_name", "str"),
    "sagemaker_edge_core_region": ("", "region", "str"),
    "sagemaker_edge_core_root_certs_path": ("", "trust_dir", "path"),
    "sagemaker_edge_log_verbose": ("", "log_verbose", "bool"),
    "sagemaker_edge_core_capture_data_destination": ("capture", "destination", "str"),
    "sagemaker_edge_core_capture_data_disk_path": ("capture", "disk_path", "path"),
    "sagemaker_edge_core_folder_prefix": ("capture", "folder_prefix", "str"),
    "sagemaker_edge_core_capture_data_buffer_size": ("capture", "buffer_size", "int"),
    "sagemaker_edge_core_capture_data_batch_size": ("capture", "batch_size", "int"),
    "sagemaker_edge_core_capture_data_push_period_seconds": ("capture", "push_period_seconds", "float"),
    "sagemaker_edge_core_capture_data_base64_embed_limit": ("capture", "base64_embed_limit", "int"),
    "sagemaker_edge_core_capture_data_periodic_upload": ("capture", "periodic_upload", "bool"),
    "sagemaker_edge_core_capture_data_periodic_upload_period_seconds": (
        "capture",
        "periodic_upload_period_seconds",
        "float",
    ),
    "sagemaker_edge_provider_s3_bucket_name": ("capture", "s3_bucket", "str"),
    "sagemaker_edge_provider_aws_cert_file": ("capture", "device_cert_file", "path"),
    "sagemaker_edge_provider_aws_cert_pk_file": ("capture", "device_key_file", "path"),
    "sagemaker_edge_provider_aws_ca_cert_file": ("capture", "ca_cert_file", "path"),
}
# Vendor keys understood but with nothing to configure in the agent itself (the provider and the
# IoT credentials endpoint are the device daemon's business).
_VENDOR_ACCEPTED = {
    "sagemaker_edge_provider_provider",
    "sagemaker_edge_provider_provider_path",
    "sagemaker_edge_provider_aws_iot_cred_endpoint",
    "sagemaker_edge_core_capture_data_destination_upload",
}


def _convert(key: str, value: Any, kind: str) -> Any:
    try:
        if kind == "str":
            if not isinstance(value, str):
                raise TypeError("expected a string")
            return value
        if kind == "path":
            if not isinstance(value, str) or not value:
                raise TypeError("expected a path string")
            return Path(value).expanduser()
        if kind == "int":
            if isinstance(value, bool):
                raise TypeError("expected an integer")
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError("expected a number")
            return float(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise TypeError("expected true or false")
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"config key {key!r}: {exc} (got {value!r})") from exc
    raise AssertionError(kind)


def from_vendor(raw: dict[str, Any], *, base: dict[str, Any] | None = None) -> AgentConfig:
    """Build a config from a vendor (Edge Manager agent) flat JSON object."""
    top: dict[str, Any] = dict(base or {})
    capture: dict[str, Any] = {}
    unknown = []
    for key, value in raw.items():
        if key in _VENDOR_KEYS:
            section, name, kind = _VENDOR_KEYS[key]
            (capture if section == "capture" else top)[name] = _convert(key, value, kind)
        elif key in _VENDOR_ACCEPTED:
            continue
        else:
            unknown.append(key)
    if unknown:
        log.warning(
            "config keys with no meaning for edgefleet's agent, ignored: %s", ", ".join(sorted(unknown))
        )
    for required in ("device_name", "fleet_name"):
        if required not in top:
            raise InvalidArgument(
                f"config is missing sagemaker_edge_core_{'device_name' if required == 'device_name' else 'device_fleet_name'}"
            )
    return _built(AgentConfig(capture=CaptureSettings(**capture), **top))


def _built(config: AgentConfig) -> AgentConfig:
    if config.capture.periodic_upload and config.capture.destination != "Disk":
        log.warning(
            "capture periodic upload applies to the Disk destination; with %s it has no effect",
            config.capture.destination,
        )
    return config


def from_native(raw: dict[str, Any]) -> AgentConfig:
    """Build a config from the native structure ``{device: {...}, agent: {...}, capture: {...}}``."""
    extra = set(raw) - {"device", "agent", "capture"}
    if extra:
        raise InvalidArgument(
            f"unknown config sections: {', '.join(sorted(extra))} (known: device, agent, capture)"
        )
    device = _table(raw, "device")
    agent = _table(raw, "agent")
    capture_raw = _table(raw, "capture")
    top: dict[str, Any] = {}
    for key, value in device.items():
        if key not in ("name", "fleet", "region"):
            raise InvalidArgument(f"unknown key device.{key} (known: name, fleet, region)")
        top[{"name": "device_name", "fleet": "fleet_name", "region": "region"}[key]] = _convert(
            f"device.{key}", value, "str"
        )
    known_agent = {
        f.name: f
        for f in fields(AgentConfig)
        if f.name not in ("device_name", "fleet_name", "region", "capture")
    }
    for key, value in agent.items():
        if key == "memory_budget_mb":
            top["memory_budget_bytes"] = int(_convert("agent.memory_budget_mb", value, "float") * 1024 * 1024)
            continue
        if key not in known_agent:
            raise InvalidArgument(
                f"unknown key agent.{key} (known: {', '.join(sorted([*known_agent, 'memory_budget_mb']))})"
            )
        top[key] = _native_value(f"agent.{key}", value, known_agent[key].type)
    known_capture = {f.name: f for f in fields(CaptureSettings)}
    capture: dict[str, Any] = {}
    for key, value in capture_raw.items():
        if key == "auto":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise InvalidArgument(
                    "capture.auto must be a table of per-model tables, e.g. [capture.auto.digits]"
                )
            capture["auto"] = {m: AutoCapturePolicy.from_mapping(m, table) for m, table in value.items()}
            continue
        if key not in known_capture:
            raise InvalidArgument(f"unknown key capture.{key} (known: {', '.join(sorted(known_capture))})")
        capture[key] = _native_value(f"capture.{key}", value, known_capture[key].type)
    if "device_name" not in top or "fleet_name" not in top:
        raise InvalidArgument("config needs device.name and device.fleet")
    return _built(AgentConfig(capture=CaptureSettings(**capture), **top))


def _native_value(key: str, value: Any, annotation: Any) -> Any:
    text = str(annotation)
    if "Path" in text:
        return _convert(key, value, "path")
    if text == "bool":
        return _convert(key, value, "bool")
    if text == "int":
        if key == "agent.socket_mode" and isinstance(value, str):
            try:
                return int(value, 8)
            except ValueError as exc:
                raise InvalidArgument(f"config key {key!r}: expected an octal mode such as '0660'") from exc
        return _convert(key, value, "int")
    if text == "float":
        return _convert(key, value, "float")
    return _convert(key, value, "str")


def _table(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise InvalidArgument(f"config section {name!r} must be a table")
    return value


def load_config(path: Path) -> AgentConfig:
    """Read a vendor JSON or native TOML/JSON config file; INVALID_ARGUMENT with the reason if bad."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError as exc:
        raise NotFound(f"config file {path} does not exist") from exc
    except OSError as exc:
        raise InvalidArgument(f"cannot read config file {path}: {exc}") from exc
    raw: Any
    if path.suffix == ".toml":
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"config file {path} is not valid TOML: {exc}") from exc
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            try:
                raw = tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                raise InvalidArgument(f"config file {path} is neither JSON nor TOML: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidArgument(f"config file {path} must hold an object")
    if any(key.startswith(VENDOR_PREFIX) for key in raw):
        return from_vendor(raw)
    return from_native(raw)
