"""The artifact store seam (put / get / list / open a byte range) and its registry by URI scheme."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from edgefleet.core.errors import InvalidArgument

CHUNK_SIZE = 1024 * 1024
_KEY_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=@ -]*$")


class ArtifactStore(Protocol):
    """A flat key -> bytes store. Keys are relative ``/``-separated paths without ``.``/``..`` parts."""

    @property
    def uri(self) -> str:
        """The store's URI (``file:///...``, ``s3://bucket/prefix``)."""
        ...

    def put_file(self, key: str, path: Path) -> None:
        """Store the file at ``path`` under ``key`` (replacing it atomically)."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The whole object; NOT_FOUND if absent."""
        ...

    def size(self, key: str) -> int:
        """The object's size in bytes; NOT_FOUND if absent."""
        ...

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Chunks of ``length`` bytes from ``start`` (to the end when None); NOT_FOUND if absent."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix``, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key`` (no error if it is absent)."""
        ...

    def url(self, key: str) -> str:
        """A URI naming the object (for records and ``S3Url``), not necessarily fetchable by devices."""
        ...


def validate_key(key: str) -> str:
    """``key`` if it is a safe relative key, else INVALID_ARGUMENT."""
    if not key or key.startswith("/") or "\\" in key:
        raise InvalidArgument(f"artifact key {key!r} must be relative and use '/'")
    for part in key.split("/"):
        if not _KEY_COMPONENT_RE.match(part):
            raise InvalidArgument(f"artifact key {key!r} has an unsafe component {part!r}")
    return key


StoreFactory = Callable[[str, "str | None"], ArtifactStore]


def _local(uri: str, endpoint_url: str | None) -> ArtifactStore:
    from edgefleet.server.artifacts.local import LocalArtifactStore

    return LocalArtifactStore.from_uri(uri)


def _s3(uri: str, endpoint_url: str | None) -> ArtifactStore:
    from edgefleet.server.artifacts.s3 import S3ArtifactStore

    return S3ArtifactStore.from_uri(uri, endpoint_url=endpoint_url)


# URI scheme -> factory(uri, s3 endpoint url)
STORES: dict[str, StoreFactory] = {"file": _local, "s3": _s3}


def open_artifact_store(uri: str, *, s3_endpoint_url: str | None = None) -> ArtifactStore:
    """The store for ``uri``; a bare path means a local directory. Unknown schemes list the known ones."""
    if "://" not in uri:
        return _local(Path(uri).resolve().as_uri(), None)
    scheme = uri.split("://", 1)[0]
    factory = STORES.get(scheme)
    if factory is None:
        raise InvalidArgument(
            f"artifact store scheme {scheme!r} is not supported (known: {', '.join(sorted(STORES))})"
        )
    return factory(uri, s3_endpoint_url)
