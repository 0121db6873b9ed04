"""The real agent in process on the null runtime, for simulated devices and the daemon's tests.

:class:`InProcessTransport` answers an :class:`~edgefleet.client.AgentClient`'s requests with the
agent's own services and model registry (:mod:`edgefleet.agent.server`, :mod:`edgefleet.agent.models`):
the same rules for aliases, handles, statistics and errors as the agent process, without a socket
or a process. Every model runs on the null runtime and answers zeros shaped like its outputs. A
package is described beforehand with :meth:`NullAgent.register_package` (simulated devices stage
nothing on disk) or read from its directory (the manifest only: the daemon has verified it). A
model fails every run when it is a null-runtime model whose model file says ``"fail": true`` or its
model name is in ``fail_models``, so that rollbacks can be exercised at fleet scale.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Set
from pathlib import Path
from typing import Any, NoReturn

import grpc

from edgefleet.agent.models import ModelLimits, ModelRegistry
from edgefleet.agent.server import EXTENSIONS, AgentLifecycle, AgentService, AgentState, ExtensionsService
from edgefleet.agent.shm import SharedMemoryReader
from edgefleet.client import AgentClient
from edgefleet.core.errors import Code, EdgefleetError, code_from_grpc_number, error_for
from edgefleet.core.manifest import MANIFEST_FILE, Manifest
from edgefleet.core.package import parse_manifest
from edgefleet.protocol.agent.proto import agent_pb2, extensions_pb2
from edgefleet.runtimes.base import LoadedModel, RuntimeOptions
from edgefleet.runtimes.null import NullBackend, NullModel


def null_config(data: bytes) -> dict[str, object]:
    """The JSON config of a null-runtime model file (``fail``, ``delay_ms`` ...); empty if unreadable."""
    try:
        raw = json.loads(data)
    except ValueError:
        return {}
    return raw if isinstance(raw, dict) else {}


class _Context:
    """What the agent's handlers use of a gRPC servicer context: ``abort`` raises the error."""

    def abort(self, status: grpc.StatusCode, message: str) -> NoReturn:
        raise error_for(code_from_grpc_number(status.value[0]), message)


class _NullEverywhere(NullBackend):
    """The null runtime for every package, whatever runtime its manifest names: zeros, or a failure."""

    def __init__(self, fails: Callable[[Path, Manifest], bool]) -> None:
        self._fails = fails

    def version(self) -> str:
        return "9999"  # a simulated engine meets every minimum version a package asks for

    def estimate_memory(
        self, package_dir: Path, manifest: Manifest, options: RuntimeOptions | None = None
    ) -> int:
        return 0

    def load(self, package_dir: Path, manifest: Manifest, options: RuntimeOptions) -> LoadedModel:
        return NullModel(manifest, {"op": "zeros", "fail": self._fails(package_dir, manifest)})


class InProcessTransport:
    """The agent's services over a model registry in this process (see the module).

    ``latency_ms``: the latency every Predict is timed at (a steady figure, whatever the machine's
    load). ``handles``: implement the extension ``model-handles`` (False stands for an agent
    without it: not advertised, its RPCs answer UNIMPLEMENTED).
    """

    address = "in-process"

    def __init__(
        self, *, fail_models: Set[str] = frozenset(), latency_ms: float = 1.0, handles: bool = True
    ) -> None:
        self.fail_models = frozenset(fail_models)
        self._known: dict[str, tuple[Manifest, bool]] = {}
        ticks = itertools.count(step=latency_ms / 1000.0)  # each reading one latency later
        engine = _NullEverywhere(self._fails)
        self.registry = ModelRegistry(
            limits=ModelLimits(memory_budget_bytes=1 << 62),
            packages_dir=Path("/nonexistent"),  # never unpacks: every package is a directory
            verifier=self._manifest,
            unpacker=lambda archive, dest: self._manifest(archive),
            kind=lambda path, url: "directory",
            backends=lambda name: engine,
            timer=lambda: next(ticks),
            release_memory=False,
        )
        shm = SharedMemoryReader()
        lifecycle = AgentLifecycle()
        lifecycle.set(AgentState.SERVING)
        agent = AgentService(self.registry, None, shm)
        extensions = [e for e in EXTENSIONS if handles or e != "model-handles"]
        services = (
            (agent, agent_pb2.DESCRIPTOR.services_by_name["Agent"]),
            (
                ExtensionsService(self.registry, agent, shm, lifecycle, extensions=extensions),
                extensions_pb2.DESCRIPTOR.services_by_name["AgentExtensions"],
            ),
        )
        self._methods = {
            m.name: getattr(service, m.name)
            for service, descriptor in services
            for m in descriptor.methods
            if handles or m.name not in ("SetHandle", "RemoveHandle", "ListHandles")
        }

    def register_package(self, url: str, manifest: Manifest, fail: bool) -> None:
        """Describe the package a later load of ``url`` gets (simulated devices stage nothing on disk)."""
        self._known[os.path.abspath(url)] = (manifest, fail)

    def _manifest(self, package_dir: Path) -> Manifest:
        known = self._known.get(str(package_dir))
        return known[0] if known is not None else parse_manifest((package_dir / MANIFEST_FILE).read_bytes())

    def _fails(self, package_dir: Path, manifest: Manifest) -> bool:
        known = self._known.get(str(package_dir))
        if known is not None or manifest.runtime.name != "null":
            fail = known is not None and known[1]
        else:
            fail = bool(null_config((package_dir / manifest.model_file).read_bytes()).get("fail"))
        return fail or manifest.name in self.fail_models

    def call(self, method: str, request: Any) -> Any:
        handler = self._methods.get(method)
        if handler is None:
            raise EdgefleetError(f"this agent does not implement {method}", Code.UNIMPLEMENTED)
        return handler(request, _Context())

    def wait_ready(self, timeout: float) -> None:
        """Always ready."""

    def close(self) -> None:
        """Nothing to release."""


class NullAgent(AgentClient):
    """An :class:`AgentClient` over an :class:`InProcessTransport` (arguments: the transport's).

    Like a client whose agent outlives it, :meth:`close` leaves the in-process agent serving (a test
    may stop a daemon and start another over the same agent).
    """

    def __init__(
        self, *, fail_models: Set[str] = frozenset(), latency_ms: float = 1.0, handles: bool = True
    ) -> None:
        self.transport = InProcessTransport(fail_models=fail_models, latency_ms=latency_ms, handles=handles)
        self.latency_ms = latency_ms
        super().__init__(self.transport.address, shm_threshold=None, transport=self.transport)

    def simulate_traffic(self, name: str, requests: int, errors: int = 0) -> None:
        """Count ``requests`` inferences (``errors`` of them failed) on ``name`` without running them."""
        stats = self.transport.registry.get(name).stats
        for index in range(requests):
            stats.record(self.latency_ms / 1000.0, ok=index >= errors)

    def close(self) -> None:
        return None
