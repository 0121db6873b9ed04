"""One twin: the real device agent and the real device daemon in one process.

A twin is one device of a digital-twin fleet. Its process serves the agent (gRPC and the fast
socket on its own Unix socket, models on ONNX Runtime, captures in its own spool) and runs the
device daemon (its own state directory and enrolled identity, heartbeats, deployments over mutual
TLS). The daemon reaches the agent the way a device's daemon does, as a client over the socket; only
the process is shared, which halves the interpreters a fleet of twins needs (an agent process and a
daemon process each hold ~65 MB of imported modules).

The process is started with the path of its :class:`TwinSpec` (``twin.json``) and writes its phase to
``status.json`` beside it (``starting``, ``running``, ``stopping``, ``stopped`` or ``failed`` with the
reason), so that the fleet controlling it can tell progress and failures without talking to it.
It stops cleanly on SIGTERM (the daemon first, then the agent: calls finish, captures flush, models
unload, the socket goes) and receives SIGTERM when its parent dies, even by SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from edgefleet.core.errors import EdgefleetError, InvalidArgument
from edgefleet.core.files import read_json, write_json_atomic

log = logging.getLogger(__name__)

SPEC_FILE = "twin.json"
STATUS_FILE = "status.json"
LOG_FILE = "twin.log"


@dataclass(frozen=True)
class TwinSpec:
    """What one twin process runs (written by the fleet as ``twin.json`` in the twin's directory)."""

    #: Device name, as registered in the fleet.
    name: str
    #: Fleet the device belongs to.
    fleet: str
    #: The twin's directory: ``twin.json``, ``status.json``, its log, and the daemon's state directory.
    directory: str
    #: The agent's address (``unix:///short/path.sock``).
    agent_address: str
    #: The model-signing trust store.
    trust_dir: str
    #: Device class (a compile target name, e.g. ``linux-x86_64``).
    device_class: str
    #: Architecture reported in heartbeats (the device class's).
    arch: str
    heartbeat_interval_seconds: float = 5.0
    poll_interval_seconds: float = 5.0
    health_interval_seconds: float = 2.0
    #: Memory all the twin's models may use together (the agent's budget).
    memory_budget_bytes: int = 1 << 30
    #: Threads one inference may use (1: twenty twins share two cores).
    intra_op_threads: int = 1
    #: gRPC worker threads of the twin's agent.
    grpc_workers: int = 8

    @property
    def state_dir(self) -> Path:
        """The daemon's state directory."""
        return Path(self.directory) / "state"

    def write(self) -> Path:
        """Write ``twin.json`` into the twin's directory; its path."""
        path = Path(self.directory) / SPEC_FILE
        write_json_atomic(path, asdict(self))
        return path

    @classmethod
    def read(cls, path: Path) -> TwinSpec:
        """The spec in ``path``; INVALID_ARGUMENT if it is not one."""
        raw = read_json(path)
        if not isinstance(raw, dict):
            raise InvalidArgument(f"{path} is not a twin spec")
        try:
            return cls(**raw)
        except TypeError as exc:
            raise InvalidArgument(f"{path} is not a twin spec: {exc}") from exc


def write_status(directory: Path, phase: str, **fields: Any) -> None:
    """Record the twin's phase (and pid) in ``status.json``."""
    write_json_atomic(directory / STATUS_FILE, {"phase": phase, "pid": os.getpid(), **fields})


def read_status(directory: Path) -> dict[str, Any] | None:
    """The twin's last recorded status (None before the process wrote one)."""
    try:
        raw = read_json(directory / STATUS_FILE)
    except EdgefleetError:
        return None
    return raw if isinstance(raw, dict) else None


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when its parent dies (even by SIGKILL): a twin is never orphaned."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the line above ran
        sys.exit(1)


def run_twin(spec: TwinSpec, stop: threading.Event) -> None:
    """Serve the agent and run the daemon until ``stop`` is set; then stop both, daemon first."""
    from edgefleet.agent.config import AgentConfig
    from edgefleet.agent.runner import start_agent
    from edgefleet.device.config import AgentSettings, DaemonConfig, Timing
    from edgefleet.device.daemon import build_daemon

    directory = Path(spec.directory)
    agent_dir = spec.state_dir / "agent"
    agent = start_agent(
        AgentConfig(
            device_name=spec.name,
            fleet_name=spec.fleet,
            trust_dir=Path(spec.trust_dir),
            data_dir=agent_dir,
            memory_budget_bytes=spec.memory_budget_bytes,
            intra_op_threads=spec.intra_op_threads,
            grpc_workers=spec.grpc_workers,
        ),
        spec.agent_address,
        force=True,  # a stale socket of this twin's previous run (SIGKILLed) is ours to replace
    )
    try:
        config = DaemonConfig(
            trust_dir=Path(spec.trust_dir),
            state_dir=spec.state_dir,
            agent=AgentSettings(address=spec.agent_address, spawn=False),
            timing=Timing(
                heartbeat_interval_seconds=spec.heartbeat_interval_seconds,
                poll_interval_seconds=spec.poll_interval_seconds,
                health_interval_seconds=spec.health_interval_seconds,
            ),
        )
        daemon = build_daemon(config)
        daemon.platform = ("linux", spec.arch, config.accelerator)

        def stop_daemon() -> None:
            stop.wait()
            daemon.stop()  # wakes its reconcile loop at once (``stop`` alone waits out the poll interval)

        threading.Thread(target=stop_daemon, name="twin-stop", daemon=True).start()
        write_status(directory, "running", agent_address=spec.agent_address)
        daemon.run(stop)
    finally:
        write_status(directory, "stopping")
        agent.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m edgefleet.twin.process TWIN_JSON PARENT_PID``: run one twin until SIGTERM."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m edgefleet.twin.process TWIN_JSON PARENT_PID", file=sys.stderr)
        return 2
    die_with_parent(int(args[1]))
    spec = TwinSpec.read(Path(args[0]))
    directory = Path(spec.directory)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    # Ctrl-C reaches every process of the terminal's group: the fleet stops its twins in order
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    write_status(directory, "starting")
    try:
        run_twin(spec, stop)
    except Exception as exc:
        log.exception("twin %s failed", spec.name)
        write_status(directory, "failed", error=str(exc))
        return 1
    write_status(directory, "stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
