"""Assembles and runs the agent: config -> registry, capture, shared memory -> gRPC on a Unix socket."""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.fast_socket import FastSocketServer, unlink_if_ours
from edgefleet.agent.metrics import AgentCollector, MetricsEndpoint, require_prometheus_client, start_metrics
from edgefleet.agent.models import ModelLimits, ModelRegistry
from edgefleet.agent.server import AgentLifecycle, AgentService, AgentState, ExtensionsService, add_to_server
from edgefleet.agent.shadow import Shadows
from edgefleet.agent.shm import SharedMemoryReader
from edgefleet.agent.summaries import Summariser
from edgefleet.capture import CaptureConfig, CaptureService, FullPolicy, RetryPolicy
from edgefleet.capture.auto import AutoCapture
from edgefleet.capture.sinks import Sink, open_sink
from edgefleet.core.errors import EdgefleetError, FailedPrecondition, Unavailable
from edgefleet.core.manifest import MANIFEST_FILE, Manifest
from edgefleet.core.package import parse_manifest, unpack_package, verify_package_dir
from edgefleet.core.signing import check_trust_dir
from edgefleet.protocol.agent.framing import (
    MAX_SOCKET_PATH,
    METHOD_CAPTURE_DATA,
    METHOD_CAPTURE_STATUS,
    fast_path_for,
    socket_path,
)
from edgefleet.protocol.agent.proto import agent_pb2, extensions_pb2
from edgefleet.runtimes.base import RuntimeOptions
from edgefleet.storage.presigned import DeviceEndpoint

log = logging.getLogger(__name__)


def prepare_socket(path: Path, *, force: bool) -> None:
    """Refuse to start over a live agent's socket; remove a stale one only with ``force`` (-f)."""
    if not path.exists() and not path.is_symlink():
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise FailedPrecondition(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        live = True
    except OSError:
        live = False
    finally:
        probe.close()
    if live:
        raise FailedPrecondition(f"another process is serving on {path}; stop it first")
    if not force:
        raise FailedPrecondition(
            f"stale socket {path} exists (no process serves it); start with -f to remove it"
        )
    path.unlink()


@dataclass
class RunningAgent:
    """A started agent; :meth:`stop` shuts it down cleanly."""

    config: AgentConfig
    path: Path
    server: grpc.Server
    registry: ModelRegistry
    capture: CaptureService
    shm: SharedMemoryReader
    state: AgentLifecycle
    housekeeping: Housekeeping
    #: (device, inode) of the socket this agent created: on stop it removes that file only, never
    #: one a newer agent has bound at the same path since.
    socket_identity: tuple[int, int]
    #: The fast-path Predict socket beside the gRPC one (None when disabled or unavailable).
    fast_path: FastSocketServer | None = None
    #: Capture policies applied to Predict traffic (None when none is configured).
    auto_capture: AutoCapture | None = None
    #: Live input/output summaries for drift monitoring (None when off).
    summariser: Summariser | None = None
    #: The Prometheus ``/metrics`` endpoint (None when ``metrics_address`` is empty: off).
    metrics: MetricsEndpoint | None = None
    #: Shadow models paired with handles (extension "shadow-models").
    shadows: Shadows | None = None

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting calls, finish running ones, flush captures, unload models, remove the socket."""
        if not self.state.begin_stop():
            return
        log.info("agent stopping")
        if self.metrics is not None:
            self.metrics.stop()
        self.server.stop(grace).wait()
        if self.fast_path is not None:
            self.fast_path.stop()
        self.housekeeping.stop()
        if self.auto_capture is not None:
            self.auto_capture.close()
        if self.summariser is not None:
            self.summariser.close()  # what it picked goes into the spool before the spool closes
        if self.shadows is not None:
            self.shadows.close()
        self.capture.close()
        self.registry.close()
        self.shm.close()
        unlink_if_ours(self.path, self.socket_identity)
        self.state.set(AgentState.STOPPED)
        log.info("agent stopped")


class Housekeeping:
    """A background thread doing periodic upkeep: detaching shared-memory segments that their owners
    removed, so a client that creates a segment per frame does not keep dead frames alive in the agent."""

    def __init__(self, shm: SharedMemoryReader, interval: float = 1.0) -> None:
        self._shm = shm
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-housekeeping", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                retired = self._shm.sweep()
            except Exception:  # upkeep must never take the agent down; log and go on
                log.exception("shared-memory sweep failed")
                continue
            if retired:
                log.debug("detached %d removed shared-memory segment(s)", retired)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def make_verifier(
    config: AgentConfig,
) -> tuple[Callable[[Path], Manifest], Callable[[Path, Path], Manifest]]:
    """The package verifier (directories) and verifying unpacker (archives), bound to the trust store."""
    configured = config.trust_dir

    def trust() -> Path:
        if configured is None:
            raise FailedPrecondition(
                "no trust store is configured (sagemaker_edge_core_root_certs_path / agent.trust_dir): "
                "the agent loads only signed packages"
            )
        return configured

    def verify(directory: Path) -> Manifest:
        return verify_package_dir(directory, trust())

    def unpack(archive: Path, dest: Path) -> Manifest:
        # Signature, chain and digests are checked while streaming; a failure leaves nothing behind.
        unpack_package(archive, dest, trust_dir=trust())
        return parse_manifest((dest / MANIFEST_FILE).read_bytes())

    return verify, unpack


#: Fraction of each capture upload retry wait taken off at random (devices that lost the store
#: together do not all come back in the same second).
CAPTURE_RETRY_JITTER = 0.25


def capture_control_plane(config: AgentConfig) -> DeviceEndpoint | None:
    """The control plane endpoint for presigned or relay capture uploads (None with ``aws``)."""
    capture = config.capture
    if config.capture_upload == "aws":
        return None
    assert capture.device_cert_file and capture.device_key_file and capture.ca_cert_file  # config checked
    return DeviceEndpoint(
        capture.control_plane_url,
        config.device_name,
        config.fleet_name,
        capture.device_cert_file,
        capture.device_key_file,
        capture.ca_cert_file,
    )


def open_capture_sink(config: AgentConfig) -> Sink:
    """The capture destination, checked now: a misconfigured one fails the start, not a later write.

    FAILED_PRECONDITION naming the destination and the reason (unknown bucket, refused or missing
    credentials, unreachable endpoint or control plane, unreadable device certificate, unwritable
    directory, boto3 not installed).
    """
    if config.capture.destination == "Cloud":
        return open_cloud_sink(config, "capture destination Cloud")
    destination = config.capture_destination
    try:
        sink = open_sink(destination, fsync=config.capture.fsync)
        sink.check()
    except Unavailable as exc:
        # A local directory that fails now (a full disk, a mount not there yet) may work later:
        # captures are spooled and retried, never lost, so the agent serves meanwhile.
        log.error(
            "capture destination %s cannot be written now (captures are kept and retried): %s",
            destination,
            exc,
        )
        return sink
    except EdgefleetError as exc:
        raise FailedPrecondition(
            f"capture destination {config.capture.destination} ({destination}) cannot be used: {exc.message}"
        ) from exc
    log.info("capture destination: %s", sink.store.uri)
    return sink


def open_cloud_sink(config: AgentConfig, what: str) -> Sink:
    """The cloud store of Cloud or of Disk's periodic upload (``what`` names which), checked now:
    FAILED_PRECONDITION naming it and the reason, as :func:`open_capture_sink`."""
    target = config.capture_cloud_target
    where = target
    if config.capture_upload != "aws":
        where = f"{config.capture_upload} upload through the control plane {target}"
    try:
        sink = open_sink(
            target,
            fsync=config.capture.fsync,
            s3_endpoint_url=config.capture.s3_endpoint_url or None,
            upload=config.capture_upload,
            control_plane=capture_control_plane(config),
        )
        sink.check()
    except EdgefleetError as exc:
        raise FailedPrecondition(f"{what} ({where}) cannot be used: {exc.message}") from exc
    if where != target:
        log.info("%s: %s (%s)", what, sink.store.uri, where)
    else:
        log.info("%s: %s", what, sink.store.uri)
    return sink


def start_agent(config: AgentConfig, address: str, *, force: bool = False) -> RunningAgent:
    """Start serving; returns once the socket accepts connections."""
    path = socket_path(address)
    if config.trust_dir is not None:
        check_trust_dir(config.trust_dir)
    if config.metrics_address:
        require_prometheus_client()  # before anything is started
    sink = open_capture_sink(config)
    periodic = open_cloud_sink(config, "capture periodic upload") if config.periodic_upload else None
    prepare_socket(path, force=force)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    state = AgentLifecycle()
    verify, unpack = make_verifier(config)
    registry = ModelRegistry(
        limits=ModelLimits(
            memory_budget_bytes=config.memory_budget_bytes,
            max_concurrent_per_model=config.max_concurrent_per_model,
            max_queued_per_model=config.max_queued_per_model,
        ),
        packages_dir=config.packages_dir,
        verifier=verify,
        unpacker=unpack,
        runtime_options=RuntimeOptions(
            intra_op_threads=config.intra_op_threads,
            concurrency=config.max_concurrent_per_model,
            spin_wait=config.intra_op_spinning,
            adaptive_threads=config.adaptive_threads,
        ),
    )
    capture = CaptureService(
        CaptureConfig(
            spool_dir=config.spool_dir,
            destination_root=config.capture_disk_path,
            folder_prefix=config.capture.folder_prefix,
            device_name=config.device_name,
            fleet_name=config.fleet_name,
            buffer_size=config.capture.buffer_size,
            buffer_bytes=config.capture_buffer_bytes(),
            full_policy=FullPolicy.parse(config.capture.full_policy),
            batch_size=config.capture.batch_size,
            push_period_seconds=config.capture.push_period_seconds,
            base64_embed_limit=config.capture.base64_embed_limit,
            fsync=config.capture.fsync,
            retry=RetryPolicy(jitter=CAPTURE_RETRY_JITTER),
            periodic_upload_period_seconds=config.capture.periodic_upload_period_seconds,
        ),
        sink,
        periodic_upload=periodic,
    )
    shm = SharedMemoryReader()
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.grpc_workers), options=options)
    auto = AutoCapture(config.capture.auto, capture.submit) if config.capture.auto else None
    summariser = Summariser(config.model_summary_sample) if config.model_summaries else None
    shadows = Shadows(registry)
    agent = AgentService(registry, capture, shm, auto_capture=auto, summariser=summariser, shadows=shadows)
    add_to_server(server, agent, agent_pb2.DESCRIPTOR.services_by_name["Agent"])
    add_to_server(
        server,
        ExtensionsService(registry, agent, shm, state, fast_path=config.fast_path),
        extensions_pb2.DESCRIPTOR.services_by_name["AgentExtensions"],
    )
    # gRPC unlinks the path it bound when it shuts down, even if another agent owns that path by
    # then. So it binds a private name, which is renamed into place atomically: gRPC only ever
    # removes the private name, and stop() removes the public one only if it is still ours.
    bound = path.with_name(f".ef{os.getpid()}.sock")
    # The socket is created by server.start(); a restrictive umask closes the window before chmod.
    old_umask = os.umask(0o777 & ~config.socket_mode)
    try:
        if server.add_insecure_port(f"unix://{bound}") == 0:
            raise FailedPrecondition(f"cannot listen on {bound} (path too long or directory not writable?)")
        server.start()
    finally:
        os.umask(old_umask)
    os.chmod(bound, config.socket_mode)
    os.replace(bound, path)
    st = path.lstat()
    fast = start_fast_path(config, path, agent) if config.fast_path else None
    running = RunningAgent(
        config,
        path,
        server,
        registry,
        capture,
        shm,
        state,
        Housekeeping(shm),
        (st.st_dev, st.st_ino),
        fast,
        auto,
        summariser,
        shadows=shadows,
    )
    if config.metrics_address:
        collector = AgentCollector(
            registry,
            capture,
            budget_bytes=config.memory_budget_bytes,
            device=config.device_name,
            fleet=config.fleet_name,
        )
        try:
            running.metrics = start_metrics(config.metrics_address, collector)
        except BaseException:
            running.stop()  # an agent that was asked for metrics and cannot serve them does not run
            raise
    state.set(AgentState.SERVING)
    log.info(
        "agent serving on unix://%s (device %s, fleet %s, mode %o)",
        path,
        config.device_name,
        config.fleet_name,
        config.socket_mode,
    )
    return running


def start_fast_path(config: AgentConfig, path: Path, agent: AgentService) -> FastSocketServer | None:
    """The fast-path socket beside ``path`` (docs/agent-protocol.md); None, with a warning, if it
    cannot be created: gRPC serves every client anyway."""
    fast_path = fast_path_for(path)
    if len(os.fsencode(fast_path)) > MAX_SOCKET_PATH:
        log.warning("fast path disabled: %s is longer than a Unix socket path may be", fast_path)
        return None
    old_umask = os.umask(0o777 & ~config.socket_mode)
    try:
        server = FastSocketServer(
            fast_path,
            agent.predict,
            methods={
                METHOD_CAPTURE_DATA: (agent_pb2.CaptureDataRequest, agent.capture_data),
                METHOD_CAPTURE_STATUS: (agent_pb2.GetCaptureDataStatusRequest, agent.capture_status),
            },
            mode=config.socket_mode,
            max_frame_bytes=config.fast_path_max_frame_bytes,
            idle_seconds=config.fast_path_idle_seconds,
            frame_seconds=config.fast_path_frame_seconds,
        )
    except OSError as exc:
        log.warning("fast path disabled: cannot listen on %s: %s", fast_path, exc)
        return None
    finally:
        os.umask(old_umask)
    log.info("fast path (Predict and captures over a plain socket) on %s", fast_path)
    return server


def run_until_signal(agent: RunningAgent) -> None:
    """Block until SIGTERM, SIGINT or SIGHUP, then stop cleanly."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)
    # Wake up now and then: a signal the kernel delivers to another thread is only run by the main
    # thread when it next runs Python code, and an untimed wait might never return to it.
    while not stop.wait(0.5):
        pass
    agent.stop()
