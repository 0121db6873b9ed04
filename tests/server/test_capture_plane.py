"""Capture uploads from devices: presigned PUT URLs against a real S3-protocol server (moto's
server mode), the relay into a directory store, and the one fleet-prefix key rule for both.

moto does not check the signature or the expiry of presigned URLs (any query string is accepted),
so refusal of a tampered or expired URL is checked against SigV4 itself: the URL's signature is
recomputed with botocore's signer and the test credentials, as S3 does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from server_testkit import DeviceClient, enrol

from edgefleet.core.errors import InvalidArgument, PermissionDenied
from edgefleet.server.api.capture_plane import check_capture_key

BUCKET = "edgefleet-test"
KEY = "line-1/digits/2026/12/07/15/0123456789abcdef0123456789abcdef.jsonl"


def _server(tmp_path: Path, trust: Path, captures: str, endpoint: str | None, **limits: int) -> Any:
    from edgefleet.server.config import Limits, ServerConfig, Timing
    from edgefleet.server.runner import start_in_thread

    config = ServerConfig(
        data_dir=tmp_path / "server",
        port=0,
        device_port=0,
        trust_dir=trust,
        captures_uri=captures,
        s3_endpoint_url=endpoint,
        limits=Limits(**limits),
        timing=Timing(shutdown_grace=1, capture_upload_url_ttl=120),
    )
    return start_in_thread(config)


def _devices(server: Any, tmp_path: Path) -> tuple[DeviceClient, DeviceClient]:
    """Two enrolled devices, ``cam-1`` in fleet ``line-1`` and ``cam-2`` in fleet ``line-2``."""
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig
    from edgefleet.server import tokens

    with server.state.db.session() as session:
        token = tokens.create_token(session, "ops", server.state.db.now())
    op = FleetClient(ClientConfig(server.endpoints.api_url, token, Path(server.endpoints.ca_cert)))
    try:
        found = []
        for fleet, name in (("line-1", "cam-1"), ("line-2", "cam-2")):
            op.create_fleet(fleet, f"s3://{BUCKET}/{fleet}")
            [reg] = op.register_devices(fleet, [{"DeviceName": name}])
            found.append(enrol(server.endpoints.api_url, reg["EnrolmentToken"], tmp_path / name))
    finally:
        op.close()
    return found[0], found[1]


def _plane(server: Any, tmp_path: Path) -> Iterator[tuple[Any, DeviceClient, DeviceClient]]:
    devices: tuple[DeviceClient, ...] = ()
    try:
        devices = _devices(server, tmp_path)
        yield (server, *devices)
    finally:
        for device in devices:  # their kept-alive connections first, or the server waits for them
            device.close()
        server.stop()


@pytest.fixture
def s3_plane(
    tmp_path: Path, trust: Path, s3_endpoint: str
) -> Iterator[tuple[Any, DeviceClient, DeviceClient]]:
    yield from _plane(_server(tmp_path, trust, f"s3://{BUCKET}/{uuid.uuid4().hex}", s3_endpoint), tmp_path)


@pytest.fixture
def relay_plane(tmp_path: Path, trust: Path) -> Iterator[tuple[Any, DeviceClient, DeviceClient]]:
    server = _server(tmp_path, trust, (tmp_path / "captures").as_uri(), None, max_capture_object_bytes=4096)
    yield from _plane(server, tmp_path)


def test_one_key_rule_for_both_routes() -> None:
    assert check_capture_key("line-1", KEY) == KEY
    with pytest.raises(PermissionDenied, match=r"outside this device's fleet prefix 'line-1/'"):
        check_capture_key("line-1", "line-2/digits/2026/12/07/15/x.jsonl")
    with pytest.raises(PermissionDenied, match="outside"):
        check_capture_key("line-1", "line-10/digits/x.jsonl")  # a longer fleet name is another fleet
    with pytest.raises(InvalidArgument, match=r"unsafe component '\.\.'"):
        check_capture_key("line-1", "line-1/../line-2/x.jsonl")
    with pytest.raises(InvalidArgument, match="non-empty relative"):
        check_capture_key("line-1", "/line-1/x.jsonl")


def test_presigned_put_goes_straight_to_the_store(s3_plane: tuple[Any, DeviceClient, DeviceClient]) -> None:
    server, cam1, _ = s3_plane
    before = datetime.now(UTC)
    answer = cam1.call("capture/PresignUploads", {"Keys": [KEY]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["Prefix"] == "line-1/" and body["Location"] == server.state.captures.uri
    [upload] = body["Uploads"]
    assert upload["Key"] == KEY and upload["Method"] == "PUT" and upload["Headers"] == {}
    expires = datetime.fromisoformat(upload["Expires"].replace("Z", "+00:00"))
    assert before + timedelta(seconds=119) <= expires <= datetime.now(UTC) + timedelta(seconds=121)
    query = dict(parse_qsl(urlsplit(upload["Url"]).query))
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and query["X-Amz-Expires"] == "120"
    data = b'{"eventVersion": "0"}\n' * 100
    with httpx.Client() as plain:  # no credentials, no client certificate: the URL is the permission
        assert plain.put(upload["Url"], content=data).status_code == 200
    assert server.state.captures.get_bytes(KEY) == data


def _signature_holds(url: str, now: datetime) -> bool:
    """What S3 checks of a presigned URL: the SigV4 signature over method, path and query, and
    that X-Amz-Date + X-Amz-Expires is not past (with moto's test credentials)."""
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    signature = query.pop("X-Amz-Signature")
    signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if now > signed_at + timedelta(seconds=int(query["X-Amz-Expires"])):
        return False
    region = query["X-Amz-Credential"].split("/")[2]
    auth = S3SigV4QueryAuth(
        Credentials("edgefleet-test", "edgefleet-test"), "s3", region, int(query["X-Amz-Expires"])
    )
    request = AWSRequest("PUT", urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), "")))
    request.context["timestamp"] = query["X-Amz-Date"]
    canonical = auth.canonical_request(request)
    return auth.signature(auth.string_to_sign(request, canonical), request) == signature


def test_a_tampered_or_expired_url_does_not_hold(s3_plane: tuple[Any, DeviceClient, DeviceClient]) -> None:
    _, cam1, _ = s3_plane
    [upload] = cam1.call("capture/PresignUploads", {"Keys": [KEY]}).json()["Uploads"]
    url = upload["Url"]
    now = datetime.now(UTC)
    assert _signature_holds(url, now)
    other_fleet = url.replace("/line-1/", "/line-2/")
    assert other_fleet != url and not _signature_holds(other_fleet, now)
    longer = url.replace("X-Amz-Expires=120", "X-Amz-Expires=604800")
    assert longer != url and not _signature_holds(longer, now)
    assert not _signature_holds(url, now + timedelta(seconds=121))


@pytest.mark.parametrize("plane", ["s3_plane", "relay_plane"])
def test_no_url_outside_the_fleet_prefix(plane: str, request: pytest.FixtureRequest) -> None:
    server, cam1, cam2 = request.getfixturevalue(plane)
    other = KEY.replace("line-1/", "line-2/")
    refused = cam1.call("capture/PresignUploads", {"Keys": [KEY, other]})
    assert refused.status_code == 403
    assert (
        refused.json()["error"]["code"] == "PERMISSION_DENIED"
        and "'line-2/" in refused.json()["error"]["message"]
    )
    bad = cam1.call("capture/PresignUploads", {"Keys": ["line-1/../line-2/x.jsonl"]})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_ARGUMENT"
    too_many = cam1.call("capture/PresignUploads", {"Keys": [f"line-1/m/{i}.jsonl" for i in range(101)]})
    assert too_many.status_code == 400 and "Keys" in too_many.json()["error"]["message"]
    named = cam1.call(
        "capture/PresignUploads", {"Keys": [other]}, DeviceName="cam-2", DeviceFleetName="line-2"
    )
    assert named.status_code == 403  # naming another device is refused as on every device call
    assert cam2.call("capture/PresignUploads", {"Keys": [other]}).status_code == 200
    assert server.state.captures.list() == []


def test_relay_put_stores_the_bytes(relay_plane: tuple[Any, DeviceClient, DeviceClient]) -> None:
    server, cam1, cam2 = relay_plane
    body = cam1.call("capture/PresignUploads", {"Keys": [KEY]}).json()
    [upload] = body["Uploads"]
    assert upload["Url"] == f"/device/v1/capture/objects/{KEY}" and upload["Expires"] is None
    assert body["Location"] == server.state.captures.uri
    data = bytes(range(256)) * 16  # 4096 bytes: the cap exactly
    stored = cam1.http.put(upload["Url"], content=data, headers=upload["Headers"])
    assert stored.status_code == 200, stored.text
    assert stored.json() == {"Key": KEY, "Size": len(data)}
    assert server.state.captures.get_bytes(KEY) == data
    # the same rule as PresignUploads: another fleet's key is refused, and nothing is written
    other = cam2.http.put(upload["Url"], content=b"x")
    assert other.status_code == 403 and other.json()["error"]["code"] == "PERMISSION_DENIED"
    assert cam1.http.put("/device/v1/capture/objects/line-1/%2E%2E/x", content=b"x").status_code in (400, 404)
    assert server.state.captures.get_bytes(KEY) == data
    # no client certificate: refused before the body is read
    with httpx.Client(verify=False) as anonymous:
        refused = anonymous.put(server.endpoints.api_url + upload["Url"], content=b"x")
    assert refused.status_code == 401


def test_relay_body_over_its_cap_is_refused(relay_plane: tuple[Any, DeviceClient, DeviceClient]) -> None:
    server, cam1, _ = relay_plane
    url = f"/device/v1/capture/objects/{KEY}"
    declared = cam1.http.put(url, content=b"x" * 4097)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "RESOURCE_EXHAUSTED"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(5):
            yield b"y" * 1000

    streamed = cam1.http.put(url, content=chunks())
    assert streamed.status_code == 413 and "capture object is larger than 4096 bytes" in streamed.text
    assert server.state.captures.list() == []
    # JSON device calls keep their own cap and checks
    assert cam1.call("capture/PresignUploads", {"Keys": [KEY]}).status_code == 200


def test_the_url_lifetime_and_relay_cap_are_server_knobs() -> None:
    from edgefleet.cli.main import build_parser
    from edgefleet.cli.server import build_config
    from edgefleet.server.config import Limits, ServerConfig

    assert ServerConfig().timing.capture_upload_url_ttl == 900.0
    assert Limits().max_capture_object_bytes == 64 * 1024 * 1024
    args = build_parser().parse_args(["server", "--capture-upload-url-ttl", "60"])
    assert build_config(args).timing.capture_upload_url_ttl == 60.0
