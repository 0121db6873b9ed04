from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ShadowComparison(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SHADOW_COMPARISON_AUTO: _ClassVar[ShadowComparison]
    SHADOW_COMPARISON_CLOSE: _ClassVar[ShadowComparison]
SHADOW_COMPARISON_AUTO: ShadowComparison
SHADOW_COMPARISON_CLOSE: ShadowComparison

class LoadShadowRequest(_message.Message):
    __slots__ = ("handle", "shadow", "sample_rate", "tolerance", "max_queue", "comparison")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    handle: str
    shadow: str
    sample_rate: float
    tolerance: float
    max_queue: int
    comparison: ShadowComparison
    def __init__(self, handle: _Optional[str] = ..., shadow: _Optional[str] = ..., sample_rate: _Optional[float] = ..., tolerance: _Optional[float] = ..., max_queue: _Optional[int] = ..., comparison: _Optional[_Union[ShadowComparison, str]] = ...) -> None: ...

class LoadShadowResponse(_message.Message):
    __slots__ = ("statistics",)
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    statistics: ShadowStatistics
    def __init__(self, statistics: _Optional[_Union[ShadowStatistics, _Mapping]] = ...) -> None: ...

class UnloadShadowRequest(_message.Message):
    __slots__ = ("handle",)
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    handle: str
    def __init__(self, handle: _Optional[str] = ...) -> None: ...

class UnloadShadowResponse(_message.Message):
    __slots__ = ("statistics",)
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    statistics: ShadowStatistics
    def __init__(self, statistics: _Optional[_Union[ShadowStatistics, _Mapping]] = ...) -> None: ...

class PromoteShadowRequest(_message.Message):
    __slots__ = ("handle",)
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    handle: str
    def __init__(self, handle: _Optional[str] = ...) -> None: ...

class PromoteShadowResponse(_message.Message):
    __slots__ = ("previous_target", "statistics")
    PREVIOUS_TARGET_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    previous_target: str
    statistics: ShadowStatistics
    def __init__(self, previous_target: _Optional[str] = ..., statistics: _Optional[_Union[ShadowStatistics, _Mapping]] = ...) -> None: ...

class ShadowStatisticsRequest(_message.Message):
    __slots__ = ("handle",)
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    handle: str
    def __init__(self, handle: _Optional[str] = ...) -> None: ...

class ShadowStatistics(_message.Message):
    __slots__ = ("handle", "champion", "champion_model_name", "champion_model_version", "shadow", "shadow_model_name", "shadow_model_version", "sample_rate", "tolerance", "comparison", "max_queue", "mirrored", "completed", "agreed", "disagreed", "shadow_errors", "dropped", "queued", "champion_latency", "shadow_latency", "agreement_rate", "max_abs_diff", "last_error", "loaded_time")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    SHADOW_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SHADOW_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MIRRORED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    AGREED_FIELD_NUMBER: _ClassVar[int]
    DISAGREED_FIELD_NUMBER: _ClassVar[int]
    SHADOW_ERRORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_LATENCY_FIELD_NUMBER: _ClassVar[int]
    SHADOW_LATENCY_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LOADED_TIME_FIELD_NUMBER: _ClassVar[int]
    handle: str
    champion: str
    champion_model_name: str
    champion_model_version: str
    shadow: str
    shadow_model_name: str
    shadow_model_version: str
    sample_rate: float
    tolerance: float
    comparison: ShadowComparison
    max_queue: int
    mirrored: int
    completed: int
    agreed: int
    disagreed: int
    shadow_errors: int
    dropped: int
    queued: int
    champion_latency: LatencyStats
    shadow_latency: LatencyStats
    agreement_rate: float
    max_abs_diff: float
    last_error: str
    loaded_time: float
    def __init__(self, handle: _Optional[str] = ..., champion: _Optional[str] = ..., champion_model_name: _Optional[str] = ..., champion_model_version: _Optional[str] = ..., shadow: _Optional[str] = ..., shadow_model_name: _Optional[str] = ..., shadow_model_version: _Optional[str] = ..., sample_rate: _Optional[float] = ..., tolerance: _Optional[float] = ..., comparison: _Optional[_Union[ShadowComparison, str]] = ..., max_queue: _Optional[int] = ..., mirrored: _Optional[int] = ..., completed: _Optional[int] = ..., agreed: _Optional[int] = ..., disagreed: _Optional[int] = ..., shadow_errors: _Optional[int] = ..., dropped: _Optional[int] = ..., queued: _Optional[int] = ..., champion_latency: _Optional[_Union[LatencyStats, _Mapping]] = ..., shadow_latency: _Optional[_Union[LatencyStats, _Mapping]] = ..., agreement_rate: _Optional[float] = ..., max_abs_diff: _Optional[float] = ..., last_error: _Optional[str] = ..., loaded_time: _Optional[float] = ...) -> None: ...

class ShadowStatisticsResponse(_message.Message):
    __slots__ = ("pairs",)
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedCompositeFieldContainer[ShadowStatistics]
    def __init__(self, pairs: _Optional[_Iterable[_Union[ShadowStatistics, _Mapping]]] = ...) -> None: ...

class CaptureUploadsRequest(_message.Message):
    __slots__ = ("after", "limit")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after: int
    limit: int
    def __init__(self, after: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class CaptureUploadEntry(_message.Message):
    __slots__ = ("log_id", "key", "model_name", "model_version", "records", "size", "first_inference_time", "last_inference_time", "raw_objects", "uploaded_time")
    LOG_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FIRST_INFERENCE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_INFERENCE_TIME_FIELD_NUMBER: _ClassVar[int]
    RAW_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_TIME_FIELD_NUMBER: _ClassVar[int]
    log_id: int
    key: str
    model_name: str
    model_version: str
    records: int
    size: int
    first_inference_time: float
    last_inference_time: float
    raw_objects: int
    uploaded_time: float
    def __init__(self, log_id: _Optional[int] = ..., key: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., records: _Optional[int] = ..., size: _Optional[int] = ..., first_inference_time: _Optional[float] = ..., last_inference_time: _Optional[float] = ..., raw_objects: _Optional[int] = ..., uploaded_time: _Optional[float] = ...) -> None: ...

class CaptureUploadsResponse(_message.Message):
    __slots__ = ("backlog_records", "backlog_bytes", "oldest_backlog_age_seconds", "dropped", "failed", "uploads", "next_after", "log_epoch", "trimmed", "first_log_id", "transfer_pending", "transfer_pending_bytes", "transfer_oldest_age_seconds")
    BACKLOG_RECORDS_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    OLDEST_BACKLOG_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    UPLOADS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_FIELD_NUMBER: _ClassVar[int]
    LOG_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRIMMED_FIELD_NUMBER: _ClassVar[int]
    FIRST_LOG_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_PENDING_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_PENDING_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_OLDEST_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    backlog_records: int
    backlog_bytes: int
    oldest_backlog_age_seconds: float
    dropped: int
    failed: int
    uploads: _containers.RepeatedCompositeFieldContainer[CaptureUploadEntry]
    next_after: int
    log_epoch: str
    trimmed: int
    first_log_id: int
    transfer_pending: int
    transfer_pending_bytes: int
    transfer_oldest_age_seconds: float
    def __init__(self, backlog_records: _Optional[int] = ..., backlog_bytes: _Optional[int] = ..., oldest_backlog_age_seconds: _Optional[float] = ..., dropped: _Optional[int] = ..., failed: _Optional[int] = ..., uploads: _Optional[_Iterable[_Union[CaptureUploadEntry, _Mapping]]] = ..., next_after: _Optional[int] = ..., log_epoch: _Optional[str] = ..., trimmed: _Optional[int] = ..., first_log_id: _Optional[int] = ..., transfer_pending: _Optional[int] = ..., transfer_pending_bytes: _Optional[int] = ..., transfer_oldest_age_seconds: _Optional[float] = ...) -> None: ...

class CaptureStatisticsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CaptureStatisticsResponse(_message.Message):
    __slots__ = ("pending", "pending_bytes", "oldest_pending_age_seconds", "buffer_size", "buffer_bytes", "written", "failed", "dropped", "write_errors", "last_error", "destination", "auto_picked", "auto_captured", "auto_skipped", "auto_refused", "periodic_upload", "transfer_destination", "transfer_pending", "transfer_pending_bytes", "transfer_oldest_age_seconds", "transferred", "transfer_errors", "transfer_given_up", "transfer_last_error")
    PENDING_FIELD_NUMBER: _ClassVar[int]
    PENDING_BYTES_FIELD_NUMBER: _ClassVar[int]
    OLDEST_PENDING_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BUFFER_SIZE_FIELD_NUMBER: _ClassVar[int]
    BUFFER_BYTES_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    WRITE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    AUTO_PICKED_FIELD_NUMBER: _ClassVar[int]
    AUTO_CAPTURED_FIELD_NUMBER: _ClassVar[int]
    AUTO_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    AUTO_REFUSED_FIELD_NUMBER: _ClassVar[int]
    PERIODIC_UPLOAD_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_DESTINATION_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_PENDING_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_PENDING_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_OLDEST_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRANSFERRED_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ERRORS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_GIVEN_UP_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
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
    periodic_upload: bool
    transfer_destination: str
    transfer_pending: int
    transfer_pending_bytes: int
    transfer_oldest_age_seconds: float
    transferred: int
    transfer_errors: int
    transfer_given_up: int
    transfer_last_error: str
    def __init__(self, pending: _Optional[int] = ..., pending_bytes: _Optional[int] = ..., oldest_pending_age_seconds: _Optional[float] = ..., buffer_size: _Optional[int] = ..., buffer_bytes: _Optional[int] = ..., written: _Optional[int] = ..., failed: _Optional[int] = ..., dropped: _Optional[int] = ..., write_errors: _Optional[int] = ..., last_error: _Optional[str] = ..., destination: _Optional[str] = ..., auto_picked: _Optional[int] = ..., auto_captured: _Optional[int] = ..., auto_skipped: _Optional[int] = ..., auto_refused: _Optional[int] = ..., periodic_upload: _Optional[bool] = ..., transfer_destination: _Optional[str] = ..., transfer_pending: _Optional[int] = ..., transfer_pending_bytes: _Optional[int] = ..., transfer_oldest_age_seconds: _Optional[float] = ..., transferred: _Optional[int] = ..., transfer_errors: _Optional[int] = ..., transfer_given_up: _Optional[int] = ..., transfer_last_error: _Optional[str] = ...) -> None: ...

class ModelSummariesRequest(_message.Message):
    __slots__ = ("reset",)
    RESET_FIELD_NUMBER: _ClassVar[int]
    reset: bool
    def __init__(self, reset: _Optional[bool] = ...) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("name", "model_name", "model_version", "calls", "summary_json", "window_start")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_name: str
    model_version: str
    calls: int
    summary_json: str
    window_start: float
    def __init__(self, name: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., calls: _Optional[int] = ..., summary_json: _Optional[str] = ..., window_start: _Optional[float] = ...) -> None: ...

class ModelSummariesResponse(_message.Message):
    __slots__ = ("models", "skipped")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    skipped: int
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ..., skipped: _Optional[int] = ...) -> None: ...

class SetHandleRequest(_message.Message):
    __slots__ = ("handle", "target")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    handle: str
    target: str
    def __init__(self, handle: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class SetHandleResponse(_message.Message):
    __slots__ = ("previous_target",)
    PREVIOUS_TARGET_FIELD_NUMBER: _ClassVar[int]
    previous_target: str
    def __init__(self, previous_target: _Optional[str] = ...) -> None: ...

class RemoveHandleRequest(_message.Message):
    __slots__ = ("handle",)
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    handle: str
    def __init__(self, handle: _Optional[str] = ...) -> None: ...

class RemoveHandleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListHandlesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelHandle(_message.Message):
    __slots__ = ("handle", "target")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    handle: str
    target: str
    def __init__(self, handle: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class ListHandlesResponse(_message.Message):
    __slots__ = ("handles",)
    HANDLES_FIELD_NUMBER: _ClassVar[int]
    handles: _containers.RepeatedCompositeFieldContainer[ModelHandle]
    def __init__(self, handles: _Optional[_Iterable[_Union[ModelHandle, _Mapping]]] = ...) -> None: ...

class ServerMetadataRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerMetadataResponse(_message.Message):
    __slots__ = ("name", "version", "extensions", "protocol", "runtimes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXTENSIONS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    extensions: _containers.RepeatedScalarFieldContainer[str]
    protocol: str
    runtimes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., extensions: _Optional[_Iterable[str]] = ..., protocol: _Optional[str] = ..., runtimes: _Optional[_Iterable[str]] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("live", "ready", "state", "detail")
    LIVE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    live: bool
    ready: bool
    state: str
    detail: str
    def __init__(self, live: _Optional[bool] = ..., ready: _Optional[bool] = ..., state: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ModelStatisticsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class LatencyStats(_message.Message):
    __slots__ = ("p50_ms", "p95_ms", "p99_ms")
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    def __init__(self, p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ...) -> None: ...

class ModelStatistics(_message.Message):
    __slots__ = ("name", "model_name", "model_version", "request_count", "error_count", "latency", "last_inference_time", "last_capture_time", "in_flight", "queued", "memory_bytes", "loaded_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_COUNT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    LAST_INFERENCE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOADED_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_name: str
    model_version: str
    request_count: int
    error_count: int
    latency: LatencyStats
    last_inference_time: float
    last_capture_time: float
    in_flight: int
    queued: int
    memory_bytes: int
    loaded_time: float
    def __init__(self, name: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., request_count: _Optional[int] = ..., error_count: _Optional[int] = ..., latency: _Optional[_Union[LatencyStats, _Mapping]] = ..., last_inference_time: _Optional[float] = ..., last_capture_time: _Optional[float] = ..., in_flight: _Optional[int] = ..., queued: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., loaded_time: _Optional[float] = ...) -> None: ...

class ModelStatisticsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelStatistics]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelStatistics, _Mapping]]] = ...) -> None: ...

class PosixShmHandle(_message.Message):
    __slots__ = ("name", "offset", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    offset: int
    size: int
    def __init__(self, name: _Optional[str] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class TensorExt(_message.Message):
    __slots__ = ("name", "data_type", "shape", "byte_data", "sysv_segment_id", "posix_shm", "offset", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    BYTE_DATA_FIELD_NUMBER: _ClassVar[int]
    SYSV_SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    POSIX_SHM_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: bytes
    data_type: int
    shape: _containers.RepeatedScalarFieldContainer[int]
    byte_data: bytes
    sysv_segment_id: int
    posix_shm: PosixShmHandle
    offset: int
    size: int
    def __init__(self, name: _Optional[bytes] = ..., data_type: _Optional[int] = ..., shape: _Optional[_Iterable[int]] = ..., byte_data: _Optional[bytes] = ..., sysv_segment_id: _Optional[int] = ..., posix_shm: _Optional[_Union[PosixShmHandle, _Mapping]] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class PredictExtRequest(_message.Message):
    __slots__ = ("name", "tensors")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensors: _containers.RepeatedCompositeFieldContainer[TensorExt]
    def __init__(self, name: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[TensorExt, _Mapping]]] = ...) -> None: ...

class PredictExtResponse(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorExt]
    def __init__(self, tensors: _Optional[_Iterable[_Union[TensorExt, _Mapping]]] = ...) -> None: ...
