from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UINT8: _ClassVar[DataType]
    INT16: _ClassVar[DataType]
    INT32: _ClassVar[DataType]
    INT64: _ClassVar[DataType]
    FLOAT16: _ClassVar[DataType]
    FLOAT32: _ClassVar[DataType]
    FLOAT64: _ClassVar[DataType]

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CSV: _ClassVar[Encoding]
    JSON: _ClassVar[Encoding]
    NONE: _ClassVar[Encoding]
    BASE64: _ClassVar[Encoding]

class CaptureDataStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE: _ClassVar[CaptureDataStatus]
    SUCCESS: _ClassVar[CaptureDataStatus]
    IN_PROGRESS: _ClassVar[CaptureDataStatus]
    NOT_FOUND: _ClassVar[CaptureDataStatus]
UINT8: DataType
INT16: DataType
INT32: DataType
INT64: DataType
FLOAT16: DataType
FLOAT32: DataType
FLOAT64: DataType
CSV: Encoding
JSON: Encoding
NONE: Encoding
BASE64: Encoding
FAILURE: CaptureDataStatus
SUCCESS: CaptureDataStatus
IN_PROGRESS: CaptureDataStatus
NOT_FOUND: CaptureDataStatus

class TensorMetadata(_message.Message):
    __slots__ = ("name", "data_type", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: bytes
    data_type: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[bytes] = ..., data_type: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class SharedMemoryHandle(_message.Message):
    __slots__ = ("size", "offset", "segment_id")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    size: int
    offset: int
    segment_id: int
    def __init__(self, size: _Optional[int] = ..., offset: _Optional[int] = ..., segment_id: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("tensor_metadata", "byte_data", "shared_memory_handle")
    TENSOR_METADATA_FIELD_NUMBER: _ClassVar[int]
    BYTE_DATA_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_HANDLE_FIELD_NUMBER: _ClassVar[int]
    tensor_metadata: TensorMetadata
    byte_data: bytes
    shared_memory_handle: SharedMemoryHandle
    def __init__(self, tensor_metadata: _Optional[_Union[TensorMetadata, _Mapping]] = ..., byte_data: _Optional[bytes] = ..., shared_memory_handle: _Optional[_Union[SharedMemoryHandle, _Mapping]] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("url", "name", "input_tensor_metadatas", "output_tensor_metadatas")
    URL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_TENSOR_METADATAS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TENSOR_METADATAS_FIELD_NUMBER: _ClassVar[int]
    url: str
    name: str
    input_tensor_metadatas: _containers.RepeatedCompositeFieldContainer[TensorMetadata]
    output_tensor_metadatas: _containers.RepeatedCompositeFieldContainer[TensorMetadata]
    def __init__(self, url: _Optional[str] = ..., name: _Optional[str] = ..., input_tensor_metadatas: _Optional[_Iterable[_Union[TensorMetadata, _Mapping]]] = ..., output_tensor_metadatas: _Optional[_Iterable[_Union[TensorMetadata, _Mapping]]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("name", "tensors")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, name: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("url", "name")
    URL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    url: str
    name: str
    def __init__(self, url: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class UnLoadModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnLoadModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class DescribeModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DescribeModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class Timestamp(_message.Message):
    __slots__ = ("seconds", "nanos")
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    NANOS_FIELD_NUMBER: _ClassVar[int]
    seconds: int
    nanos: int
    def __init__(self, seconds: _Optional[int] = ..., nanos: _Optional[int] = ...) -> None: ...

class AuxilaryData(_message.Message):
    __slots__ = ("name", "encoding", "byte_data", "shared_memory_handle")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    BYTE_DATA_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_HANDLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    encoding: Encoding
    byte_data: bytes
    shared_memory_handle: SharedMemoryHandle
    def __init__(self, name: _Optional[str] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., byte_data: _Optional[bytes] = ..., shared_memory_handle: _Optional[_Union[SharedMemoryHandle, _Mapping]] = ...) -> None: ...

class CaptureDataRequest(_message.Message):
    __slots__ = ("model_name", "capture_id", "inference_timestamp", "input_tensors", "output_tensors", "inputs", "outputs")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_ID_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    INPUT_TENSORS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TENSORS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    capture_id: str
    inference_timestamp: Timestamp
    input_tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    output_tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    inputs: _containers.RepeatedCompositeFieldContainer[AuxilaryData]
    outputs: _containers.RepeatedCompositeFieldContainer[AuxilaryData]
    def __init__(self, model_name: _Optional[str] = ..., capture_id: _Optional[str] = ..., inference_timestamp: _Optional[_Union[Timestamp, _Mapping]] = ..., input_tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., output_tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., inputs: _Optional[_Iterable[_Union[AuxilaryData, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[AuxilaryData, _Mapping]]] = ...) -> None: ...

class CaptureDataResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCaptureDataStatusRequest(_message.Message):
    __slots__ = ("capture_id",)
    CAPTURE_ID_FIELD_NUMBER: _ClassVar[int]
    capture_id: str
    def __init__(self, capture_id: _Optional[str] = ...) -> None: ...

class GetCaptureDataStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: CaptureDataStatus
    def __init__(self, status: _Optional[_Union[CaptureDataStatus, str]] = ...) -> None: ...
