"""Artifact stores: where uploaded packages live, an object store (``file://``, ``s3://``)."""

from __future__ import annotations

from edgefleet.storage import ObjectStore, StoreOptions, open_store

#: The artifact store is an object store; the name stays for the server's signatures.
ArtifactStore = ObjectStore


def open_artifact_store(uri: str, *, s3_endpoint_url: str | None = None) -> ArtifactStore:
    """The store for ``uri``; a bare path means a local directory. Unknown schemes list the known ones."""
    options = StoreOptions(what="artifact", s3_endpoint_url=s3_endpoint_url)
    return open_store(uri, options, schemes=("file", "s3"), purpose="artifact store")


__all__ = ["ArtifactStore", "open_artifact_store"]
