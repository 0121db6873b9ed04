"""Stable model handles: the map applications read and a client that follows it.

Applications address a model by a *handle* (``detector``); the agent serves versions under
*aliases* (``detector-2-0-g7``). A hot swap: the daemon loads the new version under a fresh alias,
smoke-tests it, then switches the handle to the new alias, and only then unloads the old alias (the
agent lets running calls on it finish). The switch is published in two places:

- **in the agent**, when it implements the extension ``model-handles``
  (:data:`AGENT_HANDLES_EXTENSION`): ``SetHandle(handle, alias)`` switches atomically, and
  Predict / DescribeModel / CaptureData accept the handle wherever they take a model name, so an
  unmodified Edge Manager application calling ``Predict(name="detector")`` follows the swap with
  no failed call (a call racing the swap is resolved again by the agent).
  :func:`edgefleet.device.agentlink.sync_agent_handles` makes the agent's handles match the
  daemon's; handles live in the agent's memory, so the daemon sets them again after an agent restart;
- **in the handle map** ``<state_dir>/handles.json``, always (for agents without the extension,
  and for applications that resolve handles themselves). An application resolving the handle
  before the switch reaches the old version, after it the new one; a call that resolved just before
  the switch and lands after the unload gets NOT_FOUND, re-reads the map and is retried once on the
  new alias — :class:`HandleClient` does that, so no call fails during a swap either way.

The file (mode 0644, replaced atomically)::

    {"format": 1, "updated": "2030-01-01T12:00:00Z",
     "handles": {"detector": {"alias": "detector-2-0-g7", "model_name": "detector",
                              "model_version": "2.0"}}}

Any language can read it; :class:`HandleMap` is the Python reader (it re-reads the file only when
its modification time, inode or size changed: one ``stat`` per call).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.client.client import AgentClient, Tensors
from edgefleet.core.errors import FailedPrecondition, NotFound
from edgefleet.core.files import write_json_atomic

HANDLES_FILE = "handles.json"
HANDLES_FORMAT = 1
#: the agent extension that resolves handles in the agent (``SetHandle`` / ``RemoveHandle`` / ``ListHandles``)
AGENT_HANDLES_EXTENSION = "model-handles"


@dataclass(frozen=True)
class HandleEntry:
    """What a handle resolves to."""

    alias: str
    model_name: str
    model_version: str


def write_handles(path: Path, handles: Mapping[str, HandleEntry], now: datetime | None = None) -> None:
    """Atomically replace the handle map at ``path``."""
    write_json_atomic(
        path,
        {
            "format": HANDLES_FORMAT,
            "updated": (now or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
            "handles": {
                handle: {"alias": e.alias, "model_name": e.model_name, "model_version": e.model_version}
                for handle, e in sorted(handles.items())
            },
        },
        mode=0o644,
    )


def read_handles(path: Path) -> dict[str, HandleEntry]:
    """The handle map at ``path`` (empty if the file does not exist)."""
    try:
        raw: Any = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"cannot read the handle map {path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != HANDLES_FORMAT:
        raise FailedPrecondition(f"{path} is not a format-{HANDLES_FORMAT} handle map")
    return {
        handle: HandleEntry(str(e["alias"]), str(e.get("model_name", "")), str(e.get("model_version", "")))
        for handle, e in (raw.get("handles") or {}).items()
    }


class HandleMap:
    """Resolves handles through the daemon's handle map, re-reading it when it changes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._key: tuple[int, int, int] | None = None
        self._entries: dict[str, HandleEntry] = {}

    def _refresh(self) -> dict[str, HandleEntry]:
        try:
            st = os.stat(self.path)
            key: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_ino, st.st_size)
        except FileNotFoundError:
            key = None
        with self._lock:
            if key != self._key or key is None:
                self._entries = read_handles(self.path) if key is not None else {}
                self._key = key
            return self._entries

    def entries(self) -> dict[str, HandleEntry]:
        """Every handle and what it resolves to now."""
        return dict(self._refresh())

    def resolve(self, handle: str) -> str:
        """The agent alias serving ``handle`` now; NOT_FOUND if the daemon serves no such handle."""
        entry = self._refresh().get(handle)
        if entry is None:
            raise NotFound(f"no model serves the handle {handle!r} (handle map {self.path})")
        return entry.alias


class HandleClient:
    """An agent client that addresses models by handle and rides through hot swaps.

    >>> client = HandleClient("unix:///run/edgefleet/agent.sock",  # doctest: +SKIP
    ...                       "/var/lib/edgefleet/device/handles.json")
    >>> client.predict("detector", {"image": image})  # doctest: +SKIP
    """

    def __init__(self, agent: AgentClient | str, handles_path: Path | str) -> None:
        self.agent = AgentClient(agent) if isinstance(agent, str) else agent
        self._owns_agent = isinstance(agent, str)
        self.handles = HandleMap(handles_path)

    def predict(self, handle: str, inputs: Tensors) -> dict[str, np.ndarray]:
        """Predict with the version serving ``handle``; retried once if it was swapped mid-call."""
        alias = self.handles.resolve(handle)
        try:
            return self.agent.predict(alias, inputs)
        except NotFound:
            current = self.handles.resolve(handle)
            if current == alias:
                raise
            return self.agent.predict(current, inputs)

    def close(self) -> None:
        """Close the agent client if this object opened it."""
        if self._owns_agent:
            self.agent.close()

    def __enter__(self) -> HandleClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
