"""The spool's upload log: one entry per object the store confirmed, in the transaction that
finishes its batch; one model version per object; paging, bound, restart and schema-1 migration.

Crash safety without SIGKILL: the entry and the batch's completion are one SQLite transaction
(``Spool.finish_batch``). So there are two crash points, and both are exercised here with real
failures instead of a kill: (1) the object landed in the store but the process died before the
transaction (a sink that writes, then fails): the batch is still open, no entry exists, the retry
writes the same key and logs it once; (2) the transaction itself fails (an SQLite trigger that
aborts the log insert): nothing of it is kept, the captures stay IN_PROGRESS in their batch, and
the next write logs the object once. SQLite's atomic commit covers a kill at any instant in
between, which is why a kill test would add nothing.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.capture import (
    CaptureAux,
    CaptureConfig,
    CaptureRequest,
    CaptureService,
    CaptureStatus,
    CaptureTensor,
    DiskSink,
    RetryPolicy,
)
from edgefleet.capture.records import object_dir, object_key, partition_of
from edgefleet.capture.spool import DB_FILE, MAX_UPLOADS_PAGE, SCHEMA_VERSION, encode_payload
from edgefleet.core.errors import FailedPrecondition, InvalidArgument, Unavailable
from edgefleet.core.tensors import DataType

START = datetime(2024, 5, 6, 10, 59, 58, tzinfo=UTC)
WHEN = datetime(2024, 5, 6, 9, 30, 15, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class FailingSink(DiskSink):
    """The Disk sink whose first ``failures`` object writes fail (after landing, with ``after_write``)."""

    def __init__(self, root: Path, failures: int, *, after_write: bool = False) -> None:
        super().__init__(root, fsync=False)
        self.failures = failures
        self.after_write = after_write

    def put(self, key: str, data: bytes) -> str:
        if key.endswith(".jsonl") and self.failures > 0:
            self.failures -= 1
            if self.after_write:
                super().put(key, data)
            raise Unavailable(f"injected failure writing {key}")
        return super().put(key, data)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "captures"


@pytest.fixture
def make(tmp_path: Path, dest: Path) -> Iterator[Callable[..., CaptureService]]:
    services: list[CaptureService] = []

    def build(sink: DiskSink | None = None, *, spool: str = "spool", **knobs: Any) -> CaptureService:
        config = CaptureConfig(
            spool_dir=tmp_path / spool,
            destination_root=dest,
            device_name="dev-1",
            fleet_name="fleet-a",
            folder_prefix="pre",
            fsync=False,
            **{"buffer_size": 100, "batch_size": 10, **knobs},
        )
        service = CaptureService(
            config, sink if sink is not None else DiskSink(dest, fsync=False), clock=FakeClock(), start=False
        )
        services.append(service)
        return service

    yield build
    for service in services:
        service.close(flush=False)


def capture(*, version: str = "1.0", when: datetime = WHEN, big: bool = False) -> CaptureRequest:
    return CaptureRequest(
        capture_id=str(uuid.uuid4()),
        model_name="digits",
        model_version=version,
        inference_time=when,
        inputs=(CaptureTensor("x", DataType.FLOAT32, (1, 4), np.arange(4, dtype="<f4").tobytes()),),
        outputs=(CaptureTensor("y", DataType.INT64, (1,), np.array([7], dtype="<i8").tobytes()),),
        aux_outputs=(CaptureAux("blob", "NONE", b"\x01" * 5000),) if big else (),
    )


def jsonl(dest: Path) -> dict[str, bytes]:
    sink = DiskSink(dest)
    return {key: sink.get(key) for key in sink.list() if key.endswith(".jsonl")}


def test_each_confirmed_object_is_logged_once_with_its_figures(
    make: Callable[..., CaptureService], dest: Path
) -> None:
    service = make()
    early, late = WHEN, WHEN + timedelta(minutes=3)
    service.submit(capture(version="1.0", when=late))
    service.submit(capture(version="2.0", when=early, big=True))
    service.submit(capture(version="1.0", when=early, big=True))
    service.flush()

    page = service.uploads()
    objects = jsonl(dest)
    assert sorted(e.upload.key for e in page.entries) == sorted(objects)
    assert [e.log_id for e in page.entries] == [1, 2]
    assert page.next_after == 2 and page.trimmed == 0 and page.first_log_id == 1 and page.epoch
    by_version = {e.upload.model_version: e.upload for e in page.entries}
    assert set(by_version) == {"1.0", "2.0"}  # one model version per object
    for upload in by_version.values():
        lines = objects[upload.key].splitlines()
        assert upload.model_name == "digits"
        assert upload.records == len(lines)
        assert upload.size == len(objects[upload.key])
        assert {json.loads(line)["eventMetadata"]["modelVersion"] for line in lines} == {upload.model_version}
    v1 = by_version["1.0"]
    assert (v1.records, v1.first_inference, v1.last_inference, v1.raw_objects) == (2, early, late, 1)
    assert (by_version["2.0"].records, by_version["2.0"].raw_objects) == (1, 1)
    assert all(e.uploaded_at == START.timestamp() for e in page.entries)

    # nothing new: an empty page keeps the cursor
    again = service.uploads(after=page.next_after)
    assert again.entries == () and again.next_after == 2


def test_pages_follow_the_cursor_and_bad_arguments_are_refused(make: Callable[..., CaptureService]) -> None:
    service = make(batch_size=1)
    for _ in range(5):
        service.submit(capture())
    service.flush()
    first = service.uploads(after=0, limit=2)
    second = service.uploads(after=first.next_after, limit=2)
    third = service.uploads(after=second.next_after, limit=2)
    ids = [e.log_id for page in (first, second, third) for e in page.entries]
    assert ids == [1, 2, 3, 4, 5]
    assert third.next_after == 5
    assert len({e.upload.key for page in (first, second, third) for e in page.entries}) == 5
    with pytest.raises(InvalidArgument, match="cursor must be >= 0"):
        service.uploads(after=-1)
    with pytest.raises(InvalidArgument, match=f"between 1 and {MAX_UPLOADS_PAGE}"):
        service.uploads(limit=0)
    with pytest.raises(InvalidArgument, match=f"between 1 and {MAX_UPLOADS_PAGE}"):
        service.uploads(limit=MAX_UPLOADS_PAGE + 1)
    with pytest.raises(InvalidArgument, match="upload log must keep at least 1"):
        make(spool="other", upload_log=0)


def test_the_log_is_bounded_and_counts_what_it_trimmed(make: Callable[..., CaptureService]) -> None:
    service = make(batch_size=1, upload_log=3)
    for _ in range(5):
        service.submit(capture())
    service.flush()
    page = service.uploads()
    assert [e.log_id for e in page.entries] == [3, 4, 5]
    assert page.trimmed == 2 and page.first_log_id == 3
    service.submit(capture())
    service.flush()
    page = service.uploads(after=5)
    assert [e.log_id for e in page.entries] == [6]  # ids are never reused
    assert service.uploads().trimmed == 3


def test_the_log_and_its_epoch_survive_a_restart(make: Callable[..., CaptureService]) -> None:
    first = make()
    first.submit(capture())
    first.flush()
    before = first.uploads()
    first.close()
    second = make()
    after = second.uploads()
    assert after == before
    second.submit(capture())
    second.flush()
    assert [e.log_id for e in second.uploads(after=before.next_after).entries] == [2]
    other = make(spool="another-spool")
    assert other.uploads().epoch != before.epoch  # a new spool: readers start their cursor again


def test_an_object_written_but_not_confirmed_is_logged_once_after_its_retry(
    make: Callable[..., CaptureService], dest: Path
) -> None:
    """Crash point (1): the object landed, the batch was not finished."""
    request = capture()
    service = make(FailingSink(dest, 1, after_write=True), retry=RetryPolicy(initial_seconds=0.01))
    service.submit(request)
    with pytest.raises(Unavailable, match="injected failure"):
        service.flush()
    assert len(jsonl(dest)) == 1  # in the store...
    assert service.uploads().entries == ()  # ...but not confirmed: not logged
    assert service.status(request.capture_id) is CaptureStatus.IN_PROGRESS
    service.flush()
    (entry,) = service.uploads().entries
    assert [entry.upload.key] == list(jsonl(dest))  # the same key, logged once


def test_entry_and_batch_completion_are_one_transaction(
    make: Callable[..., CaptureService], tmp_path: Path, dest: Path
) -> None:
    """Crash point (2): the finishing transaction fails: neither the entry nor the completion stays."""
    request = capture()
    service = make()
    service.submit(request)
    db = sqlite3.connect(tmp_path / "spool" / DB_FILE)
    db.execute("CREATE TRIGGER no_log BEFORE INSERT ON uploads BEGIN SELECT RAISE(ABORT, 'log refused'); END")
    db.commit()
    with pytest.raises(Unavailable, match="log refused"):
        service.flush()
    assert service.status(request.capture_id) is CaptureStatus.IN_PROGRESS
    assert service.uploads().entries == ()
    assert service.stats()["pending"] == 1
    db.execute("DROP TRIGGER no_log")
    db.commit()
    db.close()
    service.flush()
    assert service.status(request.capture_id) is CaptureStatus.SUCCESS
    (entry,) = service.uploads().entries
    assert [entry.upload.key] == list(jsonl(dest))


def test_given_up_and_damaged_batches_are_not_logged(
    make: Callable[..., CaptureService], tmp_path: Path, dest: Path
) -> None:
    service = make(FailingSink(dest, 5), retry=RetryPolicy(initial_seconds=0.01, max_attempts=1))
    request = capture()
    service.submit(request)
    with pytest.raises(Unavailable, match="injected failure"):
        service.flush()
    assert service.status(request.capture_id) is CaptureStatus.FAILURE
    damaged = capture()
    service.submit(damaged)
    db = sqlite3.connect(tmp_path / "spool" / DB_FILE)
    db.execute("UPDATE pending SET payload = X'00'")
    db.commit()
    db.close()
    service.flush()
    assert service.status(damaged.capture_id) is CaptureStatus.FAILURE
    assert service.uploads().entries == ()


# --- schema 1 -> 2 --------------------------------------------------------------------------------

_SCHEMA_1 = """
CREATE TABLE batches (batch_id TEXT PRIMARY KEY, object_key TEXT NOT NULL, created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL DEFAULT 0, last_error TEXT);
CREATE TABLE pending (seq INTEGER PRIMARY KEY AUTOINCREMENT, capture_key TEXT NOT NULL UNIQUE,
    enqueued_at REAL NOT NULL, fleet TEXT NOT NULL, model_name TEXT NOT NULL, partition TEXT NOT NULL,
    payload BLOB NOT NULL, batch_id TEXT REFERENCES batches(batch_id));
CREATE INDEX pending_batch ON pending(batch_id);
CREATE TABLE finished (seq INTEGER PRIMARY KEY AUTOINCREMENT, capture_key TEXT NOT NULL UNIQUE,
    status INTEGER NOT NULL, finished_at REAL NOT NULL, object_key TEXT);
PRAGMA user_version = 1;
"""


def schema_1_spool(directory: Path, requests: list[CaptureRequest], batched: int) -> str:
    """A spool as edgefleet with schema 1 left it: the first ``batched`` captures in one open
    batch (mixing versions, as schema 1 allowed), the rest not batched. Returns the batch's key."""
    directory.mkdir(parents=True)
    db = sqlite3.connect(directory / DB_FILE)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_SCHEMA_1)
    key = object_key(object_dir("pre", "fleet-a", "digits", partition_of(WHEN)), "a" * 32)
    db.execute(
        "INSERT INTO batches (batch_id, object_key, created_at) VALUES (?, ?, ?)", ("a" * 32, key, 1.0)
    )
    for index, request in enumerate(requests):
        db.execute(
            "INSERT INTO pending (capture_key, enqueued_at, fleet, model_name, partition, payload, batch_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                request.capture_id,
                START.timestamp(),
                "fleet-a",
                "digits",
                partition_of(request.inference_time),
                encode_payload(request, device_name="dev-1", fleet_name="fleet-a"),
                "a" * 32 if index < batched else None,
            ),
        )
    db.commit()
    db.close()
    return key


def test_a_schema_1_spool_opens_and_writes_its_pending_captures_one_version_per_object(
    make: Callable[..., CaptureService], tmp_path: Path, dest: Path
) -> None:
    requests = [capture(version=v) for v in ("1.0", "2.0", "1.0", "2.0", "3.0")]
    batch_key = schema_1_spool(tmp_path / "spool", requests, batched=3)
    service = make()
    assert all(service.status(r.capture_id) is CaptureStatus.IN_PROGRESS for r in requests)
    assert service.stats()["pending"] == 5
    service.flush()
    assert all(service.status(r.capture_id) is CaptureStatus.SUCCESS for r in requests)
    objects = jsonl(dest)
    ids_by_version: dict[str, list[str]] = {}
    for key, data in objects.items():
        lines = [json.loads(line) for line in data.splitlines()]
        versions = {r["eventMetadata"]["modelVersion"] for r in lines}
        assert len(versions) == 1, (key, versions)
        ids_by_version.setdefault(versions.pop(), []).extend(r["eventMetadata"]["eventId"] for r in lines)
    # every capture once; the open batch kept its key for its first capture's version
    assert sorted(i for ids in ids_by_version.values() for i in ids) == sorted(r.capture_id for r in requests)
    assert [
        json.loads(line)["eventMetadata"]["modelVersion"] for line in objects[batch_key].splitlines()
    ] == [
        "1.0",
        "1.0",
    ]
    page = service.uploads()
    assert sorted((e.upload.model_version, e.upload.records) for e in page.entries) == [
        ("1.0", 2),
        ("2.0", 2),
        ("3.0", 1),
    ]
    with sqlite3.connect(tmp_path / "spool" / DB_FILE) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3


def test_a_spool_of_a_newer_schema_is_refused(make: Callable[..., CaptureService], tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    db = sqlite3.connect(tmp_path / "spool" / DB_FILE)
    db.execute("PRAGMA user_version = 4")
    db.close()
    with pytest.raises(FailedPrecondition, match="has schema version 4; this edgefleet understands 1 to 3"):
        make()


def test_batches_never_mix_model_versions(make: Callable[..., CaptureService], dest: Path) -> None:
    service = make(batch_size=10)
    for version in ("1.0", "2.0") * 4:
        service.submit(replace(capture(), model_version=version))
    service.flush()
    assert len(jsonl(dest)) == 2
    assert {e.upload.records for e in service.uploads().entries} == {4}
