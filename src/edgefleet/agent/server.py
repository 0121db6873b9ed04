"""The agent's gRPC services: the Edge Manager ``AWS.SageMaker.Edge.Agent`` contract and our extensions.

Handlers translate protobuf messages to domain calls and :class:`EdgefleetError` codes back to gRPC
status codes; nothing here holds a global lock on the Predict path.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from edgefleet import __version__
from edgefleet.agent.models import ModelRegistry, ModelSlot, ModelUnloading
from edgefleet.agent.shadow import Comparison, Shadows, ShadowSettings
from edgefleet.agent.shm import SharedMemoryReader
from edgefleet.agent.summaries import Summariser
from edgefleet.capture import CaptureAux, CaptureRequest, CaptureService, CaptureStatus, CaptureTensor
from edgefleet.capture.auto import AutoCapture
from edgefleet.core.errors import (
    Code,
    EdgefleetError,
    InvalidArgument,
    NotFound,
    Unimplemented,
    grpc_status_number,
    quoted,
    shorten,
    wire_message,
)
from edgefleet.core.tensors import DataType, TensorSpec
from edgefleet.protocol.agent.codec import array_from_bytes, data_type, fill_metadata, metadata_from_spec
from edgefleet.protocol.agent.proto import agent_pb2, agent_pb2_grpc, extensions_pb2, extensions_pb2_grpc
from edgefleet.runtimes.base import installed_backends

log = logging.getLogger(__name__)

PROTOCOL = "AWS.SageMaker.Edge.Agent"
EXTENSIONS = (
    "server-metadata",
    "health",
    "model-statistics",
    "posix-shm",
    "load-tar-gz",
    "model-handles",
)
_STATUS_BY_NUMBER = {s.value[0]: s for s in grpc.StatusCode}
_CAPTURE_STATUS = {
    CaptureStatus.FAILURE: agent_pb2.FAILURE,
    CaptureStatus.SUCCESS: agent_pb2.SUCCESS,
    CaptureStatus.IN_PROGRESS: agent_pb2.IN_PROGRESS,
    CaptureStatus.NOT_FOUND: agent_pb2.NOT_FOUND,
}
_ENCODINGS = {v: k for k, v in agent_pb2.Encoding.items()}
#: Upload-log entries GetCaptureUploads returns when the request leaves ``limit`` 0.
DEFAULT_UPLOADS_PAGE = 500


def _no_capture() -> EdgefleetError:
    return EdgefleetError("this agent does not capture", Code.UNIMPLEMENTED)


T = TypeVar("T")


def _seconds(when: datetime | None) -> float:
    """Unix seconds on the wire (0 = unknown)."""
    return 0.0 if when is None else when.timestamp()


def _abort(context: grpc.ServicerContext, exc: EdgefleetError) -> Any:
    status = _STATUS_BY_NUMBER[grpc_status_number(exc.code)]
    context.abort(status, wire_message(exc))


def add_to_server(server: grpc.Server, servicer: object, service: ServiceDescriptor) -> None:
    """Serve ``service``'s unary RPCs from ``servicer``'s methods of the same names, parsing each
    request and serializing each response here rather than in grpcio.

    grpcio keeps about 16 KB for good for every request body its deserializer rejects (measured
    with grpcio 1.85; a bare grpcio server does the same), so a client sending garbage could grow
    the agent without bound. Handlers registered with bytes in and out never reach that path, and
    a body that is not the RPC's request message gets INVALID_ARGUMENT. The wire is unchanged.
    """
    handlers = {}
    for method in service.methods:
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _parsing_handler(GetMessageClass(method.input_type), getattr(servicer, method.name))
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def _parsing_handler(
    request_class: type[Message], implementation: Callable[[Any, grpc.ServicerContext], Message]
) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    what = request_class.DESCRIPTOR.name

    def handle(body: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            request = request_class.FromString(body)
        except DecodeError:
            _abort(
                context,
                InvalidArgument(f"the request body ({len(body)} bytes) is not a valid {what} message"),
            )
            raise AssertionError("context.abort returns only by raising") from None
        return bytes(implementation(request, context).SerializeToString())

    return handle


def _model_proto(slot: ModelSlot) -> agent_pb2.Model:
    return agent_pb2.Model(
        url=slot.url,
        name=slot.alias,
        input_tensor_metadatas=[metadata_from_spec(s) for s in slot.inputs],
        output_tensor_metadatas=[metadata_from_spec(s) for s in slot.outputs],
    )


class TensorDecoder:
    """Turns request tensors into numpy arrays checked against a model's input metadata."""

    def __init__(self, shm: SharedMemoryReader) -> None:
        self._shm = shm

    def data(
        self, holder: Any, what: str, shm_field: str, expected: int | None, name: str | None = None
    ) -> memoryview | bytes:
        """The bytes of a Tensor/AuxilaryData, inline or from shared memory. ``what`` (followed by
        ``name`` when given) names the holder in error messages."""
        which = holder.WhichOneof("data")
        if which == "byte_data":
            return holder.byte_data  # type: ignore[no-any-return]
        if name is not None:
            what = f"{what} {quoted(name)}"
        if which == shm_field:
            handle = holder.shared_memory_handle
            size = handle.size
            if size == 0 and expected is not None:
                # "size 0 = rest of segment": read what the tensor needs, bounds-checked by the reader.
                view = self._shm.read_sysv(handle.segment_id, handle.offset, 0)
                if len(view) < expected:
                    raise InvalidArgument(
                        f"{what}: shared memory segment {handle.segment_id} holds {len(view)} bytes after offset "
                        f"{handle.offset}, the tensor needs {expected}"
                    )
                return view[:expected]
            return self._shm.read_sysv(handle.segment_id, handle.offset, size)
        raise InvalidArgument(f"{what} carries no data (neither byte_data nor shared_memory_handle)")

    def tensor(self, tensor: Any, spec: TensorSpec | None, what: str) -> tuple[str, np.ndarray]:
        """Decode one Tensor; with ``spec`` (Predict) dtype and shape must fit the model input."""
        # Every Predict input passes here: the common case (metadata matching a static input)
        # takes few steps, and error messages are only formatted on error.
        if tensor.HasField("tensor_metadata"):
            md = tensor.tensor_metadata
            raw_name = md.name
            name = raw_name.decode("utf-8", "replace") if raw_name else (spec.name if spec else "")
            dtype = data_type(md.data_type, f"{what} {quoted(name)}")
            if spec is not None and dtype is not spec.dtype:
                raise InvalidArgument(
                    f"{what} {quoted(name)}: data_type {dtype.name}, the model expects {spec.dtype.name}"
                )
            shape: tuple[int, ...] = tuple(md.shape)
            if not shape:
                if spec is None:
                    raise InvalidArgument(f"{what} {quoted(name)}: shape is required")
                shape = self._shape_from_spec(spec, what, name)  # () for a scalar input
        elif spec is None:
            raise InvalidArgument(f"{what} needs tensor_metadata (name, data_type, shape)")
        else:
            name, dtype = spec.name, spec.dtype
            shape = self._shape_from_spec(spec, what, name)
        if shape and min(shape) < 0:
            raise InvalidArgument(
                f"{what} {quoted(name)}: shape {shorten(str(list(shape)))} has a negative dimension"
            )
        if spec is not None and shape != spec.shape and not spec.accepts_shape(shape):
            raise InvalidArgument(
                f"{what} {quoted(name)}: shape {shorten(str(list(shape)))} does not fit the model's {list(spec.shape)} (-1 = any)"
            )
        expected = math.prod(shape) * dtype.itemsize
        data = self.data(tensor, what, "shared_memory_handle", expected, name)
        return name, array_from_bytes(data, dtype, shape, checked=True)

    @staticmethod
    def _shape_from_spec(spec: TensorSpec, what: str, name: str) -> tuple[int, ...]:
        """The model input's own shape, for a tensor that gives none; it must be fully static."""
        if min(spec.shape, default=0) < 0:
            raise InvalidArgument(
                f"{what} {quoted(name)}: shape is required (the model's input has dynamic dimensions)"
            )
        return spec.shape


class AgentService(agent_pb2_grpc.AgentServicer):
    """The seven Edge Manager RPCs (``capture`` None: an agent that does not capture; CaptureData
    and GetCaptureDataStatus answer UNIMPLEMENTED)."""

    def __init__(
        self,
        registry: ModelRegistry,
        capture: CaptureService | None,
        shm: SharedMemoryReader,
        *,
        auto_capture: AutoCapture | None = None,
        summariser: Summariser | None = None,
        shadows: Shadows | None = None,
    ) -> None:
        self._models = registry
        self._capture = capture
        self._auto = auto_capture
        self._summaries = summariser
        self._shadows = shadows
        self._decoder = TensorDecoder(shm)

    @property
    def capture(self) -> CaptureService | None:
        """The capture pipeline (None in agents without one, e.g. the simulator's)."""
        return self._capture

    @property
    def auto_capture(self) -> AutoCapture | None:
        return self._auto

    @property
    def summariser(self) -> Summariser | None:
        return self._summaries

    @property
    def shadows(self) -> Shadows | None:
        """The shadow pairs (None in agents without the extension, e.g. the simulator's)."""
        return self._shadows

    # -- models ------------------------------------------------------------------------------
    def LoadModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            slot = self._models.load(request.url, request.name)
        except EdgefleetError as exc:
            log.warning("LoadModel %s from %s refused: %s", quoted(request.name), quoted(request.url), exc)
            return _abort(context, exc)
        return agent_pb2.LoadModelResponse(model=_model_proto(slot))

    def UnLoadModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            self._models.unload(request.name)
        except EdgefleetError as exc:
            return _abort(context, exc)
        if self._summaries is not None:
            self._summaries.forget(request.name)
        return agent_pb2.UnLoadModelResponse()

    def ListModels(self, request: Any, context: grpc.ServicerContext) -> Any:
        return agent_pb2.ListModelsResponse(models=[_model_proto(s) for s in self._models.list()])

    def DescribeModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            slot = self._models.get(request.name)
        except EdgefleetError as exc:
            return _abort(context, exc)
        return agent_pb2.DescribeModelResponse(model=_model_proto(slot))

    # -- inference ---------------------------------------------------------------------------
    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self.predict(request)
        except EdgefleetError as exc:
            return _abort(context, exc)

    def predict(self, request: Any) -> Any:
        """One Predict, for any transport: the PredictResponse, or an EdgefleetError with its code."""
        # A call through a handle that races a hot swap (its old target is being unloaded) is
        # resolved again once, so applications see no error during a swap.
        attempts = 2 if self._models.is_handle(request.name) else 1
        # a handle with a shadow: the champion's answered calls are offered to the pair
        pair = self._shadows.get(request.name) if self._shadows is not None else None
        for attempt in range(attempts):
            try:
                slot = self._models.get(request.name)
            except ModelUnloading:
                if attempt + 1 < attempts:
                    continue
                raise NotFound(f"no model is loaded under the name {quoted(request.name)}") from None
            try:
                try:
                    feeds = self.decode_inputs(slot, request.tensors)
                except EdgefleetError:
                    slot.stats.record(0.0, ok=False)  # a refused request counts as an error of the model
                    raise
                if pair is None:
                    outputs = slot.run(feeds)
                else:
                    start = time.perf_counter()
                    outputs = slot.run(feeds)
                    pair.offer(slot.alias, feeds, outputs, time.perf_counter() - start)
                if self._auto is not None or self._summaries is not None:
                    names = [spec.name for spec in slot.outputs]
                    if self._summaries is not None:
                        self._summaries.offer(
                            (slot.alias, slot.manifest.name, slot.manifest.version), feeds, names, outputs
                        )
                    if self._auto is not None:
                        self._auto.offer(slot.manifest.name, slot.manifest.version, feeds, names, outputs)
                return encode_outputs(slot.outputs, outputs)
            except ModelUnloading:
                if attempt + 1 < attempts:
                    continue
                raise NotFound(f"model {quoted(request.name)} was unloaded during the call") from None
            except EdgefleetError as exc:
                if exc.code is Code.INVALID_ARGUMENT:
                    log.info("Predict on %s refused: %s", quoted(request.name), exc.message)
                raise
        raise AssertionError("unreachable")

    def decode_inputs(self, slot: ModelSlot, tensors: Sequence[Any]) -> dict[str, np.ndarray]:
        specs = slot.inputs
        if len(tensors) != len(specs):
            raise InvalidArgument(
                f"model {quoted(slot.alias)} takes {len(specs)} input tensor(s) {[s.name for s in specs]}, got {len(tensors)}"
            )
        by_name = {s.name: s for s in specs}
        feeds: dict[str, np.ndarray] = {}
        for index, tensor in enumerate(tensors):
            spec = specs[index]
            if tensor.HasField("tensor_metadata") and tensor.tensor_metadata.name:
                name = tensor.tensor_metadata.name.decode("utf-8", "replace")
                if name not in by_name:
                    raise InvalidArgument(
                        f"model {quoted(slot.alias)} has no input named {quoted(name)} (inputs: {list(by_name)})"
                    )
                spec = by_name[name]
            if spec.name in feeds:
                raise InvalidArgument(f"input {quoted(spec.name)} is given twice")
            _, array = self._decoder.tensor(tensor, spec, "input tensor")
            feeds[spec.name] = array
        return feeds

    # -- capture -----------------------------------------------------------------------------
    def CaptureData(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self.capture_data(request)
        except EdgefleetError as exc:
            return _abort(context, exc)

    def capture_data(self, request: Any) -> Any:
        """One CaptureData, for any transport: the response, or an EdgefleetError with its code."""
        if self._capture is None:
            raise _no_capture()
        try:
            slot = self._models.get(request.model_name)
            capture = CaptureRequest(
                capture_id=request.capture_id,
                model_name=slot.manifest.name,
                model_version=slot.manifest.version,
                inference_time=_timestamp(request),
                inputs=tuple(self._capture_tensor(t, "input tensor") for t in request.input_tensors),
                outputs=tuple(self._capture_tensor(t, "output tensor") for t in request.output_tensors),
                aux_inputs=tuple(self._aux(a) for a in request.inputs),
                aux_outputs=tuple(self._aux(a) for a in request.outputs),
            )
            self._capture.submit(capture)
            slot.stats.record_capture()
        except EdgefleetError as exc:
            log.info("CaptureData %s refused: %s", quoted(request.capture_id), exc)
            raise
        return agent_pb2.CaptureDataResponse()

    def _capture_tensor(self, tensor: Any, what: str) -> CaptureTensor:
        name, array = self._decoder.tensor(tensor, None, what)
        return CaptureTensor(
            name=name, dtype=DataType.from_numpy(array.dtype), shape=tuple(array.shape), data=array.tobytes()
        )

    def _aux(self, aux: Any) -> CaptureAux:
        encoding = _ENCODINGS.get(aux.encoding)
        if encoding is None:
            raise InvalidArgument(f"auxiliary data {quoted(aux.name)}: unknown encoding {aux.encoding}")
        data = self._decoder.data(aux, f"auxiliary data {quoted(aux.name)}", "shared_memory_handle", None)
        return CaptureAux(name=aux.name, encoding=encoding, data=bytes(data))

    def GetCaptureDataStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self.capture_status(request)
        except EdgefleetError as exc:
            return _abort(context, exc)

    def capture_status(self, request: Any) -> Any:
        """One GetCaptureDataStatus, for any transport."""
        if self._capture is None:
            raise _no_capture()
        if not request.capture_id:
            raise InvalidArgument("capture_id is empty")
        status = self._capture.status(request.capture_id)
        return agent_pb2.GetCaptureDataStatusResponse(status=_CAPTURE_STATUS[status])


def _timestamp(request: Any) -> datetime:
    if not request.HasField("inference_timestamp"):
        return datetime.now(UTC)
    ts = request.inference_timestamp
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(f"inference_timestamp nanos {ts.nanos} out of range 0..999999999")
    try:
        return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise InvalidArgument(f"inference_timestamp {ts.seconds}s is not a valid time") from exc


_COMPARISONS = {
    extensions_pb2.SHADOW_COMPARISON_AUTO: Comparison.AUTO,
    extensions_pb2.SHADOW_COMPARISON_CLOSE: Comparison.CLOSE,
}
_COMPARISON_WIRE = {v: k for k, v in _COMPARISONS.items()}


def shadow_statistics_proto(stats: dict[str, Any]) -> extensions_pb2.ShadowStatistics:
    """A pair's figures (:meth:`edgefleet.agent.shadow.ShadowPair.statistics`) as the wire message."""
    plain = (
        "handle", "champion", "champion_model_name", "champion_model_version", "shadow",
        "shadow_model_name", "shadow_model_version", "sample_rate", "tolerance", "max_queue",
        "mirrored", "completed", "agreed", "disagreed", "shadow_errors", "dropped", "queued",
        "agreement_rate", "max_abs_diff", "last_error", "loaded_time",
    )  # fmt: skip
    return extensions_pb2.ShadowStatistics(
        **{name: stats[name] for name in plain},
        comparison=_COMPARISON_WIRE[Comparison(stats["comparison"])],
        champion_latency=extensions_pb2.LatencyStats(
            p50_ms=stats["champion_p50_ms"], p99_ms=stats["champion_p99_ms"]
        ),
        shadow_latency=extensions_pb2.LatencyStats(
            p50_ms=stats["shadow_p50_ms"], p99_ms=stats["shadow_p99_ms"]
        ),
    )


def encode_outputs(specs: Sequence[TensorSpec], outputs: Sequence[np.ndarray]) -> Any:
    """Output arrays as a ``PredictResponse`` of inline tensors with full metadata."""
    response = agent_pb2.PredictResponse()
    for index, array in enumerate(outputs):
        name = specs[index].name if index < len(specs) else f"output_{index}"
        array = np.asarray(array, order="C")  # keeps 0-d outputs 0-d, unlike ascontiguousarray
        # Filled in place: half the cost of building Tensor and TensorMetadata objects to copy in.
        tensor = response.tensors.add()
        fill_metadata(tensor.tensor_metadata, name, DataType.from_numpy(array.dtype), array.shape)
        tensor.byte_data = array.tobytes()
    return response


class AgentState(enum.Enum):
    """The agent's lifecycle: STARTING -> SERVING -> STOPPING -> STOPPED (values: GetHealth's strings)."""

    STARTING = "STARTING"
    SERVING = "SERVING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"


class AgentLifecycle:
    """The running agent's :class:`AgentState`, read and changed from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state = AgentState.STARTING
        self.started = time.time()

    def set(self, state: AgentState) -> None:
        with self._lock:
            self.state = state

    def begin_stop(self) -> bool:
        """Move to STOPPING; False (and no change) when a stop has already begun."""
        with self._lock:
            if self.state in (AgentState.STOPPING, AgentState.STOPPED):
                return False
            self.state = AgentState.STOPPING
            return True


class ExtensionsService(extensions_pb2_grpc.AgentExtensionsServicer):
    """edgefleet's own RPCs (package ``edgefleet.agent.v1``)."""

    def __init__(
        self,
        registry: ModelRegistry,
        agent: AgentService,
        shm: SharedMemoryReader,
        state: AgentLifecycle,
        *,
        fast_path: bool = False,
        extensions: Sequence[str] = EXTENSIONS,
    ) -> None:
        self._models = registry
        self._agent = agent
        self._shm = shm
        self._state = state
        self._extensions = [
            *extensions,
            *(["fast-predict"] if fast_path else []),
            *(["fast-capture"] if fast_path and agent.capture is not None else []),
            *(["capture-statistics", "capture-uploads"] if agent.capture is not None else []),
            *(["model-summaries"] if agent.summariser is not None else []),
            *(["shadow-models"] if agent.shadows is not None else []),
        ]

    def GetCaptureStatistics(self, request: Any, context: grpc.ServicerContext) -> Any:
        capture = self._agent.capture
        if capture is None:
            return _abort(context, Unimplemented("GetCaptureStatistics: this agent has no capture pipeline"))
        stats = capture.stats()
        auto = self._agent.auto_capture.stats() if self._agent.auto_capture is not None else {}
        return extensions_pb2.CaptureStatisticsResponse(
            pending=stats["pending"],
            pending_bytes=stats["pending_bytes"] or 0,
            oldest_pending_age_seconds=stats["oldest_pending_age_seconds"] or 0.0,
            buffer_size=stats["buffer_size"],
            buffer_bytes=stats["buffer_bytes"] or 0,
            written=stats["written"],
            failed=stats["failed"],
            dropped=stats["dropped"],
            write_errors=stats["write_errors"],
            last_error=stats["last_error"] or "",
            destination=capture.sink.store.uri,
            auto_picked=auto.get("picked", 0),
            auto_captured=auto.get("captured", 0),
            auto_skipped=auto.get("skipped", 0),
            auto_refused=auto.get("refused", 0),
            periodic_upload=stats["periodic_upload"],
            transfer_destination=stats.get("transfer_destination") or "",
            transfer_pending=stats.get("transfer_pending") or 0,
            transfer_pending_bytes=stats.get("transfer_pending_bytes") or 0,
            transfer_oldest_age_seconds=stats.get("transfer_oldest_age_seconds") or 0.0,
            transferred=stats.get("transferred", 0),
            transfer_errors=stats.get("transfer_errors", 0),
            transfer_given_up=stats.get("transfer_given_up", 0),
            transfer_last_error=stats.get("transfer_last_error") or "",
        )

    def GetCaptureUploads(self, request: Any, context: grpc.ServicerContext) -> Any:
        capture = self._agent.capture
        if capture is None:
            return _abort(context, Unimplemented("GetCaptureUploads: this agent has no capture pipeline"))
        try:
            page = capture.uploads(request.after, request.limit or DEFAULT_UPLOADS_PAGE)
            stats = capture.stats()
        except EdgefleetError as exc:
            return _abort(context, exc)
        return extensions_pb2.CaptureUploadsResponse(
            backlog_records=stats["pending"],
            backlog_bytes=stats["pending_bytes"] or 0,
            oldest_backlog_age_seconds=stats["oldest_pending_age_seconds"] or 0.0,
            dropped=stats["dropped"],
            failed=stats["failed"],
            transfer_pending=stats.get("transfer_pending") or 0,
            transfer_pending_bytes=stats.get("transfer_pending_bytes") or 0,
            transfer_oldest_age_seconds=stats.get("transfer_oldest_age_seconds") or 0.0,
            uploads=[
                extensions_pb2.CaptureUploadEntry(
                    log_id=e.log_id,
                    key=e.upload.key,
                    model_name=e.upload.model_name,
                    model_version=e.upload.model_version,
                    records=e.upload.records,
                    size=e.upload.size,
                    first_inference_time=_seconds(e.upload.first_inference),
                    last_inference_time=_seconds(e.upload.last_inference),
                    raw_objects=e.upload.raw_objects,
                    uploaded_time=e.uploaded_at,
                )
                for e in page.entries
            ],
            next_after=page.next_after,
            log_epoch=page.epoch,
            trimmed=page.trimmed,
            first_log_id=page.first_log_id,
        )

    def GetModelSummaries(self, request: Any, context: grpc.ServicerContext) -> Any:
        summariser = self._agent.summariser
        if summariser is None:
            return _abort(context, Unimplemented("GetModelSummaries: model summaries are off in this agent"))
        return extensions_pb2.ModelSummariesResponse(
            models=[
                extensions_pb2.ModelSummary(
                    name=w.key[0],
                    model_name=w.key[1],
                    model_version=w.key[2],
                    calls=w.summary.calls,
                    summary_json=json.dumps(w.summary.to_wire(), separators=(",", ":")),
                    window_start=w.start,
                )
                for w in summariser.take(reset=request.reset)
            ],
            skipped=summariser.skipped,
        )

    def GetServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return extensions_pb2.ServerMetadataResponse(
            name="edgefleet-agent",
            version=__version__,
            extensions=list(self._extensions),
            protocol=PROTOCOL,
            runtimes=installed_backends(),
        )

    def GetHealth(self, request: Any, context: grpc.ServicerContext) -> Any:
        state = self._state.state
        return extensions_pb2.HealthResponse(
            live=state is not AgentState.STOPPED,
            ready=state is AgentState.SERVING,
            state=state.value,
            detail=f"{len(self._models.list())} model(s) loaded, {self._models.used_bytes >> 20} MiB reserved",
        )

    def GetModelStatistics(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            slots = [self._models.get(request.name)] if request.name else self._models.list()
        except EdgefleetError as exc:
            return _abort(context, exc)
        out = []
        for slot in slots:
            snap = slot.stats.snapshot()
            out.append(
                extensions_pb2.ModelStatistics(
                    name=slot.alias,
                    model_name=slot.manifest.name,
                    model_version=slot.manifest.version,
                    request_count=snap.request_count,
                    error_count=snap.error_count,
                    latency=extensions_pb2.LatencyStats(
                        p50_ms=snap.p50_ms, p95_ms=snap.p95_ms, p99_ms=snap.p99_ms
                    ),
                    last_inference_time=snap.last_inference_time,
                    last_capture_time=snap.last_capture_time,
                    in_flight=slot.in_flight,
                    queued=slot.queued,
                    memory_bytes=slot.memory_bytes,
                    loaded_time=slot.loaded_time,
                )
            )
        return extensions_pb2.ModelStatisticsResponse(models=out)

    # -- shadow models ------------------------------------------------------------------------
    def _shadow_pairs(self, rpc: str) -> Shadows:
        shadows = self._agent.shadows
        if shadows is None:
            raise Unimplemented(f"{rpc}: this agent has no shadow models")
        return shadows

    def LoadShadow(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            shadows = self._shadow_pairs("LoadShadow")
            comparison = _COMPARISONS.get(request.comparison)
            if comparison is None:
                raise InvalidArgument(
                    f"unknown comparison {request.comparison} (known: "
                    f"{', '.join(f'{n}={v}' for n, v in extensions_pb2.ShadowComparison.items())})"
                )
            settings = ShadowSettings.checked(
                request.sample_rate, request.tolerance, request.max_queue, comparison
            )
            stats = shadows.load(request.handle, request.shadow, settings)
        except EdgefleetError as exc:
            log.info("LoadShadow %s on %s refused: %s", quoted(request.shadow), quoted(request.handle), exc)
            return _abort(context, exc)
        return extensions_pb2.LoadShadowResponse(statistics=shadow_statistics_proto(stats))

    def UnloadShadow(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            stats = self._shadow_pairs("UnloadShadow").unload(request.handle)
        except EdgefleetError as exc:
            return _abort(context, exc)
        return extensions_pb2.UnloadShadowResponse(statistics=shadow_statistics_proto(stats))

    def PromoteShadow(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            previous, stats = self._shadow_pairs("PromoteShadow").promote(request.handle)
        except EdgefleetError as exc:
            return _abort(context, exc)
        return extensions_pb2.PromoteShadowResponse(
            previous_target=previous, statistics=shadow_statistics_proto(stats)
        )

    def GetShadowStatistics(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            pairs = self._shadow_pairs("GetShadowStatistics").statistics(request.handle)
        except EdgefleetError as exc:
            return _abort(context, exc)
        return extensions_pb2.ShadowStatisticsResponse(pairs=[shadow_statistics_proto(p) for p in pairs])

    def SetHandle(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            previous = self._models.set_handle(request.handle, request.target)
        except EdgefleetError as exc:
            return _abort(context, exc)
        return extensions_pb2.SetHandleResponse(previous_target=previous)

    def RemoveHandle(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            self._models.remove_handle(request.handle)
        except EdgefleetError as exc:
            return _abort(context, exc)
        return extensions_pb2.RemoveHandleResponse()

    def ListHandles(self, request: Any, context: grpc.ServicerContext) -> Any:
        return extensions_pb2.ListHandlesResponse(
            handles=[
                extensions_pb2.ModelHandle(handle=h, target=t)
                for h, t in sorted(self._models.handles().items())
            ]
        )

    def PredictExt(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Predict with POSIX named shared memory (or System V / inline) inputs."""
        try:
            slot = self._models.get(request.name)
            specs = slot.inputs
            if len(request.tensors) != len(specs):
                raise InvalidArgument(
                    f"model {quoted(slot.alias)} takes {len(specs)} input tensor(s), got {len(request.tensors)}"
                )
            feeds: dict[str, np.ndarray] = {}
            for index, tensor in enumerate(request.tensors):
                feeds.update([self._ext_tensor(tensor, specs, index)])
            outputs = slot.run(feeds)
            response = extensions_pb2.PredictExtResponse()
            for proto in encode_outputs(slot.outputs, outputs).tensors:
                md = proto.tensor_metadata
                response.tensors.add(
                    name=md.name, data_type=md.data_type, shape=md.shape, byte_data=proto.byte_data
                )
            return response
        except EdgefleetError as exc:
            return _abort(context, exc)

    def _ext_tensor(self, tensor: Any, specs: Sequence[TensorSpec], index: int) -> tuple[str, np.ndarray]:
        name = tensor.name.decode("utf-8", "replace") if tensor.name else specs[index].name
        matches = [s for s in specs if s.name == name]
        if not matches:
            raise InvalidArgument(
                f"model has no input named {quoted(name)} (inputs: {[s.name for s in specs]})"
            )
        spec = matches[0]
        if tensor.data_type != int(spec.dtype):
            raise InvalidArgument(
                f"input {quoted(name)}: data_type {tensor.data_type}, the model expects {spec.dtype.name}"
            )
        shape = tuple(tensor.shape) if len(tensor.shape) else spec.shape
        if any(d < 0 for d in shape) or not spec.accepts_shape(shape):
            raise InvalidArgument(
                f"input {quoted(name)}: shape {shorten(str(list(shape)))} does not fit the model's {list(spec.shape)}"
            )
        expected = math.prod(shape) * spec.dtype.itemsize
        which = tensor.WhichOneof("data")
        data: memoryview | bytes
        if which == "byte_data":
            data = tensor.byte_data
        elif which == "sysv_segment_id":
            data = self._shm.read_sysv(tensor.sysv_segment_id, tensor.offset, tensor.size or expected)
        elif which == "posix_shm":
            handle = tensor.posix_shm
            data = self._shm.read_posix(handle.name, handle.offset, handle.size or expected)
        else:
            raise InvalidArgument(f"input {quoted(name)} carries no data")
        return name, array_from_bytes(data, spec.dtype, shape)
