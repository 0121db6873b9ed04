"""The device daemon's configuration: every knob declared once, typed, with a default and a line of doc.

``edgefleet device run --config FILE`` reads a TOML file with the tables below (see
docs/device-daemon.md). Unknown tables or keys are an error that lists the known ones.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgefleet.core.errors import InvalidArgument, NotFound


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/edgefleet/device`` when set; /var/lib/edgefleet/device for root; else
    ``~/.local/state/edgefleet/device``."""
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg:
        return Path(xdg) / "edgefleet" / "device"
    if os.geteuid() == 0:
        return Path("/var/lib/edgefleet/device")
    return Path.home() / ".local" / "state" / "edgefleet" / "device"


@dataclass(frozen=True)
class RetryPolicy:
    """How a failing step or request is retried.

    The n-th retry waits ``min(initial_seconds * multiplier ** (n - 1), max_seconds)``; a step is
    given up after ``max_attempts`` failed attempts.
    """

    #: Attempts of one step before it counts as failed (1 = no retry).
    max_attempts: int = 4
    #: Wait before the first retry.
    initial_seconds: float = 1.0
    #: Growth of the wait per failed attempt.
    multiplier: float = 2.0
    #: Longest wait between two attempts.
    max_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidArgument("retry.max_attempts must be at least 1")
        if self.initial_seconds < 0 or self.max_seconds < self.initial_seconds or self.multiplier < 1:
            raise InvalidArgument(
                "retry needs initial_seconds >= 0, max_seconds >= initial_seconds and multiplier >= 1"
            )

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed attempt."""
        return float(min(self.initial_seconds * self.multiplier ** max(failures - 1, 0), self.max_seconds))


@dataclass(frozen=True)
class Timing:
    """How often the daemon talks to the server (seconds)."""

    #: Interval between two heartbeats.
    heartbeat_interval_seconds: float = 30.0
    #: Interval between two GetDeployments polls (and local reconcile passes).
    poll_interval_seconds: float = 30.0
    #: Interval between two health reports while a deployment's health gate observes the device.
    health_interval_seconds: float = 10.0
    #: Deadline of one HTTP request to the server.
    request_timeout_seconds: float = 30.0
    #: Length of a live model summary window: how often the daemon takes the agent's summaries
    #: (drift monitoring) and sends them with the next heartbeat.
    summary_window_seconds: float = 300.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise InvalidArgument(f"timing.{f.name} must be positive")


@dataclass(frozen=True)
class AgentSettings:
    """How the daemon reaches the device agent."""

    #: Agent socket (``unix:///run/edgefleet/agent.sock``); when spawning, where the child serves.
    address: str = ""
    #: Start ``edgefleet agent`` as a child process (restarted if it dies) instead of connecting.
    spawn: bool = False
    #: Agent config file for the child; default: one generated under ``state_dir`` with ``trust_dir``.
    config: Path | None = None
    #: Deadline of agent calls that load or unload models.
    call_timeout_seconds: float = 300.0
    #: Deadline of the smoke-test Predict on a newly loaded version.
    smoke_timeout_seconds: float = 30.0
    #: How long to wait for the agent to become ready at start and after a restart.
    ready_timeout_seconds: float = 60.0


@dataclass(frozen=True)
class QueueLimits:
    """Bounds of the outbox (what waits for the server while it is unreachable)."""

    #: Heartbeats kept while offline; the oldest are dropped beyond this.
    max_heartbeats: int = 120
    #: Deployment results kept while offline; the oldest are dropped beyond this (never expected).
    max_results: int = 200
    #: Model summary windows kept (in memory) until the server takes them; the oldest are dropped beyond.
    max_summary_windows: int = 256

    def __post_init__(self) -> None:
        if self.max_heartbeats < 1 or self.max_results < 1 or self.max_summary_windows < 1:
            raise InvalidArgument("queue bounds must be at least 1")


@dataclass(frozen=True)
class DeploymentSettings:
    """How deployments are applied."""

    #: Run a Predict with zeros on every newly loaded version before switching its handle.
    smoke_test: bool = True
    #: A deployment interrupted this many times (daemon or device crashes) is given up and rolled back.
    max_interrupted_attempts: int = 3
    #: Past deployments whose previous versions are kept on disk for a server-requested rollback.
    keep_history: int = 5
    #: Bytes per read while downloading a package.
    download_chunk_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class CertificateSettings:
    """When the device certificate is renewed (see docs/device-daemon.md §1)."""

    #: Renew once this fraction of the certificate's lifetime has passed (0 < fraction < 1).
    renew_after_fraction: float = 2 / 3
    #: After the server refused a renewal, wait this long before asking again.
    retry_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_after_fraction < 1:
            raise InvalidArgument("certificate.renew_after_fraction must be between 0 and 1")
        if self.retry_seconds <= 0:
            raise InvalidArgument("certificate.retry_seconds must be positive")


@dataclass(frozen=True)
class DaemonConfig:
    """Everything ``edgefleet device run`` reads at start-up."""

    #: Directory of trusted model-signing root certificates (the device trust store).
    trust_dir: Path
    #: Where identity, packages, state, journal, outbox and the handle map live.
    state_dir: Path = field(default_factory=default_state_dir)
    #: Device endpoint URL; default: the one stored at enrolment.
    server_url: str = ""
    #: Accelerator reported to the server (picks packages built for it); ``none`` for CPU only.
    accelerator: str = "none"
    #: How the daemon reaches (or starts) the device agent.
    agent: AgentSettings = field(default_factory=AgentSettings)
    timing: Timing = field(default_factory=Timing)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    queue: QueueLimits = field(default_factory=QueueLimits)
    deployment: DeploymentSettings = field(default_factory=DeploymentSettings)
    certificate: CertificateSettings = field(default_factory=CertificateSettings)

    def __post_init__(self) -> None:
        if not self.agent.address and not self.agent.spawn:
            raise InvalidArgument("agent.address is required unless agent.spawn = true")

    @property
    def agent_address(self) -> str:
        """Where the agent serves: the configured address or, when spawning, a socket in ``state_dir``."""
        if self.agent.address:
            return self.agent.address
        return f"unix://{self.state_dir / 'agent.sock'}"


_SECTIONS: dict[str, type[Any]] = {
    "agent": AgentSettings,
    "timing": Timing,
    "retry": RetryPolicy,
    "queue": QueueLimits,
    "deployment": DeploymentSettings,
    "certificate": CertificateSettings,
}
_TOP = ("trust_dir", "state_dir", "server_url", "accelerator")


def load_config(path: Path) -> DaemonConfig:
    """Read a daemon TOML config; NOT_FOUND if missing, INVALID_ARGUMENT with the reason if bad."""
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise NotFound(f"daemon config file {path} does not exist") from exc
    except OSError as exc:
        raise InvalidArgument(f"cannot read daemon config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"daemon config file {path} is not valid TOML: {exc}") from exc
    return config_from_dict(raw, base_dir=path.parent)


def config_from_dict(raw: dict[str, Any], *, base_dir: Path | None = None) -> DaemonConfig:
    """Build a config from ``{daemon: {...}, agent: {...}, timing: {...}, ...}``.

    Relative paths are taken relative to ``base_dir`` (the config file's folder).
    """
    known = {"daemon", *_SECTIONS}
    extra = set(raw) - known
    if extra:
        raise InvalidArgument(
            f"unknown daemon config tables: {', '.join(sorted(extra))} (known: {', '.join(sorted(known))})"
        )
    top_raw = _table(raw, "daemon")
    top: dict[str, Any] = {}
    for key, value in top_raw.items():
        if key not in _TOP:
            raise InvalidArgument(f"unknown key daemon.{key} (known: {', '.join(_TOP)})")
        top[key] = _path(f"daemon.{key}", value, base_dir) if key.endswith("_dir") else _str(key, value)
    if "trust_dir" not in top:
        raise InvalidArgument("daemon config needs daemon.trust_dir (the model-signing trust store)")
    sections: dict[str, Any] = {}
    for name, kind in _SECTIONS.items():
        table = _table(raw, name)
        known_fields = {f.name: f for f in fields(kind)}
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known_fields:
                raise InvalidArgument(f"unknown key {name}.{key} (known: {', '.join(sorted(known_fields))})")
            values[key] = _convert(f"{name}.{key}", value, str(known_fields[key].type), base_dir)
        try:
            sections[name] = kind(**values)
        except TypeError as exc:  # pragma: no cover - keys are checked above
            raise InvalidArgument(f"daemon config table {name}: {exc}") from exc
    return DaemonConfig(**top, **sections)


def _table(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise InvalidArgument(f"daemon config {name!r} must be a table")
    return value


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"daemon config key {key!r} must be a string (got {value!r})")
    return value


def _path(key: str, value: Any, base_dir: Path | None) -> Path:
    path = Path(os.path.expanduser(_str(key, value)))
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def _convert(key: str, value: Any, annotation: str, base_dir: Path | None) -> Any:
    if "Path" in annotation:
        return _path(key, value, base_dir)
    if annotation == "bool":
        if not isinstance(value, bool):
            raise InvalidArgument(f"daemon config key {key!r} must be true or false (got {value!r})")
        return value
    if annotation == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"daemon config key {key!r} must be an integer (got {value!r})")
        return value
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgument(f"daemon config key {key!r} must be a number (got {value!r})")
        return float(value)
    return _str(key, value)
