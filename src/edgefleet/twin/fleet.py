"""A digital-twin fleet: N real devices on this machine, enrolled into a pre-production fleet.

:class:`TwinFleet` talks to the control plane only over its operator API
(:class:`~edgefleet.opclient.client.FleetClient`): it creates the fleet (or marks an existing one)
with the tag ``edgefleet.io/stage=pre-production``, registers N devices tagged with their device
class, enrols each for real (its own key, a CSR with the one-time token, the fleet CA and the
device certificate in its own state directory: :func:`edgefleet.device.identity.enroll`) and starts
one process per twin running the real agent on ONNX Runtime and the real device daemon
(:mod:`edgefleet.twin.process`). Deployments reach the twins the way they reach any device: a
deployment plan on the fleet.

The fleet's state (twins, pids, sockets) is kept in ``<workdir>/twins.json``, so that another
process (``edgefleet twin status|down``) can find and stop the twins.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from edgefleet.core.errors import (
    AlreadyExists,
    DeadlineExceeded,
    EdgefleetError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from edgefleet.core.files import read_json, write_json_atomic
from edgefleet.twin.device_class import DeviceClass, resolve_device_class
from edgefleet.twin.process import LOG_FILE, TwinSpec, read_status
from edgefleet.twin.zygote import Zygote

if TYPE_CHECKING:
    from edgefleet.opclient.client import FleetClient

log = logging.getLogger(__name__)

#: the fleet tag that marks a twin fleet (and its value)
STAGE_TAG = "edgefleet.io/stage"
PRE_PRODUCTION = "pre-production"
#: device tags: the twin's device class, and that it is a twin
DEVICE_CLASS_TAG = "edgefleet.io/device-class"
TWIN_TAG = "edgefleet.io/twin"
#: the fleet's state file in the work directory
STATE_FILE = "twins.json"
#: Unix socket paths longer than this do not fit ``sun_path`` (with ``.fast`` appended)
_MAX_SOCKET = 100

Say = Callable[[str], None]


@dataclass(frozen=True)
class TwinTiming:
    """How often each twin's daemon talks to the server (seconds): shorter than a device's
    defaults, so that a deployment reaches twins quickly, and long enough that twenty idle twins
    cost little CPU."""

    heartbeat_interval_seconds: float = 5.0
    poll_interval_seconds: float = 5.0
    health_interval_seconds: float = 2.0

    def __post_init__(self) -> None:
        for name in ("heartbeat_interval_seconds", "poll_interval_seconds", "health_interval_seconds"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"twin timing {name} must be positive")


@dataclass
class Twin:
    """One twin of the fleet: its device, its directory, its agent socket and its process."""

    index: int
    name: str
    directory: Path
    agent_address: str
    pid: int | None = None
    #: the process's start time (psutil's ``create_time``): a pid and it name one process for good
    started: float | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        """Whether the twin's process runs (a recycled pid is another process: not alive)."""
        if self.proc is not None:
            return self.proc.poll() is None
        return _same_process(self.pid, self.started)

    def to_wire(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "directory": str(self.directory),
            "agent_address": self.agent_address,
            "pid": self.pid,
            "started": self.started,
        }

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Twin:
        return cls(
            int(raw["index"]),
            str(raw["name"]),
            Path(raw["directory"]),
            str(raw["agent_address"]),
            raw.get("pid"),
            raw.get("started"),
        )


@dataclass(frozen=True)
class TwinStatus:
    """What ``edgefleet twin status`` shows of one twin."""

    name: str
    pid: int | None
    #: the process's phase (``starting``, ``running``, ``stopping``, ``stopped``, ``failed``) or ``gone``
    phase: str
    agent_address: str
    #: the server's LatestHeartbeat (None: none yet, or the server was not asked)
    last_heartbeat: str | None
    #: the models the twin's agent has loaded, by alias (None: the agent did not answer)
    models: list[str] | None
    #: the agent's handles (handle -> alias)
    handles: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def _same_process(pid: int | None, started: float | None) -> bool:
    if pid is None:
        return False
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and (
            started is None or abs(process.create_time() - started) < 0.01
        )
    except psutil.Error:
        return False


def _create_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _wait(condition: Callable[[], Any], what: str, timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def twin_environment() -> dict[str, str]:
    """The environment of a twin process: one thread per math library (inference uses the agent's
    ``intra_op_threads``), two malloc arenas (a threaded process otherwise reserves one per core
    and thread), nothing else changed."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
    }


class TwinFleet:
    """N twins in ``workdir``: :meth:`start`, :meth:`wait_heartbeats`, :meth:`status`, :meth:`stop`.

    Use it as a context manager to be sure the twins are stopped. :meth:`attach` reads the state
    another process left in ``workdir`` (to show or stop its twins).
    """

    def __init__(self, workdir: Path, *, say: Say | None = None, preload: bool = True) -> None:
        self.workdir = workdir.absolute()
        #: fork native twins from a zygote that imported their modules once (:mod:`edgefleet.twin.zygote`);
        #: False starts each twin as a fresh interpreter (what emulated twins always are)
        self.preload = preload
        self._zygote: Zygote | None = None
        self._zygote_pid: tuple[int, float | None] | None = None
        self._codes: dict[str, int | None] = {}
        self._beats_before: dict[str, str | None] = {}
        self.say: Say = say or (lambda line: log.info("%s", line))
        self.twins: list[Twin] = []
        self.fleet: str | None = None
        self.device_class: DeviceClass | None = None
        self.socket_dir: Path | None = None
        self._own_socket_dir = False
        self.trust_dir: Path | None = None
        #: ``starting``, ``running`` (every twin's agent and daemon run), ``ready`` (every twin's
        #: heartbeat reached the server) or ``stopping``; kept in the state file
        self.phase = "starting"
        self._op: FleetClient | None = None
        self._owns_op = False

    # -- state ----------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.workdir / STATE_FILE

    def _save(self) -> None:
        write_json_atomic(
            self.state_path,
            {
                "fleet": self.fleet,
                "phase": self.phase,
                "device_class": self.device_class.name if self.device_class else None,
                "socket_dir": str(self.socket_dir) if self.socket_dir else None,
                "own_socket_dir": self._own_socket_dir,
                "zygote": list(self._zygote_pid) if self._zygote_pid else None,
                "controller_pid": os.getpid(),
                "controller_started": _create_time(os.getpid()),
                "twins": [t.to_wire() for t in self.twins],
            },
        )

    @classmethod
    def attach(cls, workdir: Path, *, say: Say | None = None) -> TwinFleet:
        """The fleet whose state is in ``workdir``; NOT_FOUND if there is none."""
        fleet = cls(workdir, say=say)
        raw = read_json(fleet.state_path)
        if not isinstance(raw, dict):
            raise NotFound(
                f"no twin fleet in {fleet.workdir} (no {STATE_FILE}): start one with `edgefleet twin up`"
            )
        fleet.fleet = raw.get("fleet")
        fleet.phase = str(raw.get("phase", "unknown"))
        fleet.socket_dir = Path(raw["socket_dir"]) if raw.get("socket_dir") else None
        fleet._own_socket_dir = bool(raw.get("own_socket_dir"))
        fleet.twins = [Twin.from_wire(t) for t in raw.get("twins", [])]
        zygote = raw.get("zygote")
        if isinstance(zygote, list) and len(zygote) == 2:
            fleet._zygote_pid = (int(zygote[0]), zygote[1])
        return fleet

    @staticmethod
    def controller(workdir: Path) -> psutil.Process | None:
        """The process that started the fleet in ``workdir``, if it still runs."""
        raw = read_json(workdir.absolute() / STATE_FILE)
        if not isinstance(raw, dict) or not isinstance(raw.get("controller_pid"), int):
            return None
        pid, started = raw["controller_pid"], raw.get("controller_started")
        if not _same_process(pid, started):
            return None
        try:
            return psutil.Process(pid)
        except psutil.Error:
            return None

    # -- start ----------------------------------------------------------------------------------
    def start(
        self,
        n: int,
        fleet: str,
        server_url: str,
        token: str | None,
        *,
        trust_dir: Path,
        ca_cert: Path | None = None,
        device_class: str | None = None,
        emulator_python: Path | None = None,
        prefix: str | None = None,
        output_location: str | None = None,
        timing: TwinTiming | None = None,
        ready_timeout: float = 300.0,
        client: FleetClient | None = None,
    ) -> list[Twin]:
        """Create or mark the fleet, register and enrol ``n`` devices, start their twins; returns once
        every twin's agent and daemon run (heartbeats: :meth:`wait_heartbeats`).

        ``client``: an operator client to use (default: one for ``server_url`` and ``token``).
        Nothing is registered when the device class cannot run here (FAILED_PRECONDITION).
        """
        if not 1 <= n <= 1000:
            raise InvalidArgument(f"a twin fleet has 1 to 1000 twins, not {n}")
        if not trust_dir.is_dir():
            raise NotFound(f"trust store {trust_dir} is not a directory (the model-signing trust store)")
        if self.twins:
            raise FailedPrecondition("this twin fleet is started already")
        timing = timing or TwinTiming()
        self.device_class = resolve_device_class(
            device_class, python=sys.executable, emulator_python=emulator_python
        )
        self.fleet, self.trust_dir = fleet, trust_dir.absolute()
        prefix = prefix or fleet
        self.workdir.mkdir(parents=True, exist_ok=True)
        running = self.controller(self.workdir)
        if running is not None and running.pid != os.getpid():
            raise FailedPrecondition(
                f"a twin fleet runs in {self.workdir} already (pid {running.pid}): `edgefleet twin down` first"
            )
        self._client(server_url, token, ca_cert, client)
        try:
            self._mark_fleet(fleet, output_location or (self.workdir / "captures").as_uri())
            self._choose_socket_dir(prefix, n)
            names = [f"{prefix}-{i:02d}" for i in range(1, n + 1)]
            self.twins = [
                Twin(i, name, self.workdir / name, self._socket(name)) for i, name in enumerate(names, 1)
            ]
            self._save()
            self._enrol_all(server_url)
            # devices reused from an earlier run have heartbeats already: only newer ones count
            self._beats_before = self.heartbeats()
            if self.preload and not self.device_class.emulated:
                self._zygote = Zygote(sys.executable, self.workdir / "zygote.log", twin_environment())
                self._zygote_pid = (self._zygote.pid, _create_time(self._zygote.pid))
            for twin in self.twins:
                self._launch(twin, timing)
                self._save()
            self._wait_running(ready_timeout)
            self.phase = "running"
            self._save()
        except BaseException:
            self.stop()
            raise
        return list(self.twins)

    def _client(
        self, server_url: str, token: str | None, ca_cert: Path | None, client: FleetClient | None
    ) -> FleetClient:
        if client is not None:
            self._op = client
        elif self._op is None:
            from edgefleet.opclient.client import FleetClient
            from edgefleet.opclient.config import ClientConfig

            self._op, self._owns_op = FleetClient(ClientConfig(server_url, token, ca_cert)), True
        return self._op

    def _mark_fleet(self, fleet: str, output_location: str) -> None:
        assert self._op is not None
        try:
            existing = self._op.describe_fleet(fleet)
        except NotFound:
            self._op.create_fleet(
                fleet,
                output_location,
                description="digital-twin fleet (edgefleet twin)",
                tags={STAGE_TAG: PRE_PRODUCTION},
            )
            self.say(f"fleet {fleet}: created, tagged {STAGE_TAG}={PRE_PRODUCTION}")
            return
        tags = dict(existing.get("Tags") or {})
        if tags.get(STAGE_TAG) != PRE_PRODUCTION:
            self._op.update_fleet(fleet, Tags={**tags, STAGE_TAG: PRE_PRODUCTION})
            self.say(f"fleet {fleet}: exists, now tagged {STAGE_TAG}={PRE_PRODUCTION}")
        else:
            self.say(f"fleet {fleet}: exists, tagged {STAGE_TAG}={PRE_PRODUCTION}")

    def _choose_socket_dir(self, prefix: str, n: int) -> None:
        longest = f"{prefix}-{n:02d}.sock.fast"
        local = self.workdir / "sockets"
        if len(str(local / longest)) <= _MAX_SOCKET:
            local.mkdir(parents=True, exist_ok=True)
            self.socket_dir, self._own_socket_dir = local, False
        else:  # a deep work directory: the sockets go to a private directory under /tmp
            self.socket_dir, self._own_socket_dir = (
                Path(tempfile.mkdtemp(prefix="ef-twin-", dir="/tmp")),
                True,
            )
            if len(str(self.socket_dir / longest)) > _MAX_SOCKET:
                raise InvalidArgument(f"twin names starting {prefix!r} are too long for a Unix socket path")

    def _socket(self, name: str) -> str:
        assert self.socket_dir is not None
        return f"unix://{self.socket_dir / (name + '.sock')}"

    def _enrol_all(self, server_url: str) -> None:
        """Register the twins' devices (or reuse those enrolled in a previous run), enrol each."""
        from edgefleet.device.https import enroller
        from edgefleet.device.identity import IDENTITY_FILE, enroll, identity_dir

        assert self._op is not None and self.device_class is not None and self.fleet is not None
        n = len(self.twins)
        tags = {DEVICE_CLASS_TAG: self.device_class.name, TWIN_TAG: "true"}
        enrol = enroller(None)  # the one-time token pins the fleet CA; the server's own CA comes with it
        registered: dict[str, str] = {}
        new = [t for t in self.twins if not self._registered(t.name)]
        if new:
            for entry in self._op.register_devices(
                self.fleet, [{"DeviceName": t.name} for t in new], tags=tags
            ):
                registered[entry["DeviceName"]] = entry["EnrolmentToken"]
        for twin in self.twins:
            state_dir = twin.directory / "state"
            enrolled = (identity_dir(state_dir) / IDENTITY_FILE).exists()
            token = registered.get(twin.name)
            if token is None and enrolled:
                self.say(f"twin {twin.index}/{n} {twin.name}: enrolled in an earlier run (identity kept)")
                continue
            if token is None:  # registered before, but its identity is not here: enrol it anew
                token = self._op.new_enrolment_token(twin.name)["EnrolmentToken"]
            twin.directory.mkdir(parents=True, exist_ok=True)
            identity = enroll(state_dir, server_url, token, enrol, force=enrolled)
            self.say(
                f"twin {twin.index}/{n} {twin.name}: enrolled (key, CSR, certificate; device endpoint "
                f"{identity.device_url})"
            )

    def _registered(self, name: str) -> bool:
        assert self._op is not None
        try:
            device = self._op.describe_device(name)
        except NotFound:
            return False
        if device.get("DeviceFleetName") != self.fleet:
            raise AlreadyExists(
                f"device {name} is registered in fleet {device.get('DeviceFleetName')}, not {self.fleet}"
            )
        return True

    def _launch(self, twin: Twin, timing: TwinTiming) -> None:
        assert self.device_class is not None and self.fleet is not None
        spec = TwinSpec(
            name=twin.name,
            fleet=self.fleet,
            directory=str(twin.directory),
            agent_address=twin.agent_address,
            trust_dir=str(self.trust_dir),
            device_class=self.device_class.name,
            arch=self.device_class.arch,
            heartbeat_interval_seconds=timing.heartbeat_interval_seconds,
            poll_interval_seconds=timing.poll_interval_seconds,
            health_interval_seconds=timing.health_interval_seconds,
        )
        path = spec.write()
        (twin.directory / "status.json").unlink(missing_ok=True)
        if self._zygote is not None:
            pid = self._zygote.spawn(path)
            twin.pid, twin.started = pid, _create_time(pid)
            return
        command = [*self.device_class.python, "-m", "edgefleet.twin.process", str(path), str(os.getpid())]
        with (twin.directory / LOG_FILE).open("ab") as out:
            twin.proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=twin_environment(),
            )
        twin.pid, twin.started = twin.proc.pid, _create_time(twin.proc.pid)

    def _wait_running(self, timeout: float) -> None:
        n = len(self.twins)
        waiting = list(self.twins)
        deadline = time.monotonic() + timeout
        while waiting:
            for twin in list(waiting):
                status = read_status(twin.directory) or {}
                phase = status.get("phase")
                if phase == "running":
                    waiting.remove(twin)
                    self.say(
                        f"twin {twin.index}/{n} {twin.name}: running (pid {twin.pid}, agent {twin.agent_address})"
                    )
                elif phase == "failed" or not twin.alive():
                    reason = status.get("error") or f"its process exited; see {twin.directory / LOG_FILE}"
                    raise FailedPrecondition(f"twin {twin.name} did not start: {reason}")
            if waiting and time.monotonic() > deadline:
                raise DeadlineExceeded(
                    f"timed out after {timeout:g} s waiting for twins {', '.join(t.name for t in waiting)} to run"
                )
            time.sleep(0.1)

    # -- heartbeats and status ------------------------------------------------------------------
    def heartbeats(self, client: FleetClient | None = None) -> dict[str, str | None]:
        """Each twin's LatestHeartbeat as the server has it (None: none yet)."""
        op = client or self._op
        if op is None:
            raise FailedPrecondition("no operator client: give one to see the twins' heartbeats")
        seen = {d["DeviceName"]: d.get("LatestHeartbeat") for d in op.list_devices(fleet=self.fleet)}
        return {t.name: seen.get(t.name) for t in self.twins}

    def wait_heartbeats(self, timeout: float = 120.0) -> dict[str, str]:
        """Wait until the server has a heartbeat of every twin sent since :meth:`start` (a device
        reused from an earlier run has older ones); each twin's LatestHeartbeat."""
        n = len(self.twins)
        told: set[str] = set()

        def all_beat() -> dict[str, str] | None:
            for twin in self.twins:
                if not twin.alive():
                    raise FailedPrecondition(f"twin {twin.name} exited; see {twin.directory / LOG_FILE}")
            beats = self.heartbeats()
            fresh = {k: v for k, v in beats.items() if v is not None and v != self._beats_before.get(k)}
            for twin in self.twins:
                if twin.name in fresh and twin.name not in told:
                    told.add(twin.name)
                    self.say(f"twin {twin.index}/{n} {twin.name}: heartbeat {fresh[twin.name]}")
            return fresh if len(fresh) == n else None

        result: dict[str, str] = _wait(all_beat, "a heartbeat from every twin", timeout, interval=0.25)
        self.phase = "ready"
        self._save()
        return result

    def status(self, client: FleetClient | None = None) -> list[TwinStatus]:
        """Each twin's pid, phase, last heartbeat (when a client is at hand) and loaded models."""
        from edgefleet.client import AgentClient

        beats: dict[str, str | None] = {}
        heartbeat_error: str | None = None
        if client is not None or self._op is not None:
            try:
                beats = self.heartbeats(client)
            except EdgefleetError as exc:
                heartbeat_error = f"no heartbeats from the server: {exc}"
        out: list[TwinStatus] = []
        for twin in self.twins:
            recorded = read_status(twin.directory) or {}
            alive = twin.alive()
            phase = str(recorded.get("phase", "unknown")) if alive else "gone"
            models: list[str] | None = None
            handles: dict[str, str] = {}
            if alive:
                try:
                    with AgentClient(twin.agent_address, timeout=5, shm_threshold=None) as agent:
                        models = sorted(m.name for m in agent.list())
                        handles = agent.handles()
                except EdgefleetError:
                    models = None
            out.append(
                TwinStatus(
                    twin.name,
                    twin.pid if alive else None,
                    phase,
                    twin.agent_address,
                    beats.get(twin.name),
                    models,
                    handles,
                    recorded.get("error") or heartbeat_error,
                )
            )
        return out

    # -- stop -----------------------------------------------------------------------------------
    def stop(self, timeout: float = 60.0) -> dict[str, int | None]:
        """SIGTERM every twin and wait (SIGKILL after ``timeout`` s); each twin's exit code (None
        when the process was not this one's child). Leaves no twin process behind."""
        self.phase = "stopping"
        for twin in self.twins:
            if twin.alive() and twin.pid is not None:
                try:
                    os.kill(twin.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for twin in self.twins:
            while twin.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if twin.alive() and twin.pid is not None:
                log.warning(
                    "twin %s (pid %d) did not stop within %g s; killing it", twin.name, twin.pid, timeout
                )
                try:
                    os.kill(twin.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _wait(lambda t=twin: not t.alive(), f"twin {twin.name} to die", 30)  # type: ignore[misc]
            code = self._exit_code(twin)
            codes[twin.name] = self._codes.get(twin.name) if code is None else code
        self._codes = codes
        self._stop_zygote(timeout)
        if self._own_socket_dir and self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        self.state_path.unlink(missing_ok=True)
        if self._op is not None and self._owns_op:
            self._op.close()
            self._op = None
        return codes

    @property
    def zygote_pid(self) -> int | None:
        """The pid of the zygote the twins were forked from (None: each twin is its own interpreter)."""
        return self._zygote_pid[0] if self._zygote_pid else None

    def _exit_code(self, twin: Twin) -> int | None:
        if twin.proc is not None:
            return twin.proc.wait()
        if self._zygote is None or twin.pid is None:
            return None
        deadline = time.monotonic() + 10  # the zygote reports the exit as soon as it reaped the twin
        while (code := self._zygote.exit_code(twin.pid)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return code

    def _stop_zygote(self, timeout: float) -> None:
        if self._zygote is not None:
            self._zygote.close(timeout)
            self._zygote = None
        elif self._zygote_pid is not None and _same_process(*self._zygote_pid):
            try:  # another process's zygote, left behind: SIGTERM stops it (and any twin it still has)
                psutil.Process(self._zygote_pid[0]).terminate()
                psutil.Process(self._zygote_pid[0]).wait(timeout)
            except psutil.Error:
                pass
        self._zygote_pid = None

    def processes(self) -> list[psutil.Process]:
        """The twins' live processes (for measurements)."""
        found = []
        for twin in self.twins:
            if twin.alive() and twin.pid is not None:
                try:
                    found.append(psutil.Process(twin.pid))
                except psutil.Error:
                    pass
        return found

    def __enter__(self) -> TwinFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
