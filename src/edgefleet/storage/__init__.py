"""Object stores: one put / get / list / delete / exists seam, chosen by URI scheme.

``file://`` (a directory), ``s3://`` (boto3, the ``s3`` extra, imported only when used) and
``memory://`` (the in-package fake). One key rule for all (:func:`validate_key`). Shared by the
control plane (package artifacts) and the device (capture); imports nothing but ``core``.
"""

from __future__ import annotations

from edgefleet.storage.base import CHUNK_SIZE, ObjectStore, is_safe_component, validate_key, validate_prefix
from edgefleet.storage.registry import STORES, StoreOptions, open_store

__all__ = [
    "CHUNK_SIZE",
    "STORES",
    "ObjectStore",
    "StoreOptions",
    "is_safe_component",
    "open_store",
    "validate_key",
    "validate_prefix",
]
