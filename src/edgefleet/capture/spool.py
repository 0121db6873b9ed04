"""The durable capture buffer: a bounded on-disk spool in SQLite (WAL).

Six tables: ``pending`` holds acknowledged captures with their payload until written,
``batches`` holds each batch's object key once it has been chosen (so a crash mid-write rewrites
the same key), ``finished`` remembers the outcome of the last ``status_history`` captures for
GetCaptureDataStatus and duplicate detection, ``uploads`` is the upload log (one entry per object
the store confirmed, appended in the transaction that finishes its batch, so an entry exists if and
only if its captures left the spool as SUCCESS; with periodic upload, in the one that takes the
object off the transfer queue once the cloud store confirmed it), and ``meta`` holds the log's epoch and trimmed
count. Schema 2 added the captures' model version (one object holds one model version) and the
upload log; schema 3 the transfer queue of Disk with periodic upload (``transfers``: one row per
object written to Disk and not yet confirmed by the cloud store, with how many of its parts the
store confirmed so far; its head is the transfer's durable cursor). An older spool is migrated in
place when it is opened, keeping its captures.

With ``fsync`` the database runs with
``synchronous=FULL``: a committed capture survives power loss; without it (``NORMAL``) it still
survives the process being killed. One process at a time owns a spool directory (``flock``).
"""

from __future__ import annotations

import enum
import fcntl
import json
import logging
import os
import sqlite3
import struct
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgefleet.capture.records import CaptureAux, CaptureRequest, CaptureTensor
from edgefleet.core.deviceplane import CaptureUpload
from edgefleet.core.errors import (
    AlreadyExists,
    EdgefleetError,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from edgefleet.core.files import fsync_dir
from edgefleet.core.tensors import DataType

log = logging.getLogger(__name__)

DB_FILE = "spool.sqlite3"
LOCK_FILE = "spool.lock"
SCHEMA_VERSION = 3
#: Most upload-log entries one call of :meth:`Spool.uploads_after` returns.
MAX_UPLOADS_PAGE = 10_000
_PAYLOAD_FORMAT = 1
_HEADER_LENGTH = struct.Struct(">I")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    object_key TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS pending (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    capture_key TEXT NOT NULL UNIQUE,
    enqueued_at REAL NOT NULL,
    fleet TEXT NOT NULL,
    model_name TEXT NOT NULL,
    partition TEXT NOT NULL,
    payload BLOB NOT NULL,
    batch_id TEXT REFERENCES batches(batch_id),
    model_version TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS pending_batch ON pending(batch_id);
CREATE TABLE IF NOT EXISTS finished (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    capture_key TEXT NOT NULL UNIQUE,
    status INTEGER NOT NULL,
    finished_at REAL NOT NULL,
    object_key TEXT
);
"""

# Added by schema 2 (also created on a fresh spool).
_SCHEMA_2 = """
CREATE TABLE IF NOT EXISTS uploads (
    log_id INTEGER PRIMARY KEY AUTOINCREMENT,
    object_key TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    records INTEGER NOT NULL,
    size INTEGER NOT NULL,
    first_inference REAL,
    last_inference REAL,
    raw_objects INTEGER NOT NULL,
    uploaded_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# Added by schema 3 (also created on a fresh spool): Disk objects waiting for the periodic upload.
_SCHEMA_3 = """
CREATE TABLE IF NOT EXISTS transfers (
    transfer_id INTEGER PRIMARY KEY AUTOINCREMENT,
    object_key TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    records INTEGER NOT NULL,
    size INTEGER NOT NULL,
    first_inference REAL,
    last_inference REAL,
    raw_objects INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    written_at REAL NOT NULL,
    parts_done INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
"""


class CaptureStatus(enum.Enum):
    """GetCaptureDataStatus answers; values are the wire ``CaptureDataStatus`` numbers."""

    FAILURE = 0
    SUCCESS = 1
    IN_PROGRESS = 2
    NOT_FOUND = 3


@dataclass(frozen=True)
class PendingCapture:
    """A spooled capture not yet assigned to a batch (payload not loaded)."""

    seq: int
    key: str
    enqueued_at: float
    fleet: str
    model_name: str
    partition: str
    model_version: str = ""


@dataclass(frozen=True)
class OpenBatch:
    """A batch whose object key is chosen and persisted, not yet known to be written."""

    batch_id: str
    object_key: str
    created_at: float
    attempts: int
    next_attempt_at: float
    last_error: str | None


@dataclass
class _Add:
    """One add() waiting for the group commit, and its answer."""

    key: str
    row: tuple[str, float, str, str, str, str, bytes]
    capacity: int
    capacity_bytes: int | None
    drop_oldest: bool
    done: bool = False
    error: EdgefleetError | None = None
    dropped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Backlog:
    """What waits in the spool."""

    #: captures not yet known to be written
    records: int
    #: their payload bytes (what the byte bound counts)
    bytes: int
    #: when the oldest of them was spooled (POSIX seconds), None when the spool is empty
    oldest_enqueued_at: float | None


@dataclass(frozen=True)
class LoggedUpload:
    """An upload-log entry: an object the store confirmed, and where it stands in the log."""

    #: position in the log (increasing, never reused by this spool)
    log_id: int
    #: when the store confirmed it (POSIX seconds)
    uploaded_at: float
    upload: CaptureUpload


@dataclass(frozen=True)
class UploadPage:
    """Upload-log entries after a cursor (see :meth:`Spool.uploads_after`)."""

    #: names this spool's log; a reader holding a cursor of another epoch starts again from 0
    epoch: str
    entries: tuple[LoggedUpload, ...]
    #: the cursor for the next call: the last entry's log id, or the ``after`` given when none
    next_after: int
    #: entries trimmed (oldest first) to keep the log within its bound, since the spool was created
    trimmed: int
    #: log id of the oldest entry still kept (0 when the log is empty)
    first_log_id: int


@dataclass(frozen=True)
class Transfer:
    """A Disk object waiting for the periodic upload (a ``transfers`` row)."""

    transfer_id: int
    #: what the object holds (its ``size`` is the Disk object's; the cloud's is logged on upload)
    upload: CaptureUpload
    #: bytes on Disk: the ``.jsonl`` object and its raw-data files
    bytes: int
    #: when Disk confirmed it (POSIX seconds)
    written_at: float
    #: parts the cloud store confirmed so far (raw-data files in the order the records name them,
    #: then the ``.jsonl`` object): a restart goes on from there
    parts_done: int
    #: failed attempts so far, and the last one's error
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class SpooledCapture:
    """A capture of a batch with its payload."""

    seq: int
    key: str
    payload: bytes


# --- payload --------------------------------------------------------------------------------------


def encode_payload(request: CaptureRequest, *, device_name: str, fleet_name: str) -> bytes:
    """Serialise a validated request (and the device it was captured on) for the spool.

    A length-prefixed JSON header describing every payload, then the payload bytes in order:
    compact (no base64) and self-describing.
    """
    header = {
        "format": _PAYLOAD_FORMAT,
        "device": device_name,
        "fleet": fleet_name,
        "capture_id": request.capture_id,
        "model_name": request.model_name,
        "model_version": request.model_version,
        "inference_time": request.inference_time.isoformat(),
        "inputs": [[t.name, t.dtype.name, list(t.shape), len(t.data)] for t in request.inputs],
        "outputs": [[t.name, t.dtype.name, list(t.shape), len(t.data)] for t in request.outputs],
        "aux_inputs": [[a.name, a.encoding, len(a.data)] for a in request.aux_inputs],
        "aux_outputs": [[a.name, a.encoding, len(a.data)] for a in request.aux_outputs],
    }
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    chunks = [_HEADER_LENGTH.pack(len(head)), head]
    chunks += [t.data for t in (*request.inputs, *request.outputs)]
    chunks += [a.data for a in (*request.aux_inputs, *request.aux_outputs)]
    return b"".join(chunks)


def _payload_header(blob: bytes) -> tuple[Any, int]:
    """The JSON header of a spooled payload and the offset of the first payload byte.

    ValueError (or struct.error) when the blob is too short or the header is not JSON.
    """
    (length,) = _HEADER_LENGTH.unpack_from(blob)
    header = json.loads(blob[_HEADER_LENGTH.size : _HEADER_LENGTH.size + length].decode("utf-8"))
    return header, _HEADER_LENGTH.size + length


def decode_payload(blob: bytes) -> tuple[CaptureRequest, str, str]:
    """Inverse of :func:`encode_payload`: ``(request, device_name, fleet_name)``.

    INVALID_ARGUMENT if the blob is damaged (the capture can then never be written).
    """
    try:
        header, offset = _payload_header(blob)
        if header.get("format") != _PAYLOAD_FORMAT:
            raise ValueError(f"unknown payload format {header.get('format')!r}")

        def take(size: int) -> bytes:
            nonlocal offset
            if size < 0 or offset + size > len(blob):
                raise ValueError("payload shorter than its header says")
            data = blob[offset : offset + size]
            offset += size
            return data

        def tensors(items: list[list[Any]]) -> tuple[CaptureTensor, ...]:
            return tuple(
                CaptureTensor(
                    name=str(name),
                    dtype=DataType.from_name(str(dtype)),
                    shape=tuple(int(d) for d in shape),
                    data=take(int(size)),
                )
                for name, dtype, shape, size in items
            )

        def auxes(items: list[list[Any]]) -> tuple[CaptureAux, ...]:
            return tuple(
                CaptureAux(name=str(name), encoding=str(encoding), data=take(int(size)))
                for name, encoding, size in items
            )

        request = CaptureRequest(
            capture_id=str(header["capture_id"]),
            model_name=str(header["model_name"]),
            model_version=str(header["model_version"]),
            inference_time=datetime.fromisoformat(str(header["inference_time"])),
            inputs=tensors(header["inputs"]),
            outputs=tensors(header["outputs"]),
            aux_inputs=auxes(header["aux_inputs"]),
            aux_outputs=auxes(header["aux_outputs"]),
        )
        if offset != len(blob):
            raise ValueError("payload longer than its header says")
        return request, str(header["device"]), str(header["fleet"])
    except (ValueError, KeyError, TypeError, struct.error, EdgefleetError) as exc:
        raise InvalidArgument(f"damaged capture payload in the spool: {exc}") from exc


# --- the spool ------------------------------------------------------------------------------------


def _translate(exc: sqlite3.Error, directory: Path) -> EdgefleetError:
    text = str(exc)
    if "full" in text.lower():
        return ResourceExhausted(f"capture spool {directory}: disk full: {text}")
    return Unavailable(f"capture spool {directory}: {text}")


class Spool:
    """The SQLite-backed capture buffer. Thread-safe (one connection behind a lock).

    Raises FAILED_PRECONDITION when another process holds the directory or the database is not a
    spool of a version this code knows.
    """

    def __init__(
        self,
        directory: Path,
        *,
        fsync: bool = True,
        status_history: int = 100_000,
        upload_log: int = 100_000,
    ) -> None:
        self.directory = Path(directory)
        self.status_history = status_history
        #: upload-log entries kept at most (older ones are trimmed and counted)
        self.upload_log = upload_log
        self._lock = threading.Lock()
        # group commit of add(): requests waiting, and whether one of their threads is committing
        self._group = threading.Condition(threading.Lock())
        self._queue: list[_Add] = []
        self._committing = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise Unavailable(f"cannot open capture spool {self.directory}: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise FailedPrecondition(
                f"capture spool {self.directory} is in use by another process or service"
            ) from exc
        try:
            self._db = self._open(fsync)
        except BaseException:
            os.close(self._lock_fd)
            raise
        # Running totals of what ``pending`` holds (one process owns the spool, so they stay exact);
        # reloaded from the database whenever a transaction fails.
        self._count = 0
        self._bytes = 0
        self._reload_totals()

    def _reload_totals(self) -> None:
        count, size = self._db.execute("SELECT COUNT(*), TOTAL(LENGTH(payload)) FROM pending").fetchone()
        self._count, self._bytes = int(count), int(size)

    def _open(self, fsync: bool) -> sqlite3.Connection:
        path = self.directory / DB_FILE
        created = not path.exists()
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        except sqlite3.Error as exc:
            raise _translate(exc, self.directory) from exc
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise FailedPrecondition(
                    f"capture spool {self.directory}: the filesystem does not support WAL"
                )
            db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version not in (0, 1, 2, SCHEMA_VERSION):
                raise FailedPrecondition(
                    f"capture spool {self.directory} has schema version {version}; this edgefleet "
                    f"understands 1 to {SCHEMA_VERSION}"
                )
            if version != SCHEMA_VERSION:
                # one transaction: a crash mid-migration leaves the schema-1 spool as it was
                db.execute("BEGIN IMMEDIATE")
                try:
                    if version == 0:
                        for statement in (_SCHEMA + _SCHEMA_2).split(";"):
                            if statement.strip():
                                db.execute(statement)
                        _init_meta(db)
                    elif version == 1:
                        _migrate_1_to_2(db)
                    for statement in _SCHEMA_3.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                if version:
                    log.info(
                        "capture spool %s migrated from schema %d to %d",
                        self.directory,
                        version,
                        SCHEMA_VERSION,
                    )
        except sqlite3.DatabaseError as exc:
            db.close()
            raise FailedPrecondition(f"capture spool {self.directory} is not usable: {exc}") from exc
        except BaseException:
            db.close()
            raise
        if created and fsync:
            fsync_dir(self.directory)
        return db

    def close(self) -> None:
        """Close the database and release the directory."""
        with self._lock:
            self._db.close()
            os.close(self._lock_fd)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                with suppress(sqlite3.Error):  # totals stay as they were if even this fails
                    self._reload_totals()
                raise _translate(exc, self.directory) from exc

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                raise _translate(exc, self.directory) from exc

    def add(
        self,
        key: str,
        *,
        enqueued_at: float,
        fleet: str,
        model_name: str,
        partition: str,
        payload: bytes,
        capacity: int,
        capacity_bytes: int | None = None,
        drop_oldest: bool = False,
        model_version: str = "",
    ) -> list[str]:
        """Store a capture durably, or raise ALREADY_EXISTS / RESOURCE_EXHAUSTED storing nothing.

        The spool holds at most ``capacity`` captures and ``capacity_bytes`` payload bytes (None: no
        byte bound). When full, ``drop_oldest`` makes room by giving up the oldest captures not yet
        in a batch (they become FAILURE); their keys are returned. Without it, or when no such
        captures free enough room, the capture is refused with RESOURCE_EXHAUSTED.

        Group commit: captures added by several threads at once are committed in one transaction
        (one fsync) by whichever of them finds no commit running; each still gets its own answer,
        and each returns only once its capture is durable.
        """
        if capacity_bytes is not None and len(payload) > capacity_bytes:
            raise ResourceExhausted(
                f"capture of {len(payload)} bytes is larger than the whole capture buffer ({capacity_bytes} bytes)"
            )
        request = _Add(
            key,
            (key, enqueued_at, fleet, model_name, model_version, partition, payload),
            capacity,
            capacity_bytes,
            drop_oldest,
        )
        with self._group:
            self._queue.append(request)
            while not request.done:
                if self._committing:
                    self._group.wait()
                    continue
                self._committing = True
                batch, self._queue = self._queue, []
                self._group.release()
                try:
                    self._commit_adds(batch)
                finally:
                    self._group.acquire()
                    self._committing = False
                    self._group.notify_all()
        if request.error is not None:
            raise request.error
        return request.dropped

    def _commit_adds(self, batch: list[_Add]) -> None:
        """Apply ``batch`` in one transaction; every request ends done, with its answer or error."""
        try:
            with self._transaction() as db:
                count, used = self._count, self._bytes
                for request in batch:
                    count, used = self._apply_add(db, request, count, used)
                if any(request.dropped for request in batch):
                    self._trim(db)
                self._count, self._bytes = count, used
        except EdgefleetError as exc:  # the transaction failed as a whole: nothing of it was stored
            for request in batch:
                if request.error is None:
                    request.error, request.dropped = exc, []
        except BaseException as exc:
            for request in batch:
                request.error = Unavailable(f"capture spool {self.directory}: {exc}")
            raise
        finally:
            for request in batch:
                request.done = True

    def _apply_add(self, db: sqlite3.Connection, request: _Add, count: int, used: int) -> tuple[int, int]:
        key, size = request.key, len(request.row[-1])
        if db.execute(
            "SELECT 1 FROM pending WHERE capture_key = ? UNION ALL SELECT 1 FROM finished WHERE capture_key = ?",
            (key, key),
        ).fetchone():
            request.error = AlreadyExists(f"capture id {key} was already used")
            return count, used
        bound = request.capacity_bytes

        def full(count: int, used: int) -> bool:
            return count >= request.capacity or (bound is not None and used + size > bound)

        victims: list[tuple[int, str]] = []
        left, room = count, used
        if full(left, room) and request.drop_oldest:
            for seq, victim, length in db.execute(
                "SELECT seq, capture_key, LENGTH(payload) FROM pending WHERE batch_id IS NULL ORDER BY seq"
            ):
                victims.append((seq, victim))
                left, room = left - 1, room - int(length)
                if not full(left, room):
                    break
        if full(left, room):
            request.error = ResourceExhausted(
                f"capture buffer is full ({count} of {request.capacity} captures, {used} of "
                f"{'unbounded' if bound is None else bound} bytes waiting to be written)"
            )
            return count, used
        if victims:
            db.executemany(
                "INSERT OR REPLACE INTO finished (capture_key, status, finished_at) "
                "SELECT capture_key, ?, ? FROM pending WHERE seq = ?",
                [(CaptureStatus.FAILURE.value, request.row[1], seq) for seq, _ in victims],
            )
            db.executemany("DELETE FROM pending WHERE seq = ?", [(seq,) for seq, _ in victims])
            request.dropped = [victim for _, victim in victims]
        db.execute(
            "INSERT INTO pending (capture_key, enqueued_at, fleet, model_name, model_version, partition, "
            "payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
            request.row,
        )
        return left + 1, room + size

    def status(self, key: str) -> CaptureStatus:
        """IN_PROGRESS while spooled, then the remembered outcome, else NOT_FOUND."""
        rows = self._query(
            "SELECT 2 FROM pending WHERE capture_key = ? "
            "UNION ALL SELECT status FROM finished WHERE capture_key = ?",
            (key, key),
        )
        return CaptureStatus(rows[0][0]) if rows else CaptureStatus.NOT_FOUND

    def pending_count(self) -> int:
        """Captures in the spool (written or not yet assigned to a batch)."""
        with self._lock:
            return self._count

    def backlog(self) -> Backlog:
        """What waits in the spool: captures, payload bytes and when the oldest was spooled."""
        with self._lock:
            try:
                row = self._db.execute("SELECT enqueued_at FROM pending ORDER BY seq LIMIT 1").fetchone()
            except sqlite3.Error as exc:
                raise _translate(exc, self.directory) from exc
            return Backlog(self._count, self._bytes, None if row is None else float(row[0]))

    def unassigned(self) -> list[PendingCapture]:
        """Spooled captures not in a batch yet, oldest first."""
        rows = self._query(
            "SELECT seq, capture_key, enqueued_at, fleet, model_name, partition, model_version FROM pending "
            "WHERE batch_id IS NULL ORDER BY seq"
        )
        return [PendingCapture(*row) for row in rows]

    def create_batches(self, batches: Sequence[tuple[str, str, Sequence[int]]], now: float) -> None:
        """Persist ``(batch_id, object_key, capture seqs)`` triples in one transaction."""
        with self._transaction() as db:
            for batch_id, key, seqs in batches:
                db.execute(
                    "INSERT INTO batches (batch_id, object_key, created_at) VALUES (?, ?, ?)",
                    (batch_id, key, now),
                )
                db.executemany(
                    "UPDATE pending SET batch_id = ? WHERE seq = ? AND batch_id IS NULL",
                    [(batch_id, seq) for seq in seqs],
                )

    def open_batches(self) -> list[OpenBatch]:
        """Batches not yet written, oldest first."""
        rows = self._query(
            "SELECT batch_id, object_key, created_at, attempts, next_attempt_at, last_error FROM batches "
            "ORDER BY created_at, rowid"
        )
        return [OpenBatch(*row) for row in rows]

    def batch_captures(self, batch_id: str) -> list[SpooledCapture]:
        """The captures of a batch with their payloads, in arrival order."""
        rows = self._query(
            "SELECT seq, capture_key, payload FROM pending WHERE batch_id = ? ORDER BY seq", (batch_id,)
        )
        return [SpooledCapture(*row) for row in rows]

    def record_failure(self, batch_id: str, error: str, next_attempt_at: float) -> int:
        """Count a failed write attempt; return the attempts so far."""
        with self._transaction() as db:
            db.execute(
                "UPDATE batches SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? "
                "WHERE batch_id = ?",
                (next_attempt_at, error, batch_id),
            )
            row = db.execute("SELECT attempts FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
        return int(row[0]) if row else 0

    def finish_batch(
        self,
        batch_id: str,
        status: CaptureStatus,
        now: float,
        *,
        upload: CaptureUpload | None = None,
        transfer_bytes: int | None = None,
    ) -> int:
        """Move a batch's captures to ``finished`` with ``status`` and drop the batch; return how many.

        ``upload`` (with SUCCESS: the object the store confirmed) is appended to the upload log in
        the same transaction, so a crash leaves either the batch open and no entry (the batch is
        written again, to the same key, and logged then) or the batch finished and its entry
        logged: never one without the other. With ``transfer_bytes`` (Disk with periodic upload:
        the object's and its raw-data files' bytes) it is queued for the transfer instead, in the
        same transaction, and logged when the cloud store confirms it (:meth:`finish_transfer`).
        """
        with self._transaction() as db:
            row = db.execute("SELECT object_key FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
            object_key = row[0] if row and status is CaptureStatus.SUCCESS else None
            (size,) = db.execute(
                "SELECT TOTAL(LENGTH(payload)) FROM pending WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            count = db.execute(
                "INSERT OR REPLACE INTO finished (capture_key, status, finished_at, object_key) "
                "SELECT capture_key, ?, ?, ? FROM pending WHERE batch_id = ? ORDER BY seq",
                (status.value, now, object_key, batch_id),
            ).rowcount
            removed = db.execute("DELETE FROM pending WHERE batch_id = ?", (batch_id,)).rowcount
            self._count, self._bytes = self._count - removed, self._bytes - int(size)
            db.execute("DELETE FROM batches WHERE batch_id = ?", (batch_id,))
            if upload is not None and status is CaptureStatus.SUCCESS and row is not None:
                if transfer_bytes is None:
                    self._log_upload(db, upload, now)
                else:
                    db.execute(
                        "INSERT INTO transfers (object_key, model_name, model_version, records, size, "
                        "first_inference, last_inference, raw_objects, bytes, written_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (*_upload_row(upload), transfer_bytes, now),
                    )
            self._trim(db)
        return int(count)

    # --- the transfer queue (Disk with periodic upload) -----------------------------------------

    def transfers(self, limit: int = 100) -> list[Transfer]:
        """The oldest ``limit`` objects waiting for the periodic upload, oldest first."""
        rows = self._query(
            "SELECT transfer_id, object_key, model_name, model_version, records, size, first_inference, "
            "last_inference, raw_objects, bytes, written_at, parts_done, attempts, last_error "
            "FROM transfers ORDER BY transfer_id LIMIT ?",
            (limit,),
        )
        return [
            Transfer(
                transfer_id=int(row[0]),
                upload=_upload_of(row[1:9]),
                bytes=int(row[9]),
                written_at=float(row[10]),
                parts_done=int(row[11]),
                attempts=int(row[12]),
                last_error=row[13],
            )
            for row in rows
        ]

    def transfer_backlog(self) -> Backlog:
        """Objects waiting for the periodic upload, their bytes on Disk and when the oldest was written."""
        ((count, size, oldest),) = self._query(
            "SELECT COUNT(*), TOTAL(bytes), MIN(written_at) FROM transfers"
        )
        return Backlog(int(count), int(size), None if oldest is None else float(oldest))

    def transfer_progress(self, transfer_id: int, parts_done: int) -> None:
        """Record that the store confirmed the first ``parts_done`` parts of a transfer."""
        with self._transaction() as db:
            db.execute("UPDATE transfers SET parts_done = ? WHERE transfer_id = ?", (parts_done, transfer_id))

    def transfer_failed(self, transfer_id: int, error: str) -> None:
        """Count a failed attempt of a transfer (it stays at the head of the queue)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE transfers SET attempts = attempts + 1, last_error = ? WHERE transfer_id = ?",
                (error, transfer_id),
            )

    def finish_transfer(self, transfer_id: int, upload: CaptureUpload | None, now: float) -> None:
        """Take a transfer off the queue and, in the same transaction, log ``upload`` (the object
        the cloud store confirmed; None: the transfer was given up, nothing is logged)."""
        with self._transaction() as db:
            db.execute("DELETE FROM transfers WHERE transfer_id = ?", (transfer_id,))
            if upload is not None:
                self._log_upload(db, upload, now)

    def _log_upload(self, db: sqlite3.Connection, upload: CaptureUpload, now: float) -> None:
        db.execute(
            "INSERT INTO uploads (object_key, model_name, model_version, records, size, first_inference, "
            "last_inference, raw_objects, uploaded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*_upload_row(upload), now),
        )
        trimmed = db.execute(
            "DELETE FROM uploads WHERE log_id <= (SELECT MAX(log_id) FROM uploads) - ?", (self.upload_log,)
        ).rowcount
        if trimmed > 0:
            db.execute(
                "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + ? AS TEXT) WHERE name = 'uploads_trimmed'",
                (trimmed,),
            )

    def uploads_after(self, after: int, limit: int) -> UploadPage:
        """Upload-log entries with a log id above ``after``, oldest first, at most ``limit``.

        INVALID_ARGUMENT unless ``after >= 0`` and ``1 <= limit <= MAX_UPLOADS_PAGE``.
        """
        if after < 0:
            raise InvalidArgument(f"upload log cursor must be >= 0, not {after}")
        if not 1 <= limit <= MAX_UPLOADS_PAGE:
            raise InvalidArgument(
                f"upload log page size must be between 1 and {MAX_UPLOADS_PAGE}, not {limit}"
            )
        with self._lock:
            try:
                # one read transaction: the entries, the trimmed count and the oldest id agree
                self._db.execute("BEGIN")
                try:
                    rows = self._db.execute(
                        "SELECT log_id, uploaded_at, object_key, model_name, model_version, records, size, "
                        "first_inference, last_inference, raw_objects FROM uploads WHERE log_id > ? "
                        "ORDER BY log_id LIMIT ?",
                        (after, limit),
                    ).fetchall()
                    meta = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
                    (first,) = self._db.execute("SELECT MIN(log_id) FROM uploads").fetchone()
                finally:
                    self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise _translate(exc, self.directory) from exc
        entries = tuple(_logged_upload(row) for row in rows)
        return UploadPage(
            epoch=str(meta.get("log_epoch", "")),
            entries=entries,
            next_after=entries[-1].log_id if entries else after,
            trimmed=int(meta.get("uploads_trimmed", 0)),
            first_log_id=int(first or 0),
        )

    def fail_captures(self, keys: Sequence[str], now: float) -> None:
        """Mark captures FAILURE and drop them from the spool (they can never be written)."""
        with self._transaction() as db:
            for key in keys:
                db.execute(
                    "INSERT OR REPLACE INTO finished (capture_key, status, finished_at) "
                    "SELECT capture_key, ?, ? FROM pending WHERE capture_key = ?",
                    (CaptureStatus.FAILURE.value, now, key),
                )
                row = db.execute(
                    "SELECT LENGTH(payload) FROM pending WHERE capture_key = ?", (key,)
                ).fetchone()
                if row is not None:
                    db.execute("DELETE FROM pending WHERE capture_key = ?", (key,))
                    self._count, self._bytes = self._count - 1, self._bytes - int(row[0])
            self._trim(db)

    def _trim(self, db: sqlite3.Connection) -> None:
        db.execute(
            "DELETE FROM finished WHERE seq <= (SELECT MAX(seq) FROM finished) - ?", (self.status_history,)
        )


def _upload_row(upload: CaptureUpload) -> tuple[Any, ...]:
    """The columns an upload is stored in (``uploads`` and ``transfers``), in :func:`_upload_of`'s order."""
    return (
        upload.key,
        upload.model_name,
        upload.model_version,
        upload.records,
        upload.size,
        None if upload.first_inference is None else upload.first_inference.timestamp(),
        None if upload.last_inference is None else upload.last_inference.timestamp(),
        upload.raw_objects,
    )


def _upload_of(row: Sequence[Any]) -> CaptureUpload:
    key, model_name, model_version, records, size, first, last, raw_objects = row
    return CaptureUpload(
        key=str(key),
        model_name=str(model_name),
        model_version=str(model_version),
        records=int(records),
        size=int(size),
        first_inference=_utc(first),
        last_inference=_utc(last),
        raw_objects=int(raw_objects),
    )


def _logged_upload(row: Sequence[Any]) -> LoggedUpload:
    """An ``uploads`` row (columns in the order :meth:`Spool.uploads_after` selects them)."""
    return LoggedUpload(log_id=int(row[0]), uploaded_at=float(row[1]), upload=_upload_of(row[2:]))


def _utc(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(float(seconds), UTC)


def _init_meta(db: sqlite3.Connection) -> None:
    db.executemany(
        "INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)",
        [("log_epoch", uuid.uuid4().hex), ("uploads_trimmed", "0")],
    )


def _payload_version(blob: bytes) -> str:
    """The model version in a spooled payload's header ("" when the header cannot be read: such a
    capture is damaged and will be given up as FAILURE when its batch is written)."""
    try:
        header, _ = _payload_header(blob)
        return str(header.get("model_version", "")) if isinstance(header, dict) else ""
    except (ValueError, struct.error):
        return ""


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Schema 1 -> 2, inside the caller's transaction.

    Adds ``pending.model_version`` (filled from each payload's header), the upload log and its
    meta, and splits open batches that mix model versions: a batch keeps the captures of its
    oldest capture's version (and its object key: if a crash left that object written with the
    other versions in it too, rewriting the key replaces it), the others go back to be batched
    again, so every object holds one model version and no capture is written twice or lost.
    """
    db.execute("ALTER TABLE pending ADD COLUMN model_version TEXT NOT NULL DEFAULT ''")
    rows = db.execute("SELECT seq, payload FROM pending").fetchall()
    db.executemany(
        "UPDATE pending SET model_version = ? WHERE seq = ?", [(_payload_version(p), seq) for seq, p in rows]
    )
    db.execute(
        "UPDATE pending SET batch_id = NULL WHERE batch_id IS NOT NULL AND model_version != ("
        "SELECT first.model_version FROM pending AS first WHERE first.batch_id = pending.batch_id "
        "ORDER BY first.seq LIMIT 1)"
    )
    for statement in _SCHEMA_2.split(";"):
        if statement.strip():
            db.execute(statement)
    _init_meta(db)
