"""The control plane's configuration knobs, declared once with defaults and a line of doc each."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_API_PORT = 8443
DEFAULT_DEVICE_PORT = 8444


def default_data_dir() -> Path:
    """The user's data directory for edgefleet (``$XDG_DATA_HOME/edgefleet`` or ``~/.local/share/edgefleet``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "edgefleet"


@dataclass(frozen=True)
class Limits:
    """Bounds on what a request may ask for."""

    #: largest package archive accepted on upload, in bytes
    max_package_bytes: int = 4 * 1024**3
    #: largest JSON request body (operator and device calls), in bytes; larger ones get 413 unread
    max_json_body_bytes: int = 1024 * 1024
    #: largest enrolment request (a token and a CSR: a few KiB), in bytes
    max_enrol_body_bytes: int = 64 * 1024
    #: largest capture object a device uploads through the server (relay mode), in bytes
    max_capture_object_bytes: int = 64 * 1024 * 1024
    #: largest page a list call returns
    max_page_size: int = 1000
    #: most devices in one register call
    max_register_batch: int = 1000
    #: largest web dashboard form (``/ui``, URL-encoded), in bytes; larger ones get 413 unread
    max_form_body_bytes: int = 64 * 1024


@dataclass(frozen=True)
class Timing:
    """Durations (seconds) that shape the fleet's behaviour."""

    #: a device with a heartbeat newer than this counts as connected
    connected_window: float = 600.0
    #: fleet reports are regenerated when older than this
    report_interval: float = 86400.0
    #: how often each replica checks for due periodic work (capped by ``report_interval``)
    job_tick: float = 60.0
    #: how long a report-generation lease lasts before another replica may take over
    job_lease: float = 300.0
    #: lifetime of a one-time enrolment token
    enrolment_token_ttl: float = 7 * 86400.0
    #: validity of a device client certificate
    device_cert_days: int = 365
    #: ``CacheTTL`` returned by GetDeviceRegistration
    registration_cache_ttl: int = 3600
    #: operator token ``last_used`` is only rewritten when older than this (saves a write per call)
    token_touch_interval: float = 60.0
    #: on shutdown, how long open connections may finish their requests
    shutdown_grace: float = 5.0
    #: idle device connections stay open this long: longer than the daemon's 30 s heartbeat period,
    #: so devices reuse their connection instead of paying a mutual-TLS handshake per call
    device_keep_alive: float = 75.0
    #: idle operator connections stay open this long
    api_keep_alive: float = 5.0
    #: live model summary windows (drift monitoring) older than this are deleted by the periodic work
    summary_retention: float = 30 * 86400.0
    #: the capture index forgets objects whose newest record is older than this (the periodic
    #: work; the objects themselves are the capture store's to expire); 0 keeps them forever
    capture_retention: float = 90 * 86400.0
    #: lifetime of a presigned capture upload URL handed to a device (PresignUploads)
    capture_upload_url_ttl: float = 900.0
    #: how often each replica scores complete drift buckets, evaluates alert rules and posts due
    #: webhooks (the rest of the periodic work keeps ``job_tick``)
    monitoring_tick: float = 30.0
    #: length of the stored drift time series' buckets (aligned to the Unix epoch)
    drift_bucket: int = 3600
    #: a bucket is scored this long after it ends (windows arrive with the next heartbeats)
    drift_bucket_grace: float = 300.0
    #: buckets that ended longer ago than this are not scored (again) by the periodic work
    drift_lookback: float = 86400.0
    #: a web dashboard login lasts this long, then the operator logs in again with a token
    ui_session_ttl: float = 12 * 3600.0
    #: the heartbeat period devices are expected to keep; the dashboard marks a device whose latest
    #: heartbeat is older than 3 of them as stale
    heartbeat_interval: float = 30.0


@dataclass(frozen=True)
class WebhookPolicy:
    """How alert webhooks are posted and retried (exponential backoff with jitter)."""

    #: one POST's timeout (connect, read, write), seconds
    timeout: float = 10.0
    #: delay before the second attempt, seconds; it doubles with each failure
    first_backoff: float = 5.0
    #: longest delay between two attempts, seconds
    max_backoff: float = 600.0
    #: each delay is shortened by a random fraction up to this (0: no jitter)
    jitter: float = 0.5
    #: a delivery still failing this long after its event is given up (logged at ERROR), seconds
    give_up_after: float = 86400.0
    #: most deliveries one replica posts per round
    batch: int = 50
    #: most receivers (webhook URLs) posted to at once; each receiver's deliveries go in turn
    concurrency: int = 8


@dataclass(frozen=True)
class JobPolicy:
    """How jobs on the task queue (server/tasks.py, ``edgefleet worker``) are leased and retried."""

    #: a RUNNING attempt not heard from for this long lost its worker and is re-queued, seconds
    lease: float = 60.0
    #: how often a worker renews its lease and flushes progress and log lines, seconds
    heartbeat: float = 10.0
    #: attempts a job gets before a lost worker fails it (re-queued after a lost lease until then)
    max_attempts: int = 3
    #: longest ``wait`` job (the diagnostic kind), seconds
    max_wait: float = 3600.0


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``edgefleet server`` needs to run; the CLI fills it from flags."""

    #: where the embedded database, local artifacts, trust store and TLS files live
    data_dir: Path = field(default_factory=default_data_dir)
    #: SQLAlchemy URL (``sqlite:///...``, ``postgresql://...``); default: SQLite file in ``data_dir``
    database_url: str | None = None
    #: artifact store URI (``file:///dir``, ``s3://bucket/prefix``); default: ``data_dir/artifacts``
    artifacts_uri: str | None = None
    #: capture store URI devices' captured data goes to (``s3://bucket/prefix``, ``file:///dir``);
    #: default: ``data_dir/captures``
    captures_uri: str | None = None
    #: task queue URL: ``sqlite:///file`` (embedded) or ``redis://host:port/db`` (workers on other
    #: machines); default: ``queue.db`` (SQLite) in ``data_dir``
    queue_url: str | None = None
    #: S3 endpoint for S3-protocol stores other than AWS (MinIO, moto, Ceph ...)
    s3_endpoint_url: str | None = None
    #: directory of trusted signer certificates checked on package upload; default ``data_dir/trust``
    trust_dir: Path | None = None
    #: address both listeners bind to
    host: str = "127.0.0.1"
    #: operator API + enrolment port (TLS, server authentication only); 0 picks a free port
    port: int = DEFAULT_API_PORT
    #: device data-plane port (mutual TLS, client certificate required); 0 picks a free port
    device_port: int = DEFAULT_DEVICE_PORT
    #: operator-supplied TLS certificate/key for both listeners; default: issued by the fleet CA
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: extra DNS names / IP addresses for the server certificate issued by the fleet CA
    tls_names: tuple[str, ...] = ()
    #: device endpoint URL handed to devices at enrolment (set it behind a load balancer)
    device_url: str | None = None
    #: server processes sharing the listeners (``edgefleet server --workers``); each is a full replica
    workers: int = 1
    #: event loop: ``auto`` (uvloop when installed), ``uvloop`` or ``asyncio``
    event_loop: str = "auto"
    #: threads per worker for blocking request handlers (more only add GIL contention)
    request_threads: int = 8
    #: serve ``GET /metrics`` on the operator port without an API token (``--metrics-public``)
    metrics_public: bool = False
    #: log one line per request (uvicorn's access log, ``uvicorn.access``; ``--access-log``): off
    #: by default, ``/metrics`` counts requests without a log line each
    access_log: bool = False
    limits: Limits = field(default_factory=Limits)
    timing: Timing = field(default_factory=Timing)
    webhooks: WebhookPolicy = field(default_factory=WebhookPolicy)
    jobs: JobPolicy = field(default_factory=JobPolicy)

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to ``edgefleet.db`` in the data directory."""
        return self.database_url or f"sqlite:///{self.data_dir / 'edgefleet.db'}"

    @property
    def resolved_queue_url(self) -> str:
        """The task queue URL, defaulting to ``queue.db`` (SQLite) in the data directory."""
        return self.queue_url or f"sqlite:///{(self.data_dir / 'queue.db').resolve()}"

    @property
    def resolved_artifacts_uri(self) -> str:
        """The artifact store URI, defaulting to ``artifacts/`` in the data directory."""
        return self.artifacts_uri or (self.data_dir / "artifacts").resolve().as_uri()

    @property
    def resolved_captures_uri(self) -> str:
        """The capture store URI, defaulting to ``captures/`` in the data directory."""
        return self.captures_uri or (self.data_dir / "captures").resolve().as_uri()

    @property
    def resolved_trust_dir(self) -> Path:
        """The trust store directory, defaulting to ``trust/`` in the data directory."""
        return self.trust_dir or self.data_dir / "trust"
