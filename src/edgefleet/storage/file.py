"""The directory store (``file://``): objects are files under a root folder.

A write goes to a hidden ``.<name>.<random>.tmp`` file beside the target, which is fsynced (with
``fsync``), renamed over the target, and the folder (and any folder created for it) fsynced: a
crash leaves the old object or the new one, plus at worst a hidden file that ``list`` skips.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit
from urllib.request import url2pathname

from edgefleet.core.errors import (
    EdgefleetError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from edgefleet.core.files import atomic_writer, fsync_dir
from edgefleet.storage.base import CHUNK_SIZE, ObjectStore, StoreOptions, validate_key, validate_prefix


def translate_os_error(exc: OSError, message: str) -> EdgefleetError:
    """The EdgefleetError for a failed file operation: full disk, refused, or unavailable."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"{message}: no space left: {exc}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"{message}: {exc}")
    return Unavailable(f"{message}: {exc}")


class FileStore(ObjectStore):
    """Objects as files under ``root``; their URLs are ``file://`` URIs."""

    def __init__(self, root: Path | str, options: StoreOptions = StoreOptions()) -> None:  # noqa: B008 - frozen
        super().__init__(options)
        self.root = Path(root).absolute()

    @classmethod
    def from_uri(cls, uri: str, options: StoreOptions) -> FileStore:
        """A store for ``file:///absolute/dir`` (``localhost`` is the only host allowed)."""
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise InvalidArgument(f"file URI {uri!r} must not name a host")
        if not parts.path:
            raise InvalidArgument(f"file URI {uri!r} must look like file:///absolute/dir")
        return cls(Path(url2pathname(parts.path)), options)

    @property
    def uri(self) -> str:
        return self.root.as_uri()

    def check(self) -> None:
        """The root exists (it is made if missing) and this process may write into it."""
        try:
            if self.root.exists() and not self.root.is_dir():
                raise Unavailable(f"{self.what} store {self.uri}: {self.root} is not a directory")
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise PermissionDenied(
                    f"{self.what} store {self.uri}: {self.root} is not writable by this process"
                )
        except OSError as exc:
            raise translate_os_error(exc, f"{self.what} store {self.uri}") from exc

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key, self.what)

    def _make_dirs(self, directory: Path) -> None:
        missing: list[Path] = []
        while not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):  # another writer may have created it meanwhile
                folder.mkdir()
            if self.options.fsync:
                fsync_dir(folder.parent)

    def put_stream(self, key: str, source: BinaryIO) -> None:
        path = self._path(key)
        try:
            self._make_dirs(path.parent)
            with atomic_writer(path, mode=None, fsync=self.options.fsync) as out:
                shutil.copyfileobj(source, out, CHUNK_SIZE)
        except OSError as exc:
            raise translate_os_error(exc, f"cannot write {self.what} {key!r} under {self.root}") from exc

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        try:
            handle = self._path(key).open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise self._missing(key) from exc
        except OSError as exc:
            raise translate_os_error(exc, f"cannot read {self.what} {key!r}") from exc
        return self._chunks(handle, key, start, length)

    def _chunks(self, handle: BinaryIO, key: str, start: int, length: int | None) -> Iterator[bytes]:
        with handle:
            try:
                handle.seek(start)
                remaining = length
                while remaining is None or remaining > 0:
                    chunk = handle.read(CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining))
                    if not chunk:
                        return
                    remaining = None if remaining is None else remaining - len(chunk)
                    yield chunk
            except OSError as exc:
                raise translate_os_error(exc, f"cannot read {self.what} {key!r}") from exc

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise self._missing(key)
        return path.stat().st_size

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / validate_prefix(prefix, self.what).rpartition("/")[0]
        keys: list[str] = []
        for folder, folders, files in os.walk(base):
            folders[:] = [name for name in folders if not name.startswith(".")]
            for name in files:
                key = Path(folder, name).relative_to(self.root).as_posix()
                if key.startswith(prefix) and not name.startswith("."):  # no key part starts with "."
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
