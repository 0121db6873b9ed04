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
from edgefleet.server.downloads import PackageGrants
from edgefleet.server.heartbeats import HeartbeatWriter
from edgefleet.server.polls import DeploymentPolls
from edgefleet.server.results import ResultRecorder


@dataclass
class AppState:
    """The handles one replica's application uses. All durable state is in ``db`` and ``artifacts``."""

    config: ServerConfig
    db: Database
    artifacts: ArtifactStore
    ca: FleetCA
    #: identifies this replica in job leases
    replica_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    #: the URL devices use for the data plane (given to them at enrolment)
    device_url: str = ""
    #: group commit of heartbeats (its thread starts on first use; closed with the replica)
    heartbeats: HeartbeatWriter = field(init=False)
    #: GetDeployments answered in batches (thread starts on first use; closed with the replica)
    polls: DeploymentPolls = field(init=False)
    #: plain successful deployment results recorded in batches
    results: ResultRecorder = field(init=False)
    #: package downloads authorised in batches, small archives served from memory
    downloads: PackageGrants = field(init=False)

    def __post_init__(self) -> None:
        self.heartbeats = HeartbeatWriter(self.db)
        self.polls = DeploymentPolls(self.db)
        self.results = ResultRecorder(self.db)
        self.downloads = PackageGrants(self.db, self.artifacts)

    def close(self) -> None:
        """Stop the batching threads (after finishing what they hold), then close the database."""
        for batching in (self.heartbeats, self.polls, self.results, self.downloads):
            batching.close()
        self.db.close()

    @property
    def connected_window(self) -> timedelta:
        """Heartbeat recency that makes a device count as connected."""
        return timedelta(seconds=self.config.timing.connected_window)
