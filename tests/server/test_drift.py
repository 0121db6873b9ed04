"""Drift monitoring on a real control plane: summary windows from heartbeats are stored (bounded,
once each), on SQLite and PostgreSQL when reachable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from drift_testkit import FEATURES, T0, classify, digits, heartbeat_body, summary_of, window
from server_testkit import (
    DeviceClient,
    FakeClock,
    build_test_package,
    enrol,
    enrolled_fleet,
    scratch_pg_database,
)
from sqlalchemy import func, select

from edgefleet.cli import main as cli_main
from edgefleet.core import deviceplane as dp
from edgefleet.core.errors import FailedPrecondition, InvalidArgument, NotFound
from edgefleet.monitoring import ModelSummary
from edgefleet.server import devices
from edgefleet.server.db.schema import SummaryWindowRow
from edgefleet.server.deviceplane.heartbeat import HeartbeatItem, HeartbeatService

Db = Any


def _error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"]["code"], body["error"]["message"]


@dataclass
class DriftServer:
    running: Any
    op: Any
    workdir: Path
    token: str

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
            yield DriftServer(running, op, tmp_path_factory.mktemp("devices"), token)
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


# ------------------------------------------------------------------------- baselines and reports


@pytest.fixture(scope="module")
def registered(server: DriftServer, keys: Path, tmp_path_factory: pytest.TempPathFactory) -> DriftServer:
    """Model ``digits`` versions 1 and 2 in the registry (2 gets no baseline)."""
    out = tmp_path_factory.mktemp("packages")
    for version in ("1", "2"):
        server.op.upload_package(build_test_package(keys, out, "digits", version))
    return server


@pytest.fixture
def run(registered: DriftServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``edgefleet ARGS`` in-process against the test server; (exit code, stdout, stderr)."""
    endpoints = registered.running.endpoints
    monkeypatch.setenv("EDGEFLEET_CLIENT_CONFIG", str(registered.workdir / "client.json"))
    monkeypatch.setenv("EDGEFLEET_SERVER", endpoints.api_url)
    monkeypatch.setenv("EDGEFLEET_CA_CERT", str(endpoints.ca_cert))
    monkeypatch.setenv("EDGEFLEET_TOKEN", registered.token)

    def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli_main.main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def reference_files(directory: Path, rows: int = 2000) -> tuple[Path, Path]:
    x = digits(rows, seed=1)
    np.savez(directory / "inputs.npz", x=x)
    np.savez(directory / "outputs.npz", y=classify(x))
    return directory / "inputs.npz", directory / "outputs.npz"


def test_baseline_create_and_show(registered: DriftServer, run: Any, tmp_path: Path) -> None:
    inputs, outputs = reference_files(tmp_path)
    code, out, err = run(
        "baseline",
        "create",
        "--model",
        "digits",
        "--version",
        "1",
        "--inputs",
        str(inputs),
        "--outputs",
        str(outputs),
    )
    assert code == 0, err
    assert "Samples" in out and "2000" in out and "8 features" in out
    stored = registered.op.get_baseline("digits", "1")
    assert stored["Samples"] == 2000 and stored["CreatedBy"] == "ops-drift"
    summary = ModelSummary.from_wire(stored["Summary"])
    # every reference row reached the sketches (fed in chunks), outputs and classes included
    assert summary.inputs["x"].count == 2000 and summary.outputs["y"].features == 4
    assert sum(summary.classes["y"].counts().values()) == 2000
    code, out, _ = run("baseline", "show", "--model", "digits", "--version", "1", "--json")
    assert code == 0 and json.loads(out)["Samples"] == 2000
    code, out, _ = run(
        "baseline", "create", "--model", "digits", "--version", "1", "--inputs", str(inputs), "--json"
    )  # again, inputs only: it replaces the first
    assert code == 0 and json.loads(out)["Summary"]["outputs"] == {}
    assert registered.op.get_baseline("digits", "1")["Summary"]["outputs"] == {}


def test_baseline_refusals(registered: DriftServer, run: Any, tmp_path: Path) -> None:
    inputs, _ = reference_files(tmp_path, rows=10)
    code, _, err = run("baseline", "create", "--model", "digits", "--version", "9", "--inputs", str(inputs))
    assert code == 1 and "model 'digits' has no version '9'" in err
    code, _, err = run(
        "baseline", "create", "--model", "digits", "--version", "1", "--inputs", str(tmp_path / "absent.npz")
    )
    assert code == 1 and "inputs file" in err and "does not exist" in err
    (tmp_path / "bad.npz").write_text("not an archive")
    code, _, err = run(
        "baseline", "create", "--model", "digits", "--version", "1", "--inputs", str(tmp_path / "bad.npz")
    )
    assert code == 1 and "is not a NumPy .npz archive" in err
    np.savez(tmp_path / "short.npz", y=np.zeros((3, 4), np.float32))
    code, _, err = run(
        "baseline",
        "create",
        "--model",
        "digits",
        "--version",
        "1",
        "--inputs",
        str(inputs),
        "--outputs",
        str(tmp_path / "short.npz"),
    )
    assert code == 1 and "the same number of samples" in err
    with pytest.raises(InvalidArgument, match="not base64"):
        registered.op.put_baseline("digits", "1", {"version": 1, "inputs": {"x": ["%%%"]}})
    with pytest.raises(InvalidArgument, match="at least one reference sample"):
        registered.op.put_baseline("digits", "1", ModelSummary.empty().to_wire())
    with pytest.raises(NotFound, match="has no baseline"):
        registered.op.get_baseline("digits", "2")


def _send(device: DeviceClient, *windows: dp.SummaryWindow) -> None:
    response = device.call("SendHeartbeat", heartbeat_body(*windows))
    assert response.status_code == 200, response.text


def test_shifted_live_data_drifts_more_than_the_same_distribution(
    registered: DriftServer, run: Any, tmp_path: Path
) -> None:
    baseline = summary_of(digits(2000, seed=1))
    baseline_wire = registered.op.put_baseline("digits", "1", baseline.to_wire())
    assert baseline_wire["Samples"] == 2000
    same = registered.device("drift-f", "drift-same", site="a")
    shifted = registered.device("drift-f", "drift-shift", site="b")
    try:
        # hour 0: both devices see the reference distribution; hour 2: the site-b device's inputs shift
        for hour, shift in ((0, 0.0), (2, 4.0)):
            start = T0 + timedelta(hours=hour)
            for seed in range(3):
                x_same = digits(200, seed=100 + hour * 10 + seed)
                x_shift = digits(200, shift=shift, seed=200 + hour * 10 + seed)
                _send(same, window(start + timedelta(minutes=5 * seed), x=x_same))
                _send(shifted, window(start + timedelta(minutes=5 * seed), x=x_shift))
        since = (T0 - timedelta(hours=1)).isoformat()
        report = registered.op.fleet_drift("drift-f", "digits", version="1", since=since)
        buckets = {b["BucketStart"]: b for b in report["Buckets"]}
        calm, drifted = buckets["2030-01-01T12:00:00Z"], buckets["2030-01-01T14:00:00Z"]
        assert (calm["Windows"], calm["Devices"], calm["Calls"]) == (6, 2, 1200)
        assert drifted["MaxPsi"] > 0.25 > calm["MaxPsi"]
        assert drifted["MaxKs"] > calm["MaxKs"] and drifted["MaxJs"] > calm["MaxJs"]
        # worst first: the shifted bucket's features lead, scores never rise down the list
        psis = [f["Psi"] for f in report["Features"]]
        assert psis == sorted(psis, reverse=True)
        assert report["Features"][0]["BucketStart"] == "2030-01-01T14:00:00Z"
        assert report["Classes"][0]["BucketStart"] == "2030-01-01T14:00:00Z"
        assert report["MissingBaselines"] == []

        # per device tag: only site b drifts
        by_site = {
            site: registered.op.fleet_drift("drift-f", "digits", since=since, device_tag=f"site={site}")
            for site in ("a", "b")
        }
        assert max(b["MaxPsi"] for b in by_site["a"]["Buckets"]) < 0.25
        assert max(b["MaxPsi"] for b in by_site["b"]["Buckets"]) > 0.25
        # one bucket for the whole range merges everything
        whole = registered.op.fleet_drift("drift-f", "digits", since=since, bucket_seconds=86400)
        assert [(b["Windows"], b["Calls"]) for b in whole["Buckets"]] == [(12, 2400)]

        code, out, err = run(
            "drift", "report", "--fleet", "drift-f", "--model", "digits", "--version", "1", "--since", since
        )
        assert code == 0, err
        lines = out.splitlines()
        header = next(i for i, line in enumerate(lines) if line.startswith("VERSION"))
        first = lines[header + 1].split()
        # (KLL merges are randomised: scores agree within the sketches' error, not to the digit)
        assert first[1] == "2030-01-01T14:00:00Z" and float(first[5]) > 0.25
        code, out, _ = run(
            "drift", "report", "--fleet", "drift-f", "--model", "digits", "--since", since, "--json"
        )
        assert code == 0 and json.loads(out)["Features"][0]["Psi"] > 0.25
    finally:
        same.close()
        shifted.close()


def test_drift_report_refusals(registered: DriftServer, run: Any) -> None:
    cam = registered.device("drift-r", "drift-r-cam")
    try:
        _send(cam, window(T0, version="2"))
        with pytest.raises(FailedPrecondition, match="version '2' has no baseline"):
            registered.op.fleet_drift("drift-r", "digits", version="2")
        with pytest.raises(
            FailedPrecondition, match="no version of model 'digits' seen in fleet 'drift-r' has a baseline"
        ):
            registered.op.fleet_drift("drift-r", "digits")
        with pytest.raises(NotFound, match="fleet 'nowhere'"):
            registered.op.fleet_drift("nowhere", "digits")
        with pytest.raises(NotFound, match="model 'unknown'"):
            registered.op.fleet_drift("drift-r", "unknown")
        with pytest.raises(NotFound, match="has no version '7'"):
            registered.op.fleet_drift("drift-r", "digits", version="7")
        with pytest.raises(InvalidArgument, match="the bucket must be"):
            registered.op.fleet_drift("drift-r", "digits", bucket_seconds=1)
        with pytest.raises(InvalidArgument, match="DeviceTag must be KEY=VALUE"):
            registered.op.fleet_drift("drift-r", "digits", device_tag="site")
        code, _, err = run("drift", "report", "--fleet", "drift-r", "--model", "digits", "--version", "2")
        assert code == 1 and "has no baseline" in err
    finally:
        cam.close()


def test_the_periodic_work_deletes_windows_past_their_retention(
    db: Db, clock: FakeClock, tmp_path: Path
) -> None:
    from edgefleet.server.api.state import AppState
    from edgefleet.server.artifacts import open_artifact_store
    from edgefleet.server.ca import FleetCA
    from edgefleet.server.config import ServerConfig, Timing
    from edgefleet.server.jobs import run_once

    serials = enrolled_fleet(db, "retained", ["cam-a"])
    writer = HeartbeatService(db)
    now = db.now()
    old, recent = window(now - timedelta(days=3)), window(now - timedelta(hours=1))
    try:
        beat = devices.Heartbeat(agent_version="1.0", summaries=(old, recent))
        assert writer.one(HeartbeatItem("cam-a", serials["cam-a"], "retained", beat))
    finally:
        writer.close()
    state = AppState(
        config=ServerConfig(data_dir=tmp_path, timing=Timing(summary_retention=2 * 86400)),
        db=db,
        artifacts=open_artifact_store(str(tmp_path / "artifacts")),
        ca=FleetCA.load_or_create(db),
    )
    run_once(state)
    with db.session() as s:
        kept = s.scalars(select(SummaryWindowRow.window_start)).all()
    assert kept == [recent.window_start]
