"""The runtime backend interface and the registry that picks a backend by the manifest's name.

A backend loads an artifact from an unpacked, verified package directory and returns a
:class:`LoadedModel`. ``LoadedModel.run`` must be safe to call from several threads at once and
should release the GIL while computing (ONNX Runtime and LiteRT do), because the agent runs
concurrent Predict calls in parallel with no global lock.
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from edgefleet.core.errors import FailedPrecondition
from edgefleet.core.manifest import Manifest
from edgefleet.core.tensors import TensorSpec


@dataclass(frozen=True)
class RuntimeOptions:
    """Knobs a backend may honour.

    ``intra_op_threads``: threads one inference may use (0 = the backend's default).
    ``concurrency``: how many inferences the agent may run at once on one model; backends that
    cannot run one model concurrently create that many independent instances.
    ``spin_wait``: let idle engine threads spin for the next piece of work (the engines' default:
    lower latency per request; CPU that concurrent requests could use when several run at once).
    ``adaptive_threads``: a request that runs alone may use ``intra_op_threads`` threads, requests
    that overlap others run on one thread each (backends that support it hold a second, single-threaded
    instance of the model for that, and count it in their memory estimate).
    """

    intra_op_threads: int = 0
    concurrency: int = 4
    spin_wait: bool = True
    adaptive_threads: bool = False


class LoadedModel(abc.ABC):
    """A model held in memory by a backend."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @abc.abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run one inference; ``inputs`` is keyed by input name; outputs follow ``self.outputs``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every resource (memory, threads). The model is unusable afterwards."""


T = TypeVar("T")


class InstancePool(Generic[T]):
    """Up to ``limit`` instances of an engine object that is not thread-safe (an interpreter, an
    infer request, a VM), created on demand and lent to one inference at a time.

    Engines that cannot run one instance from several threads get their parallelism this way:
    concurrent calls each lease their own instance; past ``limit`` they wait for one to come back.
    """

    def __init__(self, factory: Callable[[], T], limit: int, first: T | None = None) -> None:
        self._factory = factory
        self._limit = max(1, limit)
        self._lock = threading.Lock()
        self._idle: queue.LifoQueue[T] = queue.LifoQueue()  # LIFO: the warmest instance first
        self._created = 0
        if first is not None:
            self._idle.put(first)
            self._created = 1

    @contextmanager
    def lease(self) -> Iterator[T]:
        """Borrow an instance for the duration of the ``with`` block."""
        instance = self._checkout()
        try:
            yield instance
        finally:
            self._idle.put(instance)

    def _checkout(self) -> T:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            create = self._created < self._limit
            if create:
                self._created += 1
        if create:
            try:
                return self._factory()
            except BaseException:
                with self._lock:
                    self._created -= 1
                raise
        return self._idle.get()

    def clear(self) -> None:
        """Drop the idle instances (on unload); leased ones go when their holders return them."""
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                return


class Backend(abc.ABC):
    """A runtime backend (ONNX Runtime, LiteRT, OpenVINO, TVM, null)."""

    name: str
    #: pip extra that installs this backend (shown when it is missing)
    extra: str = ""

    @abc.abstractmethod
    def version(self) -> str:
        """The installed engine's version."""

    @abc.abstractmethod
    def estimate_memory(
        self, package_dir: Path, manifest: Manifest, options: RuntimeOptions | None = None
    ) -> int:
        """Bytes the model is expected to use once loaded with ``options`` (checked against the
        agent's budget)."""

    @abc.abstractmethod
    def load(self, package_dir: Path, manifest: Manifest, options: RuntimeOptions) -> LoadedModel:
        """Load the manifest's model file from ``package_dir``."""


@dataclass(frozen=True)
class RuntimeRecord:
    """Everything edgefleet knows about one runtime, by name, without importing its engine.

    ``backend``: ``module:Class`` of the agent-side :class:`Backend`, imported when first asked for
    (so a missing optional engine fails that load alone). ``engine``: the engine's top-level module
    (None: none needed). ``extra``: the pip extra installing the engine ("": the base install).
    ``aliases``: other names manifests and ``--backend`` may use. ``builder``: ``module:function``
    of the compiler's builder, as a name (runtimes never import the compiler).
    """

    name: str
    backend: str
    engine: str | None
    extra: str
    aliases: tuple[str, ...] = ()
    builder: str | None = None


#: runtime name -> its record
RUNTIMES: dict[str, RuntimeRecord] = {
    r.name: r
    for r in (
        RuntimeRecord(
            "onnxruntime", "edgefleet.runtimes.onnxruntime:OnnxRuntimeBackend", "onnxruntime", "", ("ort",),
            "edgefleet.compiler.backends.onnxruntime:build_onnxruntime",
        ),
        RuntimeRecord(
            "litert", "edgefleet.runtimes.litert:LiteRTBackend", "ai_edge_litert", "litert", ("tflite",),
            "edgefleet.compiler.backends.litert:build_litert",
        ),
        RuntimeRecord("null", "edgefleet.runtimes.null:NullBackend", None, ""),
        RuntimeRecord(
            "openvino", "edgefleet.runtimes.openvino:OpenVINOBackend", "openvino", "openvino", (),
            "edgefleet.compiler.backends.openvino:build_openvino",
        ),
        RuntimeRecord(
            "tvm", "edgefleet.runtimes.tvm:TVMBackend", "tvm", "tvm", (), "edgefleet.compiler.backends.tvm:build_tvm"
        ),
    )
}  # fmt: skip
_ALIASES = {alias: r.name for r in RUNTIMES.values() for alias in r.aliases}

_cache: dict[str, Backend] = {}
_lock = threading.Lock()


def canonical_runtime(name: str) -> str:
    """The runtime name for ``name`` or one of its aliases (``tflite`` -> ``litert``); others unchanged."""
    return _ALIASES.get(name, name)


def known_backends() -> list[str]:
    """All backend names this edgefleet knows (installed or not)."""
    return sorted(RUNTIMES)


def get_backend(name: str) -> Backend:
    """The backend called ``name``; FAILED_PRECONDITION if unknown or its engine is not installed."""
    key = canonical_runtime(name)
    if key not in RUNTIMES:
        raise FailedPrecondition(f"unknown runtime {name!r}: this agent knows {', '.join(known_backends())}")
    with _lock:
        if key in _cache:
            return _cache[key]
        record = RUNTIMES[key]
        module_name, class_name = record.backend.split(":")
        try:
            module = importlib.import_module(module_name)
            backend: Backend = getattr(module, class_name)()
        except ImportError as exc:
            extra = record.extra
            hint = f"install it with: pip install 'edgefleet[{extra}]'" if extra else "reinstall edgefleet"
            raise FailedPrecondition(
                f"runtime {key!r} is not installed on this device ({exc}); {hint}"
            ) from exc
        _cache[key] = backend
        return backend


def installed_backends() -> list[str]:
    """Names of the backends whose engines are installed on this machine.

    Found without importing the engines (TVM alone takes seconds and hundreds of MiB to import);
    an engine that is installed but broken still fails its first load with FAILED_PRECONDITION.
    """
    names = []
    for name in known_backends():
        engine = RUNTIMES[name].engine
        if engine is None or importlib.util.find_spec(engine) is not None:
            names.append(name)
    return names


def version_at_least(installed: str, minimum: str) -> bool:
    """Compare dotted versions numerically (``1.31.1`` >= ``1.17``); non-numeric parts compare as 0."""

    def parts(v: str) -> list[int]:
        out = []
        for piece in v.split("+")[0].split("."):
            digits = "".join(ch for ch in piece if ch.isdigit())
            out.append(int(digits) if digits else 0)
        return out

    a, b = parts(installed), parts(minimum)
    width = max(len(a), len(b))
    return a + [0] * (width - len(a)) >= b + [0] * (width - len(b))
