"""Captures through the control plane, end to end: a real control plane (on a thread), a device
enrolled with the daemon's own code, and a real agent process uploading with its certificate.

``presigned``: the server's capture store is a real S3-protocol server (moto's server mode) and the
agent PUTs straight to it with the URLs the server signs; ``relay``: the store is a directory and
the bytes go through the server. Either way the objects are those the Disk destination writes,
byte for byte (``data-ref`` URIs name the store instead of the disk root), under the same keys.
"""

from __future__ import annotations

import json
import re
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support import build, make_linear_onnx, short_socket_dir, spawn_agent, start, write_native_config
from test_agent_capture import capture_request, wait_status

from edgefleet.device.https import enroller
from edgefleet.device.identity import Identity, enroll
from edgefleet.protocol.agent.proto import agent_pb2

BUCKET = "edgefleet-test"
FLEET, DEVICE = "test-fleet", "test-device"  # the names support.write_native_config gives the agent
INFERENCE_SECONDS = 1_780_000_000  # one fixed inference time: both agents write the same hour folder


@pytest.fixture
def package(tmp_path: Path, keys: Path) -> Path:
    return build(
        make_linear_onnx(tmp_path / "m.onnx"), keys, tmp_path / "pkgs", name="cap-model", version="3.2"
    )


@contextmanager
def control_plane(
    tmp_path: Path, trust: Path, captures: str, s3_endpoint: str | None
) -> Iterator[tuple[Any, Identity]]:
    """A control plane with fleet and device registered, and the device enrolled under tmp_path/device."""
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig
    from edgefleet.server import tokens
    from edgefleet.server.config import ServerConfig, Timing
    from edgefleet.server.runner import start_in_thread

    server = start_in_thread(
        ServerConfig(
            data_dir=tmp_path / "server",
            port=0,
            device_port=0,
            trust_dir=trust,
            captures_uri=captures,
            s3_endpoint_url=s3_endpoint,
            timing=Timing(shutdown_grace=1),
        )
    )
    try:
        with server.state.db.session() as session:
            secret = tokens.create_token(session, "ops", server.state.db.now())
        op = FleetClient(ClientConfig(server.endpoints.api_url, secret, Path(server.endpoints.ca_cert)))
        try:
            op.create_fleet(FLEET, f"s3://{BUCKET}/{FLEET}")
            [reg] = op.register_devices(FLEET, [{"DeviceName": DEVICE}])
        finally:
            op.close()
        identity = enroll(tmp_path / "device", server.endpoints.api_url, reg["EnrolmentToken"], enroller())
        yield server, identity
    finally:
        server.stop()


def through_control_plane(identity: Identity, **knobs: Any) -> dict[str, Any]:
    return {
        "destination": "Cloud",
        "batch_size": 1,
        "control_plane_url": identity.device_url,
        "device_cert_file": str(identity.cert_path),
        "device_key_file": str(identity.key_path),
        "ca_cert_file": str(identity.ca_path),
        **knobs,
    }


def capture_once(workdir: Path, trust: Path, package: Path, capture: dict[str, Any], capture_id: str) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    proc = start(workdir, trust, capture=capture)
    try:
        stub = proc.stub()
        stub.LoadModel(agent_pb2.LoadModelRequest(url=str(package), name="cap"))
        stub.CaptureData(capture_request(capture_id, seconds=INFERENCE_SECONDS))
        wait_status(stub, capture_id, agent_pb2.SUCCESS)
    finally:
        proc.stop()
    assert "through the control plane" in proc.log() or capture.get("destination") == "Disk"


@pytest.mark.parametrize("mode", ["presigned", "relay"])
def test_captures_through_the_control_plane_are_the_disk_bytes(
    tmp_path: Path, trust: Path, package: Path, mode: str, request: pytest.FixtureRequest
) -> None:
    if mode == "presigned":
        endpoint: str | None = request.getfixturevalue("s3_endpoint")
        captures = f"s3://{BUCKET}/{uuid.uuid4().hex}"
        knobs: dict[str, Any] = {}  # presigned is the default with a control plane and a certificate
    else:
        endpoint, captures, knobs = None, (tmp_path / "server-captures").as_uri(), {"upload": "relay"}
    capture_id = str(uuid.uuid4())
    with control_plane(tmp_path, trust, captures, endpoint) as (server, identity):
        capture_once(tmp_path / "agent", trust, package, through_control_plane(identity, **knobs), capture_id)
        store = server.state.captures
        stored = {key: store.get_bytes(key) for key in store.list(f"{FLEET}/")}
    capture_once(tmp_path / "disk", trust, package, {"destination": "Disk"}, capture_id)
    disk_root = tmp_path / "disk" / "captures"
    on_disk = {
        p.relative_to(disk_root).as_posix(): p.read_bytes() for p in disk_root.rglob("*") if p.is_file()
    }

    (disk_key,) = [k for k in on_disk if k.endswith(".jsonl")]
    (store_key,) = [k for k in stored if k.endswith(".jsonl")]
    assert disk_key.rsplit("/", 1)[0] == store_key.rsplit("/", 1)[0]  # same folders; the batch id is fresh
    assert disk_key.startswith(f"{FLEET}/cap-model/")
    # the records, byte for byte, once the data-ref root names the store instead of the disk
    assert on_disk[disk_key].replace(disk_root.as_uri().encode(), store.uri.encode()) == stored[store_key]
    raw = {k: v for k, v in on_disk.items() if "/raw-data/" in k}
    assert raw and all(stored[k] == v for k, v in raw.items())
    assert len(stored) == len(on_disk)
    (record,) = [json.loads(line) for line in stored[store_key].decode().splitlines()]
    (big,) = record["deviceFleetAuxiliaryOutputs"]
    assert big["data-ref"] == store.url(next(iter(raw)))


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        yield probe.getsockname()[1]


def _start_fails(tmp_path: Path, trust: Path, capture: dict[str, Any]) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = write_native_config(
        tmp_path / "agent.json",
        trust_dir=trust,
        data_dir=tmp_path / "agent-data",
        capture_dir=tmp_path / "captures",
        capture=capture,
    )
    log_path = tmp_path / "agent.log"
    proc = spawn_agent(config, short_socket_dir() / "agent.sock", log_path)
    try:
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = log_path.read_text()
    assert code != 0, log
    return log


def test_an_unreadable_certificate_fails_the_start(tmp_path: Path, trust: Path, closed_port: int) -> None:
    identity_files = {}
    for name in ("device_cert_file", "device_key_file", "ca_cert_file"):
        (tmp_path / name).write_text("not PEM")
        identity_files[name] = str(tmp_path / name)
    log = _start_fails(
        tmp_path,
        trust,
        {"destination": "Cloud", "control_plane_url": f"https://127.0.0.1:{closed_port}", **identity_files},
    )
    assert "FAILED_PRECONDITION: capture destination Cloud (presigned upload through the control plane" in log
    assert "cannot use the device certificate" in log  # the PEM files are checked before any call


def test_a_control_plane_that_does_not_answer_fails_the_start(
    tmp_path: Path, trust: Path, closed_port: int
) -> None:
    with control_plane(tmp_path, trust, (tmp_path / "c").as_uri(), None) as (_, identity):
        capture = through_control_plane(identity, control_plane_url=f"https://127.0.0.1:{closed_port}")
        log = _start_fails(tmp_path / "agent", trust, capture)
    assert re.search(
        rf"cannot be used: asking https://127\.0\.0\.1:{closed_port} for capture upload URLs: cannot reach",
        log,
    ), log


def test_no_certificate_fails_the_start(tmp_path: Path, trust: Path) -> None:
    log = _start_fails(
        tmp_path,
        trust,
        {"destination": "Cloud", "upload": "presigned", "control_plane_url": "https://cp:8444"},
    )
    assert (
        "capture.upload = presigned sends captures through the control plane over mutual TLS and needs:"
        in log
    )
    assert "capture.device_cert_file (sagemaker_edge_provider_aws_cert_file)" in log


class StoreFront:
    """An HTTP front of the S3 server that refuses (403) the first PUT of each key, as S3 refuses
    a presigned URL that expired before it was used, or answers 503 to every PUT when ``down``."""

    def __init__(self, upstream: str) -> None:
        import http.server
        import threading

        import httpx

        self.puts: list[str] = []
        self.down = False
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "PUT" and "X-Amz-Signature" in self.path:
                    path = self.path.split("?", 1)[0]
                    front.puts.append(path)
                    refused = 503 if front.down else 403 if front.puts.count(path) == 1 else 0
                    if refused:
                        self.send_response(refused)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                }
                answer = httpx.request(self.command, upstream + self.path, content=body, headers=headers)
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "content-encoding",
                    ):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def test_a_refused_url_is_asked_for_again_and_an_outage_is_unavailable(
    tmp_path: Path, trust: Path, s3_endpoint: str
) -> None:
    from edgefleet.core.errors import Unavailable
    from edgefleet.storage.presigned import ControlPlaneStore, DeviceEndpoint

    front = StoreFront(s3_endpoint)
    captures = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    try:
        with control_plane(tmp_path, trust, captures, front.url) as (server, identity):
            store = ControlPlaneStore(
                DeviceEndpoint(
                    identity.device_url,
                    DEVICE,
                    FLEET,
                    identity.cert_path,
                    identity.key_path,
                    identity.ca_path,
                )
            )
            try:
                store.check()
                key = f"{FLEET}/cap-model/2026/05/28/20/{uuid.uuid4().hex}.jsonl"
                store.put_bytes(key, b"line\n")
                assert len(front.puts) == 2  # refused once, then a fresh URL from the control plane
                assert server.state.captures.get_bytes(key) == b"line\n"
                front.down = True
                with pytest.raises(Unavailable, match="the store answered 503"):
                    store.put_bytes(f"{FLEET}/cap-model/2026/05/28/20/other.jsonl", b"x")
            finally:
                store.close()
    finally:
        front.close()


def test_a_certificate_replaced_on_disk_is_read_again(tmp_path: Path, trust: Path) -> None:
    """The daemon replaces the certificate files in place (renewal, re-enrolment) and the server
    then refuses the old certificate (401): the store reads the files again and goes on."""
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig
    from edgefleet.server import tokens
    from edgefleet.storage.presigned import ControlPlaneStore, DeviceEndpoint, UploadMode

    with control_plane(tmp_path, trust, (tmp_path / "c").as_uri(), None) as (server, identity):
        endpoint = DeviceEndpoint(
            identity.device_url, DEVICE, FLEET, identity.cert_path, identity.key_path, identity.ca_path
        )
        store = ControlPlaneStore(endpoint, UploadMode.RELAY)
        try:
            store.check()
            with server.state.db.session() as session:
                secret = tokens.create_token(session, "ops-2", server.state.db.now())
            op = FleetClient(ClientConfig(server.endpoints.api_url, secret, Path(server.endpoints.ca_cert)))
            try:
                token = op.new_enrolment_token(DEVICE)["EnrolmentToken"]
            finally:
                op.close()
            enroll(tmp_path / "device", server.endpoints.api_url, token, enroller(), force=True)
            key = f"{FLEET}/cap-model/2026/05/28/20/{uuid.uuid4().hex}.jsonl"
            store.put_bytes(key, b"after re-enrolment\n")
            assert server.state.captures.get_bytes(key) == b"after re-enrolment\n"
        finally:
            store.close()
