"""OpenVINO backend for OpenVINO IR artifacts (``model.xml`` + ``model.bin``) on CPU.

The model is compiled once for the CPU plugin with the latency hint; concurrent ``run`` calls each
take an infer request from a pool (created on demand, at most ``RuntimeOptions.concurrency``), since
one infer request serves one inference at a time. ``InferRequest.infer`` releases the GIL while
OpenVINO computes, so pooled requests run in parallel.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov  # type: ignore[import-untyped, unused-ignore]

from edgefleet.core.errors import FailedPrecondition, InvalidArgument
from edgefleet.core.manifest import Manifest
from edgefleet.core.tensors import DataType, TensorSpec
from edgefleet.runtimes.base import Backend, InstancePool, LoadedModel, RuntimeOptions

# Compiled-model working memory on top of the weights: plugin caches, intermediate buffers, threads.
_OVERHEAD_BYTES = 64 * 1024 * 1024
_DEVICE = "CPU"


def _spec(port: Any) -> TensorSpec:
    """A TensorSpec from an OpenVINO input/output port."""
    name = port.get_any_name()
    try:
        dtype = DataType.from_numpy(np.dtype(port.get_element_type().to_dtype()))
    except InvalidArgument as exc:
        raise FailedPrecondition(f"OpenVINO tensor {name!r}: {exc.message}") from exc
    shape = tuple(-1 if dim.is_dynamic else int(dim.get_length()) for dim in port.get_partial_shape())
    return TensorSpec(name=name, dtype=dtype, shape=shape)


class OpenVINOModel(LoadedModel):
    """A compiled OpenVINO model with a pool of infer requests."""

    def __init__(self, compiled: Any, concurrency: int) -> None:
        self._compiled: Any = compiled
        self.inputs = tuple(_spec(p) for p in compiled.inputs)
        self.outputs = tuple(_spec(p) for p in compiled.outputs)
        self._output_ports = list(compiled.outputs)
        # An infer request is not thread-safe: one per concurrent call.
        self._pool: InstancePool[Any] = InstancePool(self._new_request, concurrency, self._new_request())

    def _new_request(self) -> Any:
        return self._compiled.create_infer_request()

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self._compiled is None:
            raise FailedPrecondition("model was unloaded")
        missing = [s.name for s in self.inputs if s.name not in inputs]
        if missing:
            raise InvalidArgument(f"missing input tensor(s) {', '.join(missing)}")
        with self._pool.lease() as request:
            feeds = {s.name: np.ascontiguousarray(inputs[s.name]) for s in self.inputs}
            try:
                # share_outputs=False copies the results out of the request's buffers, which the
                # next inference on this pooled request would overwrite.
                result = request.infer(feeds, share_inputs=False, share_outputs=False)
            except RuntimeError as exc:
                raise InvalidArgument(f"OpenVINO inference failed: {exc}") from exc
            return [np.asarray(result[port]) for port in self._output_ports]

    def close(self) -> None:
        self._compiled = None
        self._pool.clear()


def has_fp16_weights(model: Any) -> bool:
    """True for an IR saved with fp16-compressed weights (``save_model(compress_to_fp16=True)``)."""
    return any(
        op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.f16 for op in model.get_ops()
    )


class OpenVINOBackend(Backend):
    """Loads OpenVINO IR (``.xml`` with its ``.bin`` next to it) on the CPU plugin."""

    name = "openvino"
    extra = "openvino"

    def __init__(self) -> None:
        self._core = ov.Core()

    def version(self) -> str:
        # e.g. "2026.4.1-22982-e213a147257-releases/2026/4" -> "2026.4.1"
        return str(ov.__version__).split("-")[0]

    def estimate_memory(
        self, package_dir: Path, manifest: Manifest, options: RuntimeOptions | None = None
    ) -> int:
        model = package_dir / manifest.model_file
        weights = model.with_suffix(".bin")
        size = weights.stat().st_size if weights.exists() else model.stat().st_size
        # int8/fp16 weights may be unpacked to fp32 at compile time.
        return 2 * size + _OVERHEAD_BYTES

    def load(self, package_dir: Path, manifest: Manifest, options: RuntimeOptions) -> LoadedModel:
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if options.intra_op_threads:
            config["INFERENCE_NUM_THREADS"] = options.intra_op_threads
        path = package_dir / manifest.model_file
        try:
            model = self._core.read_model(str(path))
            if not has_fp16_weights(model):
                # On CPUs with bf16/fp16 units the plugin would otherwise compute an fp32 (or int8)
                # IR's float layers in bf16: outputs 0.5 % off, which the compiler never checked.
                # An IR saved with fp16 weights asked for reduced precision: the plugin chooses.
                config["INFERENCE_PRECISION_HINT"] = "f32"
            compiled = self._core.compile_model(model, _DEVICE, config)
        except RuntimeError as exc:
            raise FailedPrecondition(f"OpenVINO cannot load {manifest.model_file}: {exc}") from exc
        return OpenVINOModel(compiled, options.concurrency)
