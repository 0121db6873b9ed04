"""The in-memory store (``memory://name``), the in-package fake: stores of one name share objects."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import BinaryIO, ClassVar
from urllib.parse import urlsplit

from edgefleet.storage.base import CHUNK_SIZE, ObjectStore, StoreOptions, validate_key, validate_prefix


class MemoryStore(ObjectStore):
    """Objects in a process-wide dict per store name, as two clients of one bucket see it."""

    _shared: ClassVar[dict[str, dict[str, bytes]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str, options: StoreOptions = StoreOptions()) -> None:  # noqa: B008 - frozen
        super().__init__(options)
        self.name = name
        with self._lock:
            self._objects = self._shared.setdefault(name, {})

    @classmethod
    def from_uri(cls, uri: str, options: StoreOptions) -> MemoryStore:
        """A store for ``memory://name`` (the rest of the URI is part of the name)."""
        parts = urlsplit(uri)
        return cls((parts.netloc + parts.path).rstrip("/"), options)

    @classmethod
    def forget(cls, name: str) -> None:
        """Drop every object of the store called ``name``."""
        with cls._lock:
            cls._shared.pop(name, None)

    @property
    def uri(self) -> str:
        return f"memory://{self.name}"

    def _get(self, key: str) -> bytes:
        with self._lock:
            data = self._objects.get(validate_key(key, self.what))
        if data is None:
            raise self._missing(key)
        return data

    def put_stream(self, key: str, source: BinaryIO) -> None:
        validate_key(key, self.what)
        data = b"".join(iter(lambda: source.read(CHUNK_SIZE), b""))
        with self._lock:
            self._objects[key] = data

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        data = self._get(key)
        end = len(data) if length is None else min(len(data), start + length)
        return (data[i : min(i + CHUNK_SIZE, end)] for i in range(start, end, CHUNK_SIZE))

    def size(self, key: str) -> int:
        return len(self._get(key))

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix, self.what)
        with self._lock:
            return sorted(key for key in self._objects if key.startswith(prefix))

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(validate_key(key, self.what), None)

    def check(self) -> None:
        """Nothing can be misconfigured in memory."""

    def url(self, key: str) -> str:
        return f"{self.uri}/{validate_key(key, self.what)}"
