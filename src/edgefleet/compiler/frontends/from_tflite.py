"""TFLite front-end: validate a ``.tflite`` flatbuffer and read its metadata; LiteRT serves it as is.

There is no TFLite -> ONNX path without TensorFlow; the artifact is the validated file itself.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ai_edge_litert
import numpy as np
from ai_edge_litert import interpreter as litert
from ai_edge_litert import schema_py_generated as schema

from edgefleet.compiler.frontends import FrontendResult
from edgefleet.compiler.noise import captured_output
from edgefleet.compiler.signature import InputSpec, reconcile_inputs
from edgefleet.compiler.types import LogFn, UnsupportedModel
from edgefleet.core.errors import InvalidArgument
from edgefleet.core.tensors import DataType, TensorSpec

MODEL_FILE = "model.tflite"
_IDENTIFIER = b"TFL3"


def convert(model_path: Path, declared: Sequence[InputSpec], work_dir: Path, log: LogFn) -> FrontendResult:
    """Check ``model_path`` loads in LiteRT, copy it to ``work_dir`` and describe its tensors."""
    if not model_path.is_file():
        raise InvalidArgument(f"model file {model_path} does not exist or is not a file")
    data = model_path.read_bytes()
    if len(data) < 8 or data[4:8] != _IDENTIFIER:
        raise InvalidArgument(
            f"model file {model_path.name} is not a TFLite model (no {_IDENTIFIER.decode()} header)"
        )
    notes = _metadata_notes(data)
    try:
        # LiteRT's C++ side prints "INFO: Created TensorFlow Lite XNNPACK delegate" on fd 2
        with captured_output("litert"):
            interp = litert.Interpreter(model_content=data)
            interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        message = str(exc)
        if "Didn't find op" in message or "Encountered unresolved custom op" in message:
            raise UnsupportedModel(f"unsupported operator in {model_path.name}: {message}") from exc
        raise InvalidArgument(
            f"model file {model_path.name} is not a loadable TFLite model: {message}"
        ) from exc
    inputs = [_spec(d) for d in interp.get_input_details()]
    outputs = [_spec(d) for d in interp.get_output_details()]
    if declared:
        # A .tflite cannot be re-shaped offline; declarations are checked, and the runtime resizes
        # dynamic dimensions per request.
        reconcile_inputs(inputs, declared)
    path = work_dir / MODEL_FILE
    shutil.copyfile(model_path, path)
    log(f"read TFLite model {model_path.name}: {len(inputs)} input(s), {len(outputs)} output(s)")
    return FrontendResult(
        format="tflite",
        path=path,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        tool_versions={"ai-edge-litert": _litert_version()},
        notes=tuple(notes),
    )


def _spec(detail: dict[str, Any]) -> TensorSpec:
    try:
        dtype = DataType.from_numpy(np.dtype(detail["dtype"]))
    except InvalidArgument as exc:
        raise UnsupportedModel(f"TFLite tensor {detail['name']!r}: {exc.message}") from exc
    signature = detail.get("shape_signature")
    shape = signature if signature is not None and len(signature) else detail["shape"]
    return TensorSpec(str(detail["name"]), dtype, tuple(int(d) for d in shape))


def _metadata_notes(data: bytes) -> list[str]:
    """Description, schema version and metadata entries of the flatbuffer, for the report."""
    try:
        model = schema.Model.GetRootAs(data, 0)
        notes = [f"TFLite schema version {model.Version()}"]
        description = model.Description()
        if description:
            notes.append(f"description: {description.decode('utf-8', 'replace')}")
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            name = (entry.Name() or b"").decode("utf-8", "replace")
            if name == "min_runtime_version":
                raw = model.Buffers(entry.Buffer()).DataAsNumpy()
                version = (
                    bytes(raw).split(b"\0")[0].decode("ascii", "replace")
                    if isinstance(raw, np.ndarray)
                    else ""
                )
                notes.append(f"minimum TFLite runtime version: {version}")
            elif name:
                notes.append(f"metadata: {name}")
    except Exception as exc:  # flatbuffers raises assorted errors on a truncated buffer
        raise InvalidArgument(f"TFLite flatbuffer is malformed: {exc}") from exc
    return notes


def _litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-edge-litert")
    except PackageNotFoundError:
        return str(getattr(ai_edge_litert, "__version__", "unknown"))
