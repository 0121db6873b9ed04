"""The package manifest (format v1): what a signed model package contains and needs.

The manifest is JSON. The signature covers its *canonical bytes*: UTF-8 JSON with keys sorted,
no insignificant white space, and no ASCII escaping (see docs/package-format.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from edgefleet.core.errors import PackageFormatError, quoted
from edgefleet.core.tensors import TensorSpec

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
CERTIFICATES_FILE = "signer-chain.pem"
# Files every package has besides its artifacts; they are not listed in the manifest's files.
CONTROL_FILES = frozenset({MANIFEST_FILE, SIGNATURE_FILE, CERTIFICATES_FILE})

# \Z, not $: '$' also matches before a trailing newline, which would let "name\n" through.
MODEL_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*\Z")
MODEL_NAME_MAX = 63
VERSION_RE = re.compile(r"^[a-zA-Z0-9 _.]+\Z")
VERSION_MAX = 30
_SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
# Artifact paths: relative, forward slashes, no '.', '..' or empty components.
_PATH_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*\Z")

KNOWN_ARCHES = ("x86_64", "aarch64", "armv7l", "any")
KNOWN_OS = ("linux", "any")


def validate_model_name(name: str, what: str = "model name") -> str:
    """Return ``name`` if it is a valid model name/alias, else raise INVALID_ARGUMENT."""
    if not isinstance(name, str) or not 1 <= len(name) <= MODEL_NAME_MAX or not MODEL_NAME_RE.match(name):
        raise PackageFormatError(
            f"{what} {quoted(name)} is invalid: 1-{MODEL_NAME_MAX} characters matching [a-zA-Z0-9](-*[a-zA-Z0-9])*"
        )
    return name


def validate_version(version: str) -> str:
    """Return ``version`` if it is a valid model version, else raise INVALID_ARGUMENT."""
    if not isinstance(version, str) or not 1 <= len(version) <= VERSION_MAX or not VERSION_RE.match(version):
        raise PackageFormatError(
            f"model version {version!r} is invalid: 1-{VERSION_MAX} characters from [a-zA-Z0-9 _.]"
        )
    return version


def validate_artifact_path(path: str) -> str:
    """Return ``path`` if it is a safe relative artifact path, else raise INVALID_ARGUMENT."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise PackageFormatError(f"artifact path {path!r} must be relative and use '/'")
    for part in path.split("/"):
        if part in ("", ".", "..") or not _PATH_COMPONENT_RE.match(part):
            raise PackageFormatError(f"artifact path {path!r} has an unsafe component {part!r}")
    if path in CONTROL_FILES:
        raise PackageFormatError(f"artifact path {path!r} collides with a package control file")
    return path


@dataclass(frozen=True)
class FileEntry:
    """One artifact file: relative path, size in bytes and SHA-256 (lower-case hex)."""

    path: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Runtime:
    """The runtime backend that serves the artifact and the minimum version it needs."""

    name: str
    min_version: str = "0"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "min_version": self.min_version}


@dataclass(frozen=True)
class Target:
    """Where the artifact runs. ``arch`` ``any`` means portable (e.g. a plain ONNX graph)."""

    os: str = "linux"
    arch: str = "any"
    accelerator: str = "none"

    def to_dict(self) -> dict[str, object]:
        return {"os": self.os, "arch": self.arch, "accelerator": self.accelerator}


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest. Build with the constructor; read with :meth:`from_bytes`."""

    name: str
    version: str
    runtime: Runtime
    target: Target
    model_file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: tuple[FileEntry, ...]
    created: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    provenance: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        validate_model_name(self.name)
        validate_version(self.version)
        if self.format_version != FORMAT_VERSION:
            raise PackageFormatError(
                f"manifest format version {self.format_version} is not supported (this edgefleet reads "
                f"{FORMAT_VERSION})"
            )
        if not self.runtime.name:
            raise PackageFormatError("manifest runtime.name is empty")
        if self.target.arch not in KNOWN_ARCHES:
            raise PackageFormatError(
                f"target arch {self.target.arch!r} unknown (known: {', '.join(KNOWN_ARCHES)})"
            )
        if self.target.os not in KNOWN_OS:
            raise PackageFormatError(f"target os {self.target.os!r} unknown (known: {', '.join(KNOWN_OS)})")
        seen: set[str] = set()
        for entry in self.files:
            validate_artifact_path(entry.path)
            if entry.path in seen:
                raise PackageFormatError(f"file {entry.path!r} is listed twice in the manifest")
            seen.add(entry.path)
            if entry.size < 0 or not _SHA256_RE.match(entry.sha256):
                raise PackageFormatError(f"file {entry.path!r}: bad size or sha256 in the manifest")
        for path in seen:
            parent = path.rpartition("/")[0]
            while parent:
                if parent in seen:
                    raise PackageFormatError(f"file {path!r} is inside {parent!r}, which is listed as a file")
                parent = parent.rpartition("/")[0]
        if self.model_file not in seen:
            raise PackageFormatError(f"model_file {self.model_file!r} is not among the manifest's files")
        for group in (self.inputs, self.outputs):
            names = [t.name for t in group]
            if len(set(names)) != len(names):
                raise PackageFormatError(f"tensor names must be unique, got {names}")

    @property
    def package_filename(self) -> str:
        """``<name>-<version>.tar.gz`` (spaces in versions become underscores in the file name)."""
        return f"{self.name}-{self.version.replace(' ', '_')}.tar.gz"

    def file(self, path: str) -> FileEntry:
        """The entry for ``path``."""
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "runtime": self.runtime.to_dict(),
            "target": self.target.to_dict(),
            "model_file": self.model_file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "files": [f.to_dict() for f in self.files],
            "created": self.created,
            "provenance": dict(self.provenance),
        }

    def canonical_bytes(self) -> bytes:
        """The exact bytes that are signed and written as ``manifest.json``."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse and validate manifest bytes; PackageFormatError (INVALID_ARGUMENT) if malformed."""
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PackageFormatError(f"manifest is not valid UTF-8 JSON: {exc}") from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: object) -> Manifest:
        if not isinstance(raw, dict):
            raise PackageFormatError("manifest must be a JSON object")
        # Check the format version first so a newer manifest says so instead of failing on a field.
        if "format_version" in raw and raw["format_version"] != FORMAT_VERSION:
            _int(raw["format_version"], "format_version")
            raise PackageFormatError(
                f"manifest format version {raw['format_version']} is not supported (this edgefleet reads "
                f"{FORMAT_VERSION})"
            )
        try:
            runtime = raw["runtime"]
            target = raw["target"]
            files = raw["files"]
            if not isinstance(runtime, dict) or not isinstance(target, dict) or not isinstance(files, list):
                raise PackageFormatError("manifest runtime/target must be objects and files a list")
            provenance = raw.get("provenance", {})
            if not isinstance(provenance, dict):
                raise PackageFormatError("manifest provenance must be an object")
            return cls(
                format_version=_int(raw["format_version"], "format_version"),
                name=_str(raw["name"], "name"),
                version=_str(raw["version"], "version"),
                runtime=Runtime(
                    name=_str(runtime["name"], "runtime.name"),
                    min_version=_str(runtime.get("min_version", "0"), "runtime.min_version"),
                ),
                target=Target(
                    os=_str(target.get("os", "linux"), "target.os"),
                    arch=_str(target.get("arch", "any"), "target.arch"),
                    accelerator=_str(target.get("accelerator", "none"), "target.accelerator"),
                ),
                model_file=_str(raw["model_file"], "model_file"),
                inputs=tuple(TensorSpec.from_dict(t) for t in _list(raw.get("inputs", []), "inputs")),
                outputs=tuple(TensorSpec.from_dict(t) for t in _list(raw.get("outputs", []), "outputs")),
                files=tuple(_file_entry(f) for f in files),
                created=_str(raw.get("created", ""), "created"),
                provenance={str(k): str(v) for k, v in provenance.items()},
            )
        except KeyError as exc:
            raise PackageFormatError(f"manifest is missing the field {exc.args[0]!r}") from exc
        except PackageFormatError:
            raise
        except Exception as exc:  # InvalidArgument from TensorSpec and similar
            raise PackageFormatError(f"manifest is malformed: {exc}") from exc


def canonical_json(value: object) -> bytes:
    """Canonical JSON bytes: sorted keys, compact separators, UTF-8."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates, e.g. parsed from a "\ud800" escape
        raise PackageFormatError(f"manifest holds text that is not valid Unicode: {exc}") from exc


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise PackageFormatError(f"manifest field {what!r} must be a string")
    return value


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise PackageFormatError(f"manifest field {what!r} must be an integer")
    return value


def _list(value: object, what: str) -> list[object]:
    if not isinstance(value, list):
        raise PackageFormatError(f"manifest field {what!r} must be a list")
    return value


def _file_entry(value: object) -> FileEntry:
    if not isinstance(value, dict):
        raise PackageFormatError("manifest files entries must be objects")
    return FileEntry(
        path=_str(value.get("path"), "files.path"),
        size=_int(value.get("size"), "files.size"),
        sha256=_str(value.get("sha256"), "files.sha256"),
    )
