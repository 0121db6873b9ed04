"""Operator API of the capture index through a real server: list with filters and pages, describe,
download an object and its raw-data payloads; every bad input a clear error."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from server_testkit import captured_batch, enrol, heartbeat_uploads

from edgefleet.core.errors import InvalidArgument, NotFound, Unauthenticated

Server = Any
Client = Any

T0 = datetime(2030, 3, 1, 8, 0, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def captured(
    fleet_server: Server, operator_token: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Fleet ``capi``: capi-1 uploaded det 1 at T0 and T0+1h (a big one), capi-2 det 2 and cls 1 at T0+2h."""
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig

    endpoints = fleet_server.endpoints
    op = FleetClient(ClientConfig(endpoints.api_url, operator_token, Path(endpoints.ca_cert)))
    op.create_fleet("capi", "s3://bucket/capi")
    registered = op.register_devices("capi", [{"DeviceName": "capi-1"}, {"DeviceName": "capi-2"}])
    work = tmp_path_factory.mktemp("capi")
    cams = [enrol(endpoints.api_url, r["EnrolmentToken"], work / r["DeviceName"]) for r in registered]
    store = fleet_server.state.captures
    a = captured_batch(store, "capi", "capi-1", "det", "1", T0, 3)
    b = captured_batch(store, "capi", "capi-1", "det", "1", T0 + timedelta(hours=1), 2, big=True)
    c = captured_batch(store, "capi", "capi-2", "det", "2", T0 + timedelta(hours=2), 4)
    d = captured_batch(store, "capi", "capi-2", "cls", "1", T0 + timedelta(hours=2, minutes=5), 1)
    try:
        heartbeat_uploads(cams[0], [a, b], [("det", "1")])
        heartbeat_uploads(cams[1], [c, d], [("det", "2"), ("cls", "1")])
        yield {"op": op, "uploads": [a, b, c, d], "store": store}
    finally:
        for cam in cams:
            cam.close()
        op.close()


def _keys(rows: Iterator[dict[str, Any]]) -> list[str]:
    return [r["Key"] for r in rows]


def test_list_filters_and_pages(captured: dict[str, Any]) -> None:
    op = captured["op"]
    a, b, c, d = captured["uploads"]
    assert _keys(op.list_captures(fleet="capi")) == [a.key, b.key, c.key, d.key]
    assert _keys(op.list_captures(fleet="capi", page_size=1)) == [a.key, b.key, c.key, d.key]
    assert _keys(op.list_captures(fleet="capi", model="det")) == [a.key, b.key, c.key]
    assert _keys(op.list_captures(fleet="capi", model="det", version="1")) == [a.key, b.key]
    assert _keys(op.list_captures(device="capi-2")) == [c.key, d.key]
    # by inference time: an object counts when one of its records is in [since, until)
    assert _keys(op.list_captures(fleet="capi", since=T0 + timedelta(seconds=2))) == [
        a.key,
        b.key,
        c.key,
        d.key,
    ]
    assert _keys(op.list_captures(fleet="capi", since=T0 + timedelta(seconds=3))) == [b.key, c.key, d.key]
    assert _keys(op.list_captures(fleet="capi", until=T0 + timedelta(hours=1))) == [a.key]
    assert _keys(
        op.list_captures(fleet="capi", since="2030-03-01T09:00:00Z", until="2030-03-01T10:01:00Z")
    ) == [
        b.key,
        c.key,
    ]
    [row] = op.list_captures(fleet="capi", model="cls")
    assert row == {
        "Key": d.key,
        "DeviceName": "capi-2",
        "DeviceFleetName": "capi",
        "ModelName": "cls",
        "ModelVersion": "1",
        "Records": 1,
        "Size": d.size,
        "RawObjects": 0,
        "FirstInferenceTime": row["FirstInferenceTime"],
        "LastInferenceTime": row["LastInferenceTime"],
        "ReportedTime": row["ReportedTime"],
    }
    assert datetime.fromisoformat(row["FirstInferenceTime"]) == d.first_inference


def test_describe_and_download(captured: dict[str, Any], tmp_path: Path) -> None:
    op, store = captured["op"], captured["store"]
    a, b, _, _ = captured["uploads"]
    described = op.describe_capture(a.key)
    assert (described["Key"], described["DeviceName"], described["Records"]) == (a.key, "capi-1", 3)
    out = tmp_path / "a.jsonl"
    assert op.fetch_capture(a.key, out) == a.size
    assert out.read_bytes() == store.get_bytes(a.key)
    assert op.capture_bytes(b.key) == store.get_bytes(b.key)
    # the big batch's payloads are served beside it, by name
    assert b.raw_objects == 2
    raw = [k for k in store.list(b.key.rsplit("/", 1)[0] + "/raw-data/")]
    assert len(raw) == 2
    for key in raw:
        assert op.capture_raw(b.key, key.rsplit("/", 1)[1]) == store.get_bytes(key)


def test_bad_input_is_refused_clearly(captured: dict[str, Any], fleet_server: Server) -> None:
    op, store = captured["op"], captured["store"]
    a = captured["uploads"][0]
    with pytest.raises(InvalidArgument, match="since"):
        list(op.list_captures(fleet="capi", since="yesterday"))
    with pytest.raises(InvalidArgument, match="until must be after since"):
        list(op.list_captures(since=T0, until=T0))
    with pytest.raises(NotFound, match="fleet 'nowhere'"):
        list(op.list_captures(fleet="nowhere"))
    with pytest.raises(NotFound, match="device 'nobody' is not registered"):
        list(op.list_captures(device="nobody"))
    with pytest.raises(InvalidArgument, match="MaxResults must be between 1 and"):
        list(op.list_captures(page_size=0))
    with pytest.raises(InvalidArgument, match="is not a token this server issued"):
        op.request("GET", "/api/v1/captures", params={"next_token": "forged"})
    missing = a.key.rsplit("/", 1)[0] + "/" + "0" * 32 + ".jsonl"
    for call in (op.describe_capture, op.capture_bytes):
        with pytest.raises(
            NotFound, match=re.escape(f"capture object {missing!r} is not in the capture index")
        ):
            call(missing)
    with pytest.raises(InvalidArgument, match="is not <prefix>/<fleet>/<model>"):
        op.describe_capture("capi/det/not-a-batch")
    with pytest.raises(NotFound, match="does not exist"):
        op.capture_raw(a.key, "0" * 32 + "-input-0.bin")
    with pytest.raises(InvalidArgument, match="is not a safe file name"):
        op.capture_raw(a.key, ".hidden")
    # an indexed object gone from the store: NOT_FOUND, not a broken stream
    gone = captured_batch(store, "capi", "capi-1", "det", "1", T0 + timedelta(hours=5), 1)
    db = fleet_server.state.db
    from edgefleet.server import captures
    from edgefleet.server.db.schema import Device

    with db.session() as s:
        device = s.query(Device).filter_by(name="capi-1").one()
        captures.record_reports(
            s.connection(),
            [(device.id, captures.dp.CaptureReport(uploads=(gone,)))],
            db.now(),
        )
    store.delete(gone.key)
    with pytest.raises(NotFound, match="does not exist"):
        op.capture_bytes(gone.key)
    # the operator API needs a token
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig

    endpoints = fleet_server.endpoints
    anonymous = FleetClient(ClientConfig(endpoints.api_url, "", Path(endpoints.ca_cert)))
    with anonymous, pytest.raises(Unauthenticated, match="token"):
        list(anonymous.list_captures())
