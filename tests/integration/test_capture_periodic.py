"""Disk with periodic upload against a real S3-protocol HTTP server (moto's server mode).

Captures are on Disk at once and in the bucket after the period, as the bytes a Cloud destination
writes; a store outage and a SIGKILL of the agent mid-transfer lose and duplicate nothing; a
misconfigured periodic upload fails the agent's start; the upload log names the cloud objects.
"""

from __future__ import annotations

import json
import re
import signal
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support import (
    build,
    make_linear_onnx,
    short_socket_dir,
    spawn_agent,
    start,
    wait_for,
    write_native_config,
)
from test_agent_capture import capture_request, wait_status
from test_capture_cloud import (
    BUCKET,
    FixedClock,
    RestartableS3,
    bucket_objects,
    event_ids,
    restartable_s3,  # noqa: F401 - a fixture
    small_capture,
)

from edgefleet.capture import CaptureAux, CaptureConfig, CaptureRequest, CaptureService, CaptureStatus
from edgefleet.capture.sinks import DiskSink, Sink, open_sink
from edgefleet.core.errors import Unavailable
from edgefleet.protocol.agent.proto import agent_pb2, extensions_pb2

boto3 = pytest.importorskip("boto3")


@pytest.fixture
def package(tmp_path: Path, keys: Path) -> Path:
    return build(
        make_linear_onnx(tmp_path / "m.onnx"), keys, tmp_path / "pkgs", name="cap-model", version="3.2"
    )


def periodic(endpoint: str, prefix: str, **knobs: Any) -> dict[str, Any]:
    return {
        "destination": "Disk",
        "periodic_upload": True,
        "periodic_upload_period_seconds": 0.5,
        "s3_bucket": BUCKET,
        "s3_endpoint_url": endpoint,
        "folder_prefix": prefix,
        **knobs,
    }


def with_raw(clock: FixedClock) -> CaptureRequest:
    """A capture with an embedded tensor and one payload too big to embed (a raw-data file)."""
    request = small_capture(clock)
    return CaptureRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        capture_id=request.capture_id,
        inference_time=request.inference_time,
        inputs=request.inputs,
        outputs=request.outputs,
        aux_outputs=(CaptureAux("big", "NONE", bytes(range(256)) * 20),),
    )


def service(tmp_path: Path, name: str, sink: Sink, clock: FixedClock, **kwargs: Any) -> CaptureService:
    config = CaptureConfig(
        spool_dir=tmp_path / f"spool-{name}",
        destination_root=tmp_path / f"disk-{name}",
        device_name="dev-1",
        fleet_name="fleet-a",
        folder_prefix=kwargs.pop("folder_prefix"),
        fsync=False,
        batch_size=kwargs.pop("batch_size", 10),
    )
    return CaptureService(config, sink, clock=clock, start=False, **kwargs)


def test_the_bucket_gets_the_bytes_cloud_writes_and_the_log_names_them(
    tmp_path: Path, s3_endpoint: str
) -> None:
    clock = FixedClock()
    prefix = f"t{uuid.uuid4().hex[:12]}"
    s3 = open_sink(f"s3://{BUCKET}", s3_endpoint_url=s3_endpoint)
    disk_root = tmp_path / "disk"
    disk = service(
        tmp_path,
        "periodic",
        DiskSink(disk_root, fsync=False),
        clock,
        folder_prefix=prefix,
        periodic_upload=s3,
    )
    cloud = service(
        tmp_path,
        "cloud",
        open_sink(f"s3://{BUCKET}", s3_endpoint_url=s3_endpoint),
        clock,
        folder_prefix=prefix,
    )
    try:
        request = with_raw(clock)
        disk.submit(request)
        disk.flush()
        # on Disk now, SUCCESS, and nothing in the bucket or the upload log before the transfer
        assert disk.status(request.capture_id) is CaptureStatus.SUCCESS
        (disk_file,) = disk_root.rglob("*.jsonl")
        assert bucket_objects(s3_endpoint, prefix + "/") == {}
        assert disk.uploads().entries == ()
        stats = disk.stats()
        assert stats["periodic_upload"] and stats["transfer_pending"] == 1
        raw_size = len(bytes(range(256)) * 20)
        assert stats["transfer_pending_bytes"] == disk_file.stat().st_size + raw_size
        disk.transfer_now()
        after = disk.stats()
        assert after["transfer_pending"] == 0 and after["transferred"] == 1
        assert after["transfer_destination"] == f"s3://{BUCKET}"

        transferred = bucket_objects(s3_endpoint, prefix + "/")
        cloud.submit(request)
        cloud.flush()
    finally:
        disk.close()
        cloud.close()
    (periodic_key,) = [k for k in transferred if k.endswith(".jsonl")]
    assert periodic_key == disk_file.relative_to(disk_root).as_posix()  # the Disk object's key
    everything = bucket_objects(s3_endpoint, prefix + "/")
    (cloud_key,) = [k for k in everything if k.endswith(".jsonl") and k != periodic_key]
    # byte for byte what Cloud wrote: same folders, same record bytes (data-ref into the bucket)
    assert periodic_key.rsplit("/", 1)[0] == cloud_key.rsplit("/", 1)[0]
    assert transferred[periodic_key] == everything[cloud_key]
    (record,) = [json.loads(line) for line in transferred[periodic_key].splitlines()]
    ref = record["deviceFleetAuxiliaryOutputs"][0]["data-ref"]
    assert ref.startswith(f"s3://{BUCKET}/{prefix}/fleet-a/m/")
    assert transferred[ref.removeprefix(f"s3://{BUCKET}/")] == bytes(range(256)) * 20
    # Disk keeps its own file:// data-refs: the only difference
    disk_record = json.loads(disk_file.read_bytes())
    assert disk_record["deviceFleetAuxiliaryOutputs"][0]["data-ref"].startswith(disk_root.as_uri())
    disk_record["deviceFleetAuxiliaryOutputs"][0]["data-ref"] = ref
    assert disk_record == record


def test_a_store_outage_loses_nothing_and_is_visible(tmp_path: Path, restartable_s3: RestartableS3) -> None:  # noqa: F811
    clock = FixedClock()
    prefix = f"t{uuid.uuid4().hex[:12]}"
    s3 = open_sink(f"s3://{BUCKET}", s3_endpoint_url=restartable_s3.url)
    svc = service(
        tmp_path,
        "outage",
        DiskSink(tmp_path / "disk", fsync=False),
        clock,
        folder_prefix=prefix,
        batch_size=2,
        periodic_upload=s3,
    )
    try:
        first = [with_raw(clock) for _ in range(2)]
        for request in first:
            svc.submit(request)
        svc.flush()
        svc.transfer_now()
        restartable_s3.stop()
        during = [with_raw(clock) for _ in range(4)]
        for request in during:
            svc.submit(request)
        svc.flush()  # Disk does not need the store
        assert all(svc.status(r.capture_id) is CaptureStatus.SUCCESS for r in first + during)
        clock.advance(90)
        with pytest.raises(Unavailable, match="capture periodic upload"):
            svc.transfer_now()
        stats = svc.stats()
        assert stats["transfer_pending"] == 2 and stats["transfer_errors"] >= 1
        assert stats["transfer_oldest_age_seconds"] == 90.0
        assert stats["transfer_last_error"]
        assert len(svc.uploads().entries) == 1  # only what the cloud confirmed
        restartable_s3.start()
        svc.transfer_now()
        assert svc.stats()["transfer_pending"] == 0
        keys = [e.upload.key for e in svc.uploads().entries]
    finally:
        svc.close()
    objects = bucket_objects(restartable_s3.url, prefix + "/")
    assert Counter(event_ids(objects)) == Counter(r.capture_id for r in first + during)
    assert sorted(keys) == sorted(k for k in objects if k.endswith(".jsonl"))
    assert len([k for k in objects if "/raw-data/" in k]) == 6


class FailingAfter(Sink):
    """The S3 sink, failing every put after the first ``allowed`` (a crash of the uploader: what it
    had confirmed stays confirmed)."""

    def __init__(self, inner: Sink, allowed: int) -> None:
        super().__init__(inner.store)
        self.allowed = allowed
        self.puts: list[str] = []

    def put(self, key: str, data: bytes) -> str:
        if len(self.puts) >= self.allowed:
            raise Unavailable("store gone")
        self.puts.append(key)
        return super().put(key, data)


def test_a_transfer_interrupted_between_parts_resumes_at_the_part_in_flight(
    tmp_path: Path, s3_endpoint: str
) -> None:
    clock = FixedClock()
    prefix = f"t{uuid.uuid4().hex[:12]}"
    first = [with_raw(clock) for _ in range(3)]  # one object with three raw-data files
    failing = FailingAfter(open_sink(f"s3://{BUCKET}", s3_endpoint_url=s3_endpoint), allowed=2)
    disk = DiskSink(tmp_path / "disk", fsync=False)
    svc = service(tmp_path, "resume", disk, clock, folder_prefix=prefix, periodic_upload=failing)
    try:
        for request in first:
            svc.submit(request)
        svc.flush()
        with pytest.raises(Unavailable, match="store gone"):
            svc.transfer_now()
    finally:
        svc.close()
    done = list(failing.puts)
    assert len(done) == 2 and all("/raw-data/" in key for key in done)
    # a new agent on the same spool uploads only what the store had not confirmed
    again = FailingAfter(open_sink(f"s3://{BUCKET}", s3_endpoint_url=s3_endpoint), allowed=100)
    svc = service(tmp_path, "resume", disk, clock, folder_prefix=prefix, periodic_upload=again)
    try:
        svc.transfer_now()
        (entry,) = svc.uploads().entries
    finally:
        svc.close()
    assert len(again.puts) == 2 and again.puts[-1] == entry.upload.key and again.puts[0] not in done
    assert Counter(event_ids(bucket_objects(s3_endpoint, prefix + "/"))) == Counter(
        r.capture_id for r in first
    )


def test_the_agent_writes_disk_now_and_the_bucket_after_the_period(
    tmp_path: Path, trust: Path, package: Path, s3_endpoint: str
) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    proc = start(tmp_path, trust, capture=periodic(s3_endpoint, prefix, batch_size=1))
    try:
        stub = proc.stub()
        stub.LoadModel(agent_pb2.LoadModelRequest(url=str(package), name="cap"))
        capture_id = str(uuid.uuid4())
        stub.CaptureData(capture_request(capture_id))
        wait_status(stub, capture_id, agent_pb2.SUCCESS)
        (disk_file,) = (tmp_path / "captures").rglob("*.jsonl")  # on Disk as soon as it is SUCCESS
        key = disk_file.relative_to(tmp_path / "captures").as_posix()
        objects = wait_for(lambda: bucket_objects(s3_endpoint, key), "the periodic upload")
        ext = proc.ext()
        stats = wait_for(
            lambda: (s := ext.GetCaptureStatistics(extensions_pb2.CaptureStatisticsRequest())).transferred
            and s,
            "the transfer counted",
        )
        assert stats.periodic_upload and stats.transfer_destination == f"s3://{BUCKET}"
        assert stats.transfer_pending == 0 and stats.destination == (tmp_path / "captures").as_uri()
        uploads = ext.GetCaptureUploads(extensions_pb2.CaptureUploadsRequest()).uploads
        assert [u.key for u in uploads] == [key] and uploads[0].size == len(objects[key])
    finally:
        proc.stop()
    assert event_ids(objects) == [capture_id]
    (record,) = [json.loads(line) for line in objects[key].splitlines()]
    ref = record["deviceFleetAuxiliaryOutputs"][0]["data-ref"]
    assert ref.startswith(f"s3://{BUCKET}/{prefix}/test-fleet/cap-model/")
    assert bucket_objects(s3_endpoint, ref.removeprefix(f"s3://{BUCKET}/")) != {}


def test_sigkill_mid_transfer_loses_and_duplicates_nothing(
    tmp_path: Path, trust: Path, package: Path, s3_endpoint: str
) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    knobs = periodic(s3_endpoint, prefix, batch_size=1, buffer_size=200, push_period_seconds=0)
    proc = start(tmp_path, trust, capture=knobs)
    stub = proc.stub()
    stub.LoadModel(agent_pb2.LoadModelRequest(url=str(package), name="cap"))
    ids = [str(uuid.uuid4()) for _ in range(40)]
    for capture_id in ids:
        stub.CaptureData(capture_request(capture_id))
    wait_for(lambda: event_ids(bucket_objects(s3_endpoint, prefix + "/")), "the first transfer")
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait(timeout=30)
    before = len(event_ids(bucket_objects(s3_endpoint, prefix + "/")))
    again = start(tmp_path, trust, capture=knobs)
    try:
        again.stub().LoadModel(agent_pb2.LoadModelRequest(url=str(package), name="cap"))
        for capture_id in ids:
            wait_status(again.stub(), capture_id, agent_pb2.SUCCESS)
        ext = again.ext()
        wait_for(
            lambda: ext.GetCaptureStatistics(extensions_pb2.CaptureStatisticsRequest()).transfer_pending == 0
            and len(event_ids(bucket_objects(s3_endpoint, prefix + "/"))) >= len(ids),
            "every Disk object in the bucket",
        )
        uploads = ext.GetCaptureUploads(extensions_pb2.CaptureUploadsRequest(limit=1000)).uploads
    finally:
        again.stop()
    objects = bucket_objects(s3_endpoint, prefix + "/")
    assert Counter(event_ids(objects)) == Counter(ids), f"{before} in the bucket before the kill"
    on_disk = sorted(
        p.relative_to(tmp_path / "captures").as_posix() for p in (tmp_path / "captures").rglob("*.jsonl")
    )
    assert sorted(k for k in objects if k.endswith(".jsonl")) == on_disk
    # the upload log (what the daemon reports) names each cloud object once
    assert sorted(u.key for u in uploads) == on_disk


def config_file(tmp_path: Path, trust: Path, **capture: Any) -> Path:
    return write_native_config(
        tmp_path / "agent.json",
        trust_dir=trust,
        data_dir=tmp_path / "agent-data",
        capture_dir=tmp_path / "captures",
        capture=capture,
    )


@pytest.mark.parametrize(
    ("knobs", "expected"),
    [
        (
            {"s3_bucket": "no-such-bucket-here"},
            "FAILED_PRECONDITION: capture periodic upload \\(s3://no-such-bucket-here\\) cannot be used: "
            ".*bucket 'no-such-bucket-here' does not exist",
        ),
        ({"s3_bucket": ""}, "INVALID_ARGUMENT: capture destination Disk with periodic upload needs a bucket"),
        (
            {"s3_bucket": "", "upload": "presigned", "control_plane_url": "https://127.0.0.1:9"},
            "capture.upload = presigned sends captures through the control plane over mutual TLS and "
            "needs: capture.device_cert_file .* \\(for Disk with periodic upload\\)",
        ),
    ],
)
def test_a_misconfigured_periodic_upload_fails_the_start(
    tmp_path: Path, trust: Path, s3_endpoint: str, knobs: dict[str, Any], expected: str
) -> None:
    config = config_file(tmp_path, trust, **{**periodic(s3_endpoint, "pre"), **knobs})
    log_path = tmp_path / "agent.log"
    proc = spawn_agent(config, short_socket_dir() / "agent.sock", log_path)
    try:
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = log_path.read_text()
    assert code != 0, log
    assert re.search(expected, log), log


def test_periodic_upload_through_the_control_plane(
    tmp_path: Path, trust: Path, package: Path, s3_endpoint: str
) -> None:
    from test_capture_presigned import FLEET, INFERENCE_SECONDS, control_plane

    captures = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    capture_id = str(uuid.uuid4())
    with control_plane(tmp_path, trust, captures, s3_endpoint) as (server, identity):
        knobs = {
            "destination": "Disk",
            "periodic_upload": True,
            "periodic_upload_period_seconds": 0.5,
            "batch_size": 1,
            "control_plane_url": identity.device_url,
            "device_cert_file": str(identity.cert_path),
            "device_key_file": str(identity.key_path),
            "ca_cert_file": str(identity.ca_path),
        }
        (tmp_path / "agent").mkdir()
        proc = start(tmp_path / "agent", trust, capture=knobs)
        try:
            stub = proc.stub()
            stub.LoadModel(agent_pb2.LoadModelRequest(url=str(package), name="cap"))
            stub.CaptureData(capture_request(capture_id, seconds=INFERENCE_SECONDS))
            wait_status(stub, capture_id, agent_pb2.SUCCESS)
            ext = proc.ext()
            wait_for(
                lambda: ext.GetCaptureStatistics(extensions_pb2.CaptureStatisticsRequest()).transferred,
                "the periodic upload",
            )
            uploads = ext.GetCaptureUploads(extensions_pb2.CaptureUploadsRequest()).uploads
        finally:
            proc.stop()
        assert (
            "capture periodic upload: " in proc.log()
            and "presigned upload through the control plane" in proc.log()
        )
        store = server.state.captures
        stored = {key: store.get_bytes(key) for key in store.list(f"{FLEET}/")}
    disk_root = tmp_path / "agent" / "captures"
    on_disk = {
        p.relative_to(disk_root).as_posix(): p.read_bytes() for p in disk_root.rglob("*") if p.is_file()
    }
    assert set(stored) == set(on_disk)  # the same keys
    (key,) = [k for k in on_disk if k.endswith(".jsonl")]
    assert [u.key for u in uploads] == [key]
    # the records, byte for byte, once the data-ref root names the store instead of the disk
    assert on_disk[key].replace(disk_root.as_uri().encode(), store.uri.encode()) == stored[key]
    assert all(stored[k] == v for k, v in on_disk.items() if "/raw-data/" in k)


def test_the_agent_rides_out_a_store_outage(
    tmp_path: Path,
    trust: Path,
    package: Path,
    restartable_s3: RestartableS3,  # noqa: F811 - the fixture
) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    proc = start(tmp_path, trust, capture=periodic(restartable_s3.url, prefix, batch_size=1))
    try:
        stub, ext = proc.stub(), proc.ext()
        stub.LoadModel(agent_pb2.LoadModelRequest(url=str(package), name="cap"))
        restartable_s3.stop()
        ids = [str(uuid.uuid4()) for _ in range(3)]
        for capture_id in ids:
            stub.CaptureData(capture_request(capture_id))
        for capture_id in ids:
            wait_status(stub, capture_id, agent_pb2.SUCCESS)  # Disk does not wait for the store
        assert len(list((tmp_path / "captures").rglob("*.jsonl"))) == 3
        stats = wait_for(
            lambda: (s := ext.GetCaptureStatistics(extensions_pb2.CaptureStatisticsRequest())).transfer_errors
            and s,
            "a failed transfer",
        )
        assert stats.transfer_pending == 3 and stats.transfer_pending_bytes > 0
        assert stats.transfer_oldest_age_seconds > 0 and stats.transfer_last_error
        # what the daemon puts in heartbeats: nothing uploaded, the transfer backlog
        page = ext.GetCaptureUploads(extensions_pb2.CaptureUploadsRequest())
        assert page.uploads == [] and page.transfer_pending == 3
        assert page.transfer_pending_bytes == stats.transfer_pending_bytes
        assert page.transfer_oldest_age_seconds > 0
        restartable_s3.start()
        wait_for(
            lambda: ext.GetCaptureStatistics(extensions_pb2.CaptureStatisticsRequest()).transfer_pending == 0,
            "the transfer after the outage",
        )
        uploads = ext.GetCaptureUploads(extensions_pb2.CaptureUploadsRequest()).uploads
    finally:
        proc.stop()
    objects = bucket_objects(restartable_s3.url, prefix + "/")
    assert Counter(event_ids(objects)) == Counter(ids)
    assert sorted(u.key for u in uploads) == sorted(k for k in objects if k.endswith(".jsonl"))
