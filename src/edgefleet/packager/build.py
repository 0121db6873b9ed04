"""Building signed model packages (format v1, docs/package-format.md) on a workstation or in CI;
:mod:`edgefleet.core.package` reads, verifies and unpacks them (the device side needs only that)."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from edgefleet import __version__
from edgefleet.core import signing
from edgefleet.core.errors import FailedPrecondition, InvalidArgument, NotFound, PackageFormatError
from edgefleet.core.files import atomic_writer
from edgefleet.core.manifest import (
    CERTIFICATES_FILE,
    MANIFEST_FILE,
    SIGNATURE_FILE,
    FileEntry,
    Manifest,
    Runtime,
    Target,
    validate_artifact_path,
    validate_model_name,
    validate_version,
)
from edgefleet.core.package import hash_regular_file
from edgefleet.core.tensors import TensorSpec
from edgefleet.packager.modelmeta import SUPPORTED_SUFFIXES, read_model_metadata

log = logging.getLogger(__name__)

_CREATED_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def build_package(
    model_path: Path | str,
    *,
    name: str,
    version: str,
    key_dir: Path | str,
    out_dir: Path | str,
    runtime: Runtime | str | None = None,
    target: Target | None = None,
    inputs: Sequence[TensorSpec] | None = None,
    outputs: Sequence[TensorSpec] | None = None,
    extra_files: Iterable[Path | str | tuple[Path | str, str]] = (),
    provenance: Mapping[str, str] | None = None,
    created: datetime | None = None,
) -> Path:
    """Build and sign ``<out_dir>/<name>-<version>.tar.gz``; return its path.

    The archive is written to a temporary file and renamed into place, atomically replacing an
    existing package of the same name and version.

    The model goes at the archive's top level under its file name; ``extra_files`` are paths
    (stored under their file name) or ``(path, archive_path)`` pairs. Runtime, inputs and outputs
    default to what :func:`~edgefleet.packager.modelmeta.read_model_metadata` reads from the model;
    ``runtime`` may be a name, whose minimum version then comes from the model when it matches.
    ``created`` (default: now) is recorded in the manifest and used as every member's mtime, so
    the same inputs, keys and ``created`` give the same bytes (Ed25519 signatures are
    deterministic).
    """
    validate_model_name(name)
    validate_version(version)
    model = Path(model_path)
    if not model.is_file():
        raise NotFound(f"model file {model} not found")
    signer = signing.load_signer(key_dir)
    sources: list[tuple[Path, str]] = [(model, _arcname(model, model.name))]
    for extra in extra_files:
        src, arcname = (
            (Path(extra[0]), extra[1]) if isinstance(extra, tuple) else (Path(extra), Path(extra).name)
        )
        if not src.is_file():
            raise NotFound(f"extra file {src} not found (or not a regular file)")
        sources.append((src, _arcname(src, arcname)))
    arcnames = [a for _, a in sources]
    duplicates = sorted({a for a in arcnames if arcnames.count(a) > 1})
    if duplicates:
        raise InvalidArgument(f"two files would be stored as {', '.join(duplicates)} in the package")

    resolved_runtime, inputs_, outputs_ = _model_description(model, runtime, inputs, outputs)
    hashed: list[FileEntry] = []
    for src, arcname in sources:
        digest, size = hash_regular_file(src)
        hashed.append(FileEntry(path=arcname, size=size, sha256=digest))
    entries = tuple(hashed)
    when = (created or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    prov = {
        "source_file": model.name,
        "source_sha256": entries[0].sha256,
        "edgefleet_version": __version__,
    }
    prov.update(provenance or {})
    manifest = Manifest(
        name=name,
        version=version,
        runtime=resolved_runtime,
        target=target or Target(),
        model_file=entries[0].path,
        inputs=tuple(inputs_),
        outputs=tuple(outputs_),
        files=entries,
        created=when.strftime(_CREATED_FORMAT),
        provenance=prov,
    )
    manifest_bytes = manifest.canonical_bytes()
    signature = signing.sign(manifest_bytes, signer)

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FailedPrecondition(f"cannot create the output directory {out}: {exc}") from exc
    final = out / manifest.package_filename
    controls = {MANIFEST_FILE: manifest_bytes, SIGNATURE_FILE: signature, CERTIFICATES_FILE: signer.chain_pem}
    _write_archive(final, controls, sources, manifest, int(when.timestamp()))
    log.info("built %s (%s %s, %d files)", final, name, version, len(entries))
    return final


def _arcname(src: Path, arcname: str) -> str:
    try:
        return validate_artifact_path(arcname)
    except PackageFormatError as exc:
        raise InvalidArgument(
            f"{src} cannot be stored as {arcname!r} in a package: {exc.message} "
            "(package file names use letters, digits and _ . + -)"
        ) from exc


def _model_description(
    model: Path,
    runtime: Runtime | str | None,
    inputs: Sequence[TensorSpec] | None,
    outputs: Sequence[TensorSpec] | None,
) -> tuple[Runtime, Sequence[TensorSpec], Sequence[TensorSpec]]:
    """Runtime and tensors: the caller's where given, the model's metadata for the rest.

    The model is read only when something is missing, or when ``runtime`` names the model's own
    kind (for its minimum version); so any file can be packaged for any runtime when runtime,
    inputs and outputs are all given.
    """
    kind = SUPPORTED_SUFFIXES.get(model.suffix.lower())
    own_kind = isinstance(runtime, str) and runtime == kind
    if runtime is not None and inputs is not None and outputs is not None and not own_kind:
        resolved = runtime if isinstance(runtime, Runtime) else Runtime(runtime, "0")
        return resolved, inputs, outputs
    try:
        meta = read_model_metadata(model)
    except InvalidArgument as exc:
        if kind is None:
            raise InvalidArgument(
                f"{exc.message}; to package another kind of model, give its runtime, inputs and outputs"
            ) from exc
        raise
    if runtime is None:
        resolved = Runtime(meta.runtime, meta.runtime_min_version)
    elif isinstance(runtime, str):
        resolved = Runtime(runtime, meta.runtime_min_version if runtime == meta.runtime else "0")
    else:
        resolved = runtime
    return (
        resolved,
        inputs if inputs is not None else meta.inputs,
        outputs if outputs is not None else meta.outputs,
    )


def _write_archive(
    final: Path,
    controls: Mapping[str, bytes],
    sources: Sequence[tuple[Path, str]],
    manifest: Manifest,
    mtime: int,
) -> None:
    """Write the deterministic .tar.gz next to ``final`` and rename it into place."""
    try:
        with (
            atomic_writer(final, mode=0o644) as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime, compresslevel=6) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            # Control files first, so readers can check the manifest before any artifact.
            for control in (MANIFEST_FILE, SIGNATURE_FILE, CERTIFICATES_FILE):
                data = controls[control]
                tar.addfile(_tarinfo(control, len(data), mtime), io.BytesIO(data))
            entries = {f.path: f for f in manifest.files}
            for src, arcname in sorted(sources, key=lambda s: s[1]):
                entry = entries[arcname]
                with src.open("rb") as fh:
                    reader = _HashingReader(fh)
                    tar.addfile(_tarinfo(arcname, entry.size, mtime), reader)
                if reader.hexdigest() != entry.sha256:
                    raise FailedPrecondition(f"{src} changed while the package was being built")
    except OSError as exc:
        raise FailedPrecondition(f"cannot write the package {final}: {exc}") from exc


def _tarinfo(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class _HashingReader:
    """A read-only file wrapper that hashes what is read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._hash.update(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
