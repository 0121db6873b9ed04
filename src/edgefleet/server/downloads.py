"""Package downloads authorised in batches, small archives served from memory.

During a rollout every device of a stage downloads the same archive. The ordinary path
(:func:`edgefleet.server.api.device_plane.download_package`) checks the device's certificate and
that the package belongs to one of its deployments — a transaction of three queries per device —
then streams the archive from the artifact store through a thread. :class:`PackageGrants` checks
many devices' downloads with one query (certificate still the device's, package in a deployment
assigned to it: the same rules), and keeps recently served small archives in memory (bounded;
archives are content-addressed, so a cached one never goes stale, and its SHA-256 is checked when
it is loaded).

Whole-archive downloads of cached-size archives are served this way; everything else (ranges,
large archives, refusals) takes the ordinary path, which handles every case.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, select

from edgefleet.server.artifacts import ArtifactStore
from edgefleet.server.batching import Batcher, one_of
from edgefleet.server.db.engine import Database, HeldConnection
from edgefleet.server.db.schema import Device, ModelPackage, PlanModel, PlanStage, StageDevice

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


@dataclass(frozen=True)
class _Ask:
    device_name: str
    serial: str
    package_id: int


class PackageGrants:
    """Batched download authorisation and a small-archive cache (see the module doc)."""

    def __init__(self, db: Database, artifacts: ArtifactStore, *, max_batch: int = 500) -> None:
        self.artifacts = artifacts
        self._reader = HeldConnection(db, read_only=True)
        self._batcher: Batcher[_Ask, Grant | None] = Batcher(
            "edgefleet-downloads", self.check, max_batch=max_batch
        )
        self._cache: OrderedDict[str, bytes] = OrderedDict()  # used on the event loop only
        self._cached_bytes = 0

    async def grant(self, device_name: str, serial: str, package_id: int) -> Grant | None:
        """The grant if this certificate's device may download the package now; None otherwise."""
        if self._batcher.closed:
            return None
        return await self._batcher.submit(_Ask(device_name, serial, package_id))

    def check(self, asks: Sequence[_Ask]) -> list[Grant | None]:
        """Grants for ``asks`` with one query (what the batcher thread does with each batch)."""
        found = self._reader.run(lambda conn: _grants(conn, asks))
        return [found.get((a.device_name, a.serial, a.package_id)) for a in asks]

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
            return None  # the ordinary path serves what there is; devices check digests themselves
        if grant.artifact_key not in self._cache:
            self._cache[grant.artifact_key] = data
            self._cached_bytes += len(data)
            while self._cached_bytes > CACHE_BYTES:
                _, evicted = self._cache.popitem(last=False)
                self._cached_bytes -= len(evicted)
        return data

    def close(self, timeout: float = 10.0) -> None:
        """Answer what is queued, then stop the thread and release the connection."""
        self._batcher.close(timeout)
        self._reader.close()


def _grants(conn: Connection, asks: Sequence[_Ask]) -> dict[tuple[str, str, int], Grant]:
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
            one_of(conn, Device.name, names),
            Device.deregistered_at.is_(None),
            one_of(conn, ModelPackage.id, package_ids),
        )
        .distinct()
    )
    return {
        (name, serial, package_id): Grant(package_id, key, size, sha256)
        for name, serial, package_id, key, size, sha256 in rows
        if serial
    }
