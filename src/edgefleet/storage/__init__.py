"""Object stores: one put / get / list / delete / exists seam, chosen by URI scheme.

``file://`` (a directory), ``s3://`` (boto3, imported only when used) and ``memory://`` (the
in-package fake), one key rule for all. Shared by the control plane (package artifacts) and the
device (capture), so it imports nothing above ``core``.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection
from pathlib import Path
from urllib.parse import urlsplit

from edgefleet.core.errors import InvalidArgument
from edgefleet.storage.base import ObjectStore, PresignedPut, StoreOptions, validate_key

#: URI scheme -> the module and class implementing it (imported only when chosen).
STORES: dict[str, tuple[str, str]] = {
    "file": ("edgefleet.storage.file", "FileStore"),
    "memory": ("edgefleet.storage.memory", "MemoryStore"),
    "s3": ("edgefleet.storage.s3", "S3Store"),
}


def open_store(
    target: str | Path,
    options: StoreOptions = StoreOptions(),  # noqa: B008 - frozen, so sharing the default is safe
    *,
    schemes: Collection[str] | None = None,
    purpose: str = "object store",
) -> ObjectStore:
    """The store for ``target``, a URI or a plain path (a directory).

    ``schemes`` limits the choice to what the caller supports (default: all); any other scheme
    fails with INVALID_ARGUMENT listing the allowed ones, ``purpose`` naming what the store is for.
    """
    if isinstance(target, Path) or "://" not in target:
        target = Path(target).absolute().as_uri()
    scheme = urlsplit(target).scheme.lower()
    allowed = sorted(STORES if schemes is None else set(schemes) & set(STORES))
    if scheme not in allowed:
        raise InvalidArgument(
            f"unknown {purpose} scheme {scheme!r} is not supported (known: {', '.join(allowed)}): {target!r}"
        )
    module, name = STORES[scheme]
    store: type[ObjectStore] = getattr(importlib.import_module(module), name)
    return store.from_uri(target, options)


__all__ = ["STORES", "ObjectStore", "PresignedPut", "StoreOptions", "open_store", "validate_key"]
