"""The control plane under hostile HTTP clients: a real ``edgefleet server`` process (uvicorn, real TLS
and mutual TLS on loopback ports) fed over raw sockets, on SQLite and on PostgreSQL.

Large bodies are refused from their headers (401 before a byte of the body is read, 413 over the
cap) and the server's memory does not grow with them; bad client input is a 4xx with the error body
on a connection that stays usable; a NUL in a filter is refused; upload errors name the uploaded
file; ``/docs`` and ``/redoc`` load nothing from off the server; ``--workers`` starts workers.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from server_testkit import enrol, scratch_pg_database

from edgefleet.core.errors import Code, EdgefleetError
from edgefleet.opclient.client import FleetClient
from edgefleet.opclient.config import ClientConfig

MiB = 1024 * 1024
#: the hostile body: far above every cap but the upload's
HUGE = 200 * MiB
#: how much the server's peak RSS may grow over all the huge bodies of a test (each is 200 MiB)
MEMORY_SLACK = 100 * MiB


@dataclass
class Served:
    """A server process and what the tests need to talk to it."""

    process: subprocess.Popen[str]
    api_url: str
    device_url: str
    ca: Path
    token: str
    device_dir: Path  # cert.pem / key.pem / ca.pem of an enrolled device
    device_name: str
    fleet: str


def _start_server(data: Path, trust: Path, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    command = [sys.executable, "-m", "edgefleet", "server", "--port", "0", "--data-dir", str(data)]
    command += ["--trust", str(trust), *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 180)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("edgefleet server ready:"):
        process.kill()
        _, err = process.communicate(timeout=30)
        pytest.fail(f"edgefleet server did not start: {line!r} {err}")
    return process, line.split()


def _stop(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()
    return process.returncode


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, signing_keys: Any
) -> Iterator[Served]:
    from edgefleet.server import tokens
    from edgefleet.server.db.engine import Database

    data = tmp_path_factory.mktemp(f"hostile-{request.param}")
    with contextlib.ExitStack() as stack:
        if request.param == "postgresql":
            url = stack.enter_context(scratch_pg_database("edgefleet_http"))
            extra = ["--database", url]
        else:
            url, extra = f"sqlite:///{data / 'edgefleet.db'}", []
        process, words = _start_server(data, signing_keys.trust_dir, *extra)
        try:
            db = Database(url, pool_size=1)
            try:
                with db.session() as session:
                    token = tokens.create_token(session, "ops-hostile", db.now())
            finally:
                db.close()
            api, ca = words[5], Path(words[-1])
            with FleetClient(ClientConfig(api, token, ca)) as op:
                op.create_fleet("hostile", "s3://bucket/hostile")
                [registered] = op.register_devices("hostile", [{"DeviceName": "cam-h"}])
            device = enrol(api, registered["EnrolmentToken"], data / "device")
            device.close()
            yield Served(process, api, words[8], ca, token, data / "device", "cam-h", "hostile")
        finally:
            _stop(process)


# ------------------------------------------------------------------------------- raw HTTP/1.1


def _connect(url: str, served: Served, *, device: bool = False) -> ssl.SSLSocket:
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=str(served.ca))
    if device:
        context.load_cert_chain(str(served.device_dir / "cert.pem"), str(served.device_dir / "key.pem"))
    raw = socket.create_connection((parts.hostname, parts.port), timeout=60)
    return context.wrap_socket(raw, server_hostname=parts.hostname)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def error(self) -> tuple[int, str, str]:
        detail = json.loads(self.body)["error"]
        return self.status, detail["code"], detail["message"]


def _read_answer(sock: ssl.SSLSocket, data: bytes = b"") -> Answer:
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"the server closed the connection without an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("the server closed the connection in the middle of its answer")
        body += chunk
    return Answer(status, headers, body[:length])


def _head(method: str, path: str, host: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _exchange(
    sock: ssl.SSLSocket, method: str, path: str, body: bytes | None = None, **headers: str
) -> Answer:
    """One request on an open keep-alive connection and its answer."""
    fields = {"Content-Type": "application/json", **headers}
    if body is not None:
        fields["Content-Length"] = str(len(body))
    sock.sendall(_head(method, path, "edgefleet", fields) + (body or b""))
    return _read_answer(sock)


def _poll(sock: ssl.SSLSocket) -> bytes:
    """Whatever answer bytes have arrived, without waiting (a readable socket is not enough: TLS 1.3
    session tickets make it readable with no application data)."""
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return b""
    finally:
        sock.settimeout(60)


def _send_huge(
    url: str,
    served: Served,
    path: str,
    headers: dict[str, str],
    *,
    device: bool = False,
    chunked: bool = False,
) -> tuple[Answer, int]:
    """Send a ``HUGE`` body (declared, or chunked) until the server answers; the answer and bytes sent."""
    sock = _connect(url, served, device=device)
    try:
        fields = {"Content-Type": "application/json", **headers}
        if chunked:
            fields["Transfer-Encoding"] = "chunked"
        else:
            fields["Content-Length"] = str(HUGE)
        sock.sendall(_head("POST", path, "edgefleet", fields))
        piece = b'{"Description": "' + b"x" * (64 * 1024 - 17)
        frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
        sent = 0
        early = b""
        with contextlib.suppress(OSError):  # the server may close the connection while we send
            while sent < HUGE and not (early := _poll(sock)):
                sock.sendall(frame)
                sent += len(piece)
        return _read_answer(sock, early), sent
    finally:
        sock.close()


def _peak_rss(pid: int) -> int:
    """The peak resident memory of a process so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


# ------------------------------------------------------------------------------------- bodies


def test_an_unauthenticated_body_is_refused_before_it_is_read(served: Served) -> None:
    peak = _peak_rss(served.process.pid)
    cases = [
        (served.api_url, "/api/v1/fleets", {}, "missing API token"),
        (served.api_url, "/api/v1/fleets", {"Authorization": "Bearer eft_forged"}, ""),
        (served.api_url, "/api/v1/packages", {"Content-Type": "application/gzip"}, "missing API token"),
        # device routes on the operator port: no client certificate
        (served.api_url, "/device/v1/SendHeartbeat", {}, "client certificate"),
    ]
    for url, path, headers, fragment in cases:
        answer, sent = _send_huge(url, served, path, headers)
        status, code, message = answer.error
        assert (status, code) == (401, "UNAUTHENTICATED") and fragment in message, (path, answer)
        assert sent < HUGE, f"{path}: the 401 came only after the whole body was sent"
    assert _peak_rss(served.process.pid) - peak < MEMORY_SLACK


def test_bodies_over_their_cap_get_413_unread(served: Served) -> None:
    token = {"Authorization": f"Bearer {served.token}"}
    peak = _peak_rss(served.process.pid)
    cases = [
        (served.api_url, "/api/v1/fleets", token, False, False),
        (served.api_url, "/api/v1/fleets", token, False, True),
        (served.api_url, "/enrol/v1/enrol", {}, False, False),
        (served.api_url, "/enrol/v1/enrol", {}, False, True),
        # the device fast path's calls, and one it does not serve
        (served.device_url, "/device/v1/SendHeartbeat", {}, True, False),
        (served.device_url, "/device/v1/SendHeartbeat", {}, True, True),
        (served.device_url, "/device/v1/GetDeviceRegistration", {}, True, True),
    ]
    for url, path, headers, device, chunked in cases:
        answer, sent = _send_huge(url, served, path, headers, device=device, chunked=chunked)
        status, code, message = answer.error
        assert (status, code) == (413, "RESOURCE_EXHAUSTED"), (path, chunked, answer)
        assert "this server accepts at most" in message
        assert sent < HUGE, f"{path}: the 413 came only after the whole body was sent"
    assert _peak_rss(served.process.pid) - peak < MEMORY_SLACK
    # uploads have their own, larger cap
    sock = _connect(served.api_url, served)
    try:
        declared = str(5 * 1024**3)
        answer = _exchange(sock, "POST", "/api/v1/packages", None, **token, **{"Content-Length": declared})
        assert answer.error[:2] == (413, "RESOURCE_EXHAUSTED") and declared in answer.error[2]
    finally:
        sock.close()
    # a body under the JSON cap is read and judged by the route as before
    with httpx.Client(verify=ssl.create_default_context(cafile=str(served.ca)), headers=token) as http:
        big = {
            "DeviceFleetName": "x",
            "OutputConfig": {"S3OutputLocation": "s3://b/p"},
            "Colour": "r" * 500_000,
        }
        response = http.post(f"{served.api_url}/api/v1/fleets", json=big)
        assert response.status_code == 400 and "Colour" in response.json()["error"]["message"]


# --------------------------------------------------------------------------- input, keep-alive

SURROGATE = b'"\\ud800"'
NUL = b'"cam\\u0000era"'


def test_bad_device_input_is_a_4xx_on_a_connection_that_stays_usable(served: Served) -> None:
    sock = _connect(served.device_url, served, device=True)
    ref = {"DeviceName": served.device_name, "DeviceFleetName": served.fleet}

    def heartbeat(agent_version: bytes) -> bytes:
        return b'{"AgentVersion": %s, "DeviceName": "%s", "DeviceFleetName": "%s"}' % (
            agent_version,
            served.device_name.encode(),
            served.fleet.encode(),
        )

    try:
        for path in ("/device/v1/packages/" + "9" * 40, "/device/v1/packages/9223372036854775808"):
            answer = _exchange(sock, "GET", path)
            assert answer.error[:2] == (400, "INVALID_ARGUMENT"), answer
            assert "connection" not in answer.headers
        for body in (
            heartbeat(SURROGATE),
            heartbeat(NUL),
            b'{"DeviceName": "cam-h", "DeviceFleetName": "hostile", "x\\udfff": 1}',
            json.dumps({**ref, "DeploymentName": "d", "Inferences": 10**30, "Errors": 0}).encode(),
            heartbeat(b'"1.0", "AgentMetrics": [{"MetricName": "cpu", "Value": NaN}]'),
            heartbeat(b'"1.0", "AgentMetrics": [{"MetricName": "cpu", "Value": 1e999}]'),
        ):
            path = (
                "/device/v1/ReportDeploymentHealth" if b"Inferences" in body else "/device/v1/SendHeartbeat"
            )
            answer = _exchange(sock, "POST", path, body)
            assert answer.error[:2] == (400, "INVALID_ARGUMENT"), (body, answer)
            assert "connection" not in answer.headers
        answer = _exchange(sock, "POST", "/device/v1/SendHeartbeat", heartbeat(b'"1.0 \\ud83d\\ude00"'))
        assert (answer.status, answer.body) == (200, b"{}")  # a surrogate pair is fine
        answer = _exchange(sock, "POST", "/device/v1/GetDeviceRegistration", json.dumps(ref).encode())
        assert answer.status == 200 and json.loads(answer.body)["DeviceRegistration"] == "REGISTERED"
    finally:
        sock.close()


def test_bad_operator_input_is_a_4xx_on_a_connection_that_stays_usable(served: Served) -> None:
    sock = _connect(served.api_url, served)
    token = {"Authorization": f"Bearer {served.token}"}
    fleet = b'{"DeviceFleetName": %s, "OutputConfig": {"S3OutputLocation": "s3://b/p"}%s}'
    try:
        for body in (
            fleet % (b'"odd-1"', b', "Description": ' + SURROGATE),
            fleet % (b'"odd-2"', b', "Description": ' + NUL),
            fleet % (b'"odd-3"', b', "Tags": {"\\ud800": "v"}'),
            fleet % (b'"odd-4"', b', "\\udc00": 1'),
            fleet % (SURROGATE, b""),
            b'{"EdgeDeploymentPlanName": "p", "DeviceFleetName": "hostile", "ModelConfigs": [], "Stages": [],'
            b' "HealthGate": {"MinInferences": 1000000000000000000000000000000}}',
            b'{"EdgeDeploymentPlanName": "p", "DeviceFleetName": "hostile", "ModelConfigs": [], "Stages": [],'
            b' "DeviceTimeoutSeconds": Infinity}',
        ):
            path = "/api/v1/deployment-plans" if b"Stages" in body else "/api/v1/fleets"
            answer = _exchange(sock, "POST", path, body, **token)
            assert answer.error[:2] == (400, "INVALID_ARGUMENT"), (body, answer)
            assert "connection" not in answer.headers
        answer = _exchange(
            sock,
            "POST",
            "/api/v1/fleets",
            fleet % (b'"odd-5"', b', "Description": "\\ud83d\\ude00"'),
            **token,
        )
        assert answer.status == 201 and json.loads(answer.body)["Description"] == "\N{GRINNING FACE}"
        answer = _exchange(sock, "GET", "/api/v1/fleets", **token)
        names = [f["DeviceFleetName"] for f in json.loads(answer.body)["DeviceFleetSummaries"]]
        assert answer.status == 200 and "odd-1" not in names and "odd-5" in names
    finally:
        sock.close()


def test_a_nul_in_any_filter_or_path_is_refused(served: Served) -> None:
    sock = _connect(served.api_url, served)
    token = {"Authorization": f"Bearer {served.token}"}
    try:
        for path in (
            "/api/v1/fleets?NameContains=%00",
            "/api/v1/fleets?NameContains=ho%00stile",
            "/api/v1/models?NameContains=%00",
            "/api/v1/deployment-plans?NameContains=%00",
            "/api/v1/deployment-plans?DeviceFleetName=hostile%00",
            "/api/v1/devices?DeviceFleetName=%00",
            "/api/v1/devices?ModelName=%00",
            "/api/v1/devices?Tag=k%3D%00",
            "/api/v1/models/m/versions?ApprovalStatus=%00",
            "/api/v1/fleets/hostile%00",
        ):
            answer = _exchange(sock, "GET", path, **token)
            status, code, message = answer.error
            assert (status, code) == (400, "INVALID_ARGUMENT") and "NUL" in message, (path, answer)
        # "%2500" is the text "%00", not a NUL
        answer = _exchange(sock, "GET", "/api/v1/fleets?NameContains=%2500", **token)
        assert answer.status == 200 and json.loads(answer.body)["DeviceFleetSummaries"] == []
        answer = _exchange(sock, "GET", "/api/v1/fleets?NameContains=hostil", **token)
        assert [f["DeviceFleetName"] for f in json.loads(answer.body)["DeviceFleetSummaries"]] == ["hostile"]
    finally:
        sock.close()


def test_upload_errors_name_the_uploaded_file(served: Served, tmp_path: Path) -> None:
    junk = tmp_path / "my-detector-v3.tar.gz"
    junk.write_bytes(b"definitely not gzip")
    with (
        FleetClient(ClientConfig(served.api_url, served.token, served.ca)) as op,
        pytest.raises(EdgefleetError, match=r"my-detector-v3\.tar\.gz") as info,
    ):
        op.upload_package(junk)
    assert info.value.code is Code.INVALID_ARGUMENT and "edgefleet-upload" not in info.value.message
    # a client that sends no name, or a path for one: no server file name either
    context = ssl.create_default_context(cafile=str(served.ca))
    headers = {"Authorization": f"Bearer {served.token}", "Content-Type": "application/gzip"}
    with httpx.Client(base_url=served.api_url, verify=context, headers=headers) as http:
        for params, named in (
            ({}, "uploaded-package.tar.gz"),
            ({"FileName": "../../etc/x.tar.gz"}, "x.tar.gz"),
        ):
            answer = http.post("/api/v1/packages", content=b"junk", params=params)
            message = answer.json()["error"]["message"]
            assert (
                answer.status_code == 400 and message.startswith(named) and "edgefleet-upload" not in message
            )


# ------------------------------------------------------------------------------------ the docs


def test_docs_and_redoc_load_everything_from_the_server(served: Served) -> None:
    context = ssl.create_default_context(cafile=str(served.ca))
    with httpx.Client(base_url=served.api_url, verify=context) as http:
        assets: set[str] = set()
        for page in ("/docs", "/redoc"):
            response = http.get(page)
            assert response.status_code == 200 and "text/html" in response.headers["content-type"]
            html = response.text
            assert "http://" not in html and "https://" not in html, page
            refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
            refs += re.findall(r"""(?:url|spec-url)\s*[:=]\s*["']([^"']+)["']""", html)
            assert refs, page
            assets.update(refs)
            if page == "/docs":  # Swagger UI's online spec validator is off
                assert '"validatorUrl": null' in html
        assert "/openapi.json" in assets and len(assets) >= 4
        for ref in sorted(assets):
            assert ref.startswith("/") and not ref.startswith("//"), ref
            response = http.get(ref)
            assert response.status_code == 200 and len(response.content) > 100, ref


# --------------------------------------------------------------------------------- --workers


def _workers(pid: int) -> set[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return set()
    found = set()
    for child in children:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(int(child))
    return found


def test_server_workers_option(tmp_path: Path, signing_keys: Any) -> None:
    process, words = _start_server(tmp_path / "data", signing_keys.trust_dir, "--workers", "2")
    try:
        workers = _workers(process.pid)
        assert len(workers) == 2
        context = ssl.create_default_context(cafile=words[-1])
        with httpx.Client(verify=context) as http:
            for _ in range(4):
                assert http.get(f"{words[5]}/healthz").json() == {"Status": "alive"}
    finally:
        assert _stop(process) == 0
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{w}").exists() for w in workers), "SIGTERM left workers running"
    bad = subprocess.run(
        [sys.executable, "-m", "edgefleet", "server", "--workers", "0", "--data-dir", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--workers: must be a whole number of at least 1, got '0'" in bad.stderr


# ----------------------------------------------------------------------------- configured caps


def test_the_caps_are_server_settings(tmp_path: Path, signing_keys: Any) -> None:
    """Small caps set in ``ServerConfig.limits``: a JSON body and a streamed (chunked) upload over
    them are refused, and the upload leaves nothing behind."""
    from edgefleet.server import tokens
    from edgefleet.server.config import Limits, ServerConfig, Timing
    from edgefleet.server.runner import start_in_thread

    config = ServerConfig(
        data_dir=tmp_path / "data",
        port=0,
        device_port=0,
        trust_dir=signing_keys.trust_dir,
        limits=Limits(max_json_body_bytes=4096, max_package_bytes=300_000),
        timing=Timing(shutdown_grace=1),
    )
    server = start_in_thread(config)
    try:
        db = server.state.db
        with db.session() as session:
            token = tokens.create_token(session, "ops-caps", db.now())
        context = ssl.create_default_context(cafile=server.endpoints.ca_cert)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.endpoints.api_url, verify=context, headers=headers) as http:
            fleet = {"DeviceFleetName": "caps", "OutputConfig": {"S3OutputLocation": "s3://b/p"}}
            too_big = http.post("/api/v1/fleets", json={**fleet, "Description": "d" * 5000})
            assert too_big.status_code == 413 and "at most 4096 bytes" in too_big.json()["error"]["message"]
            assert http.post("/api/v1/fleets", json={**fleet, "Description": "d" * 500}).status_code == 201

            def archive() -> Iterator[bytes]:  # no Content-Length: sent chunked, counted as it arrives
                for _ in range(10):
                    yield b"\x1f\x8b" + b"\0" * 65534

            upload = http.post(
                "/api/v1/packages", content=archive(), headers={"Content-Type": "application/gzip"}
            )
            status, code = upload.status_code, upload.json()["error"]["code"]
            assert (status, code) == (413, "RESOURCE_EXHAUSTED"), upload.text
            assert "300000" in upload.json()["error"]["message"]
        assert server.state.artifacts.list() == []
    finally:
        server.stop()
