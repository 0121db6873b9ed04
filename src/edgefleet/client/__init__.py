"""Python client of the edgefleet device agent (Edge Manager wire API plus edgefleet's extensions).

>>> with AgentClient("unix:///run/edgefleet/agent.sock") as agent:  # doctest: +SKIP
...     agent.load("/var/lib/models/digits", "digits")
...     outputs = agent.predict("digits", {"input": image})
"""

from __future__ import annotations

from edgefleet.client.client import (
    DEFAULT_SHM_THRESHOLD,
    AgentClient,
    AuxData,
    CaptureStatistics,
    CaptureStatusName,
    CaptureUploads,
    EncodingName,
    Health,
    LiveSummary,
    ModelInfo,
    ModelStatistics,
    ServerMetadata,
    ShadowComparisonName,
    ShadowStatistics,
    Tensors,
    Transport,
)
from edgefleet.client.grpc_transport import GrpcTransport, error_from_rpc, grpc_target
from edgefleet.protocol.agent.codec import GRPC_CHANNEL_OPTIONS, MAX_MESSAGE_BYTES

__all__ = [
    "DEFAULT_SHM_THRESHOLD",
    "GRPC_CHANNEL_OPTIONS",
    "MAX_MESSAGE_BYTES",
    "AgentClient",
    "AuxData",
    "CaptureStatistics",
    "CaptureStatusName",
    "CaptureUploads",
    "EncodingName",
    "GrpcTransport",
    "Health",
    "LiveSummary",
    "ModelInfo",
    "ModelStatistics",
    "ServerMetadata",
    "ShadowComparisonName",
    "ShadowStatistics",
    "Tensors",
    "Transport",
    "error_from_rpc",
    "grpc_target",
]
