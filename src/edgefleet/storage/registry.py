"""Stores chosen by URI scheme: ``file://`` (or a bare path), ``s3://``, ``memory://``."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edgefleet.core.errors import InvalidArgument
from edgefleet.storage.base import ObjectStore


@dataclass(frozen=True)
class StoreOptions:
    """What :func:`open_store` passes every factory."""

    #: what an object is called in error messages ("artifact", "capture object")
    what: str = "object"
    #: file stores: fsync each write and its folder before it counts as stored
    fsync: bool = True
    #: S3 stores: the endpoint (MinIO, Ceph, moto); None = AWS
    s3_endpoint_url: str | None = None


def _file(uri: str, options: StoreOptions) -> ObjectStore:
    from edgefleet.storage.file import FileStore

    return FileStore.from_uri(uri, fsync=options.fsync, what=options.what)


def _memory(uri: str, options: StoreOptions) -> ObjectStore:
    from edgefleet.storage.memory import MemoryStore

    return MemoryStore.from_uri(uri, what=options.what)


def _s3(uri: str, options: StoreOptions) -> ObjectStore:
    from edgefleet.storage.s3 import S3Store

    return S3Store.from_uri(uri, endpoint_url=options.s3_endpoint_url, what=options.what)


#: URI scheme -> factory(uri, options); implementations are imported only when chosen.
STORES: dict[str, Callable[[str, StoreOptions], ObjectStore]] = {"file": _file, "memory": _memory, "s3": _s3}


def open_store(
    target: str | Path,
    options: StoreOptions = StoreOptions(),  # noqa: B008 - frozen, so sharing the default is safe
    *,
    schemes: Collection[str] | None = None,
    purpose: str = "object store",
) -> ObjectStore:
    """The store for ``target``: a URI, or a plain path meaning a directory.

    ``schemes`` restricts the choice to what the caller supports (default: every registered
    scheme); any other scheme fails with INVALID_ARGUMENT listing the allowed ones, ``purpose``
    naming what the store is for.
    """
    if isinstance(target, Path) or "://" not in target:
        target = Path(target).absolute().as_uri()
    scheme = urlsplit(target).scheme.lower()
    allowed = sorted(STORES if schemes is None else set(schemes) & set(STORES))
    if scheme not in allowed:
        raise InvalidArgument(
            f"unknown {purpose} scheme {scheme!r} is not supported (known: {', '.join(allowed)}): {target!r}"
        )
    return STORES[scheme](target, options)
