"""The in-memory store (``memory://name``): the in-package fake for tests and dry runs.

Stores opened with the same name in one process share their objects, as two clients of one
bucket do; :func:`MemoryStore.forget` drops a name.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, ClassVar
from urllib.parse import urlsplit

from edgefleet.core.errors import InvalidArgument, NotFound
from edgefleet.storage.base import CHUNK_SIZE, validate_key, validate_prefix


class MemoryStore:
    """Objects in a process-wide dict per store name; ``what`` names an object in error messages."""

    _shared: ClassVar[dict[str, dict[str, bytes]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str, *, what: str = "object") -> None:
        if not name:
            raise InvalidArgument("a memory store needs a name: memory://<name>")
        self.name = name
        self.what = what
        with self._lock:
            self._objects = self._shared.setdefault(name, {})

    @classmethod
    def from_uri(cls, uri: str, *, what: str = "object") -> MemoryStore:
        """A store for ``memory://name`` (the rest of the URI is part of the name)."""
        parts = urlsplit(uri)
        return cls((parts.netloc + parts.path).rstrip("/"), what=what)

    @classmethod
    def forget(cls, name: str) -> None:
        """Drop every object of the store called ``name``."""
        with cls._lock:
            cls._shared.pop(name, None)

    @property
    def uri(self) -> str:
        return f"memory://{self.name}"

    def _get(self, key: str) -> bytes:
        validate_key(key, self.what)
        with self._lock:
            data = self._objects.get(key)
        if data is None:
            raise NotFound(f"{self.what} {key!r} does not exist in {self.uri}")
        return data

    def put_bytes(self, key: str, data: bytes) -> None:
        validate_key(key, self.what)
        with self._lock:
            self._objects[key] = bytes(data)

    def put_stream(self, key: str, source: BinaryIO) -> None:
        validate_key(key, self.what)
        self.put_bytes(key, b"".join(iter(lambda: source.read(CHUNK_SIZE), b"")))

    def put_file(self, key: str, path: Path) -> None:
        validate_key(key, self.what)
        with path.open("rb") as source:
            self.put_stream(key, source)

    def get_bytes(self, key: str) -> bytes:
        return self._get(key)

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        data = self._get(key)
        end = len(data) if length is None else min(len(data), start + length)
        return (data[i : min(i + CHUNK_SIZE, end)] for i in range(start, end, CHUNK_SIZE))

    def size(self, key: str) -> int:
        return len(self._get(key))

    def exists(self, key: str) -> bool:
        validate_key(key, self.what)
        with self._lock:
            return key in self._objects

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix, self.what)
        with self._lock:
            return sorted(key for key in self._objects if key.startswith(prefix))

    def delete(self, key: str) -> None:
        validate_key(key, self.what)
        with self._lock:
            self._objects.pop(key, None)

    def url(self, key: str) -> str:
        return f"{self.uri}/{validate_key(key, self.what)}"
