"""The Python client of the device agent: the Edge Manager RPCs plus edgefleet's extensions.

One :class:`AgentClient` may be used from several threads at once. Its requests go through a
:class:`Transport`: gRPC (:mod:`.grpc_transport`) with Predict over the agent's fast socket
(:mod:`.fast_socket`), or another such as simulated devices' in-process agent. Input tensors above
``shm_threshold`` bytes travel through System V shared memory segments the client owns and reuses
(:mod:`edgefleet.client.shm`). Every failed call raises the :class:`EdgefleetError` subclass of its
code (:func:`edgefleet.core.errors.error_for`), carrying the agent's message.
"""

from __future__ import annotations

import builtins
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from edgefleet.client.fast_socket import FastSocketTransport
from edgefleet.client.grpc_transport import GrpcTransport
from edgefleet.client.shm import OwnedSegment, SegmentPool
from edgefleet.core.deviceplane import CaptureReport, CaptureUpload
from edgefleet.core.errors import Code, EdgefleetError, FailedPrecondition, InvalidArgument
from edgefleet.core.tensors import DataType, TensorSpec
from edgefleet.protocol.agent.codec import (
    array_from_proto,
    shm_tensor_proto,
    spec_from_metadata,
    tensor_to_proto,
)
from edgefleet.protocol.agent.framing import fast_path_for, socket_path
from edgefleet.protocol.agent.proto import agent_pb2, extensions_pb2

#: Default size above which input tensors go through shared memory (the vendor's guidance).
DEFAULT_SHM_THRESHOLD = 256 * 1024

Tensors = Mapping[str, npt.ArrayLike] | Sequence[npt.ArrayLike] | np.ndarray
"""Tensors by name (a mapping, sent in its order with names) or by position (a sequence, or one array)."""

EncodingName = Literal["CSV", "JSON", "NONE", "BASE64"]
CaptureStatusName = Literal["SUCCESS", "IN_PROGRESS", "FAILURE", "NOT_FOUND"]

_ENCODINGS: dict[str, agent_pb2.Encoding] = dict(agent_pb2.Encoding.items())
_CAPTURE_STATUS: dict[int, CaptureStatusName] = {v: k for k, v in agent_pb2.CaptureDataStatus.items()}

_T = TypeVar("_T")


@dataclass(frozen=True)
class ModelInfo:
    """A loaded model as the agent describes it (empty tensor lists are allowed for dynamic models)."""

    name: str
    url: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_proto(cls, model: agent_pb2.Model) -> ModelInfo:
        """Parse a wire ``Model``."""
        return cls(
            name=model.name,
            url=model.url,
            inputs=tuple(spec_from_metadata(m) for m in model.input_tensor_metadatas),
            outputs=tuple(spec_from_metadata(m) for m in model.output_tensor_metadatas),
        )


@dataclass(frozen=True)
class AuxData:
    """Auxiliary capture data (``AuxilaryData`` on the wire): raw bytes and how they are encoded."""

    data: bytes
    encoding: EncodingName = "NONE"


@dataclass(frozen=True)
class ServerMetadata:
    """The agent's identity and the protocol extensions it implements."""

    name: str
    version: str
    protocol: str
    extensions: tuple[str, ...]
    runtimes: tuple[str, ...]


@dataclass(frozen=True)
class Health:
    """Liveness and readiness (separately) with the agent's lifecycle state."""

    live: bool
    ready: bool
    state: str
    detail: str


@dataclass(frozen=True)
class ModelStatistics:
    """Per-model counters and latency percentiles (times are Unix seconds, None = never)."""

    name: str
    model_name: str
    model_version: str
    request_count: int
    error_count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    last_inference_time: float | None
    last_capture_time: float | None
    in_flight: int
    queued: int
    memory_bytes: int
    loaded_time: float


@dataclass(frozen=True)
class CaptureStatistics:
    """The agent's capture backlog and counters (extension ``capture-statistics``)."""

    pending: int
    pending_bytes: int
    oldest_pending_age_seconds: float
    buffer_size: int
    buffer_bytes: int
    written: int
    failed: int
    dropped: int
    write_errors: int
    last_error: str
    destination: str
    auto_picked: int
    auto_captured: int
    auto_skipped: int
    auto_refused: int


@dataclass(frozen=True)
class CaptureUploads:
    """The capture backlog and the objects the store confirmed after a cursor (extension
    ``capture-uploads``): ``report`` is what a heartbeat's ``Capture`` carries."""

    report: CaptureReport
    #: pass as ``after`` next time (the last entry's log id, or the ``after`` given when none)
    next_after: int
    #: names the agent's upload log; a cursor from another epoch must start again from 0
    epoch: str
    #: entries the agent trimmed from its log so far, and the oldest log id it still keeps (0: none)
    trimmed: int
    first_log_id: int


@dataclass(frozen=True)
class LiveSummary:
    """One loaded model's input/output summary since ``window_start`` (extension ``model-summaries``);
    ``summary`` is the JSON wire form of :class:`edgefleet.monitoring.ModelSummary`."""

    name: str
    model_name: str
    model_version: str
    calls: int
    window_start: float
    summary: dict[str, Any]


ShadowComparisonName = Literal["auto", "close"]
_SHADOW_COMPARISONS: dict[str, int] = {
    "auto": extensions_pb2.SHADOW_COMPARISON_AUTO,
    "close": extensions_pb2.SHADOW_COMPARISON_CLOSE,
}
_SHADOW_COMPARISON_NAMES: dict[int, ShadowComparisonName] = {
    extensions_pb2.SHADOW_COMPARISON_AUTO: "auto",
    extensions_pb2.SHADOW_COMPARISON_CLOSE: "close",
}


@dataclass(frozen=True)
class ShadowStatistics:
    """One handle's shadow pair and its figures (extension ``shadow-models``): calls mirrored to
    the shadow, compared (agreed + disagreed), failed in the shadow, dropped (queue full), waiting;
    latencies in milliseconds (champion: the handle's calls since pairing; shadow: mirrored calls)."""

    handle: str
    champion: str
    champion_model_name: str
    champion_model_version: str
    shadow: str
    shadow_model_name: str
    shadow_model_version: str
    sample_rate: float
    tolerance: float
    comparison: ShadowComparisonName
    max_queue: int
    mirrored: int
    completed: int
    agreed: int
    disagreed: int
    shadow_errors: int
    dropped: int
    queued: int
    champion_p50_ms: float
    champion_p99_ms: float
    shadow_p50_ms: float
    shadow_p99_ms: float
    agreement_rate: float
    max_abs_diff: float
    last_error: str
    loaded_time: float

    @classmethod
    def from_proto(cls, m: extensions_pb2.ShadowStatistics) -> ShadowStatistics:
        """Parse a wire ``ShadowStatistics``."""
        latency: dict[str, Any] = {
            "champion_p50_ms": m.champion_latency.p50_ms,
            "champion_p99_ms": m.champion_latency.p99_ms,
            "shadow_p50_ms": m.shadow_latency.p50_ms,
            "shadow_p99_ms": m.shadow_latency.p99_ms,
        }
        wire = {
            f.name: getattr(m, f.name)
            for f in fields(cls)
            if f.name not in latency and f.name != "comparison"
        }
        return cls(**wire, **latency, comparison=_SHADOW_COMPARISON_NAMES.get(int(m.comparison), "auto"))

    def to_dict(self) -> dict[str, Any]:
        """The figures as a plain JSON-able dict (what a heartbeat can carry)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Transport(Protocol):
    """How an :class:`AgentClient`'s requests reach the agent: every RPC by name, request and
    response messages of ``edgefleet.protocol.agent.proto``; a refusal raises the EdgefleetError of
    its code."""

    address: str

    def call(self, method: str, request: Any) -> Any:
        """The response of RPC ``method`` (``LoadModel``, ``Predict``, ``GetHealth``, ...)."""
        ...

    def wait_ready(self, timeout: float) -> None:
        """Block until the agent can be reached; UNAVAILABLE after ``timeout`` seconds."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


def _datetime(seconds: float) -> datetime | None:
    """A wire time in Unix seconds (0 = unknown) as a UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC) if seconds else None


def _timestamp(when: datetime | float | None) -> agent_pb2.Timestamp:
    if when is None:
        when = time.time()
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise InvalidArgument("inference_time must be timezone-aware (e.g. datetime.now(UTC))")
        delta = when - datetime(1970, 1, 1, tzinfo=UTC)
        return agent_pb2.Timestamp(
            seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000
        )
    seconds = int(when // 1)
    nanos = min(round((when - seconds) * 1e9), 999_999_999)
    return agent_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _items(tensors: Tensors, prefix: str | None) -> builtins.list[tuple[str, np.ndarray]]:
    """``(name, array)`` pairs; positional tensors are named ``prefix + index`` ("" if prefix is None)."""
    if isinstance(tensors, np.ndarray):
        tensors = [tensors]
    if isinstance(tensors, Mapping):
        pairs = [(str(name), np.asarray(value)) for name, value in tensors.items()]
    elif isinstance(tensors, str | bytes):
        raise InvalidArgument("tensors must be arrays, a sequence of arrays or a mapping name -> array")
    else:
        pairs = [("" if prefix is None else f"{prefix}{i}", np.asarray(v)) for i, v in enumerate(tensors)]
    for name, array in pairs:
        if array.dtype == object:
            raise InvalidArgument(f"tensor {name!r} is not numeric (dtype object)")
    return pairs


class AgentClient:
    """A client of the agent at ``address`` (``unix:///path.sock`` or a socket path).

    ``timeout``: seconds each call may take (None: no deadline). ``shm_threshold``: input tensors
    larger than this many bytes go through System V shared memory (None: always inline, e.g. for an
    agent on another machine). ``shm_mode``: permission bits of those segments as the agent sees them.
    ``fast_path``: send Predict over the agent's fast-path socket (``<socket>.fast``, one connection
    per calling thread) when the agent has one, gRPC otherwise; every other call uses gRPC.
    ``transport``: reach the agent through this instead (``address`` then only names it, and there
    is no fast socket).
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float | None = None,
        shm_threshold: int | None = DEFAULT_SHM_THRESHOLD,
        shm_mode: int = 0o444,
        fast_path: bool = True,
        transport: Transport | None = None,
    ) -> None:
        self.address = address
        self._fast: FastSocketTransport | None = None
        if transport is None:
            grpc_transport = GrpcTransport(address, timeout=timeout)
            if fast_path and grpc_transport.target.startswith("unix:"):  # grpc_target() made paths unix:
                path = fast_path_for(socket_path(grpc_transport.target))
                self._fast = FastSocketTransport(path, timeout=timeout)
            transport = grpc_transport
        self._transport = transport
        #: Predict calls answered by the transport other than the fast socket (gRPC)
        self.grpc_predict_calls = 0
        self._shm_threshold = shm_threshold
        self._pool = SegmentPool(mode=shm_mode)
        self._lock = threading.Lock()
        self._closed = False

    # -- plumbing -------------------------------------------------------------------------------
    def _call(self, method: str, request: Any) -> Any:
        if self._closed:
            raise FailedPrecondition("the AgentClient is closed")
        return self._transport.call(method, request)

    def wait_ready(self, timeout: float) -> None:
        """Block until the agent's socket accepts connections; UNAVAILABLE after ``timeout`` seconds."""
        self._transport.wait_ready(timeout)

    @property
    def fast_path_calls(self) -> int:
        """Predict calls answered over the fast socket."""
        return self._fast.calls if self._fast is not None else 0

    @property
    def fast_path_connections(self) -> int:
        """Open fast-socket connections (one per thread that has called predict and still runs)."""
        return self._fast.connections if self._fast is not None else 0

    # -- models ---------------------------------------------------------------------------------
    def load(self, url: str | os.PathLike[str], name: str) -> ModelInfo:
        """Load the package at ``url`` (an unpacked package directory or a .tar.gz, or a ``file://``
        URL) under alias ``name``. A relative path is taken relative to this process's working
        directory (the agent is on the same machine but has its own), so it is sent absolute."""
        url = os.fspath(url)
        if "://" not in url:
            url = os.path.abspath(url)
        response = self._call("LoadModel", agent_pb2.LoadModelRequest(url=url, name=name))
        return ModelInfo.from_proto(response.model)

    def unload(self, name: str) -> None:
        """Unload the model ``name`` (NotFound if unknown)."""
        self._call("UnLoadModel", agent_pb2.UnLoadModelRequest(name=name))

    def list(self) -> builtins.list[ModelInfo]:
        """The loaded models."""
        response = self._call("ListModels", agent_pb2.ListModelsRequest())
        return [ModelInfo.from_proto(m) for m in response.models]

    def describe(self, name: str) -> ModelInfo:
        """The model ``name`` (NotFound if unknown)."""
        response = self._call("DescribeModel", agent_pb2.DescribeModelRequest(name=name))
        return ModelInfo.from_proto(response.model)

    # -- tensors --------------------------------------------------------------------------------
    def _encode(
        self, pairs: Sequence[tuple[str, np.ndarray]], segments: builtins.list[OwnedSegment]
    ) -> builtins.list[agent_pb2.Tensor]:
        """Wire tensors; large ones are copied into leased segments appended to ``segments``."""
        out = []
        threshold = self._shm_threshold
        for name, array in pairs:
            if threshold is not None and array.nbytes > threshold:
                try:
                    dtype = DataType.from_numpy(array.dtype)
                except InvalidArgument as exc:
                    raise InvalidArgument(f"tensor {name!r}: {exc.message}") from None
                segment = self._pool.checkout(array.nbytes)
                segments.append(segment)
                size = segment.write(array, dtype)
                out.append(shm_tensor_proto(name, dtype, array.shape, segment.id, 0, size))
            else:
                out.append(tensor_to_proto(name, array))
        return out

    def _leased_call(
        self, build: Callable[[builtins.list[OwnedSegment]], Any], send: Callable[[Any], _T]
    ) -> _T:
        """Build a request (leasing segments for it), call, and return the segments to the pool.

        Segments are reused only after a call that completed: after a deadline or a broken
        connection the agent may still be reading them.
        """
        segments: builtins.list[OwnedSegment] = []
        reuse = True  # until the request is sent, the agent has not seen the segments
        try:
            request = build(segments)
            reuse = False
            try:
                response = send(request)
            except EdgefleetError as exc:
                reuse = exc.code not in (Code.DEADLINE_EXCEEDED, Code.UNAVAILABLE, Code.INTERNAL)
                raise
            reuse = True
            return response
        finally:
            for segment in segments:
                self._pool.checkin(segment, reuse=reuse)

    def predict(self, name: str, inputs: Tensors) -> dict[str, np.ndarray]:
        """Run model ``name`` on ``inputs``; the outputs by name, in the model's order.

        ``inputs`` by name (a mapping; the agent matches names) or by position (a sequence, or a
        single array). Outputs are read-only arrays over the response's bytes; an output the agent
        sends without a name (or with a repeated one) is keyed ``output_<index>``.
        """
        pairs = _items(inputs, None)

        def build(segments: builtins.list[OwnedSegment]) -> agent_pb2.PredictRequest:
            return agent_pb2.PredictRequest(name=name, tensors=self._encode(pairs, segments))

        response = self._leased_call(build, self._predict_call)
        outputs: dict[str, np.ndarray] = {}
        for index, tensor in enumerate(response.tensors):
            out_name, array = array_from_proto(tensor, f"output tensor {index}")
            if not out_name or out_name in outputs:  # never drop an output over a missing/duplicate name
                out_name = f"output_{index}"
            outputs[out_name] = array
        return outputs

    def _predict_call(self, request: agent_pb2.PredictRequest) -> Any:
        """Predict over the fast socket when it answers, over the transport otherwise."""
        if self._fast is not None and not self._closed:
            response = self._fast.predict(request)
            if response is not None:
                return response
        with self._lock:
            self.grpc_predict_calls += 1
        return self._call("Predict", request)

    def _fast_or_call(self, method: str, request: Any) -> Any:
        """CaptureData / GetCaptureDataStatus over the fast socket when it answers (extension
        ``fast-capture``), over the transport otherwise."""
        if self._fast is not None and not self._closed:
            fast = self._fast.capture_data if method == "CaptureData" else self._fast.capture_status
            response = fast(request)
            if response is not None:
                return response
        return self._call(method, request)

    # -- capture --------------------------------------------------------------------------------
    def capture(
        self,
        model: str,
        capture_id: str | None = None,
        inputs: Tensors = (),
        outputs: Tensors = (),
        aux_inputs: Mapping[str, AuxData | bytes | str] | None = None,
        aux_outputs: Mapping[str, AuxData | bytes | str] | None = None,
        inference_time: datetime | float | None = None,
    ) -> str:
        """Ask the agent to capture one inference; returns the capture id (a new uuid4 if None).

        Positional tensors are named ``input_<i>`` / ``output_<i>``. ``inference_time`` is an aware
        datetime or Unix seconds (default: now). Poll :meth:`capture_status` for the outcome.
        """
        capture_id = capture_id if capture_id is not None else str(uuid.uuid4())
        in_pairs = _items(inputs, "input_")
        out_pairs = _items(outputs, "output_")
        timestamp = _timestamp(inference_time)

        def build(segments: builtins.list[OwnedSegment]) -> agent_pb2.CaptureDataRequest:
            return agent_pb2.CaptureDataRequest(
                model_name=model,
                capture_id=capture_id,
                inference_timestamp=timestamp,
                input_tensors=self._encode(in_pairs, segments),
                output_tensors=self._encode(out_pairs, segments),
                inputs=self._aux(aux_inputs, segments),
                outputs=self._aux(aux_outputs, segments),
            )

        self._leased_call(build, lambda request: self._fast_or_call("CaptureData", request))
        return capture_id

    def _aux(
        self, aux: Mapping[str, AuxData | bytes | str] | None, segments: builtins.list[OwnedSegment]
    ) -> builtins.list[agent_pb2.AuxilaryData]:
        out = []
        for name, value in (aux or {}).items():
            item = value if isinstance(value, AuxData) else AuxData(_aux_bytes(name, value))
            if item.encoding not in _ENCODINGS:
                known = ", ".join(_ENCODINGS)
                raise InvalidArgument(
                    f"auxiliary data {name!r}: unknown encoding {item.encoding!r} ({known})"
                )
            encoding = _ENCODINGS[item.encoding]
            data = _aux_bytes(name, item.data)
            threshold = self._shm_threshold
            if threshold is not None and len(data) > threshold:
                segment = self._pool.checkout(len(data))
                segments.append(segment)
                size = segment.write(np.frombuffer(data, dtype=np.uint8), DataType.UINT8)
                handle = agent_pb2.SharedMemoryHandle(segment_id=segment.id, offset=0, size=size)
                out.append(agent_pb2.AuxilaryData(name=name, encoding=encoding, shared_memory_handle=handle))
            else:
                out.append(agent_pb2.AuxilaryData(name=name, encoding=encoding, byte_data=data))
        return out

    def capture_status(self, capture_id: str) -> CaptureStatusName:
        """``SUCCESS``, ``IN_PROGRESS``, ``FAILURE`` or ``NOT_FOUND``."""
        response = self._fast_or_call(
            "GetCaptureDataStatus", agent_pb2.GetCaptureDataStatusRequest(capture_id=capture_id)
        )
        status = _CAPTURE_STATUS.get(int(response.status))
        if status is None:
            raise EdgefleetError(f"the agent sent an unknown capture status {response.status}")
        return status

    # -- extensions -----------------------------------------------------------------------------
    def server_metadata(self) -> ServerMetadata:
        """The agent's name, version, protocol, extensions and runtimes."""
        r = self._call("GetServerMetadata", extensions_pb2.ServerMetadataRequest())
        return ServerMetadata(
            name=r.name,
            version=r.version,
            protocol=r.protocol,
            extensions=tuple(r.extensions),
            runtimes=tuple(r.runtimes),
        )

    def health(self) -> Health:
        """Liveness and readiness of the agent."""
        r = self._call("GetHealth", extensions_pb2.HealthRequest())
        return Health(live=r.live, ready=r.ready, state=r.state, detail=r.detail)

    def model_stats(self, name: str | None = None) -> builtins.list[ModelStatistics]:
        """Statistics of model ``name`` (NotFound if unknown), or of every loaded model."""
        r = self._call("GetModelStatistics", extensions_pb2.ModelStatisticsRequest(name=name or ""))
        return [
            ModelStatistics(
                name=m.name,
                model_name=m.model_name,
                model_version=m.model_version,
                request_count=m.request_count,
                error_count=m.error_count,
                p50_ms=m.latency.p50_ms,
                p95_ms=m.latency.p95_ms,
                p99_ms=m.latency.p99_ms,
                last_inference_time=m.last_inference_time or None,
                last_capture_time=m.last_capture_time or None,
                in_flight=m.in_flight,
                queued=m.queued,
                memory_bytes=m.memory_bytes,
                loaded_time=m.loaded_time,
            )
            for m in r.models
        ]

    def capture_stats(self) -> CaptureStatistics:
        """The capture spool's backlog (records, bytes, oldest age), bounds and counters."""
        r = self._call("GetCaptureStatistics", extensions_pb2.CaptureStatisticsRequest())
        return CaptureStatistics(**{f.name: getattr(r, f.name) for f in fields(CaptureStatistics)})

    def capture_uploads(self, after: int = 0, limit: int = 500) -> CaptureUploads:
        """The capture backlog and up to ``limit`` objects confirmed after log id ``after``, oldest first.

        INVALID_ARGUMENT for a negative cursor or a limit outside 1..10000.
        """
        if after < 0 or limit < 1:
            raise InvalidArgument(f"capture uploads: need after >= 0 and limit >= 1 (got {after}, {limit})")
        r = self._call("GetCaptureUploads", extensions_pb2.CaptureUploadsRequest(after=after, limit=limit))
        report = CaptureReport(
            backlog_records=r.backlog_records,
            backlog_bytes=r.backlog_bytes,
            oldest_age_seconds=r.oldest_backlog_age_seconds,
            dropped=r.dropped,
            failed=r.failed,
            transfer_pending=r.transfer_pending,
            transfer_pending_bytes=r.transfer_pending_bytes,
            transfer_oldest_age_seconds=r.transfer_oldest_age_seconds,
            uploads=tuple(
                CaptureUpload(
                    key=u.key,
                    model_name=u.model_name,
                    model_version=u.model_version,
                    records=u.records,
                    size=u.size,
                    first_inference=_datetime(u.first_inference_time),
                    last_inference=_datetime(u.last_inference_time),
                    raw_objects=u.raw_objects,
                )
                for u in r.uploads
            ),
        )
        return CaptureUploads(report, r.next_after, r.log_epoch, r.trimmed, r.first_log_id)

    def model_summaries(self, *, reset: bool = False) -> builtins.list[LiveSummary]:
        """Each loaded model's live summary; ``reset`` starts new windows (the daemon, per heartbeat)."""
        r = self._call("GetModelSummaries", extensions_pb2.ModelSummariesRequest(reset=reset))
        return [
            LiveSummary(
                m.name, m.model_name, m.model_version, m.calls, m.window_start, json.loads(m.summary_json)
            )
            for m in r.models
        ]

    def set_handle(self, handle: str, target: str) -> str | None:
        """Point the stable ``handle`` at the loaded alias ``target`` (extension ``model-handles``).

        Every call taking a model name accepts the handle; the switch is atomic. Returns the
        previous target, or None for a new handle.
        """
        r = self._call("SetHandle", extensions_pb2.SetHandleRequest(handle=handle, target=target))
        return r.previous_target or None

    def remove_handle(self, handle: str) -> None:
        """Forget ``handle`` (NotFound if there is none)."""
        self._call("RemoveHandle", extensions_pb2.RemoveHandleRequest(handle=handle))

    def handles(self) -> dict[str, str]:
        """handle -> alias for every handle the agent holds."""
        r = self._call("ListHandles", extensions_pb2.ListHandlesRequest())
        return {h.handle: h.target for h in r.handles}

    # -- shadow models (extension "shadow-models") ------------------------------------------------
    def load_shadow(
        self,
        handle: str,
        shadow: str,
        *,
        sample_rate: float = 1.0,
        tolerance: float = 0.0,
        max_queue: int = 0,
        comparison: ShadowComparisonName = "auto",
    ) -> ShadowStatistics:
        """Pair the loaded model ``shadow`` with ``handle``: ``sample_rate`` of the handle's Predict
        calls (0..1, deterministic) are mirrored to it off the request path and compared with the
        champion's answers, which the application keeps getting.

        ``comparison``: ``auto`` (class scores by arg-max, integer labels exactly, others within
        ``tolerance``) or ``close`` (every output within ``tolerance``, absolute; 0 = 1e-5).
        ``max_queue``: mirrored calls waiting for the shadow before calls are dropped (0 = 64).
        NotFound (unknown handle or shadow), FailedPrecondition (``handle`` is a model, not a
        handle), InvalidArgument (other inputs than the champion's, bad settings), AlreadyExists.
        """
        if comparison not in _SHADOW_COMPARISONS:
            raise InvalidArgument(
                f"unknown shadow comparison {comparison!r} (known: {', '.join(_SHADOW_COMPARISONS)})"
            )
        r = self._call(
            "LoadShadow",
            extensions_pb2.LoadShadowRequest(
                handle=handle,
                shadow=shadow,
                sample_rate=sample_rate,
                tolerance=tolerance,
                max_queue=max_queue,
                comparison=_SHADOW_COMPARISONS[comparison],  # type: ignore[arg-type]
            ),
        )
        return ShadowStatistics.from_proto(r.statistics)

    def unload_shadow(self, handle: str) -> ShadowStatistics:
        """End ``handle``'s shadow pair (the shadow model stays loaded); the final figures."""
        r = self._call("UnloadShadow", extensions_pb2.UnloadShadowRequest(handle=handle))
        return ShadowStatistics.from_proto(r.statistics)

    def promote_shadow(self, handle: str) -> tuple[str, ShadowStatistics]:
        """Point ``handle`` at its shadow atomically (no call fails) and end the pair:
        ``(previous target, final figures)``. The previous target stays loaded."""
        r = self._call("PromoteShadow", extensions_pb2.PromoteShadowRequest(handle=handle))
        return r.previous_target, ShadowStatistics.from_proto(r.statistics)

    def shadow_statistics(self, handle: str | None = None) -> builtins.list[ShadowStatistics]:
        """The figures of ``handle``'s pair (NotFound if it has none), or of every pair."""
        r = self._call("GetShadowStatistics", extensions_pb2.ShadowStatisticsRequest(handle=handle or ""))
        return [ShadowStatistics.from_proto(p) for p in r.pairs]

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the transports and the shared memory segments (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._fast is not None:
            self._fast.close()
        self._transport.close()
        self._pool.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _aux_bytes(name: str, value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise InvalidArgument(f"auxiliary data {name!r} must be bytes or str, got {type(value).__name__}")


__all__ = [
    "DEFAULT_SHM_THRESHOLD",
    "AgentClient",
    "AuxData",
    "Health",
    "ModelInfo",
    "ModelStatistics",
    "ServerMetadata",
    "ShadowComparisonName",
    "ShadowStatistics",
    "Tensors",
    "Transport",
]
