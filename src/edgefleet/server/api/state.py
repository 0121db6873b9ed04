"""What request handlers share: configuration, database, artifact store, CA. Nothing request-specific."""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from edgefleet.server.artifacts import ArtifactStore
from edgefleet.server.ca import FleetCA
from edgefleet.server.config import ServerConfig
from edgefleet.server.db.engine import Database
from edgefleet.server.deviceplane.download import DownloadService
from edgefleet.server.deviceplane.heartbeat import HeartbeatService
from edgefleet.server.deviceplane.poll import PollService
from edgefleet.server.deviceplane.result import ResultService
from edgefleet.server.drift import DriftScorer
from edgefleet.server.metrics import ServerMetrics
from edgefleet.server.queue import JobQueue
from edgefleet.storage import ObjectStore, StoreOptions, open_store


@dataclass
class AppState:
    """The handles one replica's application uses. All durable state is in ``db`` and ``artifacts``."""

    config: ServerConfig
    db: Database
    artifacts: ArtifactStore
    ca: FleetCA
    #: where devices' captured data is stored (default: opened from ``config.resolved_captures_uri``)
    captures: ObjectStore = field(default=None)  # type: ignore[assignment]
    #: identifies this replica in job leases
    replica_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    #: the URL devices use for the data plane (given to them at enrolment)
    device_url: str = ""
    #: the device plane's services (each batch thread starts on first use; closed with the replica)
    heartbeats: HeartbeatService = field(init=False)
    polls: PollService = field(init=False)
    results: ResultService = field(init=False)
    downloads: DownloadService = field(init=False)
    #: scores complete drift buckets for the periodic work (remembers only when it last looked)
    drift_scorer: DriftScorer = field(init=False)
    #: Prometheus series of this replica (default: single-process; the runner's workers share files)
    metrics: ServerMetrics = field(default=None)  # type: ignore[assignment]
    #: the task queue jobs are enqueued on (default: opened from ``config.resolved_queue_url``)
    queue: JobQueue = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.captures is None:
            options = StoreOptions(what="capture object", s3_endpoint_url=self.config.s3_endpoint_url)
            self.captures = open_store(self.config.resolved_captures_uri, options, purpose="capture store")
        if self.queue is None:
            self.queue = JobQueue(self.config.resolved_queue_url)
        if self.metrics is None:
            self.metrics = ServerMetrics(self.db, self.connected_window)
        self.heartbeats = HeartbeatService(self.db)
        self.polls = PollService(self.db)
        self.results = ResultService(self.db)
        self.downloads = DownloadService(self.db, self.artifacts)
        timing = self.config.timing
        self.drift_scorer = DriftScorer(
            self.db,
            bucket_seconds=timing.drift_bucket,
            grace=timedelta(seconds=timing.drift_bucket_grace),
            lookback=timedelta(seconds=timing.drift_lookback),
        )

    def close(self) -> None:
        """Stop the services' batch threads (after finishing what they hold), then close the database."""
        for service in (self.heartbeats, self.polls, self.results, self.downloads):
            service.close()
        self.queue.close()
        self.db.close()

    @property
    def connected_window(self) -> timedelta:
        """Heartbeat recency that makes a device count as connected."""
        return timedelta(seconds=self.config.timing.connected_window)
