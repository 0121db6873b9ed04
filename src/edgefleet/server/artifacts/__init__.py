"""Artifact stores: where uploaded packages live. Chosen by URI scheme (``file://``, ``s3://``)."""

from __future__ import annotations

from edgefleet.server.artifacts.base import ArtifactStore, open_artifact_store

__all__ = ["ArtifactStore", "open_artifact_store"]
