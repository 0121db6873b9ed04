"""Tensor data types and metadata shared by the wire protocol, manifests and capture records.

The seven data types are those of the Edge Manager wire contract (``DataType`` enum); their
numbers are the wire values and their names are how manifests and capture records spell them.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgefleet.core.errors import InvalidArgument


class DataType(enum.IntEnum):
    """Wire data types (values are the protobuf enum numbers)."""

    UINT8 = 0
    INT16 = 1
    INT32 = 2
    INT64 = 3
    FLOAT16 = 4
    FLOAT32 = 5
    FLOAT64 = 6

    @property
    def numpy(self) -> np.dtype[np.generic]:
        """The little-endian numpy dtype of this type."""
        return _TO_NUMPY[self]

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return int(_TO_NUMPY[self].itemsize)

    @classmethod
    def from_numpy(cls, dtype: np.dtype[np.generic] | type) -> DataType:
        """The wire type for a numpy dtype; INVALID_ARGUMENT when the wire cannot carry it."""
        dt = np.dtype(dtype)
        fast = _FROM_NUMPY.get(dt)
        if fast is not None:
            return fast
        for wire, candidate in _TO_NUMPY.items():
            if dt.kind == candidate.kind and dt.itemsize == candidate.itemsize:
                return wire
        known = ", ".join(t.name for t in cls)
        raise InvalidArgument(f"numpy dtype {dt} has no wire data type (known: {known})")

    @classmethod
    def from_name(cls, name: str) -> DataType:
        """Parse a name such as ``FLOAT32`` (case-insensitive)."""
        try:
            return cls[name.upper()]
        except KeyError:
            known = ", ".join(t.name for t in cls)
            raise InvalidArgument(f"unknown data type {name!r} (known: {known})") from None


#: ONNX Runtime's type strings (``NodeArg.type``) -> wire types, for the runtime and the packager
ORT_TYPES: dict[str, DataType] = {
    "tensor(uint8)": DataType.UINT8,
    "tensor(int16)": DataType.INT16,
    "tensor(int32)": DataType.INT32,
    "tensor(int64)": DataType.INT64,
    "tensor(float16)": DataType.FLOAT16,
    "tensor(float)": DataType.FLOAT32,
    "tensor(double)": DataType.FLOAT64,
}
#: onnx.TensorProto element types -> wire types (numbers from onnx.proto, stable since ONNX 1.0)
ONNX_ELEM_TYPES: dict[int, DataType] = {
    1: DataType.FLOAT32,
    2: DataType.UINT8,
    5: DataType.INT16,
    6: DataType.INT32,
    7: DataType.INT64,
    10: DataType.FLOAT16,
    11: DataType.FLOAT64,
}

_TO_NUMPY: dict[DataType, np.dtype[np.generic]] = {
    DataType.UINT8: np.dtype("<u1"),
    DataType.INT16: np.dtype("<i2"),
    DataType.INT32: np.dtype("<i4"),
    DataType.INT64: np.dtype("<i8"),
    DataType.FLOAT16: np.dtype("<f2"),
    DataType.FLOAT32: np.dtype("<f4"),
    DataType.FLOAT64: np.dtype("<f8"),
}

# Exact little-endian/native dtypes -> wire type, for the Predict hot path.
_FROM_NUMPY: dict[np.dtype[np.generic], DataType] = {dt: wire for wire, dt in _TO_NUMPY.items()}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, data type and shape (-1 marks a dynamic dimension)."""

    name: str
    dtype: DataType
    shape: tuple[int, ...]

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        """True when a concrete ``shape`` fits this spec (same rank, fixed dims equal)."""
        if len(shape) != len(self.shape):
            return False
        return all(want < 0 or want == got for want, got in zip(self.shape, shape, strict=True))

    def to_dict(self) -> dict[str, object]:
        """The manifest form: ``{"name", "dtype", "shape"}``."""
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: object) -> TensorSpec:
        """Parse the manifest form; INVALID_ARGUMENT on anything malformed."""
        if not isinstance(data, dict):
            raise InvalidArgument(f"tensor metadata must be an object, got {type(data).__name__}")
        name = data.get("name")
        shape = data.get("shape")
        dtype = data.get("dtype")
        if not isinstance(name, str) or not name:
            raise InvalidArgument("tensor metadata needs a non-empty string 'name'")
        if not isinstance(dtype, str):
            raise InvalidArgument(f"tensor {name!r}: 'dtype' must be a string")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape
        ):
            raise InvalidArgument(f"tensor {name!r}: 'shape' must be a list of integers >= -1")
        return cls(name=name, dtype=DataType.from_name(dtype), shape=tuple(shape))


def shape_str(shape: Sequence[int]) -> str:
    """``[1, 3, 224, 224]`` -> ``1, 3, 224, 224`` (the form used in capture content types)."""
    return ", ".join(str(d) for d in shape)
