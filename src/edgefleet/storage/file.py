"""The directory store (``file://``): objects are files under a root folder.

Writes are atomic and, with ``fsync``, durable when they return: the bytes go to a hidden
``.<name>.<random>.tmp`` file in the target folder, which is fsynced, renamed over the target, and
the folder (and any folder created for it) fsynced. A crash leaves the old object or the new one
(plus at worst a stray hidden file, which :meth:`FileStore.list` ignores: no key starts with ``.``).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
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
from edgefleet.storage.base import CHUNK_SIZE, validate_key, validate_prefix


def fsync_dir(directory: Path) -> None:
    """fsync a directory so entries created or renamed in it survive power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def translate_os_error(exc: OSError, message: str) -> EdgefleetError:
    """The EdgefleetError for a failed file operation: full disk, refused, or unavailable."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"{message}: no space left: {exc}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"{message}: {exc}")
    return Unavailable(f"{message}: {exc}")


class FileStore:
    """Objects as files under ``root``; ``what`` names an object in error messages."""

    def __init__(self, root: Path | str, *, fsync: bool = True, what: str = "object") -> None:
        self.root = Path(root).absolute()
        self.fsync = fsync
        self.what = what

    @classmethod
    def from_uri(cls, uri: str, *, fsync: bool = True, what: str = "object") -> FileStore:
        """A store for ``file:///absolute/dir`` (``localhost`` is the only host allowed)."""
        parts = urlsplit(uri)
        if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
            raise InvalidArgument(f"file URI {uri!r} must not name a host")
        if not parts.path:
            raise InvalidArgument(f"file URI {uri!r} must look like file:///absolute/dir")
        return cls(Path(url2pathname(parts.path)), fsync=fsync, what=what)

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    @property
    def uri(self) -> str:
        return self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key, self.what)

    def _missing(self, key: str) -> NotFound:
        return NotFound(f"{self.what} {key!r} does not exist in {self.uri}")

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

    def put_stream(self, key: str, source: BinaryIO) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            self._make_dirs(path.parent)
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb", buffering=0) as out:
                shutil.copyfileobj(source, out, CHUNK_SIZE)
                if self.fsync:
                    os.fsync(out.fileno())
            os.replace(tmp, path)
            if self.fsync:
                fsync_dir(path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):  # the original error is the one to report
                tmp.unlink(missing_ok=True)
            raise translate_os_error(exc, f"cannot write {self.what} {key!r} under {self.root}") from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        self.put_stream(key, io.BytesIO(data))

    def put_file(self, key: str, path: Path) -> None:
        try:
            source = path.open("rb")
        except OSError as exc:
            raise translate_os_error(exc, f"cannot read {path} to store as {key!r}") from exc
        with source:
            self.put_stream(key, source)

    def _open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise self._missing(key) from exc
        except OSError as exc:
            raise translate_os_error(exc, f"cannot read {self.what} {key!r}") from exc

    def get_bytes(self, key: str) -> bytes:
        with self._open(key) as handle:
            try:
                return handle.read()
            except OSError as exc:
                raise translate_os_error(exc, f"cannot read {self.what} {key!r}") from exc

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        return self._chunks(self._open(key), key, start, length)

    def _chunks(self, handle: BinaryIO, key: str, start: int, length: int | None) -> Iterator[bytes]:
        with handle:
            try:
                handle.seek(start)
                remaining = length
                while remaining is None or remaining > 0:
                    chunk = handle.read(CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining))
                    if not chunk:
                        return
                    if remaining is not None:
                        remaining -= len(chunk)
                    yield chunk
            except OSError as exc:
                raise translate_os_error(exc, f"cannot read {self.what} {key!r}") from exc

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            if path.is_file():
                return path.stat().st_size
        except OSError as exc:
            raise translate_os_error(exc, f"cannot read {self.what} {key!r}") from exc
        raise self._missing(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix, self.what)
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        keys: list[str] = []
        for folder, folders, files in os.walk(base):
            folders[:] = [name for name in folders if not name.startswith(".")]
            for name in files:
                if name.startswith("."):  # temporary files; no key component starts with "."
                    continue
                key = Path(folder, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise translate_os_error(exc, f"cannot delete {self.what} {key!r}") from exc

    def url(self, key: str) -> str:
        """``file:///<root>/<key>`` (percent-encoded where needed)."""
        return self._path(key).as_uri()
