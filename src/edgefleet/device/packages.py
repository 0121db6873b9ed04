"""The device's package cache: download with resume and digest check, verify and stage, clean up.

Layout under ``<state_dir>/packages/``, keyed by the archive's digest (so a version is fetched and
verified once however many handles or deployments use it):

- ``downloads/<digest>.part`` — a download in progress (resumed with an HTTP Range request);
- ``staged/<digest>/`` — the unpacked package, its signature, certificate chain and every file's
  digest verified against the device trust store (``unpack_package(..., trust_dir=...)``); the
  agent loads from here. Unpacking goes to ``staged/.<digest>.tmp`` and is renamed into place, so a
  crash never leaves a half-unpacked package under its final name.

Archives are deleted once staged; a staged package is deleted by :meth:`PackageStore.collect` when
nothing installed, in flight or kept for rollback refers to it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Protocol

from edgefleet.core.deviceplane import PackageRef
from edgefleet.core.errors import EdgefleetError, FailedPrecondition
from edgefleet.core.files import move_atomic
from edgefleet.core.package import unpack_package
from edgefleet.device.protocol import ControlPlane

log = logging.getLogger(__name__)


class DigestMismatch(FailedPrecondition):
    """A downloaded archive does not hash to what the server announced (it is deleted; retry)."""


class Packages(Protocol):
    """What the executor needs from a package cache (the real one, or a simulated device's)."""

    def fetch(self, package: PackageRef, plane: ControlPlane) -> None:
        """Make the archive (or its staged form) present locally, digest-checked."""
        ...

    def stage(self, package: PackageRef) -> Path:
        """Verify and unpack the fetched archive; the directory the agent loads."""
        ...

    def staged_path(self, package: PackageRef) -> Path:
        """Where ``package`` is (or would be) staged."""
        ...

    def is_staged(self, package: PackageRef) -> bool:
        """Whether ``package`` is staged."""
        ...

    def collect(self, keep: set[str]) -> None:
        """Delete every cached package whose key is not in ``keep`` (and stale temporary files)."""
        ...


def _hasher(package: PackageRef) -> hashlib._Hash:
    return hashlib.sha256() if package.sha256 else hashlib.sha1()


def file_digest(path: Path, package: PackageRef, chunk: int = 1024 * 1024) -> str:
    """The digest of ``path`` in the algorithm ``package`` announces."""
    digest = _hasher(package)
    with path.open("rb") as fh:
        while data := fh.read(chunk):
            digest.update(data)
    return digest.hexdigest()


class PackageStore:
    """The on-disk package cache of a device."""

    def __init__(self, root: Path, trust_dir: Path, *, chunk_bytes: int = 1024 * 1024) -> None:
        self.root = root
        self.trust_dir = trust_dir
        self.chunk_bytes = chunk_bytes
        self.downloads = root / "downloads"
        self.staged = root / "staged"
        for directory in (self.downloads, self.staged):
            directory.mkdir(parents=True, exist_ok=True)

    def part_path(self, package: PackageRef) -> Path:
        """Where a download of ``package`` accumulates."""
        return self.downloads / f"{package.key}.part"

    def archive_path(self, package: PackageRef) -> Path:
        """Where the complete, digest-checked archive of ``package`` is kept until staged."""
        return self.downloads / f"{package.key}.tar.gz"

    def staged_path(self, package: PackageRef) -> Path:
        return self.staged / package.key

    def is_staged(self, package: PackageRef) -> bool:
        return self.staged_path(package).is_dir()

    def fetch(self, package: PackageRef, plane: ControlPlane) -> None:
        """Download ``package`` (resuming a partial download) and check its size and digest.

        UNAVAILABLE if the server cannot be reached (the partial file is kept for the next try);
        :class:`DigestMismatch` if the complete file hashes wrong (it is deleted).
        """
        if self.is_staged(package) or self.archive_path(package).is_file():
            return
        part = self.part_path(package)
        have = part.stat().st_size if part.exists() else 0
        if package.size is None or have < package.size:
            self._download(package, plane, part, have)
        size = part.stat().st_size
        if package.size is not None and size != package.size:
            part.unlink()
            raise DigestMismatch(
                f"package {package.url}: downloaded {size} bytes, the server announced {package.size}"
            )
        actual = file_digest(part, package, self.chunk_bytes)
        if actual != package.key:
            part.unlink()
            raise DigestMismatch(f"package {package.url}: digest {actual} is not the announced {package.key}")
        move_atomic(part, self.archive_path(package))
        log.info("fetched %s (%d bytes)", package.url, size)

    def _download(self, package: PackageRef, plane: ControlPlane, part: Path, have: int) -> None:
        body = plane.open_package(package, have)
        try:
            if body.offset not in (0, have):
                raise EdgefleetError(
                    f"package {package.url}: the server resumed at {body.offset}, not {have}"
                )
            mode = "ab" if body.offset == have and have else "wb"
            if have and mode == "wb":
                log.info("the server restarted the download of %s from the beginning", package.url)
            elif have:
                log.info("resuming the download of %s at byte %d", package.url, have)
            try:
                with part.open(mode) as fh:
                    for chunk in body.chunks(self.chunk_bytes):
                        fh.write(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise EdgefleetError(f"cannot write the download {part}: {exc}") from exc
        finally:
            body.close()

    def stage(self, package: PackageRef) -> Path:
        """Verify the fetched archive against the trust store and unpack it; return the package directory.

        FAILED_PRECONDITION (:class:`~edgefleet.core.errors.SignatureError`) for a bad or untrusted
        signature or digest, INVALID_ARGUMENT for a malformed archive; the archive is deleted then,
        since fetching it again would give the same bytes.
        """
        final = self.staged_path(package)
        if final.is_dir():
            return final
        archive = self.archive_path(package)
        if not archive.is_file():
            raise FailedPrecondition(f"package {package.url} is not fetched yet")
        tmp = self.staged / f".{package.key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            unpack_package(archive, tmp, trust_dir=self.trust_dir)
        except EdgefleetError:
            shutil.rmtree(tmp, ignore_errors=True)
            archive.unlink(missing_ok=True)
            raise
        move_atomic(tmp, final)
        archive.unlink(missing_ok=True)
        log.info("verified and staged %s in %s", package.url, final)
        return final

    def collect(self, keep: set[str]) -> None:
        for path in list(self.staged.iterdir()):
            if path.name.startswith(".") or path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)
                log.debug("removed staged package %s", path.name)
        for path in list(self.downloads.iterdir()):
            key = path.name.split(".", 1)[0]
            if key not in keep:
                path.unlink(missing_ok=True)
