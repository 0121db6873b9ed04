"""Helpers of the device-daemon tests: signed null packages, in-process devices, agent wrappers."""

from __future__ import annotations

import builtins
import itertools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from support import build_null

from edgefleet.client import AgentClient, Health, ModelInfo, ModelStatistics, ServerMetadata
from edgefleet.client.handles import read_handles
from edgefleet.core.deviceplane import Definition, Deployment, FailurePolicy, HealthGate, PackageRef
from edgefleet.device.agentlink import AgentConnection
from edgefleet.device.config import (
    AgentSettings,
    DaemonConfig,
    DeploymentSettings,
    QueueLimits,
    RetryPolicy,
    Timing,
)
from edgefleet.device.daemon import Daemon
from edgefleet.device.executor import Executor
from edgefleet.device.outbox import Outbox
from edgefleet.device.packages import PackageStore
from edgefleet.device.sim.control_plane import FakeControlPlane
from edgefleet.device.state import StateStore

NO_WAIT = RetryPolicy(max_attempts=3, initial_seconds=0.0, max_seconds=0.0)


def null_package(keys: Path, out: Path, version: str, **config: Any) -> Path:
    """A signed null-runtime package of model ``det`` (``config``: fail, delay_ms, op ...)."""
    return build_null(keys, out, name="det", version=version, **config)


def deployment(
    name: str,
    *refs: tuple[str, str, PackageRef],
    policy: FailurePolicy = FailurePolicy.ROLLBACK_ON_FAILURE,
    gate: HealthGate | None = None,
) -> Deployment:
    """A deployment of ``(handle, version, package)`` triples (model ``det``)."""
    return Deployment(
        name=name,
        definitions=tuple(Definition(h, "det", v, ref) for h, v, ref in refs),
        failure_policy=policy,
        health_gate=gate,
    )


class CrashHere(BaseException):
    """Stands for the process dying at this point (not an EdgefleetError: nothing handles it)."""


class ScriptedAgent:
    """Wraps an agent; ``before(call, name)`` may raise or block before a call goes through."""

    def __init__(self, inner: AgentClient, before: Callable[[str, str], None]) -> None:
        self.inner = inner
        self.before = before

    def load(self, url: str, name: str) -> ModelInfo:
        self.before("load", name)
        return self.inner.load(url, name)

    def unload(self, name: str) -> None:
        self.before("unload", name)
        self.inner.unload(name)

    def list(self) -> builtins.list[ModelInfo]:
        return self.inner.list()

    def describe(self, name: str) -> ModelInfo:
        return self.inner.describe(name)

    def predict(self, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.before("predict", name)
        return self.inner.predict(name, inputs)

    def model_stats(self, name: str | None = None) -> builtins.list[ModelStatistics]:
        return self.inner.model_stats(name)

    def server_metadata(self) -> ServerMetadata:
        return self.inner.server_metadata()

    def set_handle(self, handle: str, target: str) -> str | None:
        self.before("set_handle", handle)
        return self.inner.set_handle(handle, target)

    def remove_handle(self, handle: str) -> None:
        self.before("remove_handle", handle)
        self.inner.remove_handle(handle)

    def handles(self) -> dict[str, str]:
        return self.inner.handles()

    def health(self) -> Health:
        return self.inner.health()

    def close(self) -> None:
        self.inner.close()


def daemon_config(state_dir: Path, trust_dir: Path, **timing: float) -> DaemonConfig:
    return DaemonConfig(
        trust_dir=trust_dir,
        state_dir=state_dir,
        agent=AgentSettings(address="in-process"),
        timing=Timing(**timing),
        retry=NO_WAIT,
        queue=QueueLimits(max_heartbeats=3, max_results=50),
    )


@dataclass
class Device:
    """A daemon with in-process parts over a state directory (build again to "restart" it)."""

    state_dir: Path
    plane: FakeControlPlane
    agent: AgentClient
    executor: Executor
    daemon: Daemon

    @property
    def store(self) -> StateStore:
        return self.executor.store

    def handles(self) -> dict[str, str]:
        return {h: e.alias for h, e in read_handles(self.state_dir / "handles.json").items()}

    def loaded(self) -> set[str]:
        return {m.name for m in self.agent.list()}


def make_device(
    state_dir: Path,
    trust_dir: Path,
    plane: FakeControlPlane,
    agent: AgentClient,
    *,
    settings: DeploymentSettings | None = None,
    **timing: float,
) -> Device:
    config = daemon_config(state_dir, trust_dir, **timing)
    store = StateStore(state_dir)
    connection = AgentConnection(agent, agent)
    executor = Executor(
        store=store,
        agent=connection,
        packages=PackageStore(state_dir / "packages", trust_dir),
        plane=plane,
        handles_path=state_dir / "handles.json",
        retry=config.retry,
        settings=settings or DeploymentSettings(),
        sleep=lambda seconds: None,
    )
    clock = itertools.count(step=1000.0)  # every reading is much later: every interval has passed
    daemon = Daemon(
        config=config,
        store=store,
        outbox=Outbox(state_dir, config.queue.max_heartbeats),
        executor=executor,
        plane=plane,
        agent=connection,
        platform=("linux", "x86_64", "none"),
        monotonic=lambda: next(clock),
    )
    return Device(state_dir, plane, agent, executor, daemon)


class Hammer:
    """Calls ``predict`` in a loop on a thread and counts successes and failures."""

    def __init__(self, predict: Callable[[], object]) -> None:
        self._predict = predict
        self.ok = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._predict()
                self.ok += 1
                self._first.set()
            except Exception as exc:
                self.errors.append(exc)
                self._first.set()

    def __enter__(self) -> Hammer:
        self._thread.start()
        assert self._first.wait(60), "the first prediction never finished"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


FLEET = "sims"


@dataclass
class LoopbackServer:
    """A running control plane, an operator client of it, and the packages uploaded (det 1.0, 2.0
    failing its smoke test, 3.0)."""

    running: Any
    op: Any
    packages: dict[str, Path]

    @property
    def api_url(self) -> str:
        return str(self.running.endpoints.api_url)
