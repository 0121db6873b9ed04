"""The object-store seam (put / get / list / delete / exists, streaming) and the one rule for keys.

A key is a relative ``/``-separated name whose components match ``[A-Za-z0-9_][A-Za-z0-9_.+=@ -]*``
(the server's artifact rule, not the capture sink's looser one; see :func:`validate_key`).
"""

from __future__ import annotations

import io
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from edgefleet.core.errors import InvalidArgument, NotFound

#: Bytes per chunk when streaming an object in or out.
CHUNK_SIZE = 1024 * 1024
#: S3's limit on a key (UTF-8 bytes), and the usual file-system limit on one name.
MAX_KEY_BYTES, MAX_COMPONENT_BYTES = 1024, 255
_COMPONENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=@ -]*")


def is_safe_component(part: str) -> bool:
    """Whether ``part`` may be one component of a key (or a folder named after it)."""
    return bool(_COMPONENT_RE.fullmatch(part)) and len(part.encode()) <= MAX_COMPONENT_BYTES


def validate_key(key: str, what: str = "object") -> str:
    """``key`` if it is safe, else INVALID_ARGUMENT naming ``what`` the key is for.

    Strict on purpose: every key edgefleet writes fits (``models/<name>/<version>/<target>/<sha256>/
    <file>``, ``<prefix>/<fleet>/<model>/YYYY/MM/DD/HH/[raw-data/]<hex>...``), and it keeps out what
    the loose rule let through and stores disagree on: control characters and newlines, names
    starting with ``.`` (where a file store keeps its temporary files), ``-`` or a space, non-ASCII,
    and characters S3 says need special handling.
    """
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key or "\0" in key:
        raise InvalidArgument(f"{what} key {key!r} must be a non-empty relative '/'-separated name")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidArgument(f"{what} key {key[:64]!r}... is longer than {MAX_KEY_BYTES} bytes")
    for part in key.split("/"):
        if not is_safe_component(part):
            raise InvalidArgument(f"{what} key {key!r} has an unsafe component {part!r}")
    return key


def validate_prefix(prefix: str, what: str = "object") -> str:
    """``prefix`` if keys can start with it: its part up to the last ``/`` must be a safe key."""
    if "\0" in prefix or "\\" in prefix or "/" in prefix:
        validate_key(prefix.rsplit("/", 1)[0], what)
    return prefix


@dataclass(frozen=True)
class StoreOptions:
    """What every store is opened with."""

    #: what an object is called in error messages ("artifact", "capture object")
    what: str = "object"
    #: file stores: fsync each write and its folder before it counts as stored
    fsync: bool = True
    #: S3 stores: the endpoint (MinIO, Ceph, moto); None = AWS
    s3_endpoint_url: str | None = None


@dataclass(frozen=True)
class PresignedPut:
    """A URL that lets its holder PUT one object, without credentials, until ``expires``."""

    url: str
    #: headers the PUT must carry exactly as given (they are part of what was signed)
    headers: dict[str, str] = field(default_factory=dict)
    #: when the URL stops working (UTC)
    expires: datetime | None = None


class ObjectStore(ABC):
    """A flat key -> bytes store (a directory, a bucket, memory).

    Errors are EdgefleetErrors: an absent object NOT_FOUND, a bad key INVALID_ARGUMENT, a store
    that cannot be reached or written UNAVAILABLE (RESOURCE_EXHAUSTED when full, PERMISSION_DENIED
    when refused). Writes are atomic: readers see the old object or the new one, never a part.
    """

    def __init__(self, options: StoreOptions) -> None:
        self.options = options
        self.what = options.what

    @classmethod
    @abstractmethod
    def from_uri(cls, uri: str, options: StoreOptions) -> ObjectStore:
        """The store a URI of this store's scheme names."""

    @property
    @abstractmethod
    def uri(self) -> str:
        """The store's URI (``file:///dir``, ``s3://bucket/prefix``, ``memory://name``)."""

    @abstractmethod
    def put_stream(self, key: str, source: BinaryIO) -> None:
        """Store what ``source`` reads until EOF under ``key``, in chunks, replacing any old object."""

    @abstractmethod
    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Chunks from ``start``, ``length`` bytes (to the end when None); NOT_FOUND raised by the call."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's size in bytes."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix`` (a plain string prefix, as object stores do), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; no error if it is absent."""

    @abstractmethod
    def url(self, key: str) -> str:
        """The URI naming the object (``file:///...``, ``s3://bucket/key``), e.g. for records."""

    @abstractmethod
    def check(self) -> None:
        """Raise the EdgefleetError a write would meet now (missing bucket, refused, unreachable).

        Called at start-up so that a misconfigured store fails loudly then, not at the first write.
        """

    def presign_put(self, key: str, ttl: float) -> PresignedPut | None:
        """A URL to PUT ``key`` directly to the store for ``ttl`` seconds, or None when this kind of
        store cannot hand out such URLs (a directory, memory): callers then relay the bytes."""
        validate_key(key, self.what)
        return None

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``."""
        self.put_stream(key, io.BytesIO(data))

    def put_file(self, key: str, path: Path) -> None:
        """Store the file at ``path`` under ``key``."""
        validate_key(key, self.what)
        with path.open("rb") as source:
            self.put_stream(key, source)

    def get_bytes(self, key: str) -> bytes:
        """The whole object."""
        return b"".join(self.open_range(key))

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        try:
            self.size(key)
        except NotFound:
            return False
        return True

    def _missing(self, key: str) -> NotFound:
        return NotFound(f"{self.what} {key!r} does not exist in {self.uri}")
