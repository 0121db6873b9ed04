"""An in-process agent with no inference engine, for simulated devices.

It keeps aliases and per-alias counters like the real agent and answers Predict with zeros shaped
like the model's outputs (taken from the staged package's manifest when there is one). Models can be
made to fail (``fail_models``, or a null-runtime package whose model file says ``"fail": true``) so
that rollbacks can be exercised at fleet scale.

Like the real agent it implements the extension ``model-handles`` with the same rules (unless
built with ``handles=False``, to stand for an agent without it): a handle names a loaded alias and
is accepted wherever a model name is, the target must be loaded, a handle may not shadow a loaded
alias nor a load take a handle's name, and a handle's target cannot be unloaded until it moves.
"""

from __future__ import annotations

import builtins
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgefleet import __version__
from edgefleet.client import Health, ModelInfo, ModelStatistics, ServerMetadata
from edgefleet.core.errors import (
    AlreadyExists,
    Code,
    EdgefleetError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from edgefleet.core.manifest import MANIFEST_FILE, Manifest
from edgefleet.core.package import parse_manifest


def null_config(data: bytes) -> dict[str, object]:
    """The JSON config of a null-runtime model file (``fail``, ``delay_ms`` ...); empty if unreadable."""
    try:
        raw = json.loads(data)
    except ValueError:
        return {}
    return raw if isinstance(raw, dict) else {}


@dataclass
class _Slot:
    info: ModelInfo
    model_name: str
    model_version: str
    loaded_time: float
    fail: bool = False
    requests: int = 0
    errors: int = 0
    last_inference: float | None = None
    latencies_ms: list[float] = field(default_factory=list)


class NullAgent:
    """Satisfies :class:`edgefleet.device.agentlink.AgentApi` without a process or a runtime."""

    def __init__(
        self, *, fail_models: set[str] | None = None, latency_ms: float = 1.0, handles: bool = True
    ) -> None:
        self.fail_models = set(fail_models or ())
        self.latency_ms = latency_ms
        #: whether the extension ``model-handles`` is implemented (and advertised)
        self.handles_extension = handles
        self._slots: dict[str, _Slot] = {}
        self._handles: dict[str, str] = {}
        self._known: dict[str, tuple[Manifest, bool]] = {}
        self._lock = threading.Lock()

    def register_package(self, url: str, manifest: Manifest, fail: bool) -> None:
        """Describe the package a later ``load(url)`` gets (simulated devices stage nothing on disk)."""
        with self._lock:
            self._known[url] = (manifest, fail)

    def load(self, url: str, name: str) -> ModelInfo:
        with self._lock:
            if name in self._slots:
                raise AlreadyExists(f"a model is already loaded (or loading) under the name {name!r}")
            if name in self._handles:
                raise AlreadyExists(f"{name!r} is a model handle (pointing at {self._handles[name]!r})")
        model_name, model_version, info = name, "", ModelInfo(name=name, url=url, inputs=(), outputs=())
        fail = False
        manifest: Manifest | None = None
        manifest_path = Path(url) / MANIFEST_FILE
        with self._lock:
            known = self._known.get(url)
        if known is not None:
            manifest, fail = known
        elif manifest_path.is_file():
            manifest = parse_manifest(manifest_path.read_bytes())
            if manifest.runtime.name == "null":
                fail = bool(null_config((Path(url) / manifest.model_file).read_bytes()).get("fail", False))
        if manifest is not None:
            model_name, model_version = manifest.name, manifest.version
            info = ModelInfo(name=name, url=url, inputs=manifest.inputs, outputs=manifest.outputs)
        with self._lock:
            self._slots[name] = _Slot(info, model_name, model_version, time.time(), fail)
        return info

    def unload(self, name: str) -> None:
        with self._lock:
            if name not in self._slots:
                raise NotFound(f"no model is loaded under the name {name!r}")
            pointing = sorted(h for h, t in self._handles.items() if t == name)
            if pointing:
                raise FailedPrecondition(
                    f"model {name!r} is the target of handle(s) {', '.join(pointing)}; move or remove them first"
                )
            del self._slots[name]

    def list(self) -> builtins.list[ModelInfo]:
        with self._lock:
            return [s.info for s in self._slots.values()]

    def describe(self, name: str) -> ModelInfo:
        with self._lock:
            return self._slot(name).info

    def _slot(self, name: str) -> _Slot:
        slot = self._slots.get(name)
        if slot is None and name in self._handles:
            slot = self._slots.get(self._handles[name])
        if slot is None:
            raise NotFound(f"no model is loaded under the name {name!r}")
        return slot

    # -- extension "model-handles" ----------------------------------------------------------------
    def _require_handles(self) -> None:
        if not self.handles_extension:
            raise EdgefleetError("this agent does not implement model-handles", Code.UNIMPLEMENTED)

    def set_handle(self, handle: str, target: str) -> str | None:
        """Point ``handle`` at the loaded alias ``target``; the previous target or None."""
        self._require_handles()
        with self._lock:
            if target not in self._slots:
                raise NotFound(f"handle target {target!r} is not a loaded model")
            if handle in self._slots:
                raise AlreadyExists(f"{handle!r} is a loaded model's name; a handle must not shadow it")
            previous = self._handles.get(handle)
            self._handles[handle] = target
        return previous

    def remove_handle(self, handle: str) -> None:
        """Forget ``handle`` (NOT_FOUND if there is none)."""
        self._require_handles()
        with self._lock:
            if self._handles.pop(handle, None) is None:
                raise NotFound(f"no handle named {handle!r}")

    def handles(self) -> dict[str, str]:
        """handle -> alias."""
        self._require_handles()
        with self._lock:
            return dict(self._handles)

    def predict(self, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            slot = self._slot(name)
            slot.requests += 1
            slot.last_inference = time.time()
            slot.latencies_ms.append(self.latency_ms)
            del slot.latencies_ms[:-2048]
            if slot.fail or slot.model_name in self.fail_models or name in self.fail_models:
                slot.errors += 1
                raise InvalidArgument(f"simulated failure of model {slot.model_name!r}")
        return {
            spec.name: np.zeros([d if d >= 0 else 1 for d in spec.shape], dtype=spec.dtype.numpy)
            for spec in slot.info.outputs
        }

    def simulate_traffic(self, name: str, requests: int, errors: int = 0) -> None:
        """Count ``requests`` inferences (``errors`` of them failed) on ``name`` without running them."""
        with self._lock:
            slot = self._slot(name)
            slot.requests += requests
            slot.errors += errors
            slot.last_inference = time.time()
            slot.latencies_ms.extend([self.latency_ms] * min(requests, 2048))
            del slot.latencies_ms[:-2048]

    def model_stats(self, name: str | None = None) -> builtins.list[ModelStatistics]:
        with self._lock:
            slots = {name: self._slot(name)} if name else dict(self._slots)
            return [
                ModelStatistics(
                    name=s.info.name,
                    model_name=s.model_name,
                    model_version=s.model_version,
                    request_count=s.requests,
                    error_count=s.errors,
                    p50_ms=float(np.percentile(s.latencies_ms, 50)) if s.latencies_ms else 0.0,
                    p95_ms=float(np.percentile(s.latencies_ms, 95)) if s.latencies_ms else 0.0,
                    p99_ms=float(np.percentile(s.latencies_ms, 99)) if s.latencies_ms else 0.0,
                    last_inference_time=s.last_inference,
                    last_capture_time=None,
                    in_flight=0,
                    queued=0,
                    memory_bytes=0,
                    loaded_time=s.loaded_time,
                )
                for s in slots.values()
            ]

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(
            name="edgefleet-null-agent",
            version=__version__,
            protocol="simulated",
            extensions=("model-statistics", "health")
            + (("model-handles",) if self.handles_extension else ()),
            runtimes=("null",),
        )

    def health(self) -> Health:
        return Health(live=True, ready=True, state="SERVING", detail="simulated")

    def close(self) -> None:
        return None
