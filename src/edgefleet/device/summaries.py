"""Live model summaries per window, from the agent to the heartbeats (drift monitoring).

Once per ``timing.summary_window_seconds`` the daemon takes every loaded model's live summary
from the agent and starts new windows there (``GetModelSummaries`` with ``reset``, extension
``model-summaries``); the windows then ride on heartbeats until the server has taken them. While
the server is unreachable they wait here, in memory and bounded (``queue.max_summary_windows``,
the oldest dropped beyond it, counted): a heartbeat queued on disk for later goes without them, so
the outbox stays small, and the next heartbeat that reaches the server carries them. A heartbeat
carries at most :data:`~edgefleet.core.deviceplane.MAX_HEARTBEAT_SUMMARIES` windows and
:data:`~edgefleet.core.deviceplane.MAX_HEARTBEAT_SUMMARY_BYTES` of them, oldest first; the rest
go with the following ones.

An agent without the extension, with summaries off, or failing, costs nothing but a warning (said
once until the agent answers again): heartbeats go on without summaries.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from edgefleet.client import LiveSummary
from edgefleet.core.deviceplane import (
    MAX_HEARTBEAT_SUMMARIES,
    MAX_HEARTBEAT_SUMMARY_BYTES,
    MAX_SUMMARY_BYTES,
    SummaryWindow,
    summary_bytes,
)
from edgefleet.core.errors import Code, EdgefleetError

log = logging.getLogger(__name__)


class SummaryWindows:
    """The windows taken from the agent and not yet accepted by the server.

    ``take_from_agent`` is the agent call (``lambda: api.model_summaries(reset=True)``); ``monotonic``
    and ``now`` are the daemon's clocks.
    """

    def __init__(
        self,
        take_from_agent: Callable[[], Sequence[LiveSummary]],
        window_seconds: float,
        *,
        max_pending: int,
        monotonic: Callable[[], float],
        now: Callable[[], datetime],
    ) -> None:
        self._take = take_from_agent
        self.window_seconds = window_seconds
        self._monotonic = monotonic
        self._now = now
        self._due = monotonic() + window_seconds
        self._pending: deque[tuple[SummaryWindow, int]] = deque()
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._unavailable = False  # the agent gave no summaries last time (warned once)
        #: windows dropped: beyond ``max_pending``, too large, or refused by the server
        self.dropped = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def for_heartbeat(self) -> tuple[SummaryWindow, ...]:
        """The windows the next heartbeat carries (taking a new set from the agent when one is due)."""
        with self._lock:
            if self._monotonic() >= self._due:
                self._due = self._monotonic() + self.window_seconds
                self._collect()
            chosen: list[SummaryWindow] = []
            total = 0
            for window, size in self._pending:
                if len(chosen) == MAX_HEARTBEAT_SUMMARIES or (
                    chosen and total + size > MAX_HEARTBEAT_SUMMARY_BYTES
                ):
                    break
                chosen.append(window)
                total += size
            return tuple(chosen)

    def accepted(self, windows: Sequence[SummaryWindow]) -> None:
        """The server stored ``windows``: forget them."""
        if windows:
            with self._lock:
                self._forget(windows)

    def refused(self, windows: Sequence[SummaryWindow], exc: EdgefleetError) -> None:
        """The server refused the heartbeat that carried ``windows``. An INVALID_ARGUMENT would come
        back on every retry, so those windows are dropped (said); any other refusal keeps them."""
        if windows and exc.code is Code.INVALID_ARGUMENT:
            with self._lock:
                self._forget(windows)
                self.dropped += len(windows)
            log.error("the server refused %d model summary windows, dropped: %s", len(windows), exc)

    def _forget(self, windows: Sequence[SummaryWindow]) -> None:
        ids = {id(w) for w in windows}
        self._pending = deque(item for item in self._pending if id(item[0]) not in ids)

    def _collect(self) -> None:
        try:
            live = self._take()
        except EdgefleetError as exc:
            if not self._unavailable:
                log.warning("no model summaries from the agent, heartbeats go on without them: %s", exc)
            self._unavailable = True
            return
        if self._unavailable:
            log.info("the agent gives model summaries again")
        self._unavailable = False
        end = self._now()
        for item in live:
            if item.calls <= 0:
                continue
            size = summary_bytes(item.summary)
            if size > MAX_SUMMARY_BYTES:
                self.dropped += 1
                log.warning(
                    "model %s %s: a summary of %d bytes is over the limit of %d, dropped",
                    item.model_name,
                    item.model_version,
                    size,
                    MAX_SUMMARY_BYTES,
                )
                continue
            window = SummaryWindow(
                model_name=item.model_name,
                model_version=item.model_version,
                window_start=min(datetime.fromtimestamp(item.window_start, UTC), end),
                window_end=end,
                calls=item.calls,
                summary=item.summary,
            )
            self._pending.append((window, size))
        excess = len(self._pending) - self._max_pending
        if excess > 0:
            for _ in range(excess):
                self._pending.popleft()
            self.dropped += excess
            log.warning(
                "%d model summary windows waiting for the server were dropped (bound %d)",
                excess,
                self._max_pending,
            )
