"""Data capture: durable on-disk spool, Edge-Manager-compatible records, pluggable sinks.

The agent calls :class:`CaptureService` for CaptureData / GetCaptureDataStatus; the record format
and key layout are the contract in docs/capture-format.md.
"""

from __future__ import annotations

from edgefleet.capture.records import (
    CaptureAux,
    CaptureRecord,
    CaptureRequest,
    CaptureTensor,
    decode_record,
    entry_array,
    entry_bytes,
)
from edgefleet.capture.service import CaptureConfig, CaptureService, FullPolicy, RetryPolicy, ServiceState
from edgefleet.capture.sinks import DiskSink, Sink, open_sink
from edgefleet.capture.spool import CaptureStatus, LoggedUpload, UploadPage

__all__ = [
    "CaptureAux",
    "CaptureConfig",
    "CaptureRecord",
    "CaptureRequest",
    "CaptureService",
    "CaptureStatus",
    "CaptureTensor",
    "DiskSink",
    "FullPolicy",
    "LoggedUpload",
    "RetryPolicy",
    "ServiceState",
    "Sink",
    "UploadPage",
    "decode_record",
    "entry_array",
    "entry_bytes",
    "open_sink",
]
