"""ONNX Runtime backend (the default): plain and quantised ONNX models on CPU."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from edgefleet.core.errors import FailedPrecondition, InvalidArgument
from edgefleet.core.manifest import Manifest
from edgefleet.core.tensors import DataType, TensorSpec
from edgefleet.runtimes.base import Backend, LoadedModel, RuntimeOptions

# ONNX Runtime's type strings for the wire data types
_ORT_TYPES = {
    "tensor(uint8)": DataType.UINT8,
    "tensor(int16)": DataType.INT16,
    "tensor(int32)": DataType.INT32,
    "tensor(int64)": DataType.INT64,
    "tensor(float16)": DataType.FLOAT16,
    "tensor(float)": DataType.FLOAT32,
    "tensor(double)": DataType.FLOAT64,
}
# Working memory on top of the weights: arena, activations, thread pools.
_OVERHEAD_BYTES = 32 * 1024 * 1024


def spec_from_ort(arg: ort.NodeArg) -> TensorSpec:
    """A TensorSpec from an ONNX Runtime input/output description."""
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise FailedPrecondition(
            f"tensor {arg.name!r} has type {arg.type}, which the agent protocol cannot carry "
            f"(supported: {', '.join(t.name for t in DataType)})"
        )
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(name=arg.name, dtype=dtype, shape=shape)


class OnnxRuntimeModel(LoadedModel):
    """An InferenceSession. ``InferenceSession.run`` is thread-safe and releases the GIL."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session: ort.InferenceSession | None = session
        self.inputs = tuple(spec_from_ort(a) for a in session.get_inputs())
        self.outputs = tuple(spec_from_ort(a) for a in session.get_outputs())
        self._output_names = [o.name for o in self.outputs]

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        session = self._session
        if session is None:
            raise FailedPrecondition("model was unloaded")
        try:
            result: list[np.ndarray] = session.run(self._output_names, dict(inputs))
        except (ort_errors.InvalidArgument, ort_errors.Fail, ort_errors.RuntimeException) as exc:
            # e.g. a value the graph cannot compute on (out-of-range index, shape the model's
            # reshapes reject): the request's fault as far as the agent can tell
            raise InvalidArgument(f"ONNX Runtime rejected the inputs: {exc}") from exc
        return result

    def close(self) -> None:
        self._session = None


class OnnxRuntimeBackend(Backend):
    """Loads ``.onnx`` artifacts with ONNX Runtime's CPU execution provider."""

    name = "onnxruntime"

    def version(self) -> str:
        return str(ort.__version__)

    def estimate_memory(self, package_dir: Path, manifest: Manifest) -> int:
        weights = (package_dir / manifest.model_file).stat().st_size
        # Graph optimisation briefly holds a second copy of the initialisers.
        return 2 * weights + _OVERHEAD_BYTES

    def load(self, package_dir: Path, manifest: Manifest, options: RuntimeOptions) -> LoadedModel:
        so = ort.SessionOptions()
        if options.intra_op_threads:
            so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        # Spinning idle intra-op threads cut each request's latency (ResNet-18 through the agent on
        # 2 cores: 1.01-1.18x in-process with spinning, 1.16-1.41x without) but take CPU that
        # overlapping requests could use (see RuntimeOptions.spin_wait, docs/agent-config.md).
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin_wait else "0")
        try:
            session = ort.InferenceSession(
                str(package_dir / manifest.model_file), sess_options=so, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise FailedPrecondition(f"ONNX Runtime cannot load {manifest.model_file}: {exc}") from exc
        return OnnxRuntimeModel(session)
