"""LiteRT (TensorFlow Lite) backend for ``.tflite`` artifacts, via ``ai-edge-litert``.

An interpreter is not thread-safe, so the model keeps a small pool of interpreters (one per
concurrent request, created on demand up to ``RuntimeOptions.concurrency``); ``invoke`` releases
the GIL, so pooled interpreters run in parallel.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert import interpreter as litert

from edgefleet.core.errors import FailedPrecondition, InvalidArgument
from edgefleet.core.manifest import Manifest
from edgefleet.core.tensors import DataType, TensorSpec
from edgefleet.runtimes.base import Backend, InstancePool, LoadedModel, RuntimeOptions

_OVERHEAD_BYTES = 8 * 1024 * 1024


def _spec(detail: dict[str, Any]) -> TensorSpec:
    try:
        dtype = DataType.from_numpy(np.dtype(detail["dtype"]))
    except InvalidArgument as exc:
        raise FailedPrecondition(f"tensor {detail['name']!r}: {exc.message}") from exc
    signature = detail.get("shape_signature")
    shape = signature if signature is not None and len(signature) else detail["shape"]
    return TensorSpec(name=str(detail["name"]), dtype=dtype, shape=tuple(int(d) for d in shape))


class LiteRTModel(LoadedModel):
    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        self._path = path
        self._threads = options.intra_op_threads or None
        first = self._new_interpreter()
        self.inputs = tuple(_spec(d) for d in first.get_input_details())
        self.outputs = tuple(_spec(d) for d in first.get_output_details())
        self._pool: InstancePool[Any] = InstancePool(self._new_interpreter, options.concurrency, first)
        self._closed = False

    def _new_interpreter(self) -> Any:
        try:
            interp = litert.Interpreter(model_path=str(self._path), num_threads=self._threads)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise FailedPrecondition(f"LiteRT cannot load {self._path.name}: {exc}") from exc
        return interp

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self._closed:
            raise FailedPrecondition("model was unloaded")
        with self._pool.lease() as interp:
            try:
                for detail in interp.get_input_details():
                    value = inputs[detail["name"]]
                    if tuple(detail["shape"]) != value.shape:
                        interp.resize_tensor_input(detail["index"], list(value.shape))
                        interp.allocate_tensors()
                for detail in interp.get_input_details():
                    interp.set_tensor(detail["index"], np.ascontiguousarray(inputs[detail["name"]]))
                interp.invoke()
                return [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]
            except (ValueError, RuntimeError) as exc:
                raise InvalidArgument(f"LiteRT rejected the inputs: {exc}") from exc

    def close(self) -> None:
        self._closed = True
        self._pool.clear()


class LiteRTBackend(Backend):
    name = "litert"
    extra = "litert"

    def version(self) -> str:
        import ai_edge_litert

        return str(getattr(ai_edge_litert, "__version__", "0"))

    def estimate_memory(
        self, package_dir: Path, manifest: Manifest, options: RuntimeOptions | None = None
    ) -> int:
        return (package_dir / manifest.model_file).stat().st_size * 2 + _OVERHEAD_BYTES

    def load(self, package_dir: Path, manifest: Manifest, options: RuntimeOptions) -> LoadedModel:
        return LiteRTModel(package_dir / manifest.model_file, options)
