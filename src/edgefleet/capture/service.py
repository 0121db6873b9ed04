"""The capture pipeline: validate a CaptureData request, spool it durably, write it in batches.

``submit`` validates everything first (a refused capture leaves nothing behind), then commits the
capture to the on-disk spool; when it returns the capture survives SIGKILL and, with ``fsync``,
power loss. A background writer groups spooled captures into batches, chooses and persists each
batch's object key *before* writing it (so a crash mid-write rewrites the same key: no duplicate,
no loss), writes one ``.jsonl`` object per batch through the sink, then marks the captures
SUCCESS. A failing sink loses nothing: the batch is retried with exponential backoff and jitter
for as long as the spool holds it, its captures staying IN_PROGRESS; captures are given up as
FAILURE only when a spooled payload is damaged, when a finite ``RetryPolicy.max_attempts`` is
reached, or when the full-buffer policy ``drop-oldest`` makes room (counted as ``dropped``).
The buffer is bounded in captures and in payload bytes.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edgefleet.capture.records import (
    MAX_EMBED_LIMIT,
    CaptureRequest,
    RawPayload,
    canonical_capture_id,
    encode_record,
    object_dir,
    object_key,
    partition_of,
    validate_request,
)
from edgefleet.capture.sinks import DiskSink, Sink
from edgefleet.capture.spool import (
    CaptureStatus,
    OpenBatch,
    PendingCapture,
    Spool,
    UploadPage,
    decode_payload,
    encode_payload,
)
from edgefleet.capture.transfer import TransferWorker
from edgefleet.core.deviceplane import CaptureUpload
from edgefleet.core.errors import (
    Code,
    EdgefleetError,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from edgefleet.storage.base import is_safe_component

log = logging.getLogger(__name__)

# Longest the background writer sleeps before re-reading the clock while captures wait, so a
# clock that jumps (NTP, an injected test clock) delays a batch by at most this much.
_MAX_WAIT_SECONDS = 1.0


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (the default clock)."""
    return datetime.now(UTC)


def _check_path_part(value: str, what: str) -> None:
    if not is_safe_component(value):
        raise InvalidArgument(f"{what} {value!r} cannot be used as a folder name")


@dataclass(frozen=True)
class RetryPolicy:
    """How a batch whose write failed is retried.

    The n-th retry waits ``min(initial_seconds * multiplier ** (n - 1), max_seconds)``, shortened
    by up to ``jitter`` of itself at random so that devices that lost the store together do not
    come back together. After ``max_attempts`` failed attempts the batch's captures become FAILURE;
    the default, 0, retries for as long as the spool holds the batch.
    """

    #: Wait before the first retry.
    initial_seconds: float = 1.0
    #: Growth of the wait per failed attempt.
    multiplier: float = 2.0
    #: Longest wait between two attempts.
    max_seconds: float = 120.0
    #: Failed attempts after which captures are given up as FAILURE (0 = never give up).
    max_attempts: int = 0
    #: Fraction of each wait taken off at random (0 = exact waits, as in tests; below 1).
    jitter: float = 0.0

    def __post_init__(self) -> None:
        # a zero wait would make the writer spin on a failing sink
        if self.initial_seconds <= 0 or self.max_seconds < self.initial_seconds or self.multiplier < 1:
            raise InvalidArgument(
                "retry policy needs initial_seconds > 0, max_seconds >= initial_seconds and multiplier >= 1"
            )
        if self.max_attempts < 0:
            raise InvalidArgument("retry policy max_attempts must be >= 0 (0 = retry for ever)")
        if not 0 <= self.jitter < 1:
            raise InvalidArgument("retry policy jitter must be at least 0 and below 1")

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (jittered when ``rng`` is given)."""
        wait = float(min(self.initial_seconds * self.multiplier ** max(attempts - 1, 0), self.max_seconds))
        return wait * (1.0 - self.jitter * rng.random()) if rng is not None and self.jitter else wait


class FullPolicy(enum.Enum):
    """What a new capture meets when the buffer is full (in captures or bytes)."""

    #: The capture is refused with RESOURCE_EXHAUSTED; nothing spooled is touched.
    REJECT = "reject"
    #: The oldest captures not yet being written are given up (FAILURE, counted as dropped).
    DROP_OLDEST = "drop-oldest"

    @classmethod
    def parse(cls, value: str) -> FullPolicy:
        """The policy named ``value``; INVALID_ARGUMENT listing the known names otherwise."""
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(p.value for p in cls)
            raise InvalidArgument(f"capture full policy {value!r} unknown (known: {known})") from None


@dataclass(frozen=True, kw_only=True)
class CaptureConfig:
    """Capture knobs (the vendor config's ``sagemaker_edge_core_capture_data_*`` and ours)."""

    #: Directory of the durable spool (SQLite database and lock file); one service per directory.
    spool_dir: Path
    #: Root directory of the Disk destination (used when no sink is passed to the service).
    destination_root: Path
    #: Device name written as ``deviceId`` in every record.
    device_name: str
    #: Fleet name: ``deviceFleetName`` in records and a folder of the key layout.
    fleet_name: str
    #: Folder/key prefix under the destination root ("" = none; may contain '/').
    folder_prefix: str = ""
    #: Captures the spool holds at most; a further capture meets ``full_policy``.
    buffer_size: int = 30
    #: Payload bytes the spool holds at most (None: bounded by ``buffer_size`` only).
    buffer_bytes: int | None = None
    #: What a capture meets when the spool is full.
    full_policy: FullPolicy = FullPolicy.REJECT
    #: A batch is written when this many captures wait; also the most records in one object.
    batch_size: int = 10
    #: A batch is written when its oldest capture has waited this long (seconds).
    push_period_seconds: float = 4.0
    #: Payloads up to this many bytes are embedded as base64; larger ones go to raw-data files.
    base64_embed_limit: int = MAX_EMBED_LIMIT
    #: fsync spool commits and written files (power-loss safe); off: still safe against SIGKILL.
    fsync: bool = True
    #: Finished capture ids remembered for GetCaptureDataStatus and duplicate detection.
    status_history: int = 100_000
    #: Upload-log entries kept (objects the store confirmed, read by the device daemon for its
    #: heartbeats); older ones are trimmed and counted.
    upload_log: int = 100_000
    #: How far in the future an inference time may be (device clock skew) before OUT_OF_RANGE.
    clock_skew_seconds: float = 5.0
    #: Largest total payload of one capture, in bytes (RESOURCE_EXHAUSTED above it).
    max_capture_bytes: int = 64 * 1024 * 1024
    #: Retries of batches whose write failed (and, never giving up, of periodic uploads).
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Disk with periodic upload: seconds between two rounds of uploading what Disk holds.
    periodic_upload_period_seconds: float = 8.0

    def __post_init__(self) -> None:
        if not self.device_name or len(self.device_name) > 63:
            raise InvalidArgument("capture device name is required and must be at most 63 characters")
        _check_path_part(self.fleet_name, "capture fleet name")
        for part in self.folder_prefix.strip("/").split("/") if self.folder_prefix.strip("/") else ():
            _check_path_part(part, f"capture folder prefix {self.folder_prefix!r}: component")
        if self.buffer_size < 1 or not 1 <= self.batch_size <= self.buffer_size:
            raise InvalidArgument(
                f"capture batch size ({self.batch_size}) must be between 1 and the buffer size "
                f"({self.buffer_size})"
            )
        if not 0 <= self.base64_embed_limit <= MAX_EMBED_LIMIT:
            raise InvalidArgument(f"capture base64 embed limit must be between 0 and {MAX_EMBED_LIMIT} bytes")
        if self.push_period_seconds < 0 or self.clock_skew_seconds < 0:
            raise InvalidArgument("capture push period and clock skew must not be negative")
        if self.buffer_bytes is not None and self.buffer_bytes < 1:
            raise InvalidArgument("capture buffer bytes must be at least 1 (or unset: no byte bound)")
        if self.status_history < 0 or self.max_capture_bytes < 1:
            raise InvalidArgument("capture status history must be >= 0 and max capture bytes >= 1")
        if self.upload_log < 1:
            raise InvalidArgument("capture upload log must keep at least 1 entry")
        if self.periodic_upload_period_seconds <= 0:
            raise InvalidArgument("capture periodic upload period must be positive")


class ServiceState(enum.Enum):
    """Lifecycle of a :class:`CaptureService`."""

    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass
class _Counters:
    written: int = 0
    failed: int = 0
    batches_written: int = 0
    write_errors: int = 0
    last_write_time: datetime | None = None
    last_error: str | None = None
    pending: int = 0
    dropped: int = 0


class CaptureService:
    """Durable, batched capture of inference data (CaptureData / GetCaptureDataStatus).

    ``sink`` defaults to a :class:`DiskSink` at ``config.destination_root``. ``clock`` returns
    timezone-aware UTC datetimes and drives the future-time check and the push period. With
    ``start=False`` no background writer runs: call :meth:`run_due` or :meth:`flush` to write.
    Captures left in the spool by an earlier process are picked up and written.

    ``periodic_upload`` (Disk with periodic upload, :mod:`edgefleet.capture.transfer`): the cloud
    sink that every ``config.periodic_upload_period_seconds`` receives what Disk (``sink``, which
    must then be a :class:`DiskSink`) holds; the upload log then names the cloud objects. With
    ``start=False`` its worker does not run either: call :meth:`transfer_now`.
    """

    def __init__(
        self,
        config: CaptureConfig,
        sink: Sink | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        start: bool = True,
        rng: random.Random | None = None,
        periodic_upload: Sink | None = None,
    ) -> None:
        self.config = config
        self._rng = rng if rng is not None else random.Random()
        self.sink: Sink = sink if sink is not None else DiskSink(config.destination_root, fsync=config.fsync)
        if periodic_upload is not None and not isinstance(self.sink, DiskSink):
            raise InvalidArgument(
                f"periodic upload uploads what Disk holds; the destination is {self.sink!r}"
            )
        self._clock = clock
        self._spool = Spool(
            config.spool_dir,
            fsync=config.fsync,
            status_history=config.status_history,
            upload_log=config.upload_log,
        )
        self._state = ServiceState.RUNNING
        self._write_lock = threading.Lock()
        self._wakeup = threading.Condition()
        self._kicked = False
        self._counters = _Counters()
        self._counters_lock = threading.Lock()
        left = self._spool.pending_count()
        self._counters.pending = left
        if left:
            log.info(
                "capture spool %s holds %d captures from an earlier run; writing them", config.spool_dir, left
            )
        self.transfer: TransferWorker | None = None
        waiting = self._spool.transfer_backlog().records
        if periodic_upload is not None:
            assert isinstance(self.sink, DiskSink)  # checked above
            if waiting:
                log.info("capture: %d object(s) on Disk wait for the periodic upload", waiting)
            self.transfer = TransferWorker(
                self._spool,
                self.sink,
                periodic_upload,
                period_seconds=config.periodic_upload_period_seconds,
                delay=lambda attempts: config.retry.delay(attempts, self._rng),
                clock=self._now,
                start=start,
            )
        elif waiting:
            log.warning(
                "capture: %d object(s) on Disk wait for a periodic upload, which is off now: they stay "
                "on Disk, unreported, and go up when it is on again",
                waiting,
            )
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="edgefleet-capture-writer", daemon=True)
            self._thread.start()

    # --- the API the agent calls ------------------------------------------------------------------

    @property
    def state(self) -> ServiceState:
        """Where the service is in its lifecycle."""
        return self._state

    def submit(self, request: CaptureRequest) -> None:
        """Accept a capture; when this returns it is durably spooled.

        Raises INVALID_ARGUMENT (malformed id, tensors, encodings), OUT_OF_RANGE (inference time in
        the future), ALREADY_EXISTS (id pending or remembered), RESOURCE_EXHAUSTED (spool full or
        capture too large), UNAVAILABLE (service closed). A refused capture leaves nothing behind.
        """
        self._check_running()
        now = self._now()
        key = canonical_capture_id(request.capture_id)
        valid = validate_request(request, now, clock_skew=timedelta(seconds=self.config.clock_skew_seconds))
        size = valid.payload_bytes
        if size > self.config.max_capture_bytes:
            raise ResourceExhausted(
                f"capture {request.capture_id} carries {size} bytes of data; "
                f"the limit is {self.config.max_capture_bytes}"
            )
        payload = encode_payload(
            valid, device_name=self.config.device_name, fleet_name=self.config.fleet_name
        )
        dropped = self._spool.add(
            key,
            enqueued_at=now.timestamp(),
            fleet=self.config.fleet_name,
            model_name=valid.model_name,
            model_version=valid.model_version,
            partition=partition_of(valid.inference_time),
            payload=payload,
            capacity=self.config.buffer_size,
            capacity_bytes=self.config.buffer_bytes,
            drop_oldest=self.config.full_policy is FullPolicy.DROP_OLDEST,
        )
        with self._counters_lock:
            self._counters.pending += 1 - len(dropped)
            self._counters.dropped += len(dropped)
            self._counters.failed += len(dropped)
        if dropped:
            log.warning(
                "capture buffer full: dropped the %d oldest capture(s) to spool %s (policy drop-oldest)",
                len(dropped),
                request.capture_id,
            )
        log.debug("capture %s spooled (%d bytes)", request.capture_id, size)
        self._kick()

    def status(self, capture_id: str) -> CaptureStatus:
        """IN_PROGRESS until durably written, then SUCCESS or FAILURE; NOT_FOUND when unknown.

        A malformed id is unknown (NOT_FOUND), not an error; ids older than ``status_history``
        finished captures are forgotten (NOT_FOUND).
        """
        self._check_open()
        try:
            key = canonical_capture_id(capture_id)
        except InvalidArgument:
            return CaptureStatus.NOT_FOUND
        return self._spool.status(key)

    def flush(self, timeout: float | None = None) -> None:
        """Write everything spooled now, ignoring batching triggers and retry backoff.

        ``timeout`` bounds the wait for a write already in progress in the background writer
        (DEADLINE_EXCEEDED); the writes themselves are not interrupted. Raises the code of the
        first failed write (captures stay spooled and IN_PROGRESS).
        """
        self._check_open()
        if not self._write_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise EdgefleetError(
                f"capture flush: writer still busy after {timeout} s", Code.DEADLINE_EXCEEDED
            )
        try:
            errors = self._cycle(force=True)
        finally:
            self._write_lock.release()
        if errors:
            first = errors[0]
            # same class and code as the sink's error, so callers can catch it by type
            raise type(first)(
                f"capture flush: {len(errors)} batch(es) not written (kept in the spool): {first.message}",
                first.code,
            ) from first

    def run_due(self) -> None:
        """Do now, in the caller's thread, what the background writer would do at this instant.

        Writes batches whose trigger (batch size or push period, by the injected clock) has fired
        and retries failed batches whose backoff has passed. Failures are recorded, not raised.
        """
        self._check_open()
        with self._write_lock:
            self._cycle(force=False)

    def close(self, *, flush: bool = True) -> None:
        """Stop the background writer and, unless ``flush=False``, write what can be written.

        Whatever cannot be written stays in the spool for the next service on the directory.
        """
        with self._wakeup:
            if self._state is not ServiceState.RUNNING:
                return
            self._state = ServiceState.CLOSING
            self._wakeup.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self.transfer is not None:
            self.transfer.close()
        try:
            if flush:
                try:
                    with self._write_lock:
                        errors = self._cycle(force=True)
                    if errors:
                        log.warning(
                            "capture: %d batch(es) left in the spool at close: %s", len(errors), errors[0]
                        )
                except EdgefleetError as exc:
                    log.warning("capture: could not flush at close, captures stay spooled: %s", exc)
            with self._counters_lock:
                self._counters.pending = self._spool.pending_count()
        finally:
            self._spool.close()
            self._state = ServiceState.CLOSED

    def transfer_now(self) -> None:
        """Disk with periodic upload: run one upload round now, in the caller's thread.

        Raises the error of the part that failed (it stays queued); FAILED_PRECONDITION when
        periodic upload is off.
        """
        self._check_open()
        if self.transfer is None:
            raise FailedPrecondition("periodic upload is off in this capture service")
        error = self.transfer.run_once()
        if error is not None:
            raise type(error)(f"capture periodic upload: {error.message}", error.code) from error

    def uploads(self, after: int = 0, limit: int = 500) -> UploadPage:
        """The objects the store confirmed after log id ``after`` (oldest first, at most ``limit``).

        The log survives restarts (it lives in the spool); INVALID_ARGUMENT for a negative cursor
        or a limit outside 1..``spool.MAX_UPLOADS_PAGE``.
        """
        self._check_open()
        return self._spool.uploads_after(after, limit)

    def stats(self) -> dict[str, Any]:
        """Counters since start and the backlog.

        ``pending`` (captures in the spool), ``pending_bytes``, ``oldest_pending_age_seconds``
        (None when empty), the bounds ``buffer_size``/``buffer_bytes``, ``written``, ``failed``
        (includes ``dropped``), ``dropped`` (by the full policy), ``batches_written``,
        ``write_errors``, ``last_write_time``, ``last_error``; with periodic upload
        (``periodic_upload`` true) also its backlog ``transfer_pending`` (objects on Disk not yet
        confirmed by the cloud store), ``transfer_pending_bytes`` (theirs and their raw-data
        files' bytes), ``transfer_oldest_age_seconds`` (since Disk confirmed the oldest; None when
        empty), and ``transferred``, ``transfer_errors``, ``transfer_given_up``,
        ``transfer_last_error``, ``last_transfer_time``, ``transfer_destination``.
        """
        backlog = transfers = None
        if self._state is not ServiceState.CLOSED:
            backlog = self._spool.backlog()
            transfers = self._spool.transfer_backlog() if self.transfer is not None else None
            with self._counters_lock:
                self._counters.pending = backlog.records
        oldest = None if backlog is None else backlog.oldest_enqueued_at
        now = self._now().timestamp()
        periodic: dict[str, Any] = {"periodic_upload": self.transfer is not None}
        if self.transfer is not None:
            t = self.transfer.counters()
            first = None if transfers is None else transfers.oldest_enqueued_at
            periodic |= {
                "transfer_pending": None if transfers is None else transfers.records,
                "transfer_pending_bytes": None if transfers is None else transfers.bytes,
                "transfer_oldest_age_seconds": None if first is None else max(now - first, 0.0),
                "transferred": t.transferred,
                "transfer_errors": t.errors,
                "transfer_given_up": t.given_up,
                "transfer_last_error": t.last_error,
                "last_transfer_time": t.last_transfer_time,
                "transfer_destination": self.transfer.cloud.store.uri,
            }
        with self._counters_lock:
            c = self._counters
            return periodic | {
                "state": self._state.value,
                "pending": c.pending,
                "pending_bytes": None if backlog is None else backlog.bytes,
                "oldest_pending_age_seconds": None if oldest is None else max(now - oldest, 0.0),
                "buffer_size": self.config.buffer_size,
                "buffer_bytes": self.config.buffer_bytes,
                "dropped": c.dropped,
                "written": c.written,
                "failed": c.failed,
                "batches_written": c.batches_written,
                "write_errors": c.write_errors,
                "last_write_time": c.last_write_time,
                "last_error": c.last_error,
            }

    # --- internals --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state is ServiceState.CLOSED:
            raise Unavailable("the capture service is closed")

    def _check_running(self) -> None:
        if self._state is not ServiceState.RUNNING:
            raise Unavailable("the capture service is shutting down; no new captures are accepted")

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise InvalidArgument("the capture clock must return timezone-aware datetimes")
        return now

    def _kick(self) -> None:
        with self._wakeup:
            self._kicked = True
            self._wakeup.notify_all()

    def _run(self) -> None:
        delay: float | None = 0.0  # look at the spool at once: an earlier run may have left captures
        while True:
            with self._wakeup:
                if self._state is not ServiceState.RUNNING:
                    return
                if not self._kicked:
                    self._wakeup.wait(None if delay is None else min(max(delay, 0.0), _MAX_WAIT_SECONDS))
                self._kicked = False
                if self._state is not ServiceState.RUNNING:
                    return
            try:
                with self._write_lock:
                    self._cycle(force=False)
                    delay = self._next_delay()
            except Exception:
                # The spool itself failed (disk full, I/O error): keep the writer alive and retry;
                # nothing is lost, captures stay in the spool.
                log.exception("capture writer: cycle failed; retrying")
                delay = max(self.config.retry.initial_seconds, 0.1)

    def _due(self, pending: list[PendingCapture], now: float) -> bool:
        age = now - pending[0].enqueued_at
        return (
            len(pending) >= self.config.batch_size
            or age >= self.config.push_period_seconds
            # the clock went backwards past anything skew explains: write rather than wait unboundedly
            or age < -self.config.clock_skew_seconds
        )

    def _next_delay(self) -> float | None:
        """Seconds until something falls due by the clock, or None when nothing waits."""
        now = self._now().timestamp()
        delays: list[float] = []
        pending = self._spool.unassigned()
        if pending:
            delays.append(
                0.0
                if self._due(pending, now)
                else pending[0].enqueued_at + self.config.push_period_seconds - now
            )
        delays += [batch.next_attempt_at - now for batch in self._spool.open_batches()]
        return min(delays) if delays else None

    def _plan(self, now: datetime, *, force: bool) -> None:
        """Assign due spooled captures to batches and persist each batch's object key."""
        pending = self._spool.unassigned()
        if not pending or not (force or self._due(pending, now.timestamp())):
            return
        # one object per model version: the server's capture index files each object under one
        groups: dict[tuple[str, str, str, str], list[PendingCapture]] = {}
        for capture in pending:
            group = (capture.fleet, capture.model_name, capture.model_version, capture.partition)
            groups.setdefault(group, []).append(capture)
        batches: list[tuple[str, str, list[int]]] = []
        size = self.config.batch_size
        for (fleet, model_name, _version, partition), members in groups.items():
            directory = object_dir(self.config.folder_prefix, fleet, model_name, partition)
            for start in range(0, len(members), size):
                batch_id = uuid.uuid4().hex
                batches.append(
                    (
                        batch_id,
                        object_key(directory, batch_id),
                        [c.seq for c in members[start : start + size]],
                    )
                )
        self._spool.create_batches(batches, now.timestamp())

    def _cycle(self, *, force: bool) -> list[EdgefleetError]:
        """Plan and write what is due (everything when ``force``); return the write errors."""
        now = self._now()
        self._plan(now, force=force)
        errors: list[EdgefleetError] = []
        for batch in self._spool.open_batches():
            if force or batch.next_attempt_at <= now.timestamp():
                error = self._write_batch(batch)
                if error is not None:
                    errors.append(error)
        return errors

    def _write_batch(self, batch: OpenBatch) -> EdgefleetError | None:
        directory = batch.object_key.rsplit("/", 1)[0]
        lines: list[bytes] = []
        raw: list[RawPayload] = []
        damaged: list[str] = []
        requests: list[CaptureRequest] = []
        for capture in self._spool.batch_captures(batch.batch_id):
            try:
                request, device_name, fleet_name = decode_payload(capture.payload)
                encoded = encode_record(
                    request,
                    device_name=device_name,
                    fleet_name=fleet_name,
                    directory=directory,
                    embed_limit=self.config.base64_embed_limit,
                    uri=self.sink.uri,
                )
            except EdgefleetError as exc:
                log.error("capture %s can never be written (%s); marking it FAILURE", capture.key, exc)
                damaged.append(capture.key)
                continue
            lines.append(encoded.line)
            raw.extend(encoded.raw)
            requests.append(request)
        if damaged:
            self._spool.fail_captures(damaged, self._now().timestamp())
            self._count(failed=len(damaged))
        try:
            # Raw payloads first: once the object exists, every data-ref in it resolves.
            for item in raw:
                self.sink.put(item.key, item.data)
            if lines:
                self.sink.put(batch.object_key, b"".join(lines))
        except Exception as exc:  # any sink failure (ours raise EdgefleetError); the batch is retried
            error = (
                exc if isinstance(exc, EdgefleetError) else Unavailable(f"capture sink {self.sink!r}: {exc}")
            )
            self._write_failed(batch, error)
            return error
        upload = None
        if lines:
            times = [r.inference_time for r in requests]
            upload = CaptureUpload(
                key=batch.object_key,
                model_name=requests[0].model_name,
                model_version=requests[0].model_version,
                records=len(lines),
                size=sum(len(line) for line in lines),
                first_inference=min(times),
                last_inference=max(times),
                raw_objects=len(raw),
            )
        written = self._spool.finish_batch(
            batch.batch_id,
            CaptureStatus.SUCCESS,
            self._now().timestamp(),
            upload=upload,
            # periodic upload: the upload log names the cloud object, logged once the cloud has it
            transfer_bytes=(
                None
                if self.transfer is None
                else sum(len(line) for line in lines) + sum(len(item.data) for item in raw)
            ),
        )
        with self._counters_lock:
            self._counters.written += written
            self._counters.batches_written += 1 if lines else 0
            self._counters.last_write_time = self._now()
        log.info("capture: wrote %d record(s) to %s", written, batch.object_key)
        return None

    def _write_failed(self, batch: OpenBatch, error: EdgefleetError) -> None:
        attempts = batch.attempts + 1
        policy = self.config.retry
        with self._counters_lock:
            self._counters.write_errors += 1
            self._counters.last_error = str(error)
        if policy.max_attempts and attempts >= policy.max_attempts:
            failed = self._spool.finish_batch(batch.batch_id, CaptureStatus.FAILURE, self._now().timestamp())
            self._count(failed=failed)
            log.error(
                "capture: giving up on %s after %d attempts (%d captures marked FAILURE): %s",
                batch.object_key,
                attempts,
                failed,
                error,
            )
            return
        delay = policy.delay(attempts, self._rng)
        self._spool.record_failure(batch.batch_id, str(error), self._now().timestamp() + delay)
        log.warning(
            "capture: writing %s failed (attempt %d), retrying in %.1f s: %s",
            batch.object_key,
            attempts,
            delay,
            error,
        )

    def _count(self, *, failed: int) -> None:
        with self._counters_lock:
            self._counters.failed += failed
