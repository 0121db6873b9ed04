"""Package downloads: authorised in batches, small archives served from memory.

During a rollout every device of a stage downloads the same archive. A device may download a
package of a deployment assigned to it, with its current certificate: :func:`_grants` is that rule,
one query for a batch of downloads (:meth:`DownloadService.batch`) or for one
(:meth:`DownloadService.one`, after the exact authentication). Recently served small archives are
kept in memory (bounded; archives are content-addressed, so a cached one never goes stale, and its
SHA-256 is checked when it is loaded).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from edgefleet.core.errors import PermissionDenied
from edgefleet.server.artifacts import ArtifactStore
from edgefleet.server.db.engine import Database, one_of
from edgefleet.server.db.schema import Device, ModelPackage, PlanModel, PlanStage, StageDevice
from edgefleet.server.deviceplane.service import DeviceCall, Service

log = logging.getLogger(__name__)

#: archives up to this size are served from memory
MAX_CACHED_ARCHIVE = 8 * 1024 * 1024
#: memory for cached archives per worker
CACHE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Grant:
    """A download the device may make: which archive, its size and SHA-256."""

    package_id: int
    artifact_key: str
    size: int
    sha256: str

    @property
    def filename(self) -> str:
        """The archive's file name (the last part of its key)."""
        return self.artifact_key.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class DownloadItem(DeviceCall):
    """A package download: who (from the certificate) and which package."""

    package_id: int


class DownloadService(Service[DownloadItem, Grant]):
    """Download authorisation for many devices at a time, and a small-archive cache (see the module doc)."""

    name = "downloads"

    def __init__(self, db: Database, artifacts: ArtifactStore, *, max_batch: int = 500) -> None:
        super().__init__(db, max_batch=max_batch)
        self.artifacts = artifacts
        self._reader = self.held(read_only=True)
        self._cache: OrderedDict[str, bytes] = OrderedDict()  # used on the event loop only
        self._cached_bytes = 0

    def batch(self, asks: Sequence[DownloadItem]) -> list[Grant | None]:
        """Grants for ``asks`` with one query (what the batch thread does); None: the exact tier."""
        found = self._reader.run(lambda conn: _grants(conn, asks))
        return [found.get((a.device_name, a.serial, a.package_id)) for a in asks]

    def one(self, item: DownloadItem) -> Grant:
        """The grant after the exact authentication; PERMISSION_DENIED unless the package is part
        of a deployment assigned to the device."""
        with self.db.session() as session:
            item.authenticate(session, self.db.now())
            session.flush()  # a renewed certificate just made current is what the query reads
            found = _grants(session, [item]).get((item.device_name, item.serial, item.package_id))
        if found is None:
            raise PermissionDenied(
                f"package {item.package_id} is not part of a deployment of device {item.device_name!r}"
            )
        return found

    async def content(self, grant: Grant) -> bytes | None:
        """The archive of ``grant`` if it is small enough to serve from memory (loaded on first use)."""
        if grant.size > MAX_CACHED_ARCHIVE:
            return None
        data = self._cache.get(grant.artifact_key)
        if data is not None:
            self._cache.move_to_end(grant.artifact_key)
            return data
        data = await asyncio.to_thread(self.artifacts.get_bytes, grant.artifact_key)
        if len(data) != grant.size or hashlib.sha256(data).hexdigest() != grant.sha256:
            log.error("artifact %s does not match its recorded size and SHA-256", grant.artifact_key)
            return None  # then it is streamed from the store as it is; devices check digests themselves
        if grant.artifact_key not in self._cache:
            self._cache[grant.artifact_key] = data
            self._cached_bytes += len(data)
            while self._cached_bytes > CACHE_BYTES:
                _, evicted = self._cache.popitem(last=False)
                self._cached_bytes -= len(evicted)
        return data


def _grants(conn: Connection | Session, asks: Sequence[DownloadItem]) -> dict[tuple[str, str, int], Grant]:
    """The one download rule: per (device, certificate serial, package) asked for, the grant if the
    serial is the registered device's current one and the package is of a deployment assigned to it."""
    bind = conn.connection() if isinstance(conn, Session) else conn
    names = sorted({a.device_name for a in asks})
    package_ids = sorted({a.package_id for a in asks})
    rows = conn.execute(
        select(
            Device.name,
            Device.cert_serial,
            ModelPackage.id,
            ModelPackage.artifact_key,
            ModelPackage.size,
            ModelPackage.sha256,
        )
        .select_from(Device)
        .join(StageDevice, StageDevice.device_id == Device.id)
        .join(PlanStage, PlanStage.id == StageDevice.stage_id)
        .join(PlanModel, PlanModel.plan_id == PlanStage.plan_id)
        .join(ModelPackage, ModelPackage.model_version_id == PlanModel.model_version_id)
        .where(
            one_of(bind, Device.name, names),
            Device.deregistered_at.is_(None),
            one_of(bind, ModelPackage.id, package_ids),
        )
        .distinct()
    )
    return {
        (name, serial, package_id): Grant(package_id, key, size, sha256)
        for name, serial, package_id, key, size, sha256 in rows
        if serial
    }
