"""Where capture objects go: the small sink seam (put / get / list / uri) and its Disk implementation.

A key is a relative, ``/``-separated name such as
``prefix/fleet/model/2024/01/31/09/<32hex>.jsonl``; a sink maps it to a place (a file under a
root directory, later an object in a bucket) and names that place with a URI, which capture
records use as ``data-ref``. Sinks are chosen by URI scheme with :func:`open_sink`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit
from urllib.request import url2pathname

from edgefleet.core.errors import (
    EdgefleetError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)

_TMP_SUFFIX = ".tmp"


class Sink(Protocol):
    """A destination for capture objects. Implementations translate their errors to EdgefleetError."""

    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key`` atomically (all or nothing, replacing any old one); return its URI."""
        ...

    def get(self, key: str) -> bytes:
        """The object stored under ``key`` (NOT_FOUND if there is none)."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix`` (a plain string prefix, as object stores do), sorted."""
        ...

    def uri(self, key: str) -> str:
        """The URI naming ``key`` in this sink (what a record's ``data-ref`` holds)."""
        ...


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise INVALID_ARGUMENT."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key or "\0" in key:
        raise InvalidArgument(f"sink key {key!r} must be a non-empty relative '/'-separated name")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidArgument(f"sink key {key!r} has an empty, '.' or '..' component")
    return key


def _translate(exc: OSError, what: str) -> EdgefleetError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"{what}: no space left: {exc}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"{what}: {exc}")
    return Unavailable(f"{what}: {exc}")


def fsync_dir(directory: Path) -> None:
    """fsync a directory so entries created or renamed in it survive power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskSink:
    """Objects as files under ``root`` (the Disk capture destination); URIs are ``file://`` URIs.

    ``put`` is atomic and, with ``fsync``, durable when it returns: the bytes go to a hidden
    ``.<name>.<random>.tmp`` file in the target folder, which is fsynced, renamed over the target,
    and the folder (and any folder created for it) fsynced. Readers never see a partial file, and a
    crash leaves either the old object or the new one (plus, at worst, a stray ``.tmp`` file that
    :meth:`list` ignores).
    """

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.root = Path(root).absolute()
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"DiskSink({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _make_dirs(self, directory: Path) -> None:
        missing: list[Path] = []
        current = directory
        while not current.is_dir():
            missing.append(current)
            current = current.parent
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):  # another writer may have created it meanwhile
                folder.mkdir()
            if self.fsync:
                fsync_dir(folder.parent)

    def put(self, key: str, data: bytes) -> str:
        """Write ``data`` to ``root/key`` atomically; return its ``file://`` URI."""
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")
        try:
            self._make_dirs(path.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            if self.fsync:
                fsync_dir(path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):  # the original error is the one to report
                tmp.unlink(missing_ok=True)
            raise _translate(exc, f"cannot write capture object {key!r} under {self.root}") from exc
        return self.uri(key)

    def get(self, key: str) -> bytes:
        """The bytes of ``root/key``."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"no capture object {key!r} under {self.root}") from exc
        except OSError as exc:
            raise _translate(exc, f"cannot read capture object {key!r}") from exc

    def list(self, prefix: str = "") -> list[str]:
        """Keys of the files under ``root`` starting with ``prefix`` (temporary files excluded)."""
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        keys: list[str] = []
        for folder, _, files in os.walk(base):
            for name in files:
                if name.startswith(".") and name.endswith(_TMP_SUFFIX):
                    continue
                key = Path(folder, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def uri(self, key: str) -> str:
        """``file:///<root>/<key>`` (percent-encoded where needed)."""
        return self._path(key).as_uri()

    def read_uri(self, uri: str) -> bytes:
        """Read a ``file://`` URI this sink produced (e.g. a record's ``data-ref``)."""
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise InvalidArgument(f"{uri!r} is not a local file:// URI")
        path = Path(url2pathname(parts.path))
        try:
            key = path.relative_to(self.root).as_posix()
        except ValueError as exc:
            raise InvalidArgument(f"{uri!r} is not under this sink's root {self.root}") from exc
        return self.get(key)


def open_sink(target: str | Path, *, fsync: bool = True) -> Sink:
    """The sink for ``target``: a ``file://`` URI or a plain path gives a :class:`DiskSink`.

    Unknown schemes fail with INVALID_ARGUMENT listing the known ones (object stores come later).
    """
    if isinstance(target, Path):
        return DiskSink(target, fsync=fsync)
    parts = urlsplit(target)
    scheme = parts.scheme.lower()
    if scheme == "":
        return DiskSink(Path(target), fsync=fsync)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidArgument(f"file URI {target!r} must not name a host")
        return DiskSink(Path(url2pathname(parts.path)), fsync=fsync)
    raise InvalidArgument(f"unknown capture destination scheme {parts.scheme!r} in {target!r} (known: file)")
