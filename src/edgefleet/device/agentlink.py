"""The daemon's seam to the device agent: an existing agent socket, or an agent child process.

:class:`edgefleet.client.AgentClient` is the daemon's way to the agent, over gRPC or, for simulated
devices, over the agent in process (:class:`edgefleet.device.sim.nullagent.NullAgent`).
:class:`AgentSupervisor` runs ``edgefleet agent`` as a child process and starts it again if it dies
(the daemon then loads its installed models again: see ``Daemon.converge``).
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.client import AgentClient, ModelInfo
from edgefleet.client.handles import AGENT_HANDLES_EXTENSION
from edgefleet.core.errors import (
    AlreadyExists,
    EdgefleetError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from edgefleet.core.files import read_json, write_json_atomic
from edgefleet.protocol.agent.framing import socket_path

log = logging.getLogger(__name__)


def agent_resolves_handles(agent: AgentClient) -> bool:
    """Whether ``agent`` advertises the ``model-handles`` extension (asked every time: an agent
    restarted in between may be another version)."""
    return AGENT_HANDLES_EXTENSION in agent.server_metadata().extensions


def sync_agent_handles(
    agent: AgentClient,
    desired: Mapping[str, str],
    owned_targets: Set[str],
    *,
    strict: Set[str] = frozenset(),
    leave: Set[str] = frozenset(),
) -> list[str]:
    """Make the agent's handles name the aliases in ``desired`` (handle -> alias).

    Handles whose target differs are switched (``SetHandle`` is atomic: no call sees the handle
    missing); then handles the agent holds that ``desired`` lacks are removed, but only those
    pointing at an alias in ``owned_targets`` (the daemon's own loads: another client's handles are
    left alone, and the agent refuses to unload a handle's target, so ours must go first).

    A handle whose target is not loaded (NOT_FOUND: the agent restarted and lost it) or whose name
    is a loaded model's (ALREADY_EXISTS) is reported in the returned problems, except for handles
    in ``strict``, whose failures are raised. Handles in ``leave`` are left as they are (their
    version could not be loaded: whatever the agent serves under them now is better than nothing).
    Failures to reach the agent are always raised.
    """
    current = agent.handles()
    problems: list[str] = []
    for handle, alias in sorted(desired.items()):
        if handle in leave or current.get(handle) == alias:
            continue
        try:
            previous = agent.set_handle(handle, alias)
        except (NotFound, AlreadyExists) as exc:
            if handle in strict:
                raise
            problems.append(f"cannot point the agent's handle {handle} at {alias}: {exc}")
            continue
        log.info("agent handle %s -> %s (was %s)", handle, alias, previous or "unset")
    for handle, alias in sorted(current.items()):
        if handle in desired or handle in leave or alias not in owned_targets:
            continue
        try:
            agent.remove_handle(handle)
        except NotFound:
            pass  # gone already
        log.info("agent handle %s removed (it pointed at %s)", handle, alias)
    return problems


def smoke_inputs(info: ModelInfo) -> dict[str, np.ndarray]:
    """Zeros shaped like the model's inputs (dynamic dimensions as 1), by input name."""
    return {
        spec.name: np.zeros([d if d >= 0 else 1 for d in spec.shape], dtype=spec.dtype.numpy)
        for spec in info.inputs
    }


@dataclass
class AgentConnection:
    """Two clients of one agent: ``api`` for model management (long deadline), ``smoke`` for the
    smoke-test Predict (short deadline)."""

    api: AgentClient
    smoke: AgentClient

    @classmethod
    def connect(cls, address: str, *, call_timeout: float, smoke_timeout: float) -> AgentConnection:
        """Clients of the agent at ``address`` (no call is made yet)."""
        return cls(
            api=AgentClient(address, timeout=call_timeout, shm_threshold=None),
            smoke=AgentClient(address, timeout=smoke_timeout, shm_threshold=None),
        )

    def close(self) -> None:
        """Close both clients."""
        self.api.close()
        if self.smoke is not self.api:
            self.smoke.close()


def wait_ready(
    api: AgentClient,
    timeout: float,
    *,
    alive: Callable[[], bool] = lambda: True,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Wait until the agent answers ready; UNAVAILABLE after ``timeout`` s or when ``alive()`` turns False."""
    deadline = clock() + timeout
    last: Exception | None = None
    while True:
        if not alive():
            raise Unavailable("the agent process exited while starting")
        try:
            if api.health().ready:
                return
        except EdgefleetError as exc:
            last = exc
        if clock() > deadline:
            raise Unavailable(f"the agent is not ready after {timeout:g} s: {last}")
        sleep(0.05)


class ChildState(enum.Enum):
    """Lifecycle of the supervised agent process."""

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    EXITED = "EXITED"


def write_agent_config(
    path: Path, *, device_name: str, fleet_name: str, trust_dir: Path, data_dir: Path
) -> Path:
    """A native agent config (JSON) for an agent the daemon starts itself."""
    write_json_atomic(
        path,
        {
            "device": {"name": device_name, "fleet": fleet_name},
            "agent": {"trust_dir": str(trust_dir), "data_dir": str(data_dir)},
            "capture": {"disk_path": str(data_dir / "captures")},
        },
    )
    return path


# The child arms PR_SET_PDEATHSIG (SIGTERM when the daemon dies, even by SIGKILL) and then execs the
# agent, which keeps the setting. This runs in a fresh interpreter rather than as a ``preexec_fn``:
# Python code between fork and exec in a process with live gRPC threads can deadlock or abort.
_CHILD = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.executable, [sys.executable, "-m", "edgefleet", "agent", *sys.argv[2:]])
"""


def _process_start(pid: int) -> int | None:
    """The start time (clock ticks after boot) of process ``pid``; None if there is no such process.

    A pid and its start time name one process for good: a recycled pid has another start time.
    """
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat_line.rsplit(")", 1)[-1].split()
    try:
        # fields after "(comm)" begin with the state (field 3); the start time is field 22;
        # a zombie has exited (its parent died without reaping it): count it as gone
        return None if fields[0] == "Z" else int(fields[19])
    except (IndexError, ValueError):
        return None


def _serving(path: Path) -> bool:
    """Whether some process accepts connections on the Unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


class AgentSupervisor:
    """Runs ``edgefleet agent`` as a child process; :meth:`ensure_running` restarts it after a crash.

    The child's pid (and start time) is kept in ``pid_path`` (default: next to the log), so that a
    daemon started after a crash of the previous one waits for the agent that one started to finish
    shutting down (it got SIGTERM when its parent died) before starting a new agent on the socket:
    an agent removes its socket file when it stops, which would otherwise be the new agent's.
    """

    def __init__(
        self,
        address: str,
        config_path: Path,
        log_path: Path,
        *,
        ready_timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        pid_path: Path | None = None,
        log_format: str | None = None,
    ) -> None:
        self.address = address
        #: the child's ``--log-format`` (None: its config's)
        self.log_format = log_format
        self.config_path = config_path
        self.log_path = log_path
        self.pid_path = pid_path or log_path.with_name("agent.pid")
        self.ready_timeout = ready_timeout
        self._env = dict(env) if env is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.state = ChildState.STOPPED
        #: how many times the agent was started
        self.starts = 0

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def alive(self) -> bool:
        """Whether the child process is running."""
        return self._proc is not None and self._proc.poll() is None

    def ensure_running(self, api: AgentClient) -> bool:
        """Start the agent if it is not running and wait until it is ready; True if it was (re)started."""
        with self._lock:
            if self.alive():
                return False
            if self._proc is not None:
                log.warning("the agent exited with status %s; starting it again", self._proc.returncode)
                self.state = ChildState.EXITED
            self._wait_previous_gone()
            self._wait_socket_free()
            self._start()
        try:
            wait_ready(api, self.ready_timeout, alive=self.alive)
        except Unavailable as exc:
            raise Unavailable(f"{exc.message}; see {self.log_path}") from exc
        self.state = ChildState.RUNNING
        return True

    def _wait_previous_gone(self) -> None:
        """Wait (up to ``ready_timeout``) for the agent a previous daemon started to exit; kill it after."""
        try:
            recorded = read_json(self.pid_path)
        except EdgefleetError as exc:
            log.warning("ignoring the agent pid file: %s", exc)
            return
        if not isinstance(recorded, dict):
            return
        pid, started = recorded.get("pid"), recorded.get("start")
        if not isinstance(pid, int) or not isinstance(started, int) or pid <= 0:
            return
        if self._proc is not None and self._proc.pid == pid:
            return  # our own child, already reaped by poll()
        if _process_start(pid) != started:
            return  # gone (or the pid now names another process)
        log.info("the agent a previous daemon started (pid %d) is still stopping; waiting for it", pid)
        deadline = time.monotonic() + self.ready_timeout
        while _process_start(pid) == started:
            if time.monotonic() > deadline:
                log.warning(
                    "the previous agent (pid %d) did not stop within %g s; killing it",
                    pid,
                    self.ready_timeout,
                )
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
                return
            time.sleep(0.05)

    def _wait_socket_free(self) -> None:
        """Wait (up to ``ready_timeout``) while another agent still serves the socket.

        After the daemon was killed, the agent it started gets SIGTERM and takes a moment to finish
        its calls and unload; a new agent started meanwhile would find the socket busy and exit.
        """
        try:
            path = socket_path(self.address)
        except InvalidArgument:
            return  # not a Unix socket: nothing to wait for
        deadline = time.monotonic() + self.ready_timeout
        waited = False
        while _serving(path) and time.monotonic() < deadline:
            if not waited:
                log.info("another agent still serves %s; waiting for it to stop", path)
                waited = True
            time.sleep(0.05)

    def _start(self) -> None:
        # a daemon killed with SIGKILL must not leave an orphan agent holding the socket
        args = [
            sys.executable,
            "-c",
            _CHILD,
            str(os.getpid()),
            "-a",
            self.address,
            "-c",
            str(self.config_path),
            "-f",
            *(("--log-format", self.log_format) if self.log_format else ()),
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.log_path.open("ab") as log_file:
                self._proc = subprocess.Popen(
                    args,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **(self._env or {})},
                )
        except OSError as exc:
            raise FailedPrecondition(f"cannot start the agent ({sys.executable}): {exc}") from exc
        self.state = ChildState.STARTING
        self.starts += 1
        write_json_atomic(self.pid_path, {"pid": self._proc.pid, "start": _process_start(self._proc.pid)})
        log.info("started the agent (pid %d) on %s", self._proc.pid, self.address)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the child and wait (SIGKILL after ``timeout`` s)."""
        with self._lock:
            proc, self._proc = self._proc, None
            self.state = ChildState.STOPPED
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("the agent did not stop within %g s; killing it", timeout)
            proc.kill()
            proc.wait()
