"""Read a model file's tensor metadata (ONNX, TFLite) for its package manifest.

ONNX models are read with the ``onnx`` package when it is installed (the ``onnx`` extra; it reads
the graph without building a session) and with ONNX Runtime otherwise (a core dependency).
TFLite models need ``ai-edge-litert`` (the ``litert`` extra). Engines are imported only when a
model of their kind is read, so a device install without the extras still imports this module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.core.errors import EdgefleetError, FailedPrecondition, InvalidArgument, NotFound
from edgefleet.core.tensors import ONNX_ELEM_TYPES, ORT_TYPES, DataType, TensorSpec

log = logging.getLogger(__name__)

ONNX_RUNTIME = "onnxruntime"
LITERT_RUNTIME = "litert"
#: file suffix -> runtime name
SUPPORTED_SUFFIXES: dict[str, str] = {".onnx": ONNX_RUNTIME, ".tflite": LITERT_RUNTIME}
LITERT_INSTALL_HINT = "pip install 'edgefleet[litert]'"
#: ai-edge-litert versions are their own numbering; 1.0 is the first release (and the extra's floor).
LITERT_MIN_VERSION = "1.0"
#: First ONNX Runtime release implementing each default-domain (ai.onnx) opset, from ONNX Runtime's
#: compatibility table; the one table the packager and the compiler read.
ORT_FOR_OPSET: dict[int, str] = {
    13: "1.6", 14: "1.8", 15: "1.9", 16: "1.11", 17: "1.12", 18: "1.14", 19: "1.15", 20: "1.17", 21: "1.18",
    22: "1.21", 23: "1.23",
}  # fmt: skip
# The oldest ONNX Runtime edgefleet's device install accepts (pyproject: onnxruntime>=1.17).
_ORT_FLOOR = "1.17"


@dataclass(frozen=True)
class ModelMetadata:
    """What a manifest needs to know about a model file."""

    runtime: str
    runtime_min_version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def runtime_for(path: Path | str) -> str:
    """The runtime name for a model file, by suffix; INVALID_ARGUMENT naming the supported kinds."""
    suffix = Path(path).suffix.lower()
    runtime = SUPPORTED_SUFFIXES.get(suffix)
    if runtime is None:
        kinds = ", ".join(f"{s} ({r})" for s, r in SUPPORTED_SUFFIXES.items())
        raise InvalidArgument(
            f"cannot read model metadata from {Path(path).name!r}: supported kinds are {kinds}"
        )
    return runtime


def read_model_metadata(path: Path | str) -> ModelMetadata:
    """Runtime, minimum runtime version and input/output tensors of an ONNX or TFLite model.

    Dynamic dimensions are -1. Tensor types the wire protocol cannot carry, and files that are
    not models, raise INVALID_ARGUMENT naming the tensor or file.
    """
    model = Path(path)
    runtime = runtime_for(model)
    if not model.is_file():
        raise NotFound(f"model file {model} not found")
    if runtime == ONNX_RUNTIME:
        return _read_onnx(model)
    return _read_tflite(model)


# --------------------------------------------------------------------------------------------
# ONNX


def _read_onnx(model: Path) -> ModelMetadata:
    try:
        import onnx
    except ImportError:
        log.debug("onnx is not installed; reading %s with ONNX Runtime", model)
        return _read_onnx_with_ort(model)
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for files that are not ONNX
        raise InvalidArgument(f"{model.name} is not a readable ONNX model: {exc}") from exc
    graph = proto.graph
    if not graph.output:
        raise InvalidArgument(f"{model.name} is not an ONNX model with a graph (no outputs)")
    # Old exporters list initializers among the inputs; those are weights, not inputs.
    weights = {init.name for init in graph.initializer}
    inputs = tuple(_onnx_spec(v, "input", model) for v in graph.input if v.name not in weights)
    outputs = tuple(_onnx_spec(v, "output", model) for v in graph.output)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return ModelMetadata(ONNX_RUNTIME, _ort_min_version(opset), inputs, outputs)


def _onnx_spec(value: Any, role: str, model: Path) -> TensorSpec:
    type_proto = value.type
    if type_proto.WhichOneof("value") != "tensor_type":
        raise InvalidArgument(
            f"{role} {value.name!r} of {model.name} is a {type_proto.WhichOneof('value')}, not a tensor; the "
            "agent protocol carries tensors only (scikit-learn classifiers: convert with "
            "options={'zipmap': False})"
        )
    tensor = type_proto.tensor_type
    dtype = ONNX_ELEM_TYPES.get(tensor.elem_type)
    if dtype is None:
        raise InvalidArgument(
            f"{role} {value.name!r} of {model.name} has element type {_onnx_type_name(tensor.elem_type)}, "
            f"which the agent protocol cannot carry (supported: {', '.join(t.name for t in DataType)})"
        )
    if not tensor.HasField("shape"):
        raise InvalidArgument(f"{role} {value.name!r} of {model.name} has no shape (unknown rank)")
    shape = tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else -1 for d in tensor.shape.dim
    )
    return TensorSpec(name=value.name, dtype=dtype, shape=shape)


def _onnx_type_name(elem_type: int) -> str:
    import onnx

    try:
        return str(onnx.helper.tensor_dtype_to_string(elem_type)).removeprefix("TensorProto.")
    except (ValueError, KeyError):
        return str(elem_type)


def ort_for_opset(opset: int) -> str | None:
    """First ONNX Runtime release for a default-domain opset (older count as 13); None if newer than the table."""
    return ORT_FOR_OPSET.get(max(opset, min(ORT_FOR_OPSET)))


def _ort_min_version(opset: int) -> str:
    version = ort_for_opset(opset)
    if version is None:
        # Newer than the table: the ONNX Runtime of this machine is the best known lower bound.
        import onnxruntime

        return ".".join(str(onnxruntime.__version__).split(".")[:2])
    # Conservative: a package never asks for less than what edgefleet itself runs on.
    return max(version, _ORT_FLOOR, key=lambda v: tuple(int(part) for part in v.split(".")))


def _read_onnx_with_ort(model: Path) -> ModelMetadata:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = onnxruntime.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... classes
        raise InvalidArgument(f"{model.name} is not an ONNX model ONNX Runtime can read: {exc}") from exc
    inputs = tuple(_ort_spec(arg, "input", model) for arg in session.get_inputs())
    outputs = tuple(_ort_spec(arg, "output", model) for arg in session.get_outputs())
    # Without the onnx package the opset is unknown: this machine's ONNX Runtime read it.
    major, minor = str(onnxruntime.__version__).split(".")[:2]
    return ModelMetadata(ONNX_RUNTIME, f"{major}.{minor}", inputs, outputs)


def _ort_spec(arg: Any, role: str, model: Path) -> TensorSpec:
    dtype = ORT_TYPES.get(str(arg.type))
    if dtype is None:
        raise InvalidArgument(
            f"{role} {arg.name!r} of {model.name} has type {arg.type}, which the agent protocol cannot carry "
            f"(supported: {', '.join(t.name for t in DataType)})"
        )
    if arg.shape is None:
        raise InvalidArgument(f"{role} {arg.name!r} of {model.name} has no shape (unknown rank)")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(name=arg.name, dtype=dtype, shape=shape)


# --------------------------------------------------------------------------------------------
# TFLite


def _read_tflite(model: Path) -> ModelMetadata:
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as exc:
        raise FailedPrecondition(
            f"reading {model.name} needs the LiteRT runtime, which is not installed: {LITERT_INSTALL_HINT}"
        ) from exc
    try:
        # No default delegates: we only read metadata, nothing runs.
        interpreter = Interpreter(
            model_path=str(model),
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        input_details = interpreter.get_input_details()
        output_details = interpreter.get_output_details()
    except (ValueError, RuntimeError) as exc:
        raise InvalidArgument(f"{model.name} is not a TFLite model LiteRT can read: {exc}") from exc
    inputs = tuple(_tflite_spec(d, "input", model) for d in input_details)
    outputs = tuple(_tflite_spec(d, "output", model) for d in output_details)
    return ModelMetadata(LITERT_RUNTIME, LITERT_MIN_VERSION, inputs, outputs)


def _tflite_spec(detail: dict[str, Any], role: str, model: Path) -> TensorSpec:
    name = str(detail["name"])
    try:
        dtype = DataType.from_numpy(np.dtype(detail["dtype"]))
    except (EdgefleetError, TypeError) as exc:
        raise InvalidArgument(
            f"{role} {name!r} of {model.name} has type {np.dtype(detail['dtype'])}, which the agent protocol "
            f"cannot carry (supported: {', '.join(t.name for t in DataType)})"
        ) from exc
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    shape = tuple(int(d) if int(d) >= 0 else -1 for d in dims)
    return TensorSpec(name=name, dtype=dtype, shape=shape)
