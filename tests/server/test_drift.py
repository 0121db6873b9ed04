"""Drift monitoring on a real control plane: summary windows from heartbeats are stored (bounded,
once each), on SQLite and PostgreSQL when reachable."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from server_testkit import DeviceClient, FakeClock, enrol, enrolled_fleet, scratch_pg_database
from sqlalchemy import func, select

from edgefleet.core import deviceplane as dp
from edgefleet.monitoring import ModelSummary
from edgefleet.server import devices
from edgefleet.server.db.schema import SummaryWindowRow
from edgefleet.server.deviceplane.heartbeat import HeartbeatItem, HeartbeatService

Db = Any
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
#: a digits-like table: 8 features, values 0..16
FEATURES = 8


def digits(rows: int, *, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(8.0 + shift, 3.0, size=(rows, FEATURES)), 0, 16 + shift).astype(np.float32)


def classify(x: np.ndarray) -> np.ndarray:
    """A fixed linear "model": scores of 4 classes."""
    weights = np.linspace(-1.0, 1.0, FEATURES * 4, dtype=np.float32).reshape(FEATURES, 4)
    return (x @ weights).astype(np.float32)


def summary_of(x: np.ndarray) -> ModelSummary:
    summary = ModelSummary.empty()
    summary.update({"x": x}, ["y"], [classify(x)], calls=x.shape[0])
    return summary


def window(
    start: datetime, *, x: np.ndarray | None = None, model: str = "digits", version: str = "1"
) -> dp.SummaryWindow:
    summary = summary_of(digits(50) if x is None else x)
    return dp.SummaryWindow(
        model, version, start, start + timedelta(minutes=5), summary.calls, summary.to_wire()
    )


def heartbeat_body(*windows: dp.SummaryWindow) -> dict[str, Any]:
    beat = dp.Heartbeat(agent_version="1.0", taken_at=T0, summaries=tuple(windows))
    return beat.to_wire()


def _error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"]["code"], body["error"]["message"]


@dataclass
class DriftServer:
    running: Any
    op: Any
    workdir: Path

    @property
    def db(self) -> Any:
        return self.running.state.db

    def device(self, fleet: str, name: str, **tags: str) -> DeviceClient:
        """Create ``fleet`` if needed, register and enrol ``name`` in it."""
        if fleet not in {f["DeviceFleetName"] for f in self.op.list_fleets()}:
            self.op.create_fleet(fleet, f"s3://bucket/{fleet}")
        (registered,) = self.op.register_devices(fleet, [{"DeviceName": name}], tags=tags or None)
        return enrol(self.running.endpoints.api_url, registered["EnrolmentToken"], self.workdir / name)

    def windows(self, device: str) -> list[SummaryWindowRow]:
        with self.db.session() as s:
            dev = devices.get_device(s, device)
            rows = s.scalars(
                select(SummaryWindowRow)
                .where(SummaryWindowRow.device_id == dev.id)
                .order_by(SummaryWindowRow.window_start, SummaryWindowRow.model_name)
            ).all()
            s.expunge_all()
            return list(rows)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, keys: Path
) -> Iterator[DriftServer]:
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig
    from edgefleet.server import tokens
    from edgefleet.server.config import ServerConfig, Timing
    from edgefleet.server.runner import start_in_thread

    def run(database_url: str | None) -> Iterator[DriftServer]:
        config = ServerConfig(
            data_dir=tmp_path_factory.mktemp("server"),
            port=0,
            device_port=0,
            trust_dir=keys / "trust",
            timing=Timing(shutdown_grace=1),
            database_url=database_url,
        )
        running = start_in_thread(config)
        db = running.state.db
        with db.session() as session:
            token = tokens.create_token(session, "ops-drift", db.now())
        endpoints = running.endpoints
        op = FleetClient(ClientConfig(endpoints.api_url, token, Path(endpoints.ca_cert)))
        try:
            yield DriftServer(running, op, tmp_path_factory.mktemp("devices"))
        finally:
            op.close()
            running.stop()

    if request.param == "sqlite":
        yield from run(None)
    else:
        with scratch_pg_database("edgefleet_drift") as url:
            yield from run(url)


def test_heartbeat_windows_are_stored_once(server: DriftServer) -> None:
    cam = server.device("store", "store-cam")
    try:
        first, second = window(T0), window(T0, model="other", version="2")
        assert cam.call("SendHeartbeat", heartbeat_body(first, second)).status_code == 200
        rows = server.windows("store-cam")
        assert [(r.model_name, r.model_version, r.calls) for r in rows] == [
            ("digits", "1", 50),
            ("other", "2", 50),
        ]
        assert rows[0].window_start == T0 and rows[0].window_end == T0 + timedelta(minutes=5)
        assert rows[0].summary == first.summary
        assert ModelSummary.from_wire(rows[0].summary).inputs["x"].features == FEATURES
        with server.db.session() as s:
            dev = devices.get_device(s, "store-cam")
            assert {r.fleet_id for r in rows} == {dev.fleet_id}
        # a heartbeat sent again (its answer lost) stores nothing twice; a later window is added
        assert (
            cam.call("SendHeartbeat", heartbeat_body(first, window(T0 + timedelta(minutes=5)))).status_code
            == 200
        )
        assert [(r.model_name, r.window_start) for r in server.windows("store-cam")] == [
            ("digits", T0),
            ("other", T0),
            ("digits", T0 + timedelta(minutes=5)),
        ]
    finally:
        cam.close()


def test_oversized_or_damaged_windows_are_refused_and_nothing_is_stored(server: DriftServer) -> None:
    cam = server.device("bounds", "bounds-cam")
    try:
        many = [window(T0 + timedelta(minutes=i)) for i in range(dp.MAX_HEARTBEAT_SUMMARIES + 1)]
        status, code, message = _error(cam.call("SendHeartbeat", heartbeat_body(*many)))
        assert (status, code) == (400, "INVALID_ARGUMENT")
        assert f"at most {dp.MAX_HEARTBEAT_SUMMARIES} model summaries" in message

        big = dp.SummaryWindow("digits", "1", T0, T0, 1, {"version": 1, "pad": "x" * dp.MAX_SUMMARY_BYTES})
        status, code, message = _error(cam.call("SendHeartbeat", heartbeat_body(big)))
        assert (status, code) == (400, "INVALID_ARGUMENT")
        assert f"a summary is at most {dp.MAX_SUMMARY_BYTES} bytes" in message

        damaged = dp.SummaryWindow("digits", "1", T0, T0, 1, {"version": 1, "inputs": {"x": ["%%%"]}})
        status, code, message = _error(cam.call("SendHeartbeat", heartbeat_body(window(T0), damaged)))
        assert (status, code) == (400, "INVALID_ARGUMENT")
        assert "ModelSummaries[1] ('digits' '1')" in message and "not base64" in message

        backwards = dp.SummaryWindow("digits", "1", T0, T0 - timedelta(seconds=1), 1, window(T0).summary)
        status, code, message = _error(cam.call("SendHeartbeat", heartbeat_body(backwards)))
        assert (status, code) == (400, "INVALID_ARGUMENT") and "WindowEnd is before WindowStart" in message
        assert server.windows("bounds-cam") == []
    finally:
        cam.close()


def test_both_heartbeat_tiers_store_every_window(db: Db, clock: FakeClock) -> None:
    serials = enrolled_fleet(db, "tiers", ["cam-a", "cam-b"])
    writer = HeartbeatService(db)

    def beat(*windows: dp.SummaryWindow) -> devices.Heartbeat:
        return devices.Heartbeat(agent_version="1.0", summaries=tuple(windows))

    try:
        # one batch with two heartbeats of cam-a: both heartbeats' windows count
        assert writer.batch(
            [
                HeartbeatItem("cam-a", serials["cam-a"], "tiers", beat(window(T0))),
                HeartbeatItem("cam-b", serials["cam-b"], "tiers", beat(window(T0))),
                HeartbeatItem("cam-a", serials["cam-a"], "tiers", beat(window(T0 + timedelta(minutes=5)))),
            ]
        ) == [True, True, True]
        # the exact tier (one heartbeat in a transaction of its own), a window sent twice
        assert writer.one(
            HeartbeatItem(
                "cam-b", serials["cam-b"], "tiers", beat(window(T0), window(T0 + timedelta(hours=1)))
            )
        )
        with db.session() as s:
            query = select(SummaryWindowRow.device_id, func.count()).group_by(SummaryWindowRow.device_id)
            counts = {device_id: count for device_id, count in s.execute(query)}
            ids = {n: devices.get_device(s, n).id for n in ("cam-a", "cam-b")}
        assert counts == {ids["cam-a"]: 2, ids["cam-b"]: 2}
    finally:
        writer.close()
