"""numpy <-> wire tensors (``Tensor`` / ``TensorMetadata`` of ``AWS.SageMaker.Edge``), for agent and client.

Tensor bytes on the wire are raw little-endian C-order bytes; ``TensorMetadata.name`` is ``bytes``
(older vendor clients declared it ``string``: same wire type, UTF-8 either way); ``shape`` is
``repeated int32``. Every check that a peer can fail raises :class:`InvalidArgument` with a message
naming the tensor and what was wrong.

This module also owns the wire's message-size limit (:data:`MAX_MESSAGE_BYTES`,
:data:`GRPC_CHANNEL_OPTIONS`): gRPC's 4 MiB default is too small for inline tensors, and the
server and the client must agree on the limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edgefleet.core.errors import InvalidArgument, shorten
from edgefleet.core.tensors import DataType, TensorSpec
from edgefleet.protocol.agent.proto import agent_pb2

#: Largest gRPC message either side sends or accepts (1 GiB; gRPC caps at 2 GiB - 1).
MAX_MESSAGE_BYTES = 1 << 30

#: gRPC channel/server options raising the send and receive limits to :data:`MAX_MESSAGE_BYTES`.
#: Pass them to ``grpc.insecure_channel(..., options=...)`` and ``grpc.server(..., options=...)``.
GRPC_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)

_INT32_MAX = (1 << 31) - 1

#: wire data_type number -> DataType
_DATA_TYPES = {t.value: t for t in DataType}


def encode_name(name: str | bytes) -> bytes:
    """A tensor name as the wire carries it (UTF-8 bytes)."""
    return name if isinstance(name, bytes) else name.encode("utf-8")


def decode_name(raw: bytes | str) -> str:
    """A wire tensor name as text; INVALID_ARGUMENT when the bytes are not UTF-8."""
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"tensor name {raw!r} is not valid UTF-8") from exc


def wire_shape(shape: Sequence[int], what: str = "tensor") -> list[int]:
    """``shape`` as the wire's ``repeated int32``; INVALID_ARGUMENT for dims outside 0..2**31-1."""
    dims = [int(d) for d in shape]
    for d in dims:
        if not 0 <= d <= _INT32_MAX:
            raise InvalidArgument(
                f"{what}: dimension {d} of shape {dims} does not fit the wire's int32 (0..{_INT32_MAX})"
            )
    return dims


def wire_array(array: npt.ArrayLike, what: str = "tensor") -> tuple[DataType, np.ndarray]:
    """``array`` as a C-contiguous little-endian array of a wire data type, with that type.

    Copies only when needed (non-contiguous or big-endian input). INVALID_ARGUMENT for dtypes the
    wire cannot carry (bool, complex, object, unsigned wider than 8 bits, ...).
    """
    arr = np.asarray(array)
    try:
        dtype = DataType.from_numpy(arr.dtype)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{what}: {exc.message}") from None
    # np.asarray(order='C'), not np.ascontiguousarray, which turns 0-d arrays into shape (1,)
    return dtype, np.asarray(arr, dtype=dtype.numpy, order="C")


def fill_metadata(
    metadata: agent_pb2.TensorMetadata, name: str | bytes, dtype: DataType, shape: Sequence[int]
) -> None:
    """Set an empty ``TensorMetadata`` in place (cheaper than building one to copy in);
    INVALID_ARGUMENT for dims outside the wire's int32."""
    if shape and (min(shape) < 0 or max(shape) > _INT32_MAX):
        wire_shape(shape, f"tensor {name!r}")  # raises, naming the dimension
    metadata.name = encode_name(name)
    metadata.data_type = agent_pb2.DataType.ValueType(dtype.value)
    metadata.shape.extend(shape)


def tensor_metadata(name: str | bytes, dtype: DataType, shape: Sequence[int]) -> agent_pb2.TensorMetadata:
    """A ``TensorMetadata`` message."""
    metadata = agent_pb2.TensorMetadata()
    fill_metadata(metadata, name, dtype, shape)
    return metadata


def metadata_from_spec(spec: TensorSpec) -> agent_pb2.TensorMetadata:
    """The ``TensorMetadata`` describing a model input/output (``-1`` dynamic dims are kept as -1)."""
    return agent_pb2.TensorMetadata(
        name=encode_name(spec.name),
        data_type=agent_pb2.DataType.Value(spec.dtype.name),
        shape=list(spec.shape),
    )


def spec_from_metadata(metadata: agent_pb2.TensorMetadata) -> TensorSpec:
    """The :class:`TensorSpec` a ``TensorMetadata`` describes (dims < 0 are dynamic, kept as -1)."""
    name = decode_name(metadata.name)
    dtype = data_type(int(metadata.data_type), f"tensor {name!r}")
    return TensorSpec(name=name, dtype=dtype, shape=tuple(max(int(d), -1) for d in metadata.shape))


def data_type(number: int, what: str = "tensor") -> DataType:
    """The :class:`DataType` for a wire enum number; INVALID_ARGUMENT for unknown numbers."""
    dtype = _DATA_TYPES.get(number)
    if dtype is None:
        known = ", ".join(f"{t.name}={t.value}" for t in DataType)
        raise InvalidArgument(f"{what}: unknown data_type {number} (known: {known})")
    return dtype


def tensor_to_proto(name: str | bytes, array: npt.ArrayLike) -> agent_pb2.Tensor:
    """An inline ``Tensor`` (full metadata + ``byte_data``) holding ``array``."""
    dtype, arr = wire_array(array, f"tensor {name!r}")
    tensor = agent_pb2.Tensor()
    fill_metadata(tensor.tensor_metadata, name, dtype, arr.shape)
    tensor.byte_data = arr.tobytes()
    return tensor


def shm_tensor_proto(
    name: str | bytes, dtype: DataType, shape: Sequence[int], segment_id: int, offset: int, size: int
) -> agent_pb2.Tensor:
    """A ``Tensor`` whose bytes live in System V shared memory segment ``segment_id``."""
    tensor = agent_pb2.Tensor(
        shared_memory_handle=agent_pb2.SharedMemoryHandle(segment_id=segment_id, offset=offset, size=size)
    )
    fill_metadata(tensor.tensor_metadata, name, dtype, shape)
    return tensor


def expected_nbytes(dtype: DataType, shape: Sequence[int], what: str = "tensor") -> int:
    """Byte length of a C-order tensor; INVALID_ARGUMENT for negative dims."""
    count = 1
    for d in shape:
        if d < 0:
            raise InvalidArgument(f"{what}: shape {shorten(str(list(shape)))} has a negative dimension")
        count *= int(d)
    return count * dtype.itemsize


def array_from_bytes(
    data: bytes | bytearray | memoryview,
    dtype: DataType,
    shape: Sequence[int],
    what: str = "tensor",
    *,
    checked: bool = False,
) -> np.ndarray:
    """A read-only array of ``dtype`` and ``shape`` over ``data`` (zero-copy when aligned).

    The byte length must be exactly what ``dtype`` x ``shape`` needs, else INVALID_ARGUMENT. The
    array references ``data`` (so a shared-memory lease stays held while the array lives). Data at
    an address not aligned for ``dtype`` (e.g. a shared-memory offset of 1) is copied, so runtimes
    never see unaligned arrays. ``checked``: the caller has made ``shape`` a tuple of dims >= 0.
    """
    dims = shape if checked else tuple(int(d) for d in shape)
    want = math.prod(dims) * dtype.itemsize if checked else expected_nbytes(dtype, dims, what)
    view = memoryview(data)
    got = view.nbytes
    if got != want:
        raise InvalidArgument(
            f"{what}: {got} bytes of data, but {dtype.name} {shorten(str(list(dims)))} needs {want} "
            f"({want // dtype.itemsize} elements x {dtype.itemsize} bytes)"
        )
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    arr = np.frombuffer(view, dtype=dtype.numpy).reshape(dims)
    if not arr.flags.aligned:
        arr = arr.copy()
        arr.flags.writeable = False
    return arr


def bytes_backed(array: np.ndarray) -> bool:
    """True when ``array``'s memory is an immutable ``bytes`` object (an inline tensor decoded by
    :func:`array_from_bytes` from a request's ``byte_data``): it may be kept after the call as it
    is. Anything else (a client's shared-memory segment, reused once the call returns) must be
    copied by whoever keeps it."""
    base: object = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):  # a decoded tensor: a view of the request's bytes
        base = base.obj
    return isinstance(base, bytes)


def array_from_proto(tensor: agent_pb2.Tensor, what: str = "tensor") -> tuple[str, np.ndarray]:
    """``(name, array)`` of an inline ``Tensor`` with full metadata (e.g. a Predict output)."""
    if not tensor.HasField("tensor_metadata"):
        raise InvalidArgument(f"{what} has no tensor_metadata")
    metadata = tensor.tensor_metadata
    name = decode_name(metadata.name)
    dtype = data_type(metadata.data_type, f"tensor {name!r}")
    shape = tuple(metadata.shape)
    if tensor.WhichOneof("data") != "byte_data":
        raise InvalidArgument(f"{what} {name!r} carries no inline byte_data")
    if shape and min(shape) < 0:
        raise InvalidArgument(f"{what} {name!r}: shape {shorten(str(list(shape)))} has a negative dimension")
    return name, array_from_bytes(tensor.byte_data, dtype, shape, f"{what} {name!r}", checked=True)
