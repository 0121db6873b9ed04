"""What the daemon remembers across restarts: installed models, history, the in-flight journal.

Everything lives in one JSON file (``<state_dir>/state.json``), replaced atomically on every change,
so a crash or power loss leaves either the state before a change or the state after it:

- ``installed`` — handle -> the model serving it (agent alias, package, the deployment that put it
  there). This is the *local desired state*: after a reboot the daemon loads exactly these, with
  or without a server.
- ``managed`` — every agent alias the daemon may have loaded (written *before* a load), so that
  clean-up after a crash can find versions nobody serves any more.
- ``journal`` — the deployment being applied or rolled back: its plan, every step's status and
  what was installed before. Present only while a deployment is in flight.
- ``history`` — finished deployments (bounded): what each handle served before and after, the
  result, and whether the server acknowledged it (unsent results are the result queue).
- ``watches`` — deployments whose health gate is still observing the device.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from edgefleet.core.deviceplane import Deployment, PackageRef, Result, parse_timestamp, timestamp
from edgefleet.core.errors import FailedPrecondition
from edgefleet.core.files import read_json, write_json_atomic

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
STATE_FORMAT = 1


@dataclass(frozen=True)
class InstalledModel:
    """A model version serving a handle."""

    handle: str
    model_name: str
    model_version: str
    #: the agent alias it is loaded under
    alias: str
    #: where the package came from and its digest (the package cache key)
    package: PackageRef
    #: the deployment that installed it
    deployment: str = ""

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "handle": self.handle,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "alias": self.alias,
            "package": {
                "url": self.package.url,
                "sha256": self.package.sha256,
                "sha1": self.package.sha1,
                "size": self.package.size,
            },
            "deployment": self.deployment,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> InstalledModel:
        """Read the stored form."""
        package = raw["package"]
        return cls(
            handle=raw["handle"],
            model_name=raw["model_name"],
            model_version=raw["model_version"],
            alias=raw["alias"],
            package=PackageRef(
                url=package["url"],
                sha256=package.get("sha256"),
                sha1=package.get("sha1"),
                size=package.get("size"),
            ),
            deployment=raw.get("deployment", ""),
        )


def _models_to_json(models: dict[str, InstalledModel | None]) -> dict[str, Any]:
    return {h: (None if m is None else m.to_json()) for h, m in models.items()}


def _models_from_json(raw: dict[str, Any]) -> dict[str, InstalledModel | None]:
    return {h: (None if m is None else InstalledModel.from_json(m)) for h, m in raw.items()}


class StepKind(enum.StrEnum):
    """The kinds of plan steps (see :mod:`edgefleet.device.plan`)."""

    FETCH = "FETCH"
    STAGE = "STAGE"
    LOAD = "LOAD"
    SMOKE = "SMOKE"
    SWITCH = "SWITCH"
    UNLOAD = "UNLOAD"


class StepStatus(enum.StrEnum):
    """Where a step is. STARTED means "may have had an effect": a crash there is undone like DONE."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    DONE = "DONE"
    UNDONE = "UNDONE"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Step:
    """One undoable step of a plan.

    ``model`` is the version the step acts on (fetch/stage/load/smoke it, switch the handle to it,
    unload it); ``previous`` is, for SWITCH, what the handle served before (None: nothing).
    """

    kind: StepKind
    handle: str
    model: InstalledModel | None
    previous: InstalledModel | None = None
    status: StepStatus = StepStatus.PENDING
    error: str = ""

    def describe(self) -> str:
        """A short human description."""
        if self.kind is StepKind.SWITCH:
            old = self.previous.alias if self.previous else "nothing"
            new = self.model.alias if self.model else "nothing"
            return f"switch {self.handle}: {old} -> {new}"
        target = self.model.alias if self.model else "?"
        if self.kind in (StepKind.FETCH, StepKind.STAGE) and self.model is not None:
            target = f"{self.model.model_name} {self.model.model_version}"
        return f"{self.kind.value.lower()} {target}"

    def with_status(self, status: StepStatus, error: str = "") -> Step:
        """A copy in ``status``."""
        return replace(self, status=status, error=error or self.error)

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "kind": self.kind.value,
            "handle": self.handle,
            "model": None if self.model is None else self.model.to_json(),
            "previous": None if self.previous is None else self.previous.to_json(),
            "status": self.status.value,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Step:
        """Read the stored form."""
        return cls(
            kind=StepKind(raw["kind"]),
            handle=raw["handle"],
            model=None if raw.get("model") is None else InstalledModel.from_json(raw["model"]),
            previous=None if raw.get("previous") is None else InstalledModel.from_json(raw["previous"]),
            status=StepStatus(raw["status"]),
            error=raw.get("error", ""),
        )


class JournalKind(enum.StrEnum):
    """What the in-flight work is."""

    #: apply a deployment
    APPLY = "APPLY"
    #: undo a deployment that was applied (asked by the server or its health gate)
    ROLLBACK = "ROLLBACK"


class Phase(enum.StrEnum):
    """The lifecycle of a journal: forward, then (on failure or interruption) undoing."""

    #: running the plan's steps
    EXECUTING = "EXECUTING"
    #: undoing after a failure; the outcome is a failed result
    UNDOING = "UNDOING"
    #: undoing after an interruption (crash); the deployment is applied again afterwards
    RECOVERING = "RECOVERING"


@dataclass(frozen=True)
class Journal:
    """A deployment in flight, as persisted after every step."""

    deployment: Deployment
    kind: JournalKind
    steps: tuple[Step, ...]
    #: what each handle the plan touches served before it started
    before: dict[str, InstalledModel | None]
    #: what each touched handle serves once the plan completes
    after: dict[str, InstalledModel | None]
    started_at: datetime
    phase: Phase = Phase.EXECUTING
    #: how many times this deployment was started (a crash counts as a failed attempt)
    attempt: int = 1
    #: why the journal is undoing
    failure: str = ""

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "deployment": self.deployment.to_wire(),
            "kind": self.kind.value,
            "steps": [s.to_json() for s in self.steps],
            "before": _models_to_json(self.before),
            "after": _models_to_json(self.after),
            "started_at": timestamp(self.started_at),
            "phase": self.phase.value,
            "attempt": self.attempt,
            "failure": self.failure,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Journal:
        """Read the stored form."""
        started = parse_timestamp(raw["started_at"])
        assert started is not None
        return cls(
            deployment=Deployment.from_wire(raw["deployment"]),
            kind=JournalKind(raw["kind"]),
            steps=tuple(Step.from_json(s) for s in raw["steps"]),
            before=_models_from_json(raw["before"]),
            after=_models_from_json(raw["after"]),
            started_at=started,
            phase=Phase(raw.get("phase", "EXECUTING")),
            attempt=int(raw.get("attempt", 1)),
            failure=raw.get("failure", ""),
        )


@dataclass(frozen=True)
class HistoryEntry:
    """A finished deployment (applied or rolled back) on this device."""

    deployment: str
    kind: JournalKind
    result: Result
    message: str
    before: dict[str, InstalledModel | None]
    after: dict[str, InstalledModel | None]
    started_at: datetime
    finished_at: datetime
    #: the server acknowledged the result
    sent: bool = False

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "deployment": self.deployment,
            "kind": self.kind.value,
            "result": self.result.value,
            "message": self.message,
            "before": _models_to_json(self.before),
            "after": _models_to_json(self.after),
            "started_at": timestamp(self.started_at),
            "finished_at": timestamp(self.finished_at),
            "sent": self.sent,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> HistoryEntry:
        """Read the stored form."""
        started = parse_timestamp(raw["started_at"])
        finished = parse_timestamp(raw["finished_at"])
        assert started is not None and finished is not None
        return cls(
            deployment=raw["deployment"],
            kind=JournalKind(raw["kind"]),
            result=Result(raw["result"]),
            message=raw.get("message", ""),
            before=_models_from_json(raw["before"]),
            after=_models_from_json(raw["after"]),
            started_at=started,
            finished_at=finished,
            sent=bool(raw.get("sent", False)),
        )


@dataclass(frozen=True)
class Watch:
    """A deployment whose health gate observes the device: the counters at activation."""

    deployment: str
    #: alias -> (requests, errors) right after activation
    baseline: dict[str, tuple[int, int]]
    since: datetime

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "deployment": self.deployment,
            "baseline": {a: list(v) for a, v in self.baseline.items()},
            "since": timestamp(self.since),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Watch:
        """Read the stored form."""
        since = parse_timestamp(raw["since"])
        assert since is not None
        return cls(
            deployment=raw["deployment"],
            baseline={a: (int(v[0]), int(v[1])) for a, v in raw["baseline"].items()},
            since=since,
        )


@dataclass
class DeviceState:
    """The daemon's persistent state (see the module docstring)."""

    installed: dict[str, InstalledModel] = field(default_factory=dict)
    managed: set[str] = field(default_factory=set)
    journal: Journal | None = None
    history: list[HistoryEntry] = field(default_factory=list)
    watches: dict[str, Watch] = field(default_factory=dict)
    #: deployment name -> interrupted attempts so far (a crash mid-deployment)
    interrupted: dict[str, int] = field(default_factory=dict)
    #: grows by one per loaded version: makes every agent alias unique
    generation: int = 0

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "format": STATE_FORMAT,
            "installed": {h: m.to_json() for h, m in sorted(self.installed.items())},
            "managed": sorted(self.managed),
            "journal": None if self.journal is None else self.journal.to_json(),
            "history": [e.to_json() for e in self.history],
            "watches": {d: w.to_json() for d, w in self.watches.items()},
            "interrupted": dict(self.interrupted),
            "generation": self.generation,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DeviceState:
        """Read the stored form."""
        if raw.get("format") != STATE_FORMAT:
            raise FailedPrecondition(f"device state format {raw.get('format')!r} is not {STATE_FORMAT}")
        return cls(
            installed={h: InstalledModel.from_json(m) for h, m in raw.get("installed", {}).items()},
            managed=set(raw.get("managed", [])),
            journal=None if raw.get("journal") is None else Journal.from_json(raw["journal"]),
            history=[HistoryEntry.from_json(e) for e in raw.get("history", [])],
            watches={d: Watch.from_json(w) for d, w in raw.get("watches", {}).items()},
            interrupted={d: int(n) for d, n in raw.get("interrupted", {}).items()},
            generation=int(raw.get("generation", 0)),
        )

    def last_entry(self, deployment: str) -> HistoryEntry | None:
        """The latest history entry of ``deployment``."""
        for entry in reversed(self.history):
            if entry.deployment == deployment:
                return entry
        return None


class StateStore:
    """The state file, loaded once and saved after every change (thread-safe).

    ``state_dir`` None keeps the state in memory only (simulated devices).
    """

    def __init__(self, state_dir: Path | None) -> None:
        self.path = None if state_dir is None else state_dir / STATE_FILE
        self._lock = threading.RLock()
        raw = None if self.path is None else read_json(self.path)
        try:
            self._state = DeviceState() if raw is None else DeviceState.from_json(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise FailedPrecondition(f"{self.path} is damaged: {exc!r}") from exc

    @property
    def state(self) -> DeviceState:
        """The current state (read it under :meth:`change` when consistency with a write matters)."""
        return self._state

    @contextmanager
    def change(self) -> Iterator[DeviceState]:
        """Mutate the state in the block; it is saved (atomically) when the block ends without error."""
        with self._lock:
            snapshot = self._state.to_json()
            try:
                yield self._state
                self.save()
            except BaseException:
                # memory must never run ahead of the disk: forget the half-made change
                self._state = DeviceState.from_json(snapshot)
                raise

    def save(self) -> None:
        """Write the state file."""
        if self.path is None:
            return
        with self._lock:
            write_json_atomic(self.path, self._state.to_json())

    @contextmanager
    def locked(self) -> Iterator[DeviceState]:
        """Read the state consistently (no save)."""
        with self._lock:
            yield self._state
