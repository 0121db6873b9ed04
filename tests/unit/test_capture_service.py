"""CaptureService end to end on a real SQLite spool and a real Disk sink (clock injected)."""

from __future__ import annotations

import json
import random
import re
import sqlite3
import threading
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
    FullPolicy,
    RetryPolicy,
    decode_record,
    entry_array,
)
from edgefleet.capture.spool import DB_FILE
from edgefleet.core.errors import (
    AlreadyExists,
    Code,
    EdgefleetError,
    FailedPrecondition,
    InvalidArgument,
    OutOfRange,
    ResourceExhausted,
    Unavailable,
)
from edgefleet.core.tensors import DataType

START = datetime(2024, 5, 6, 10, 59, 58, tzinfo=UTC)
KEY_RE = re.compile(r"pre/fleet-a/digits/(\d{4})/(\d{2})/(\d{2})/(\d{2})/[0-9a-f]{32}\.jsonl")


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class RecordingSink(DiskSink):
    """The Disk sink, signalling each object written (tests wait on this, never on sleep)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, fsync=False)
        self.objects: list[str] = []
        self.written = threading.Condition()

    def put(self, key: str, data: bytes) -> str:
        uri = super().put(key, data)
        if key.endswith(".jsonl"):
            with self.written:
                self.objects.append(key)
                self.written.notify_all()
        return uri

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        with self.written:
            assert self.written.wait_for(lambda: len(self.objects) >= count, timeout), self.objects


class FailingSink(DiskSink):
    """The Disk sink with its first ``failures`` object writes failing; ``after_write`` fails after writing."""

    def __init__(self, root: Path, failures: int, *, after_write: bool = False) -> None:
        super().__init__(root, fsync=False)
        self.failures = failures
        self.after_write = after_write
        self.attempts = 0

    def put(self, key: str, data: bytes) -> str:
        if key.endswith(".jsonl"):
            self.attempts += 1
            if self.failures > 0:
                self.failures -= 1
                if self.after_write:
                    super().put(key, data)  # the object lands, then the writer "crashes"
                raise Unavailable(f"injected failure writing {key}")
        return super().put(key, data)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "captures"


@pytest.fixture
def make(tmp_path: Path, dest: Path, clock: FakeClock) -> Iterator[Callable[..., CaptureService]]:
    """Build services on one spool; each is closed (without flushing) at teardown."""
    services: list[CaptureService] = []

    def build(sink: DiskSink | None = None, *, start: bool = False, **knobs: Any) -> CaptureService:
        config = CaptureConfig(
            spool_dir=tmp_path / "spool",
            destination_root=dest,
            device_name="dev-1",
            fleet_name="fleet-a",
            folder_prefix="pre",
            fsync=False,
            **knobs,
        )
        service = CaptureService(
            config, sink if sink is not None else DiskSink(dest, fsync=False), clock=clock, start=start
        )
        services.append(service)
        return service

    yield build
    for service in services:
        service.close(flush=False)


def capture(
    capture_id: str | None = None,
    *,
    model: str = "digits",
    when: datetime = datetime(2024, 5, 6, 9, 30, 15, tzinfo=UTC),
    size: int = 64,
    **changes: Any,
) -> CaptureRequest:
    request = CaptureRequest(
        capture_id=capture_id or str(uuid.uuid4()),
        model_name=model,
        model_version="1.0",
        inference_time=when,
        inputs=(CaptureTensor("x", DataType.FLOAT32, (1, size), np.arange(size, dtype="<f4").tobytes()),),
        outputs=(CaptureTensor("y", DataType.INT64, (1,), np.array([7], dtype="<i8").tobytes()),),
        aux_inputs=(CaptureAux("meta", "JSON", b'{"camera": 2}'),),
    )
    return replace(request, **changes)


def objects(dest: Path) -> list[str]:
    return [key for key in DiskSink(dest).list() if key.endswith(".jsonl")]


def records(dest: Path) -> list[dict[str, Any]]:
    sink = DiskSink(dest)
    return [json.loads(line) for key in objects(dest) for line in sink.get(key).splitlines()]


def event_ids(dest: Path) -> list[str]:
    return [r["eventMetadata"]["eventId"] for r in records(dest)]


# --- layout and format ----------------------------------------------------------------------------


def test_written_record_and_layout(make: Callable[..., CaptureService], dest: Path) -> None:
    service = make()
    request = capture()
    service.submit(request)
    assert service.status(request.capture_id) is CaptureStatus.IN_PROGRESS
    assert objects(dest) == []
    service.flush()
    assert service.status(request.capture_id) is CaptureStatus.SUCCESS

    [key] = objects(dest)
    match = KEY_RE.fullmatch(key)
    assert match is not None, key
    # the hour folder is the inference time's UTC hour (09), not the write time's (10)
    assert match.groups() == ("2024", "05", "06", "09")
    [line] = DiskSink(dest).get(key).splitlines()
    record = decode_record(line, DiskSink(dest).read_uri)
    assert record.device_name == "dev-1"
    assert record.fleet_name == "fleet-a"
    assert record.request == replace(request, inference_time=request.inference_time.replace(microsecond=0))
    stats = service.stats()
    assert stats["written"] == 1
    assert stats["batches_written"] == 1
    assert stats["pending"] == 0
    assert stats["last_write_time"] == START


def test_embed_limit_boundary_on_disk(make: Callable[..., CaptureService], dest: Path) -> None:
    service = make()
    small = capture(inputs=(CaptureTensor("img", DataType.UINT8, (3072,), bytes(3072)),))
    big = capture(
        inputs=(CaptureTensor("img", DataType.UINT8, (3073,), bytes(range(256)) * 12 + b"\x01"),),
        aux_outputs=(CaptureAux("csv", "CSV", b"a,b\n" * 1000),),
    )
    service.submit(small)
    service.submit(big)
    service.flush()
    sink = DiskSink(dest)
    by_id = {r["eventMetadata"]["eventId"]: r for r in records(dest)}
    embedded = by_id[small.capture_id]["deviceFleetInputs"][0]
    assert "data" in embedded
    assert "data-ref" not in embedded
    ref = by_id[big.capture_id]["deviceFleetInputs"][0]
    assert "data" not in ref
    assert ref["data-ref"].startswith(
        dest.absolute().as_uri() + "/pre/fleet-a/digits/2024/05/06/09/raw-data/"
    )
    assert ref["data-ref"].endswith("-input-0.bin")
    assert sink.read_uri(ref["data-ref"]) == big.inputs[0].data
    assert entry_array(ref, sink.read_uri).tobytes() == big.inputs[0].data
    aux = by_id[big.capture_id]["deviceFleetAuxiliaryOutputs"][0]
    assert aux["encoding"] == "CSV"
    assert sink.read_uri(aux["data-ref"]) == b"a,b\n" * 1000
    assert len([k for k in sink.list() if "/raw-data/" in k]) == 2


def test_batches_split_by_model_and_hour(make: Callable[..., CaptureService], dest: Path) -> None:
    service = make(batch_size=2, buffer_size=30)
    nine = datetime(2024, 5, 6, 9, 59, 59, tzinfo=UTC)
    ten = datetime(2024, 5, 6, 10, 0, 0, tzinfo=UTC)
    ids = [
        capture(model=model, when=when)
        for model, when in [
            ("digits", nine),
            ("digits", ten),
            ("other", nine),
            ("digits", nine),
            ("digits", nine),
        ]
    ]
    for request in ids[:1] + ids[2:] + ids[1:2]:
        service.submit(request)
    service.flush()
    keys = objects(dest)
    folders = sorted(key.rsplit("/", 1)[0] for key in keys)
    assert folders == [
        "pre/fleet-a/digits/2024/05/06/09",
        "pre/fleet-a/digits/2024/05/06/09",  # three captures of one hour, batch size 2
        "pre/fleet-a/digits/2024/05/06/10",
        "pre/fleet-a/other/2024/05/06/09",
    ]
    assert sorted(event_ids(dest)) == sorted(r.capture_id for r in ids)
    sink = DiskSink(dest)
    assert max(len(sink.get(k).splitlines()) for k in keys) == 2


# --- batching triggers ----------------------------------------------------------------------------


def test_batch_written_when_batch_size_captures_wait(make: Callable[..., CaptureService], dest: Path) -> None:
    service = make(batch_size=3, push_period_seconds=3600)
    first = [capture() for _ in range(2)]
    for request in first:
        service.submit(request)
    service.run_due()
    assert objects(dest) == []
    third = capture()
    service.submit(third)
    service.run_due()
    assert len(objects(dest)) == 1
    assert event_ids(dest) == [r.capture_id for r in (*first, third)]  # arrival order


def test_batch_written_when_push_period_passes(
    make: Callable[..., CaptureService], dest: Path, clock: FakeClock
) -> None:
    service = make(batch_size=10, push_period_seconds=4)
    request = capture()
    service.submit(request)
    clock.advance(3.999)
    service.run_due()
    assert objects(dest) == []
    assert service.status(request.capture_id) is CaptureStatus.IN_PROGRESS
    clock.advance(0.001)
    service.run_due()
    assert event_ids(dest) == [request.capture_id]
    assert service.status(request.capture_id) is CaptureStatus.SUCCESS


def test_background_writer_by_batch_size(make: Callable[..., CaptureService], dest: Path) -> None:
    sink = RecordingSink(dest)
    service = make(sink, start=True, batch_size=3, push_period_seconds=3600)
    requests = [capture() for _ in range(3)]
    for request in requests:
        service.submit(request)
    sink.wait_for(1)
    assert event_ids(dest) == [r.capture_id for r in requests]


def test_background_writer_by_push_period(tmp_path: Path, dest: Path) -> None:
    sink = RecordingSink(dest)
    config = CaptureConfig(
        spool_dir=tmp_path / "spool",
        destination_root=dest,
        device_name="dev-1",
        fleet_name="fleet-a",
        fsync=False,
        push_period_seconds=0.05,
    )
    service = CaptureService(config, sink)  # the real clock
    try:
        request = capture(when=datetime.now(UTC))
        service.submit(request)
        sink.wait_for(1)
        assert event_ids(dest) == [request.capture_id]
    finally:
        service.close()


# --- refusals leave nothing behind ----------------------------------------------------------------


def _future() -> datetime:
    return START + timedelta(seconds=5, microseconds=1)


@pytest.mark.parametrize(
    ("request_", "error", "code", "message"),
    [
        (capture("not-a-uuid"), InvalidArgument, Code.INVALID_ARGUMENT, "is not a UUID string"),
        (capture(when=_future()), OutOfRange, Code.OUT_OF_RANGE, "is in the future"),
        (capture(when=datetime(2024, 1, 1)), InvalidArgument, Code.INVALID_ARGUMENT, "timezone-aware"),
        (
            capture(inputs=(CaptureTensor("x", DataType.FLOAT32, (1, 64), bytes(3)),)),
            InvalidArgument,
            Code.INVALID_ARGUMENT,
            "3 bytes of data, but FLOAT32",
        ),
        (
            capture(aux_outputs=(CaptureAux("a", "YAML", b"a: 1"),)),
            InvalidArgument,
            Code.INVALID_ARGUMENT,
            "unknown encoding 'YAML'",
        ),
        (
            capture(aux_outputs=(CaptureAux("a", "JSON", b"{"),)),
            InvalidArgument,
            Code.INVALID_ARGUMENT,
            "not valid JSON",
        ),
        (capture(size=300_000), ResourceExhausted, Code.RESOURCE_EXHAUSTED, "the limit is 1000000"),
    ],
    ids=["malformed-id", "future", "naive-time", "byte-length", "encoding", "json-content", "too-big"],
)
def test_refused_capture_leaves_nothing(
    make: Callable[..., CaptureService],
    dest: Path,
    request_: CaptureRequest,
    error: type[EdgefleetError],
    code: Code,
    message: str,
) -> None:
    service = make(max_capture_bytes=1_000_000)
    with pytest.raises(error, match=message) as info:
        service.submit(request_)
    assert info.value.code is code
    assert service.stats()["pending"] == 0
    assert service.status(request_.capture_id) is CaptureStatus.NOT_FOUND
    service.flush()
    assert DiskSink(dest).list() == []
    # the id was not burnt: once corrected, the same capture is accepted
    if code is not Code.INVALID_ARGUMENT or "UUID" not in message:
        service.submit(capture(request_.capture_id))
        assert service.status(request_.capture_id) is CaptureStatus.IN_PROGRESS


def test_clock_skew_allowance(make: Callable[..., CaptureService], clock: FakeClock) -> None:
    service = make(clock_skew_seconds=5)
    service.submit(capture(when=clock.now + timedelta(seconds=5)))
    with pytest.raises(OutOfRange, match="allowed clock skew 5 s"):
        service.submit(capture(when=clock.now + timedelta(seconds=6)))


def test_duplicate_ids(make: Callable[..., CaptureService], dest: Path) -> None:
    service = make()
    request = capture("123e4567-e89b-12d3-a456-426614174000")
    service.submit(request)
    for spelling in (
        "123e4567-e89b-12d3-a456-426614174000",
        "123E4567-E89B-12D3-A456-426614174000",
        "{123e4567-e89b-12d3-a456-426614174000}",
        "urn:uuid:123e4567-e89b-12d3-a456-426614174000",
        "123e4567e89b12d3a456426614174000",
    ):
        with pytest.raises(
            AlreadyExists, match="capture id 123e4567-e89b-12d3-a456-426614174000 was already used"
        ):
            service.submit(capture(spelling))  # while pending
        assert service.status(spelling) is CaptureStatus.IN_PROGRESS
    service.flush()
    with pytest.raises(AlreadyExists, match="was already used") as info:
        service.submit(capture("123E4567E89B12D3A456426614174000"))  # once written (remembered)
    assert info.value.code is Code.ALREADY_EXISTS
    assert event_ids(dest) == ["123e4567-e89b-12d3-a456-426614174000"]
    assert service.status("{123E4567-E89B-12D3-A456-426614174000}") is CaptureStatus.SUCCESS


def test_unknown_and_malformed_ids_are_not_found(make: Callable[..., CaptureService]) -> None:
    service = make()
    assert service.status(str(uuid.uuid4())) is CaptureStatus.NOT_FOUND
    assert service.status("garbage") is CaptureStatus.NOT_FOUND


def test_spool_full(make: Callable[..., CaptureService], dest: Path) -> None:
    service = make(buffer_size=3, batch_size=3, push_period_seconds=3600)
    accepted = [capture() for _ in range(3)]
    for request in accepted:
        service.submit(request)
    refused = capture()
    with pytest.raises(ResourceExhausted, match=r"capture buffer is full \(3 of 3") as info:
        service.submit(refused)
    assert info.value.code is Code.RESOURCE_EXHAUSTED
    assert service.status(refused.capture_id) is CaptureStatus.NOT_FOUND
    assert service.stats()["pending"] == 3
    service.flush()
    assert sorted(event_ids(dest)) == sorted(r.capture_id for r in accepted)
    service.submit(refused)  # room again once written
    assert service.status(refused.capture_id) is CaptureStatus.IN_PROGRESS


def payload_bytes(tmp_path: Path) -> int:
    """What one ``capture()`` occupies in the spool (its encoded payload), measured on a spare spool."""
    probe = CaptureService(
        CaptureConfig(
            spool_dir=tmp_path / "probe-spool",
            destination_root=tmp_path / "probe",
            device_name="dev-1",
            fleet_name="fleet-a",
            fsync=False,
        ),
        start=False,
    )
    try:
        probe.submit(capture())
        size = probe.stats()["pending_bytes"]
    finally:
        probe.close(flush=False)
    assert isinstance(size, int) and size > 0
    return size


def test_spool_is_bounded_in_bytes(make: Callable[..., CaptureService], dest: Path, tmp_path: Path) -> None:
    size = payload_bytes(tmp_path)
    service = make(buffer_size=100, batch_size=10, push_period_seconds=3600, buffer_bytes=3 * size)
    accepted = [capture() for _ in range(3)]
    for request in accepted:
        service.submit(request)
    refused = capture()
    with pytest.raises(ResourceExhausted, match=rf"3 of 100 captures, {3 * size} of {3 * size} bytes"):
        service.submit(refused)
    assert service.status(refused.capture_id) is CaptureStatus.NOT_FOUND
    stats = service.stats()
    assert (stats["pending"], stats["pending_bytes"], stats["buffer_bytes"]) == (3, 3 * size, 3 * size)
    service.flush()
    assert sorted(event_ids(dest)) == sorted(r.capture_id for r in accepted)
    assert service.stats()["pending_bytes"] == 0
    service.submit(refused)  # room again once written
    assert service.stats()["pending_bytes"] == size


def test_a_capture_larger_than_the_whole_buffer_is_refused_whatever_the_policy(
    make: Callable[..., CaptureService], tmp_path: Path
) -> None:
    size = payload_bytes(tmp_path)
    service = make(buffer_bytes=size - 1, full_policy=FullPolicy.DROP_OLDEST)
    request = capture()
    with pytest.raises(ResourceExhausted, match=r"larger than the whole capture buffer"):
        service.submit(request)
    assert service.status(request.capture_id) is CaptureStatus.NOT_FOUND
    assert service.stats()["dropped"] == 0


def test_drop_oldest_makes_room_and_counts_what_it_dropped(
    make: Callable[..., CaptureService], dest: Path
) -> None:
    service = make(buffer_size=3, batch_size=3, push_period_seconds=3600, full_policy=FullPolicy.DROP_OLDEST)
    requests = [capture() for _ in range(5)]
    for request in requests:
        service.submit(request)
    assert [service.status(r.capture_id) for r in requests] == [
        CaptureStatus.FAILURE,  # dropped, oldest first: never silently
        CaptureStatus.FAILURE,
        CaptureStatus.IN_PROGRESS,
        CaptureStatus.IN_PROGRESS,
        CaptureStatus.IN_PROGRESS,
    ]
    stats = service.stats()
    assert (stats["dropped"], stats["failed"], stats["pending"]) == (2, 2, 3)
    service.flush()
    assert sorted(event_ids(dest)) == sorted(r.capture_id for r in requests[2:])


def test_drop_oldest_never_drops_a_batch_being_written(
    make: Callable[..., CaptureService], dest: Path
) -> None:
    sink = FailingSink(dest, failures=100)
    service = make(sink, buffer_size=2, batch_size=2, full_policy=FullPolicy.DROP_OLDEST)
    in_batch = [capture() for _ in range(2)]
    for request in in_batch:
        service.submit(request)
    service.run_due()  # the batch is formed (its key chosen) and its write fails: it is kept
    refused = capture()
    with pytest.raises(ResourceExhausted, match="capture buffer is full"):
        service.submit(refused)
    assert all(service.status(r.capture_id) is CaptureStatus.IN_PROGRESS for r in in_batch)
    assert service.stats()["dropped"] == 0


def test_backlog_shows_records_bytes_and_the_oldest_age(
    make: Callable[..., CaptureService], clock: FakeClock, tmp_path: Path
) -> None:
    size = payload_bytes(tmp_path)
    service = make(push_period_seconds=3600)
    assert service.stats()["oldest_pending_age_seconds"] is None
    service.submit(capture())
    clock.advance(30)
    service.submit(capture())
    clock.advance(12)
    stats = service.stats()
    assert (stats["pending"], stats["pending_bytes"]) == (2, 2 * size)
    assert stats["oldest_pending_age_seconds"] == pytest.approx(42)
    assert stats["buffer_size"] == 30 and stats["buffer_bytes"] is None


def test_the_default_retry_policy_keeps_retrying_while_the_spool_holds_the_batch(
    make: Callable[..., CaptureService], dest: Path, clock: FakeClock
) -> None:
    assert RetryPolicy().max_attempts == 0
    sink = FailingSink(dest, failures=60)
    service = make(sink, batch_size=1)
    request = capture()
    service.submit(request)
    for _ in range(60):  # two hours of failures at the longest wait
        service.run_due()
        clock.advance(RetryPolicy().max_seconds)
        assert service.status(request.capture_id) is CaptureStatus.IN_PROGRESS
    service.run_due()
    assert sink.attempts == 61
    assert service.status(request.capture_id) is CaptureStatus.SUCCESS
    assert event_ids(dest) == [request.capture_id]


def test_retry_jitter_shortens_waits_within_its_fraction() -> None:
    policy = RetryPolicy(initial_seconds=10, multiplier=2, max_seconds=80, jitter=0.25)
    rng = random.Random(7)
    waits = [policy.delay(n, rng) for n in (1, 2, 3, 4, 5) for _ in range(50)]
    bounds = [(10, 7.5), (20, 15), (40, 30), (80, 60), (80, 60)]
    for index, wait in enumerate(waits):
        top, bottom = bounds[index // 50]
        assert bottom <= wait <= top
    assert len({round(w, 6) for w in waits[:50]}) > 1  # really random
    assert policy.delay(3) == 40  # without a random source: the plain wait


def test_status_history_is_bounded(make: Callable[..., CaptureService]) -> None:
    service = make(status_history=2)
    requests = [capture() for _ in range(3)]
    for request in requests:
        service.submit(request)
        service.flush()
    assert [service.status(r.capture_id) for r in requests] == [
        CaptureStatus.NOT_FOUND,  # forgotten: older than the last 2 finished captures
        CaptureStatus.SUCCESS,
        CaptureStatus.SUCCESS,
    ]


# --- durability and failures ----------------------------------------------------------------------


def test_restart_picks_up_pending_captures(
    make: Callable[..., CaptureService], dest: Path, clock: FakeClock
) -> None:
    first = make(push_period_seconds=4)
    requests = [capture() for _ in range(5)]
    for request in requests:
        first.submit(request)
    first.close(flush=False)
    assert objects(dest) == []

    second = make(push_period_seconds=4)
    assert second.stats()["pending"] == 5
    assert second.status(requests[0].capture_id) is CaptureStatus.IN_PROGRESS
    with pytest.raises(AlreadyExists, match="already used"):
        second.submit(capture(requests[0].capture_id))
    clock.advance(4)  # the push period counts from the original submit
    second.run_due()
    assert event_ids(dest) == [r.capture_id for r in requests]
    assert {second.status(r.capture_id) for r in requests} == {CaptureStatus.SUCCESS}


def test_restarted_background_writer_writes_leftovers(
    make: Callable[..., CaptureService], dest: Path
) -> None:
    first = make(batch_size=2)
    requests = [capture() for _ in range(2)]
    for request in requests:
        first.submit(request)
    first.close(flush=False)
    sink = RecordingSink(dest)
    make(sink, start=True, batch_size=2)
    sink.wait_for(1)
    assert event_ids(dest) == [r.capture_id for r in requests]


def test_sink_failure_retries_with_backoff(
    make: Callable[..., CaptureService], dest: Path, clock: FakeClock
) -> None:
    sink = FailingSink(dest, failures=2)
    service = make(sink, batch_size=1, retry=RetryPolicy(initial_seconds=1, multiplier=2, max_attempts=5))
    request = capture()
    service.submit(request)
    service.run_due()  # attempt 1 fails
    assert service.status(request.capture_id) is CaptureStatus.IN_PROGRESS
    assert service.stats()["write_errors"] == 1
    assert "injected failure" in service.stats()["last_error"]
    service.run_due()  # backing off: no attempt
    assert sink.attempts == 1
    clock.advance(1)
    service.run_due()  # attempt 2 fails; next wait is 2 s
    clock.advance(1.5)
    service.run_due()
    assert sink.attempts == 2
    clock.advance(0.5)
    service.run_due()  # attempt 3 succeeds
    assert sink.attempts == 3
    assert service.status(request.capture_id) is CaptureStatus.SUCCESS
    assert event_ids(dest) == [request.capture_id]


def test_failure_after_max_attempts(
    make: Callable[..., CaptureService], dest: Path, clock: FakeClock
) -> None:
    sink = FailingSink(dest, failures=100)
    service = make(sink, batch_size=1, retry=RetryPolicy(initial_seconds=1, max_attempts=3))
    request = capture()
    service.submit(request)
    for _ in range(3):
        service.run_due()
        clock.advance(10)
    assert sink.attempts == 3
    assert service.status(request.capture_id) is CaptureStatus.FAILURE
    stats = service.stats()
    assert stats["failed"] == 1
    assert stats["pending"] == 0
    with pytest.raises(AlreadyExists, match="already used"):
        service.submit(capture(request.capture_id))


def test_flush_raises_when_the_sink_fails_and_keeps_captures(
    make: Callable[..., CaptureService], dest: Path
) -> None:
    service = make(FailingSink(dest, failures=1))
    request = capture()
    service.submit(request)
    with pytest.raises(
        Unavailable, match=r"1 batch\(es\) not written \(kept in the spool\): injected failure"
    ):
        service.flush()
    assert service.status(request.capture_id) is CaptureStatus.IN_PROGRESS
    service.flush()  # flush ignores the backoff
    assert service.status(request.capture_id) is CaptureStatus.SUCCESS


def test_crash_after_object_written_rewrites_the_same_key(
    make: Callable[..., CaptureService], dest: Path
) -> None:
    crashing = FailingSink(dest, failures=1, after_write=True)
    service = make(crashing, batch_size=3)
    requests = [capture() for _ in range(3)]
    for request in requests:
        service.submit(request)
    with pytest.raises(Unavailable, match="injected failure"):
        service.flush()
    [key] = objects(dest)  # the object landed but was never marked written
    assert service.status(requests[0].capture_id) is CaptureStatus.IN_PROGRESS
    service.close(flush=False)

    restarted = make()
    restarted.flush()
    assert objects(dest) == [key]  # same key rewritten, no second object
    assert event_ids(dest) == [r.capture_id for r in requests]
    assert {restarted.status(r.capture_id) for r in requests} == {CaptureStatus.SUCCESS}


def test_damaged_spool_payload_becomes_failure(
    make: Callable[..., CaptureService], dest: Path, tmp_path: Path
) -> None:
    first = make()
    good, bad = capture(), capture()
    first.submit(good)
    first.submit(bad)
    first.close(flush=False)
    db = sqlite3.connect(tmp_path / "spool" / DB_FILE)
    with db:
        db.execute("UPDATE pending SET payload = x'00000010' WHERE capture_key = ?", (bad.capture_id,))
    db.close()

    second = make()
    second.flush()
    assert second.status(good.capture_id) is CaptureStatus.SUCCESS
    assert second.status(bad.capture_id) is CaptureStatus.FAILURE
    assert event_ids(dest) == [good.capture_id]
    assert second.stats()["failed"] == 1


def test_one_service_per_spool(make: Callable[..., CaptureService]) -> None:
    make()
    with pytest.raises(FailedPrecondition, match="is in use by another process or service"):
        make()


def test_close_flushes_and_refuses_new_captures(tmp_path: Path, dest: Path) -> None:
    config = CaptureConfig(
        spool_dir=tmp_path / "spool", destination_root=dest, device_name="d", fleet_name="f", fsync=False
    )
    service = CaptureService(config, start=True)  # default sink: DiskSink(destination_root)
    request = capture(when=datetime.now(UTC))
    service.submit(request)
    service.close()
    assert event_ids(dest) == [request.capture_id]
    assert service.stats()["state"] == "closed"
    with pytest.raises(Unavailable, match="shutting down"):
        service.submit(capture())
    with pytest.raises(Unavailable, match="is closed"):
        service.status(request.capture_id)
    service.close()  # idempotent


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"batch_size": 31}, r"batch size \(31\) must be between 1 and the buffer size \(30\)"),
        ({"batch_size": 0}, "batch size"),
        ({"base64_embed_limit": 3073}, "between 0 and 3072"),
        ({"fleet_name": ".."}, "capture fleet name '..' cannot be used as a folder name"),
        ({"fleet_name": "a/b"}, "capture fleet name"),
        ({"folder_prefix": "a/../b"}, "folder prefix"),
        ({"device_name": ""}, "device name is required"),
        ({"push_period_seconds": -1}, "must not be negative"),
    ],
)
def test_config_validation(tmp_path: Path, knobs: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {
        "spool_dir": tmp_path,
        "destination_root": tmp_path,
        "device_name": "d",
        "fleet_name": "f",
    }
    with pytest.raises(InvalidArgument, match=message):
        CaptureConfig(**{**base, **knobs})


@pytest.mark.parametrize(
    "knobs",
    [
        {"multiplier": 0.5},
        {"initial_seconds": 0},
        {"max_seconds": 0.5},
        {"max_attempts": -1},
        {"jitter": 1.0},
        {"jitter": -0.1},
    ],
)
def test_retry_policy_validation(knobs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument, match="retry policy"):
        RetryPolicy(**knobs)


def test_retry_delays_grow_to_the_cap() -> None:
    policy = RetryPolicy(initial_seconds=1, multiplier=2, max_seconds=5)
    assert [policy.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_config_defaults_match_the_vendor_defaults(tmp_path: Path) -> None:
    config = CaptureConfig(spool_dir=tmp_path, destination_root=tmp_path, device_name="d", fleet_name="f")
    assert config.buffer_size == 30
    assert config.batch_size == 10
    assert config.push_period_seconds == 4
    assert config.base64_embed_limit == 3072
    assert config.fsync is True


# --- group commit ---------------------------------------------------------------------------------


def test_concurrent_captures_each_get_their_own_answer(
    make: Callable[..., CaptureService], dest: Path
) -> None:
    """Threads capturing at once share commits, but every capture is answered on its own: accepted
    up to the bound, refused beyond it, a reused id refused once, nothing lost or counted twice."""
    service = make(buffer_size=150, batch_size=150, push_period_seconds=3600)
    shared = str(uuid.uuid4())  # every thread tries this id once: exactly one may have it
    accepted: list[str] = []
    refused: list[str] = []
    reused: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for index in range(25):
            request = capture(shared if index == 10 else None)
            try:
                service.submit(request)
            except ResourceExhausted:
                outcome = refused
            except AlreadyExists:
                outcome = reused
            else:
                outcome = accepted
            with lock:
                outcome.append(request.capture_id)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert len(accepted) + len(refused) + len(reused) == 200
    assert len(accepted) == 150 and accepted.count(shared) <= 1
    assert set(reused) <= {shared}
    assert accepted.count(shared) + reused.count(shared) + refused.count(shared) == 8
    assert service.stats()["pending"] == 150
    service.flush()
    assert sorted(event_ids(dest)) == sorted(accepted)
    assert all(service.status(i) is CaptureStatus.NOT_FOUND for i in refused if i != shared)
