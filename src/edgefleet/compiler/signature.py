"""Model input declarations: the ``--input NAME:SHAPE[:DTYPE][:batch=AXIS]`` syntax and reconciling
it with a model.

A shape is written ``1x3x224x224`` or ``1,3,224,224`` (optionally in brackets); ``-1``, ``?`` or a
symbolic name such as ``N`` mark a dynamic dimension; ``[]`` (or ``scalar``) is a rank-0 input.
The data type is a wire type name (``float32``, ``uint8``, ``int64``... case-insensitive; ``float``
means ``float32``). ``batch=AXIS`` says which axis of the input is the batch (samples) axis, and
``batch=none`` that it has none (a scalar, a per-call setting); without it the compiler infers the
axis from the graph (see :func:`edgefleet.compiler.onnx_graph.batch_axes`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgefleet.core.errors import InvalidArgument
from edgefleet.core.tensors import DataType, TensorSpec

_DTYPE_ALIASES = {"float": "FLOAT32", "double": "FLOAT64", "half": "FLOAT16", "int": "INT32", "long": "INT64"}
_SYMBOL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SYNTAX = (
    "NAME:SHAPE[:DTYPE][:batch=AXIS|none], e.g. input:1x3x224x224:float32, state:2x-1x64:float32:batch=1 "
    "or rate:[]:int64 (use -1 for a dynamic dimension, [] for a scalar)"
)
_SCALAR = ("[]", "()", "scalar")


@dataclass(frozen=True)
class InputSpec:
    """A user's declaration of one model input; ``dtype`` None means "as the model says"."""

    name: str
    shape: tuple[int, ...]
    dtype: DataType | None = None
    #: the batch axis the user gave (``None`` with ``batch_declared``: the input has none)
    batch_axis: int | None = None
    batch_declared: bool = False

    def to_tensor_spec(self, default_dtype: DataType = DataType.FLOAT32) -> TensorSpec:
        """The TensorSpec this declaration describes."""
        return TensorSpec(self.name, self.dtype or default_dtype, self.shape)


def parse_dtype(text: str) -> DataType:
    """``float32``/``FLOAT32``/``float`` -> DataType; INVALID_ARGUMENT naming the known ones."""
    return DataType.from_name(_DTYPE_ALIASES.get(text.lower(), text))


def parse_shape(text: str) -> tuple[int, ...]:
    """``1x3x224x224`` / ``1,3,224,224`` / ``[N,3,224,224]`` -> ``(1, 3, 224, 224)`` (dynamic = -1)."""
    body = text.strip()
    if body.lower() in _SCALAR:
        return ()
    if body.startswith(("[", "(")) and body.endswith(("]", ")")):
        body = body[1:-1]
    if not body.strip():
        raise InvalidArgument(
            f"shape {text!r} is empty; write dimensions like 1x3x224x224, or [] for a scalar"
        )
    dims: list[int] = []
    for raw in body.split(",") if "," in body else body.split("x"):
        piece = raw.strip()
        if piece in ("-1", "?") or _SYMBOL_RE.match(piece):
            dims.append(-1)
            continue
        try:
            value = int(piece)
        except ValueError:
            raise InvalidArgument(
                f"shape {text!r}: dimension {piece!r} is not a positive integer, -1, ? or a name"
            ) from None
        if value <= 0:
            raise InvalidArgument(f"shape {text!r}: dimension {value} must be positive (or -1 for dynamic)")
        dims.append(value)
    return tuple(dims)


def parse_input_spec(text: str) -> InputSpec:
    """Parse one ``--input`` value (see the module docstring); INVALID_ARGUMENT with the syntax on error."""
    parts = text.split(":")
    if len(parts) not in (2, 3, 4) or not parts[0].strip() or not parts[1].strip():
        raise InvalidArgument(f"--input {text!r} is malformed: expected {_SYNTAX}")
    name = parts[0].strip()
    dtype: DataType | None = None
    batch: int | None = None
    declared = False
    try:
        shape = parse_shape(parts[1])
        for extra in (p.strip() for p in parts[2:]):
            if extra.lower().startswith("batch="):
                if declared:
                    raise InvalidArgument("batch= is given twice")
                batch, declared = _parse_batch(extra[len("batch=") :], shape), True
            elif dtype is None and extra:
                dtype = parse_dtype(extra)
            else:
                raise InvalidArgument(f"unexpected field {extra!r}")
    except InvalidArgument as exc:
        raise InvalidArgument(f"--input {text!r} is malformed: {exc.message}; expected {_SYNTAX}") from exc
    return InputSpec(name=name, shape=shape, dtype=dtype, batch_axis=batch, batch_declared=declared)


def _parse_batch(text: str, shape: tuple[int, ...]) -> int | None:
    """``none`` -> None; an axis index (negative counts from the end) checked against ``shape``'s rank."""
    value = text.strip().lower()
    if value in ("none", "-"):
        return None
    try:
        axis = int(value)
    except ValueError:
        raise InvalidArgument(f"batch={text!r} is not an axis index or 'none'") from None
    rank = len(shape)
    if not -rank <= axis < rank:
        raise InvalidArgument(
            f"batch={axis} is outside the shape's {rank} axes"
            + (" (a scalar has no batch axis: batch=none)" if rank == 0 else "")
        )
    return axis % rank


def reconcile_inputs(model_inputs: Sequence[TensorSpec], declared: Sequence[InputSpec]) -> list[TensorSpec]:
    """Apply the user's declarations to a model's own inputs.

    A declaration may pin dynamic dimensions, but not change the rank, a fixed dimension or the
    type; every declared name must exist. Undeclared inputs keep the model's spec.
    """
    by_name: Mapping[str, InputSpec] = {d.name: d for d in declared}
    known = {s.name for s in model_inputs}
    for name in by_name:
        if name not in known:
            raise InvalidArgument(
                f"--input {name!r}: the model has no such input (its inputs: {', '.join(sorted(known))})"
            )
    result = []
    for spec in model_inputs:
        decl = by_name.get(spec.name)
        if decl is None:
            result.append(spec)
            continue
        if spec.shape and len(decl.shape) != len(spec.shape):
            raise InvalidArgument(
                f"--input {spec.name!r}: shape {list(decl.shape)} has rank {len(decl.shape)} but the model's "
                f"input has rank {len(spec.shape)} (shape {list(spec.shape)})"
            )
        for got, want in zip(decl.shape, spec.shape, strict=False):
            if want > 0 and got != want:
                raise InvalidArgument(
                    f"--input {spec.name!r}: shape {list(decl.shape)} conflicts with the model's fixed shape "
                    f"{list(spec.shape)}"
                )
        if decl.dtype is not None and decl.dtype != spec.dtype:
            raise InvalidArgument(
                f"--input {spec.name!r}: data type {decl.dtype.name} differs from the model's {spec.dtype.name}"
            )
        result.append(TensorSpec(spec.name, spec.dtype, decl.shape))
    return result


def concrete_shape(shape: Sequence[int], batch: int = 1) -> tuple[int, ...]:
    """A runnable shape: dynamic dimensions become ``batch`` (the first) or 1 (the others)."""
    return tuple(d if d > 0 else (batch if i == 0 else 1) for i, d in enumerate(shape))
