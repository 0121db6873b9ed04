"""Capture durability across SIGKILL: a real process acknowledges captures and is killed.

Every capture whose ``submit`` returned in the killed process must be written, exactly once, by
a new service on the same spool, including when the kill lands after a batch object was written
but before it was marked written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.capture import CaptureConfig, CaptureService, CaptureStatus, DiskSink, decode_record

CHILD = r"""
import sys, threading, uuid
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.capture import CaptureConfig, CaptureRequest, CaptureService, CaptureTensor, DiskSink
from edgefleet.core.tensors import DataType

spool, dest, count, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]


class HangingSink(DiskSink):
    # Writes a batch object, reports it, then hangs before the service can mark it written.
    def put(self, key, data):
        uri = super().put(key, data)
        if key.endswith(".jsonl"):
            print("WROTE", key, flush=True)
            threading.Event().wait()
        return uri


config = CaptureConfig(
    spool_dir=Path(spool),
    destination_root=Path(dest),
    device_name="dev-1",
    fleet_name="fleet",
    buffer_size=100,
    batch_size=count if mode == "mid-write" else 100,
    push_period_seconds=3600,
    fsync=True,
)
sink = HangingSink(dest) if mode == "mid-write" else DiskSink(dest)
service = CaptureService(config, sink)
for i in range(count):
    capture_id = str(uuid.uuid4())
    size = 2000 if i % 3 == 0 else 4  # some payloads exceed the embed limit: raw-data files
    service.submit(
        CaptureRequest(
            capture_id=capture_id,
            model_name="digits",
            model_version="1",
            inference_time=datetime.now(UTC),
            inputs=(CaptureTensor("x", DataType.INT16, (size,), i.to_bytes(2, "little") * size),),
        )
    )
    print("ACK", capture_id, flush=True)
threading.Event().wait()
"""


@pytest.fixture
def child() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def run_until(
    procs: list[subprocess.Popen[str]], tmp_path: Path, count: int, mode: str
) -> tuple[list[str], str]:
    """Start the child; read until it acknowledged ``count`` captures (and wrote, in mid-write mode); SIGKILL it."""
    stderr = (tmp_path / "child.err").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "spool"), str(tmp_path / "dest"), str(count), mode],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    stderr.close()
    procs.append(proc)
    assert proc.stdout is not None
    acked: list[str] = []
    wrote = ""
    while len(acked) < count or (mode == "mid-write" and not wrote):
        line = proc.stdout.readline()
        assert line, f"child exited early: {(tmp_path / 'child.err').read_text()}"
        kind, value = line.split()
        if kind == "ACK":
            acked.append(value)
        else:
            wrote = value
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    return acked, wrote


def restart_and_flush(tmp_path: Path) -> CaptureService:
    config = CaptureConfig(
        spool_dir=tmp_path / "spool",
        destination_root=tmp_path / "dest",
        device_name="dev-1",
        fleet_name="fleet",
        buffer_size=100,
        push_period_seconds=3600,
    )
    service = CaptureService(config, start=False)
    service.flush()
    return service


def written_ids(dest: Path) -> tuple[list[str], list[str]]:
    """(object keys, event ids of every record in them), checking every record decodes."""
    sink = DiskSink(dest)
    keys = [key for key in sink.list() if key.endswith(".jsonl")]
    ids: list[str] = []
    for key in keys:
        for line in sink.get(key).splitlines():
            record = decode_record(line, sink.read_uri)  # raw-data references resolve too
            ids.append(record.request.capture_id)
            assert json.loads(line)["eventMetadata"]["deviceFleetName"] == "fleet"
    return keys, ids


def test_acknowledged_captures_survive_sigkill(tmp_path: Path, child: list[subprocess.Popen[str]]) -> None:
    acked, _ = run_until(child, tmp_path, 25, "acked")
    assert written_ids(tmp_path / "dest") == ([], [])  # long push period: nothing written before the kill

    service = restart_and_flush(tmp_path)
    try:
        keys, ids = written_ids(tmp_path / "dest")
        assert sorted(ids) == sorted(acked)  # all of them, each exactly once
        assert len(keys) == 3  # batch size 10
        assert {service.status(capture_id) for capture_id in acked} == {CaptureStatus.SUCCESS}
    finally:
        service.close()


def test_kill_after_object_written_does_not_duplicate(
    tmp_path: Path, child: list[subprocess.Popen[str]]
) -> None:
    acked, wrote = run_until(child, tmp_path, 6, "mid-write")
    keys, ids = written_ids(tmp_path / "dest")
    assert keys == [wrote]  # the object landed; the spool never heard it was written
    assert sorted(ids) == sorted(acked)

    service = restart_and_flush(tmp_path)
    try:
        keys, ids = written_ids(tmp_path / "dest")
        assert keys == [wrote]  # rewritten under the same key: no duplicate object
        assert sorted(ids) == sorted(acked)
        assert {service.status(capture_id) for capture_id in acked} == {CaptureStatus.SUCCESS}
    finally:
        service.close()
