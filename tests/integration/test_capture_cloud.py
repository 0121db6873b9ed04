"""The Cloud capture destination against a real S3-protocol HTTP server (moto's server mode).

Records land in the bucket with the spec's key layout and the Disk destination's bytes; a store
outage and a SIGKILL of the agent mid-upload lose and duplicate nothing; a misconfigured
destination fails the agent's start with a message naming what is wrong.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import (
    AgentProcess,
    build,
    make_linear_onnx,
    short_socket_dir,
    spawn_agent,
    start,
    wait_for,
    wait_ready,
    write_native_config,
)
from test_agent_capture import capture_request, wait_status

from edgefleet.capture import CaptureConfig, CaptureRequest, CaptureService, CaptureStatus, CaptureTensor
from edgefleet.capture.sinks import DiskSink, open_sink
from edgefleet.core.errors import Unavailable
from edgefleet.core.tensors import DataType
from edgefleet.protocol.agent.proto import agent_pb2

boto3 = pytest.importorskip("boto3")
BUCKET = "edgefleet-test"


def bucket_objects(endpoint: str, prefix: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=endpoint)
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            out[item["Key"]] = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
    return out


def event_ids(objects: dict[str, bytes]) -> list[str]:
    return [
        json.loads(line)["eventMetadata"]["eventId"]
        for key, body in objects.items()
        if key.endswith(".jsonl")
        for line in body.decode().splitlines()
        if line
    ]


@pytest.fixture
def package(tmp_path: Path, keys: Path) -> Path:
    return build(
        make_linear_onnx(tmp_path / "m.onnx"), keys, tmp_path / "pkgs", name="cap-model", version="3.2"
    )


def cloud(endpoint: str, prefix: str, **knobs: Any) -> dict[str, Any]:
    return {
        "destination": "Cloud",
        "s3_bucket": BUCKET,
        "s3_endpoint_url": endpoint,
        "folder_prefix": prefix,
        **knobs,
    }


def test_cloud_records_land_in_the_bucket_in_the_key_layout(
    tmp_path: Path, trust: Path, package: Path, s3_endpoint: str
) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    proc = start(tmp_path, trust, capture=cloud(s3_endpoint, prefix, batch_size=1))
    try:
        stub = proc.stub()
        stub.LoadModel(agent_pb2.LoadModelRequest(url=str(package), name="cap"))
        capture_id = str(uuid.uuid4())
        stub.CaptureData(capture_request(capture_id))
        wait_status(stub, capture_id, agent_pb2.SUCCESS)
    finally:
        proc.stop()
    objects = bucket_objects(s3_endpoint, prefix + "/")
    (key,) = [k for k in objects if k.endswith(".jsonl")]
    parts = key.split("/")
    assert parts[:3] == [prefix, "test-fleet", "cap-model"]
    assert len(parts) == 8 and len(parts[-1]) == len("0" * 32 + ".jsonl")
    assert not (tmp_path / "captures").exists() or not list((tmp_path / "captures").rglob("*.jsonl"))
    (record,) = [json.loads(line) for line in objects[key].decode().splitlines()]
    assert record["eventMetadata"]["eventId"] == capture_id
    (big,) = record["deviceFleetAuxiliaryOutputs"]
    ref = big["data-ref"]
    assert ref.startswith(f"s3://{BUCKET}/{prefix}/test-fleet/cap-model/") and "/raw-data/" in ref
    assert objects[ref.removeprefix(f"s3://{BUCKET}/")] == b"\x01" * 5000


class FixedClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now = datetime.fromtimestamp(self.now.timestamp() + seconds, UTC)


def small_capture(clock: FixedClock, capture_id: str | None = None) -> CaptureRequest:
    x = np.arange(6, dtype=np.float32)
    return CaptureRequest(
        model_name="m",
        model_version="1",
        capture_id=capture_id or str(uuid.uuid4()),
        inference_time=clock.now,
        inputs=(CaptureTensor("x", DataType.FLOAT32, (6,), x.tobytes()),),
        outputs=(CaptureTensor("y", DataType.FLOAT32, (6,), (x * 2).tobytes()),),
    )


def service(tmp_path: Path, name: str, sink: Any, clock: FixedClock, **knobs: Any) -> CaptureService:
    config = CaptureConfig(
        spool_dir=tmp_path / f"spool-{name}",
        destination_root=tmp_path / f"disk-{name}",
        device_name="dev-1",
        fleet_name="fleet-a",
        folder_prefix=knobs.pop("folder_prefix", "pre"),
        fsync=False,
        **knobs,
    )
    return CaptureService(config, sink, clock=clock, start=False)


def test_cloud_writes_the_bytes_disk_writes(tmp_path: Path, s3_endpoint: str) -> None:
    clock = FixedClock()
    prefix = f"t{uuid.uuid4().hex[:12]}"
    disk = service(tmp_path, "disk", DiskSink(tmp_path / "disk", fsync=False), clock, folder_prefix=prefix)
    s3 = service(
        tmp_path, "s3", open_sink(f"s3://{BUCKET}", s3_endpoint_url=s3_endpoint), clock, folder_prefix=prefix
    )
    try:
        request = small_capture(clock)
        for svc in (disk, s3):
            svc.submit(request)
            svc.flush()
            assert svc.status(request.capture_id) is CaptureStatus.SUCCESS
    finally:
        disk.close()
        s3.close()
    (disk_file,) = (tmp_path / "disk").rglob("*.jsonl")
    (cloud_key, cloud_body), *rest = bucket_objects(s3_endpoint, prefix + "/").items()
    assert not rest
    # the same folders (the object's own name is a fresh batch id) and the same record bytes
    assert disk_file.relative_to(tmp_path / "disk").parent.as_posix() == cloud_key.rsplit("/", 1)[0]
    assert disk_file.read_bytes() == cloud_body


class RestartableS3:
    """A moto S3 server on a fixed loopback port that can be stopped and started again (its
    buckets live in the process, so they survive the restart)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._factory = ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, self.port = self.server.get_host_and_port()
        self.url = f"http://{host}:{self.port}"
        self.running = True

    def stop(self) -> None:
        self.server.stop()
        self.running = False

    def start(self) -> None:
        self.server = self._factory(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.running = True


@pytest.fixture
def restartable_s3(s3_endpoint: str) -> Iterator[RestartableS3]:
    # s3_endpoint sets the test credentials in the environment and creates the bucket (moto keeps
    # buckets per process, so every moto server here sees it).
    server = RestartableS3()
    try:
        yield server
    finally:
        if server.running:
            server.stop()


def test_a_store_outage_loses_nothing(tmp_path: Path, restartable_s3: RestartableS3) -> None:
    clock = FixedClock()
    prefix = f"t{uuid.uuid4().hex[:12]}"
    sink = open_sink(f"s3://{BUCKET}", s3_endpoint_url=restartable_s3.url)
    svc = service(tmp_path, "outage", sink, clock, folder_prefix=prefix, batch_size=2)
    try:
        first = [small_capture(clock) for _ in range(2)]
        for request in first:
            svc.submit(request)
        svc.run_due()
        assert all(svc.status(r.capture_id) is CaptureStatus.SUCCESS for r in first)
        restartable_s3.stop()
        during = [small_capture(clock) for _ in range(4)]
        for request in during:
            svc.submit(request)
        with pytest.raises(Unavailable, match="not written"):
            svc.flush()
        assert all(svc.status(r.capture_id) is CaptureStatus.IN_PROGRESS for r in during)
        assert svc.stats()["pending"] == 4 and svc.stats()["write_errors"] >= 1
        restartable_s3.start()
        clock.advance(3600)  # past any backoff: the default policy never gives up
        svc.run_due()
        assert all(svc.status(r.capture_id) is CaptureStatus.SUCCESS for r in during)
    finally:
        svc.close()
    ids = event_ids(bucket_objects(restartable_s3.url, prefix + "/"))
    assert Counter(ids) == Counter(r.capture_id for r in first + during)


def test_sigkill_mid_upload_loses_and_duplicates_nothing(
    tmp_path: Path, trust: Path, package: Path, s3_endpoint: str
) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    knobs = cloud(s3_endpoint, prefix, batch_size=1, buffer_size=200, push_period_seconds=0)
    proc = start(tmp_path, trust, capture=knobs)
    stub = proc.stub()
    stub.LoadModel(agent_pb2.LoadModelRequest(url=str(package), name="cap"))
    ids = [str(uuid.uuid4()) for _ in range(40)]
    for capture_id in ids:
        stub.CaptureData(capture_request(capture_id))  # acknowledged: durably spooled
    wait_for(lambda: event_ids(bucket_objects(s3_endpoint, prefix + "/")), "the first upload")
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait(timeout=30)
    uploaded_before = len(event_ids(bucket_objects(s3_endpoint, prefix + "/")))
    again = start(tmp_path, trust, capture=knobs)
    try:
        again.stub().LoadModel(agent_pb2.LoadModelRequest(url=str(package), name="cap"))
        for capture_id in ids:
            wait_status(again.stub(), capture_id, agent_pb2.SUCCESS)
    finally:
        again.stop()
    counts = Counter(event_ids(bucket_objects(s3_endpoint, prefix + "/")))
    assert counts == Counter(ids), f"{uploaded_before} uploaded before the kill"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connections to it are refused (held, so no race)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.mark.parametrize("case", ["unknown bucket", "unreachable endpoint", "no credentials"])
def test_a_misconfigured_cloud_destination_fails_the_start(
    tmp_path: Path, trust: Path, s3_endpoint: str, closed_port: int, case: str
) -> None:
    knobs = cloud(s3_endpoint, "pre")
    env: dict[str, str] = {}
    if case == "unknown bucket":
        knobs["s3_bucket"] = "no-such-bucket-here"
        expected = "bucket 'no-such-bucket-here' does not exist"
    elif case == "unreachable endpoint":
        knobs["s3_endpoint_url"] = f"http://127.0.0.1:{closed_port}"
        expected = f"endpoint http://127.0.0.1:{closed_port}\\) cannot be reached"
    else:
        env = {
            "AWS_ACCESS_KEY_ID": "",
            "AWS_SECRET_ACCESS_KEY": "",
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        expected = "no AWS credentials found"
    config = write_native_config(
        tmp_path / "agent.json",
        trust_dir=trust,
        data_dir=tmp_path / "agent-data",
        capture_dir=tmp_path / "captures",
        capture=knobs,
    )
    log_path = tmp_path / "agent.log"
    proc = spawn_agent(config, short_socket_dir() / "agent.sock", log_path, env=env)
    try:
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = log_path.read_text()
    assert code != 0, log
    assert "FAILED_PRECONDITION: capture destination Cloud (s3://" in log
    assert re.search(expected, log), log


def test_a_cloud_destination_needs_a_bucket(tmp_path: Path, trust: Path) -> None:
    config = write_native_config(
        tmp_path / "agent.json",
        trust_dir=trust,
        data_dir=tmp_path / "agent-data",
        capture_dir=tmp_path / "captures",
        capture={"destination": "Cloud"},
    )
    log_path = tmp_path / "agent.log"
    proc = spawn_agent(config, short_socket_dir() / "agent.sock", log_path)
    assert proc.wait(timeout=120) != 0
    assert "capture destination Cloud needs a bucket" in log_path.read_text()


def test_a_disk_destination_that_fails_now_does_not_stop_the_agent(tmp_path: Path, trust: Path) -> None:
    (tmp_path / "captures").write_text("a file where the capture directory should be")
    proc: AgentProcess = start(tmp_path, trust)
    try:
        wait_ready(proc)
        assert "cannot be written now (captures are kept and retried)" in proc.log()
    finally:
        proc.stop()
