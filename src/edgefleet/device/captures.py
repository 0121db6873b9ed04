"""What each heartbeat says about captured data: the agent's capture backlog and the objects the
store confirmed since the last heartbeat the server accepted.

The agent keeps an upload log in its capture spool (extension ``capture-uploads``); the daemon
reads it after a cursor and sends the entries in the heartbeat's ``Capture`` (at most
:data:`~edgefleet.core.deviceplane.MAX_HEARTBEAT_UPLOADS` per heartbeat; the rest follow in the
next ones). The cursor lives in ``<state_dir>/capture-cursor.json`` (atomic, durable writes) and
moves only once the server accepted a heartbeat carrying the entries: a heartbeat that fails is
queued without its uploads, and the next heartbeat sends them again. So each upload reaches the
server once, or, if the daemon dies between the server's answer and the cursor's write, twice (the
server's capture index is keyed by object key). The cursor carries the log's epoch: an agent with a
new spool (another log) is read from its start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from edgefleet.core.deviceplane import MAX_HEARTBEAT_UPLOADS, CaptureReport, Heartbeat
from edgefleet.core.errors import Code, EdgefleetError, FailedPrecondition, InvalidArgument
from edgefleet.core.files import read_json, write_json_atomic
from edgefleet.device.agentlink import AgentConnection

log = logging.getLogger(__name__)

CURSOR_FILE = "capture-cursor.json"
#: The agent extension this needs (agents without it: heartbeats carry no ``Capture``).
CAPTURE_UPLOADS_EXTENSION = "capture-uploads"


@dataclass(frozen=True)
class UploadCursor:
    """Where the daemon is in the agent's upload log: entries up to ``after`` reached the server."""

    epoch: str = ""
    after: int = 0


class CaptureReporter:
    """Builds each heartbeat's :class:`CaptureReport` and keeps the upload-log cursor.

    ``state_dir`` None keeps the cursor in memory only (simulated devices). A damaged cursor file
    raises FAILED_PRECONDITION (move it away to start afresh: uploads are then sent again).
    """

    def __init__(
        self,
        agent: AgentConnection,
        state_dir: Path | None,
        *,
        max_uploads: int = MAX_HEARTBEAT_UPLOADS,
    ) -> None:
        if not 1 <= max_uploads <= MAX_HEARTBEAT_UPLOADS:
            raise InvalidArgument(
                f"capture uploads per heartbeat must be between 1 and {MAX_HEARTBEAT_UPLOADS}"
            )
        self._agent = agent
        self.path = None if state_dir is None else state_dir / CURSOR_FILE
        self.max_uploads = max_uploads
        self.cursor = self._load()
        #: the cursor the last built report reaches, committed by :meth:`accepted`, and its uploads
        self._pending: UploadCursor | None = None
        self._pending_uploads = 0
        self._warned = False

    def _load(self) -> UploadCursor:
        raw = None if self.path is None else read_json(self.path)
        if raw is None:
            return UploadCursor()
        epoch, after = (raw.get("epoch"), raw.get("after")) if isinstance(raw, dict) else (None, None)
        if not isinstance(epoch, str) or not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise FailedPrecondition(
                f"{self.path} is damaged (want {{'epoch': str, 'after': int >= 0}}, got {raw!r}); "
                "move it away to start afresh"
            )
        return UploadCursor(epoch, after)

    def _warn_once(self, why: str) -> None:
        if not self._warned:
            log.warning("heartbeats carry no capture figures: %s", why)
            self._warned = True

    def report(self) -> CaptureReport | None:
        """The backlog and the uploads after the cursor, or None when the agent cannot say
        (no ``capture-uploads`` extension: a WARNING, once; the agent unreachable: nothing)."""
        self._pending = None
        api = self._agent.api
        try:
            if CAPTURE_UPLOADS_EXTENSION not in api.server_metadata().extensions:
                self._warn_once(f"the agent does not offer the {CAPTURE_UPLOADS_EXTENSION} extension")
                return None
            page = api.capture_uploads(after=self.cursor.after, limit=self.max_uploads)
            if page.epoch != self.cursor.epoch and self.cursor.after:
                log.warning(
                    "the agent's capture upload log is a new one (epoch %s, was %s): reporting it from its start",
                    page.epoch,
                    self.cursor.epoch,
                )
                page = api.capture_uploads(after=0, limit=self.max_uploads)
        except EdgefleetError as exc:
            if exc.code is Code.UNIMPLEMENTED:
                self._warn_once(f"the agent refused GetCaptureUploads: {exc}")
            else:
                log.debug("no capture figures for this heartbeat: %s", exc)
            return None
        self._warned = False
        after = self.cursor.after if page.epoch == self.cursor.epoch else 0
        if page.report.uploads and page.first_log_id > after + 1:
            log.warning(
                "%d capture upload(s) left the agent's log before they were reported (it keeps the last "
                "entries only); the server's capture index misses them",
                page.first_log_id - after - 1,
            )
        self._pending = UploadCursor(page.epoch, page.next_after)
        self._pending_uploads = len(page.report.uploads)
        return page.report

    def accepted(self) -> None:
        """The server accepted the heartbeat of the last :meth:`report`: move the cursor past its uploads."""
        pending, self._pending = self._pending, None
        if pending is None or pending == self.cursor:
            return
        if self.path is not None:
            write_json_atomic(self.path, {"epoch": pending.epoch, "after": pending.after})
        self.cursor = pending

    def withhold(self, heartbeat: Heartbeat) -> Heartbeat:
        """``heartbeat`` without its uploads (to be queued: the next heartbeat sends them again)."""
        self._pending = None
        return without_uploads(heartbeat)

    def skip(self, refusal: EdgefleetError) -> None:
        """The server refused the last report's uploads but took the heartbeat without them: they
        can never be reported, so move past them (loudly) rather than stop heartbeats for good."""
        if self._pending is not None and self._pending_uploads:
            log.error(
                "the server refused %d capture upload(s) for good; its capture index will miss them: %s",
                self._pending_uploads,
                refusal,
            )
        self.accepted()


def without_uploads(heartbeat: Heartbeat) -> Heartbeat:
    """``heartbeat`` with its capture backlog but no uploads."""
    if heartbeat.capture is None or not heartbeat.capture.uploads:
        return heartbeat
    return replace(heartbeat, capture=replace(heartbeat.capture, uploads=()))
