"""Signed model packages (format v1): safe unpacking, verification and inspection.

A package is ``<name>-<version>.tar.gz`` whose top level holds ``manifest.json``, ``manifest.sig``,
``signer-chain.pem`` and the artifacts the manifest lists. The contract (layout, manifest rules,
verification order, rejection rules) is docs/package-format.md; this module implements it.

The device agent calls :func:`unpack_package` and :func:`verify_package_dir` before loading any
model. Both read files in 1 MiB chunks, never follow links, never trust a path from an archive
without validating it, and bound what they read (:class:`Limits`).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import logging
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

from edgefleet.core import signing
from edgefleet.core.errors import (
    EdgefleetError,
    FailedPrecondition,
    NotFound,
    PackageFormatError,
    ResourceExhausted,
    SignatureError,
    os_error,
)
from edgefleet.core.manifest import (
    CERTIFICATES_FILE,
    CONTROL_FILES,
    MANIFEST_FILE,
    SIGNATURE_FILE,
    FileEntry,
    Manifest,
    validate_artifact_path,
)
from edgefleet.core.signing import CertificateInfo

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
GIB = 1024**3
# Tar header bytes (including pax / GNU long-name extensions) tolerated before each member; tarfile
# holds extension headers in memory, so a hostile archive must not be able to make them large.
_HEADER_BUDGET = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
_MEMBER_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


@dataclass(frozen=True)
class Limits:
    """Bounds applied when reading a package (archive or directory)."""

    #: total bytes of the artifacts; larger packages are refused (RESOURCE_EXHAUSTED)
    max_total_bytes: int = 8 * GIB
    #: number of artifact files
    max_files: int = 10_000
    #: size of manifest.json
    max_manifest_bytes: int = 4 * 1024 * 1024

    def control_cap(self, name: str) -> int:
        """Largest accepted size of the control file ``name``."""
        if name == MANIFEST_FILE:
            return self.max_manifest_bytes
        if name == SIGNATURE_FILE:
            return signing.MAX_SIGNATURE_BYTES
        return signing.MAX_CHAIN_BYTES


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class VerifiedPackage:
    """A package whose signature, chain and file digests verified."""

    manifest: Manifest
    signer: CertificateInfo


@dataclass(frozen=True)
class PackageInfo:
    """What :func:`inspect_package` shows. Nothing here is verified."""

    path: Path
    manifest: Manifest
    #: signer certificate first, then the intermediates shipped in the package
    chain: tuple[CertificateInfo, ...]
    signature_size: int

    @property
    def signer(self) -> CertificateInfo:
        """The signer certificate's description."""
        return self.chain[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "path": str(self.path),
            "verified": False,
            "manifest": self.manifest.to_dict(),
            "signer": self.signer.to_dict(),
            "chain": [c.to_dict() for c in self.chain],
            "signature_size": self.signature_size,
        }


# --------------------------------------------------------------------------------------------
# Reading archives


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _OverBudget(Exception):
    """A tar header (or trailing data) is larger than any legitimate package needs."""


class _BoundedReader:
    """Decompressed archive stream that refuses to be read past the current budget."""

    def __init__(self, raw: _Readable) -> None:
        self._raw = raw
        self.position = 0
        self.limit = _HEADER_BUDGET

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = max(self.limit - self.position + 1, 0)
        data = self._raw.read(size)
        self.position += len(data)
        if self.position > self.limit:
            raise _OverBudget
        return data


class _Destination:
    """Where :func:`unpack_package` writes; removes everything it wrote if told to abort."""

    def __init__(self, root: Path) -> None:
        self.root = root
        #: the highest directory this object created (removed on abort), if any
        self._created: Path | None = None
        try:
            if root.exists() or root.is_symlink():
                if not root.is_dir() or root.is_symlink():
                    raise FailedPrecondition(f"unpack destination {root} is not a directory")
                if any(root.iterdir()):
                    raise FailedPrecondition(f"unpack destination {root} is not empty")
            else:
                top = root
                while not top.parent.exists() and top.parent != top:
                    top = top.parent
                root.mkdir(mode=0o755, parents=True)
                self._created = top
        except OSError as exc:
            raise FailedPrecondition(f"cannot use {root} as the unpack destination: {exc}") from exc

    def write(self, relpath: str, chunks: Iterable[bytes]) -> None:
        """Write a new file ``relpath`` (already validated) from ``chunks``, creating parents.

        Only the destination's own OSErrors are translated here; errors raised while producing
        ``chunks`` (reading the archive) propagate unchanged.
        """
        target = self.root.joinpath(*relpath.split("/"))
        try:
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fh = os.fdopen(os.open(target, flags, 0o644), "wb")
        except OSError as exc:
            raise _write_error(self.root, exc) from exc
        with contextlib.ExitStack() as stack:
            stack.callback(self._close, fh)
            for chunk in chunks:
                try:
                    fh.write(chunk)
                except OSError as exc:
                    raise _write_error(self.root, exc) from exc

    def _close(self, fh: IO[bytes]) -> None:
        try:
            fh.close()
        except OSError as exc:
            raise _write_error(self.root, exc) from exc

    def abort(self) -> None:
        """Remove what was written (and the directories this object created)."""
        try:
            if self._created is not None:
                shutil.rmtree(self._created)
                return
            for child in self.root.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        except OSError:
            log.exception("could not clean up the rejected package under %s", self.root)


def _write_error(root: Path, exc: OSError) -> EdgefleetError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"no space left while unpacking into {root}: {exc}")
    return FailedPrecondition(f"cannot write the package into {root}: {exc}")


@dataclass
class _ArchiveScan:
    """One pass over a package archive: control files, artifacts and their digests."""

    archive: Path
    limits: Limits
    dest: _Destination | None = None
    hash_contents: bool = True
    trust_dir: Path | None = None
    now: datetime | None = None
    control: dict[str, bytes] = field(default_factory=dict)
    manifest: Manifest | None = None
    signer: CertificateInfo | None = None
    #: artifact path -> (size, sha256 or "" when not hashed)
    artifacts: dict[str, tuple[int, str]] = field(default_factory=dict)
    directories: set[str] = field(default_factory=set)
    _artifact_parents: set[str] = field(default_factory=set)
    _entries: dict[str, FileEntry] = field(default_factory=dict)
    _total: int = 0

    def run(self) -> None:
        if not self.archive.is_file():
            raise NotFound(f"package {self.archive} not found")
        try:
            with self.archive.open("rb") as raw:
                if raw.read(2) != _GZIP_MAGIC:
                    raise PackageFormatError(f"{self.archive.name} is not a gzip-compressed tar archive")
                raw.seek(0)
                with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                    stream = _BoundedReader(gz)
                    with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                        self._members(tar, stream)
        except _OverBudget as exc:
            raise PackageFormatError(
                f"{self.archive.name}: a tar header is larger than {_HEADER_BUDGET} bytes"
            ) from exc
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            if (
                isinstance(exc, OSError) and exc.errno is not None
            ):  # the file cannot be read, whatever it holds
                raise os_error(exc, self.archive) from exc
            raise PackageFormatError(f"{self.archive.name} is not a readable .tar.gz package: {exc}") from exc
        self._finish()

    def _members(self, tar: tarfile.TarFile, stream: _BoundedReader) -> None:
        while True:
            member = tar.next()
            if member is None:
                return
            name = member.name
            if member.size < 0:
                raise PackageFormatError(f"archive member {name!r} has a negative size")
            # Only regular members carry data; a directory's size field must not widen the budget.
            data_size = member.size if member.type in _REGULAR_TYPES else 0
            stream.limit = member.offset_data + data_size + _HEADER_BUDGET
            if name in self.artifacts or name in self.control or name in self.directories:
                raise PackageFormatError(f"archive member {name!r} appears twice")
            kind = _MEMBER_KINDS.get(member.type)
            if member.isdir():
                self._safe_path(name)
                self.directories.add(name)
            elif member.type not in _REGULAR_TYPES:
                raise PackageFormatError(
                    f"archive member {name!r} is {kind or f'of tar type {member.type!r}'}; packages hold "
                    "regular files only"
                )
            elif name in CONTROL_FILES:
                self._read_control(tar, member)
            else:
                self._read_artifact(tar, member)

    def _safe_path(self, name: str) -> None:
        try:
            validate_artifact_path(name)
        except PackageFormatError as exc:
            raise PackageFormatError(f"archive member {name!r} has an unsafe path: {exc.message}") from exc
        if len(self.artifacts) + len(self.directories) >= self.limits.max_files:
            raise PackageFormatError(f"archive has more than {self.limits.max_files} members")

    def _read_control(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        cap = self.limits.control_cap(member.name)
        if member.size > cap:
            raise PackageFormatError(f"{member.name} is {member.size} bytes; at most {cap} are accepted")
        fh = tar.extractfile(member)
        if fh is None:  # pragma: no cover - regular members always have content
            raise PackageFormatError(f"{member.name} has no content")
        data = fh.read(member.size)
        if len(data) != member.size:
            raise PackageFormatError(f"{member.name} is truncated")
        self.control[member.name] = data
        if self.dest is not None:
            self.dest.write(member.name, [data])
        if len(self.control) == len(CONTROL_FILES):
            self._accept_manifest()

    def _read_artifact(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        self._safe_path(name)
        parents = _parents(name)
        for parent in parents:
            if parent in self.artifacts:
                raise PackageFormatError(f"archive member {name!r} is inside {parent!r}, which is a file")
        if name in self._artifact_parents:
            raise PackageFormatError(f"archive member {name!r} is both a file and a directory")
        self._artifact_parents.update(parents)
        if self.manifest is not None:
            _check_listed(self._entries, name, member.size)
        self._total += member.size
        if self._total > self.limits.max_total_bytes:
            raise ResourceExhausted(
                f"package {self.archive.name} holds more than {self.limits.max_total_bytes} bytes of "
                "artifacts"
            )
        if self.dest is None and not self.hash_contents:
            self.artifacts[name] = (member.size, "")
            return  # tarfile skips the content when asked for the next member
        fh = tar.extractfile(member)
        if fh is None:  # pragma: no cover - regular members always have content
            raise PackageFormatError(f"{name} has no content")
        digest = hashlib.sha256()
        size = 0

        def chunks() -> Iterator[bytes]:
            nonlocal size
            while chunk := fh.read(CHUNK_SIZE):
                digest.update(chunk)
                size += len(chunk)
                yield chunk

        if self.dest is None:
            for _ in chunks():
                pass
        else:
            self.dest.write(name, chunks())
        if size != member.size:
            raise PackageFormatError(f"archive member {name!r} is truncated")
        self.artifacts[name] = (size, digest.hexdigest())

    def _accept_manifest(self) -> None:
        """All control files are in: verify (with a trust dir), parse, and check what came before."""
        data = self.control[MANIFEST_FILE]
        if self.trust_dir is not None:
            self.signer = signing.verify_signature(
                data,
                self.control[SIGNATURE_FILE],
                self.control[CERTIFICATES_FILE],
                self.trust_dir,
                now=self.now,
            )
        manifest = parse_manifest(data)
        _check_manifest_limits(manifest, self.limits, self.archive.name)
        self._entries = {entry.path: entry for entry in manifest.files}
        for name, (size, _) in self.artifacts.items():
            _check_listed(self._entries, name, size)
        self.manifest = manifest

    def _finish(self) -> None:
        if MANIFEST_FILE not in self.control:
            raise PackageFormatError(
                f"{self.archive.name} has no {MANIFEST_FILE}; it is not an edgefleet package"
            )
        for control in (SIGNATURE_FILE, CERTIFICATES_FILE):
            if control not in self.control:
                raise SignatureError(f"{self.archive.name} is not signed: {control} is missing")
        if self.manifest is None:  # pragma: no cover - set when the last control file arrived
            self._accept_manifest()
        assert self.manifest is not None
        _check_complete(self.manifest, set(self.artifacts), self.directories)
        if self.hash_contents:
            for entry in self.manifest.files:
                size, digest = self.artifacts[entry.path]
                _check_digest(entry, size, digest)


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def parse_manifest(data: bytes) -> Manifest:
    """Parse ``manifest.json`` bytes, which must be exactly the manifest's canonical form."""
    manifest = Manifest.from_bytes(data)
    if manifest.canonical_bytes() != data:
        raise PackageFormatError(
            "manifest.json is not in canonical form (sorted keys, no white space, UTF-8, no unknown or "
            "duplicate fields); it must be written by a format-v1 packager"
        )
    return manifest


def _check_manifest_limits(manifest: Manifest, limits: Limits, where: str) -> None:
    if len(manifest.files) > limits.max_files:
        raise PackageFormatError(
            f"{where}: manifest lists {len(manifest.files)} files (at most {limits.max_files})"
        )
    total = sum(f.size for f in manifest.files)
    if total > limits.max_total_bytes:
        raise ResourceExhausted(
            f"{where}: manifest declares {total} bytes of artifacts (at most {limits.max_total_bytes})"
        )


def _check_listed(entries: Mapping[str, FileEntry], name: str, size: int) -> None:
    entry = entries.get(name)
    if entry is None:
        raise SignatureError(f"file {name!r} is not listed in the signed manifest")
    if entry.size != size:
        raise SignatureError(f"file {name!r} is {size} bytes; the signed manifest says {entry.size}")


def _check_complete(manifest: Manifest, present: set[str], directories: set[str]) -> None:
    listed = {f.path for f in manifest.files}
    extra = sorted(present - listed)
    if extra:
        raise SignatureError(f"file(s) not listed in the signed manifest: {', '.join(map(repr, extra[:5]))}")
    missing = sorted(listed - present)
    if missing:
        raise SignatureError(
            f"file(s) listed in the manifest are missing: {', '.join(map(repr, missing[:5]))}"
        )
    needed = {parent for path in listed for parent in _parents(path)}
    stray = sorted(directories - needed)
    if stray:
        raise SignatureError(
            f"director(ies) not used by the signed manifest: {', '.join(map(repr, stray[:5]))}"
        )


def _check_digest(entry: FileEntry, size: int, digest: str) -> None:
    if size != entry.size:
        raise SignatureError(f"file {entry.path!r} is {size} bytes; the signed manifest says {entry.size}")
    if digest != entry.sha256:
        raise SignatureError(
            f"file {entry.path!r} was modified: its SHA-256 is {digest}, the signed manifest says "
            f"{entry.sha256}"
        )


def unpack_package(
    archive: Path | str,
    dest: Path | str,
    *,
    trust_dir: Path | str | None = None,
    now: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Path:
    """Safely unpack a package archive into ``dest`` (absent or empty); return ``dest``.

    Rejects absolute paths, ``..``, links, device/FIFO/sparse members, duplicate names and
    oversized headers (PackageFormatError, INVALID_ARGUMENT); files not in the manifest,
    missing files, size or digest mismatches (SignatureError, FAILED_PRECONDITION); packages
    over ``limits`` (RESOURCE_EXHAUSTED). With ``trust_dir`` the signature and chain are also
    verified, before any artifact is written when the manifest comes first (as ``build_package``
    writes it). On any failure nothing is left in ``dest``.
    """
    source = Path(archive)
    target = Path(dest)
    if not source.is_file():
        raise NotFound(f"package {source} not found")
    destination = _Destination(target)
    scan = _ArchiveScan(
        archive=source,
        limits=limits,
        dest=destination,
        trust_dir=Path(trust_dir) if trust_dir is not None else None,
        now=now,
    )
    try:
        scan.run()
    except BaseException:
        destination.abort()
        raise
    log.info("unpacked %s into %s", source, target)
    return target


# --------------------------------------------------------------------------------------------
# Verifying directories


def verify_package_dir(
    directory: Path | str,
    trust_dir: Path | str,
    *,
    now: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Manifest:
    """Verify an unpacked package directory and return its manifest.

    Order: the directory holds only regular files and directories (no links, no special files);
    the signature and certificate chain (:func:`edgefleet.core.signing.verify_signature`); the
    manifest parses and is canonical; the files present are exactly the manifest's plus the
    control files; every file's size and SHA-256. Errors as for :func:`unpack_package`.
    """
    return _verify_dir(Path(directory), Path(trust_dir), now, limits).manifest


def verify_package(
    path: Path | str,
    trust_dir: Path | str,
    *,
    now: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> VerifiedPackage:
    """Verify a package archive (streamed, nothing written) or unpacked directory."""
    target = Path(path)
    if target.is_dir():
        return _verify_dir(target, Path(trust_dir), now, limits)
    scan = _ArchiveScan(archive=target, limits=limits, trust_dir=Path(trust_dir), now=now)
    scan.run()
    if scan.manifest is None or scan.signer is None:  # pragma: no cover - run() sets both or raises
        raise SignatureError(f"{target} was not verified")
    return VerifiedPackage(manifest=scan.manifest, signer=scan.signer)


def _verify_dir(root: Path, trust_dir: Path, now: datetime | None, limits: Limits) -> VerifiedPackage:
    if not root.exists():
        raise NotFound(f"package directory {root} not found")
    if not root.is_dir():
        raise PackageFormatError(f"{root} is not a package directory")
    files, directories = _walk(root, limits)
    control = _read_controls(root, files, limits)
    signer = signing.verify_signature(
        control[MANIFEST_FILE], control[SIGNATURE_FILE], control[CERTIFICATES_FILE], trust_dir, now=now
    )
    manifest = parse_manifest(control[MANIFEST_FILE])
    _check_manifest_limits(manifest, limits, root.name)
    artifacts = {name: st for name, st in files.items() if name not in CONTROL_FILES}
    _check_complete(manifest, set(artifacts), directories)
    # Sizes first: a cheap stat catches most tampering before any file is read.
    for entry in manifest.files:
        size = artifacts[entry.path].st_size
        if size != entry.size:
            raise SignatureError(
                f"file {entry.path!r} is {size} bytes; the signed manifest says {entry.size}"
            )
    for entry in manifest.files:
        digest, size = hash_regular_file(root.joinpath(*entry.path.split("/")), entry.path)
        _check_digest(entry, size, digest)
    return VerifiedPackage(manifest=manifest, signer=signer)


def _walk(root: Path, limits: Limits) -> tuple[dict[str, os.stat_result], set[str]]:
    """Regular files and directories under ``root`` (relative '/' paths); links and specials refused."""
    files: dict[str, os.stat_result] = {}
    directories: set[str] = set()
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        try:
            with os.scandir(root / rel_dir if rel_dir else root) as entries:
                for entry in entries:
                    rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        raise PackageFormatError(
                            f"{rel!r} is a symbolic link; packages may not contain links"
                        )
                    if stat.S_ISDIR(st.st_mode):
                        directories.add(rel)
                        pending.append(rel)
                    elif stat.S_ISREG(st.st_mode):
                        if st.st_nlink > 1:
                            raise PackageFormatError(
                                f"{rel!r} is a hard link ({st.st_nlink} names); packages may not "
                                "contain links"
                            )
                        files[rel] = st
                    else:
                        raise PackageFormatError(
                            f"{rel!r} is a device, FIFO or socket; packages hold regular files only"
                        )
                    if len(files) + len(directories) > limits.max_files + len(CONTROL_FILES):
                        raise PackageFormatError(f"{root} holds more than {limits.max_files} files")
        except OSError as exc:
            raise FailedPrecondition(f"cannot read the package directory {root}: {exc}") from exc
    return files, directories


def _read_controls(root: Path, files: Mapping[str, os.stat_result], limits: Limits) -> dict[str, bytes]:
    if MANIFEST_FILE not in files:
        raise PackageFormatError(f"{root} has no {MANIFEST_FILE}; it is not an edgefleet package")
    for control in (SIGNATURE_FILE, CERTIFICATES_FILE):
        if control not in files:
            raise SignatureError(f"package {root} is not signed: {control} is missing")
    control_data: dict[str, bytes] = {}
    for control in (MANIFEST_FILE, SIGNATURE_FILE, CERTIFICATES_FILE):
        cap = limits.control_cap(control)
        if files[control].st_size > cap:
            raise PackageFormatError(
                f"{control} is {files[control].st_size} bytes; at most {cap} are accepted"
            )
        control_data[control] = _read_small(root / control, cap)
    return control_data


def _open_regular(path: Path, shown: str) -> int:
    """An fd for ``path`` that is guaranteed to be a regular file reached without a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise FailedPrecondition(f"cannot open {shown!r}: {exc}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PackageFormatError(f"{shown!r} is not a regular file")
    return fd


def _read_small(path: Path, cap: int) -> bytes:
    fd = _open_regular(path, path.name)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise PackageFormatError(f"{path.name} is larger than {cap} bytes")
    return data


def hash_regular_file(path: Path, shown: str | None = None) -> tuple[str, int]:
    """(hex SHA-256, size) of a regular file, read in 1 MiB chunks and never through a link; ``shown``
    names the file in errors (default: the path)."""
    fd = _open_regular(path, str(path) if shown is None else shown)
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    size = 0
    with os.fdopen(fd, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size


# --------------------------------------------------------------------------------------------
# Inspecting


def inspect_package(path: Path | str, *, limits: Limits = DEFAULT_LIMITS) -> PackageInfo:
    """Manifest and signer of a package archive or directory, without verifying anything."""
    target = Path(path)
    if target.is_dir():
        files = {name: (target / name).lstat() for name in CONTROL_FILES if (target / name).is_file()}
        control = _read_controls(target, files, limits)
    else:
        scan = _ArchiveScan(archive=target, limits=limits, hash_contents=False)
        scan.run()
        control = scan.control
    manifest = parse_manifest(control[MANIFEST_FILE])
    chain = signing.parse_chain(control[CERTIFICATES_FILE])
    return PackageInfo(
        path=target,
        manifest=manifest,
        chain=tuple(signing.describe_certificate(c) for c in chain),
        signature_size=len(control[SIGNATURE_FILE]),
    )
