"""The heartbeat queue: heartbeats taken while the server is unreachable, sent when it is back.

Bounded (``queue.max_heartbeats``): beyond the bound the oldest heartbeat is dropped and counted,
so a device offline for a month neither fills its disk nor floods the server on reconnection.
Persisted in ``<state_dir>/outbox.json`` (atomic writes), so a reboot while offline loses nothing
queued. Each heartbeat's metrics keep the time they were taken.

Deployment results are queued differently: they live in the state's history until the server
acknowledges them (see :mod:`edgefleet.device.state`), and are never dropped for heartbeats.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from edgefleet.core.deviceplane import Heartbeat
from edgefleet.core.errors import EdgefleetError, FailedPrecondition
from edgefleet.core.files import read_json, write_json_atomic

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.json"


class Outbox:
    """A bounded, persistent FIFO of heartbeats (thread-safe); ``state_dir`` None keeps it in memory."""

    def __init__(self, state_dir: Path | None, max_heartbeats: int) -> None:
        self.path = None if state_dir is None else state_dir / OUTBOX_FILE
        self.max_heartbeats = max_heartbeats
        self._lock = threading.Lock()
        raw = (None if self.path is None else read_json(self.path)) or {}
        try:
            items = [Heartbeat.from_wire(h) for h in raw.get("heartbeats", [])]
        except (KeyError, TypeError, ValueError, EdgefleetError) as exc:
            raise FailedPrecondition(f"{self.path} is damaged: {exc!r}") from exc
        self._items: deque[Heartbeat] = deque(items[-max_heartbeats:])
        #: heartbeats dropped because the queue was full (since the file was created)
        self.dropped = int(raw.get("dropped", 0)) + max(0, len(items) - max_heartbeats)

    def __len__(self) -> int:
        return len(self._items)

    def _save(self) -> None:
        if self.path is None:
            return
        write_json_atomic(
            self.path, {"heartbeats": [h.to_wire() for h in self._items], "dropped": self.dropped}
        )

    def add(self, heartbeat: Heartbeat) -> None:
        """Queue ``heartbeat``, dropping the oldest one if the queue is full."""
        with self._lock:
            self._items.append(heartbeat)
            while len(self._items) > self.max_heartbeats:
                self._items.popleft()
                self.dropped += 1
            self._save()

    def pending(self) -> list[Heartbeat]:
        """The queued heartbeats, oldest first."""
        with self._lock:
            return list(self._items)

    def flush(self, send: Callable[[Heartbeat], None]) -> int:
        """Send queued heartbeats oldest first; returns how many were sent.

        Stops at the first failure and re-raises it; what was sent is removed (and the file saved).
        """
        sent = 0
        with self._lock:
            try:
                while self._items:
                    send(self._items[0])
                    self._items.popleft()
                    sent += 1
            finally:
                if sent:
                    self._save()
        if sent:
            log.info("sent %d queued heartbeat(s)", sent)
        return sent
