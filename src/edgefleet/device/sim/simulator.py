"""Many simulated devices in one process, for pre-production tests and scale measurements.

Each simulated device is a real :class:`~edgefleet.device.daemon.Daemon`: it enrols for real (its
own key, CSR, one-time token), talks to the server over mutual TLS with its own certificate, sends
heartbeats, fetches deployments, downloads packages (digest-checked, then discarded), plans,
executes, smoke-tests, rolls back and reports, exactly like a device. What is simulated is the agent
(:class:`~edgefleet.device.sim.nullagent.NullAgent`: no inference engine, no process) and the package
cache (nothing is written or unpacked). State is kept in memory unless ``persist`` is set.

The devices share a small pool of worker threads: a scheduler hands each device's heartbeat and
reconcile passes to the pool when they are due (spread over the interval so that N devices do
not all call at once).
"""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import logging
import random
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.client.handles import HANDLES_FILE
from edgefleet.core.deviceplane import PackageRef, Result
from edgefleet.core.errors import EdgefleetError, NotFound
from edgefleet.core.manifest import MANIFEST_FILE, Manifest
from edgefleet.core.package import parse_manifest
from edgefleet.device.agentlink import AgentConnection
from edgefleet.device.config import AgentSettings, DaemonConfig, DeploymentSettings, RetryPolicy, Timing
from edgefleet.device.daemon import Daemon
from edgefleet.device.executor import Executor
from edgefleet.device.https import HttpsControlPlane, enroller, fetch_ca
from edgefleet.device.identity import enroll, load_identity
from edgefleet.device.outbox import Outbox
from edgefleet.device.packages import DigestMismatch
from edgefleet.device.protocol import ControlPlane
from edgefleet.device.sim.nullagent import NullAgent, null_config
from edgefleet.device.state import StateStore

log = logging.getLogger(__name__)


#: how much of an archive a simulated device keeps to read its manifest (the packager writes it first)
HEAD_BYTES = 1024 * 1024


def peek_package(head: bytes) -> tuple[Manifest, bool] | None:
    """The manifest of a package archive from its first bytes, and whether it is a null model that
    fails (its ``"fail": true``); None if the manifest is not within ``head``."""
    manifest: Manifest | None = None
    fail = False
    try:
        with tarfile.open(fileobj=io.BytesIO(head), mode="r|gz") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                if member.name == MANIFEST_FILE:
                    manifest = parse_manifest(data)
                elif manifest is not None and member.name == manifest.model_file:
                    fail = manifest.runtime.name == "null" and bool(null_config(data).get("fail", False))
                    break
    except (tarfile.TarError, EOFError, OSError, zlib.error, EdgefleetError):
        pass  # the head was cut inside the archive: use what was read
    return None if manifest is None else (manifest, fail)


class DiscardingPackages:
    """A simulated package cache: downloads and digest-checks packages, keeps only their keys (and
    tells ``on_package`` about each package's manifest, read from the archive's first bytes)."""

    def __init__(
        self,
        chunk_bytes: int = 256 * 1024,
        on_package: Callable[[str, Manifest, bool], None] | None = None,
    ) -> None:
        self.chunk_bytes = chunk_bytes
        self.on_package = on_package
        self._have: set[str] = set()
        #: bytes downloaded so far
        self.downloaded = 0

    def fetch(self, package: PackageRef, plane: ControlPlane) -> None:
        if package.key in self._have:
            return
        digest = hashlib.sha256() if package.sha256 else hashlib.sha1()  # SHA-1: the vendor's checksum
        body = plane.open_package(package, 0)
        size = 0
        head = bytearray()
        try:
            for chunk in body.chunks(self.chunk_bytes):
                digest.update(chunk)
                size += len(chunk)
                if len(head) < HEAD_BYTES:
                    head += chunk[: HEAD_BYTES - len(head)]
        finally:
            body.close()
        self.downloaded += size
        if digest.hexdigest() != package.key:
            raise DigestMismatch(f"package {package.url}: digest {digest.hexdigest()} is not {package.key}")
        peeked = peek_package(bytes(head))
        if peeked is not None and self.on_package is not None:
            self.on_package(str(self.staged_path(package)), *peeked)
        self._have.add(package.key)

    def stage(self, package: PackageRef) -> Path:
        return self.staged_path(package)

    def staged_path(self, package: PackageRef) -> Path:
        return Path("/simulated") / package.key

    def is_staged(self, package: PackageRef) -> bool:
        return package.key in self._have

    def collect(self, keep: set[str]) -> None:
        self._have &= keep


@dataclass(frozen=True)
class SimulationSettings:
    """Knobs of a simulation."""

    #: the server's operator/enrolment URL
    server_url: str
    #: where identities (and, with ``persist``, state) of the simulated devices go
    work_dir: Path
    heartbeat_interval_seconds: float = 30.0
    poll_interval_seconds: float = 30.0
    health_interval_seconds: float = 10.0
    request_timeout_seconds: float = 30.0
    #: worker threads shared by all devices
    workers: int = 16
    #: model names whose smoke tests (and inferences) fail, to exercise rollbacks
    fail_models: frozenset[str] = frozenset()
    #: simulated inferences counted per model between two heartbeats
    inferences_per_heartbeat: int = 0
    #: model versions whose simulated inferences all fail (they pass their smoke test), to exercise
    #: health gates
    erroring_versions: frozenset[str] = frozenset()
    #: keep each device's state on disk (under ``work_dir``) instead of in memory
    persist: bool = False


@dataclass
class SimulatedDevice:
    """One simulated device."""

    name: str
    daemon: Daemon
    agent: NullAgent
    packages: DiscardingPackages


@dataclass
class Stats:
    """What the simulation did."""

    heartbeats_sent: int = 0
    heartbeats_failed: int = 0
    reconciles: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, object]:
        """A JSON-friendly summary."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "elapsed_seconds": round(elapsed, 2),
            "heartbeats_sent": self.heartbeats_sent,
            "heartbeats_failed": self.heartbeats_failed,
            "heartbeats_per_second": round(self.heartbeats_sent / elapsed, 1),
            "reconcile_passes": self.reconciles,
            "deployment_outcomes": dict(self.outcomes),
            "errors": self.errors,
        }


def read_tokens(path: Path) -> list[tuple[str, str]]:
    """(device name, enrolment token) pairs from a file: JSON (a list of ``{DeviceName, EnrolmentToken}``
    or ``{"Devices": [...]}``) or lines ``NAME TOKEN``."""
    text = path.read_text("utf-8")
    try:
        raw = json.loads(text)
    except ValueError:
        pairs = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        return [(p[0], p[1]) for p in pairs if len(p) >= 2]
    items = raw.get("Devices", []) if isinstance(raw, dict) else raw
    return [(str(i["DeviceName"]), str(i["EnrolmentToken"])) for i in items]


class Simulator:
    """Enrols and runs simulated devices."""

    def __init__(self, settings: SimulationSettings) -> None:
        self.settings = settings
        self.devices: list[SimulatedDevice] = []
        self.stats = Stats()
        self._lock = threading.Lock()
        self._busy: set[tuple[int, str]] = set()
        self._ca_pem: str | None = None

    # -- enrolment ------------------------------------------------------------------------------
    def enrol(self, tokens: Sequence[tuple[str, str]]) -> list[SimulatedDevice]:
        """Enrol one simulated device per (name, token), in parallel; returns the new devices."""
        self._ca_pem = fetch_ca(self.settings.server_url, self.settings.request_timeout_seconds)

        def one(pair: tuple[str, str]) -> SimulatedDevice:
            name, token = pair
            return self._enrol_one(name, token)

        with ThreadPoolExecutor(self.settings.workers) as pool:
            created = list(pool.map(one, tokens))
        self.devices += created
        log.info("enrolled %d simulated devices", len(created))
        return created

    def _enrol_one(self, name: str, token: str) -> SimulatedDevice:
        state_dir = self.settings.work_dir / name
        ca_pem = self._ca_pem
        base = enroller(timeout=self.settings.request_timeout_seconds, known_ca=ca_pem)
        identity = enroll(state_dir, self.settings.server_url, token, base, force=True)
        return self._device(identity.device_name, state_dir)

    def _device(self, name: str, state_dir: Path) -> SimulatedDevice:
        identity = load_identity(state_dir)
        s = self.settings
        config = DaemonConfig(
            trust_dir=state_dir / "trust",
            state_dir=state_dir,
            agent=AgentSettings(address="simulated://null-agent"),
            timing=Timing(
                heartbeat_interval_seconds=s.heartbeat_interval_seconds,
                poll_interval_seconds=s.poll_interval_seconds,
                health_interval_seconds=s.health_interval_seconds,
                request_timeout_seconds=s.request_timeout_seconds,
            ),
            retry=RetryPolicy(max_attempts=3, initial_seconds=0.5, max_seconds=5.0),
        )
        plane = HttpsControlPlane(identity, timeout=s.request_timeout_seconds)
        agent = NullAgent(fail_models=set(s.fail_models))
        connection = AgentConnection(agent, agent)
        packages = DiscardingPackages(on_package=agent.transport.register_package)
        store = StateStore(state_dir if s.persist else None)
        executor = Executor(
            store=store,
            agent=connection,
            packages=packages,
            plane=plane,
            handles_path=state_dir / HANDLES_FILE if s.persist else None,
            retry=config.retry,
            settings=DeploymentSettings(),
        )
        daemon = Daemon(
            config=config,
            store=store,
            outbox=Outbox(state_dir if s.persist else None, config.queue.max_heartbeats),
            executor=executor,
            plane=plane,
            agent=connection,
            platform=("linux", "x86_64", "none"),
            device=identity.device_name,
            fleet=identity.fleet_name,
        )
        return SimulatedDevice(name, daemon, agent, packages)

    # -- running --------------------------------------------------------------------------------
    def run(self, duration: float | None, stop: threading.Event | None = None) -> Stats:
        """Run every device's loops for ``duration`` seconds (None: until ``stop`` is set)."""
        stop = stop or threading.Event()
        s = self.settings
        for device in self.devices:
            device.daemon.start()
        now = time.monotonic()
        end = None if duration is None else now + duration
        rng = random.Random(0)
        queue: list[tuple[float, int, int, str]] = []
        for index in range(len(self.devices)):
            heapq.heappush(queue, (now + rng.uniform(0, s.heartbeat_interval_seconds), index, 0, "heartbeat"))
            heapq.heappush(queue, (now + rng.uniform(0, s.poll_interval_seconds), index, 1, "reconcile"))
        self.stats = Stats()
        # never queue unboundedly behind a slow server: a pass that cannot start runs a little later
        slots = threading.BoundedSemaphore(s.workers * 4)
        with ThreadPoolExecutor(s.workers) as pool:
            while not stop.is_set() and queue:
                due, index, order, kind = queue[0]
                now = time.monotonic()
                if end is not None and now >= end:
                    break
                if due > now:
                    stop.wait(min(due - now, 0.05))
                    continue
                heapq.heappop(queue)
                if not slots.acquire(blocking=False):
                    heapq.heappush(queue, (now + 0.01, index, order, kind))
                    stop.wait(0.005)
                    continue
                device = self.devices[index]
                if (index, kind) in self._busy:  # a pass still running is not started twice
                    slots.release()
                else:
                    with self._lock:
                        self._busy.add((index, kind))
                    pool.submit(self._tick, index, kind).add_done_callback(lambda _: slots.release())
                interval = (
                    s.heartbeat_interval_seconds if kind == "heartbeat" else self._reconcile_interval(device)
                )
                heapq.heappush(queue, (max(due + interval, now), index, order, kind))
        return self.stats

    def _reconcile_interval(self, device: SimulatedDevice) -> float:
        if device.daemon.store.state.watches:
            return min(self.settings.poll_interval_seconds, self.settings.health_interval_seconds)
        return self.settings.poll_interval_seconds

    def _tick(self, index: int, kind: str) -> None:
        device = self.devices[index]
        try:
            if kind == "heartbeat":
                for model in device.daemon.store.state.installed.values():
                    if self.settings.inferences_per_heartbeat:
                        failing = (
                            model.model_name in self.settings.fail_models
                            or model.model_version in self.settings.erroring_versions
                        )
                        n = self.settings.inferences_per_heartbeat
                        try:
                            device.agent.simulate_traffic(model.alias, n, n if failing else 0)
                        except NotFound:  # the device's own reconcile swapped it out meanwhile
                            continue
                ok = device.daemon.heartbeat_once()
                with self._lock:
                    if ok:
                        self.stats.heartbeats_sent += 1
                    else:
                        self.stats.heartbeats_failed += 1
            else:
                outcomes = device.daemon.reconcile_once()
                with self._lock:
                    self.stats.reconciles += 1
                    for outcome in outcomes:
                        key = outcome.result.value if outcome.result else "DEFERRED"
                        self.stats.outcomes[key] = self.stats.outcomes.get(key, 0) + 1
        except EdgefleetError as exc:
            with self._lock:
                self.stats.errors += 1
            log.warning("device %s: %s failed: %s", device.name, kind, exc)
        except Exception:  # one broken device must not stop the simulation; the trace is logged
            with self._lock:
                self.stats.errors += 1
            log.exception("device %s: %s crashed", device.name, kind)
        finally:
            with self._lock:
                self._busy.discard((index, kind))

    def results(self) -> dict[str, dict[str, Result]]:
        """Per device, the latest result of each deployment it handled."""
        return {d.name: {e.deployment: e.result for e in d.daemon.store.state.history} for d in self.devices}

    def close(self) -> None:
        """Close every device's connections."""
        for device in self.devices:
            device.daemon.plane.close()


def register_devices(
    register: Callable[[list[str]], list[tuple[str, str]]], names: Sequence[str], batch: int = 500
) -> list[tuple[str, str]]:
    """Register ``names`` in batches through ``register`` (names -> (name, token) pairs)."""
    pairs: list[tuple[str, str]] = []
    for start in range(0, len(names), batch):
        pairs += register(list(names[start : start + batch]))
    return pairs
