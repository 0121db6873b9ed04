"""ONNX Runtime backend (the default): plain and quantised ONNX models on CPU."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from edgefleet.core.errors import FailedPrecondition, InvalidArgument
from edgefleet.core.manifest import Manifest
from edgefleet.core.tensors import ORT_TYPES, DataType, TensorSpec
from edgefleet.runtimes.base import Backend, LoadedModel, RuntimeOptions

# Working memory on top of the weights: arena, activations, thread pools.
_OVERHEAD_BYTES = 32 * 1024 * 1024


def spec_from_ort(arg: ort.NodeArg) -> TensorSpec:
    """A TensorSpec from an ONNX Runtime input/output description."""
    dtype = ORT_TYPES.get(arg.type)
    if dtype is None:
        raise FailedPrecondition(
            f"tensor {arg.name!r} has type {arg.type}, which the agent protocol cannot carry "
            f"(supported: {', '.join(t.name for t in DataType)})"
        )
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(name=arg.name, dtype=dtype, shape=shape)


class OnnxRuntimeModel(LoadedModel):
    """An InferenceSession. ``InferenceSession.run`` is thread-safe and releases the GIL.

    With a ``single`` twin (``RuntimeOptions.adaptive_threads``), a request that starts while no other
    runs takes ``session`` (every intra-op thread), and one that starts while others run takes
    ``single`` (one thread, its caller's). Requests that overlap then share the cores instead of
    contending for the same thread pool.
    """

    def __init__(self, session: ort.InferenceSession, single: ort.InferenceSession | None = None) -> None:
        self._session: ort.InferenceSession | None = session
        self._single = single
        self.inputs = tuple(spec_from_ort(a) for a in session.get_inputs())
        self.outputs = tuple(spec_from_ort(a) for a in session.get_outputs())
        self._output_names = [o.name for o in self.outputs]
        self._lock = threading.Lock()
        self._running = 0
        #: requests that ran on ``session`` / on the single-threaded twin (adaptive mode only)
        self.lone_runs = 0
        self.overlapping_runs = 0

    @property
    def adaptive(self) -> bool:
        return self._single is not None

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        session, single = self._session, self._single
        if session is None:
            raise FailedPrecondition("model was unloaded")
        if single is None:
            return self._run(session, inputs)
        with self._lock:
            overlapping = self._running > 0
            self._running += 1
            if overlapping:
                self.overlapping_runs += 1
            else:
                self.lone_runs += 1
        try:
            return self._run(single if overlapping else session, inputs)
        finally:
            with self._lock:
                self._running -= 1

    def _run(self, session: ort.InferenceSession, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            result: list[np.ndarray] = session.run(self._output_names, dict(inputs))
        except (ort_errors.InvalidArgument, ort_errors.Fail, ort_errors.RuntimeException) as exc:
            # e.g. a value the graph cannot compute on (out-of-range index, shape the model's
            # reshapes reject): the request's fault as far as the agent can tell
            raise InvalidArgument(f"ONNX Runtime rejected the inputs: {exc}") from exc
        return result

    def close(self) -> None:
        self._session = None
        self._single = None


class OnnxRuntimeBackend(Backend):
    """Loads ``.onnx`` artifacts with ONNX Runtime's CPU execution provider."""

    name = "onnxruntime"

    def version(self) -> str:
        return str(ort.__version__)

    def estimate_memory(
        self, package_dir: Path, manifest: Manifest, options: RuntimeOptions | None = None
    ) -> int:
        weights = (package_dir / manifest.model_file).stat().st_size
        # Graph optimisation briefly holds a second copy of the initialisers.
        estimate = 2 * weights + _OVERHEAD_BYTES
        if options is not None and _wants_single_twin(options):
            estimate += weights + _OVERHEAD_BYTES  # the single-threaded twin's weights and arena
        return estimate

    def load(self, package_dir: Path, manifest: Manifest, options: RuntimeOptions) -> LoadedModel:
        path = package_dir / manifest.model_file
        if not _wants_single_twin(options):
            return OnnxRuntimeModel(_session(path, manifest, options.intra_op_threads, options.spin_wait))
        # Adaptive: once a lone request returns, the wide session's threads stop spinning at once
        # (session.force_spinning_stop), so they take no CPU from overlapping single-threaded runs.
        wide = _session(path, manifest, options.intra_op_threads, options.spin_wait, stop_spinning=True)
        return OnnxRuntimeModel(wide, single=_session(path, manifest, 1, options.spin_wait))


def _wants_single_twin(options: RuntimeOptions) -> bool:
    """Adaptive threads only mean something when requests may overlap and a lone one may use more
    than one thread."""
    if not options.adaptive_threads or options.intra_op_threads == 1 or options.concurrency < 2:
        return False
    return options.intra_op_threads > 1 or (os.cpu_count() or 1) > 1


def _session(
    path: Path, manifest: Manifest, threads: int, spin_wait: bool, *, stop_spinning: bool = False
) -> ort.InferenceSession:
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # Spinning idle intra-op threads cut each request's latency (ResNet-18 through the agent on
    # 2 cores: 1.01-1.18x in-process with spinning, 1.16-1.41x without) but take CPU that
    # overlapping requests could use (see RuntimeOptions.spin_wait, docs/agent-config.md).
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
    if stop_spinning:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise FailedPrecondition(f"ONNX Runtime cannot load {manifest.model_file}: {exc}") from exc
