"""The daemon takes a real agent's live model summaries per window and sends them with heartbeats."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from device_testkit import FLEET, LoopbackServer, make_device
from support import AgentProcess, build, make_linear_onnx, start, wait_for

from edgefleet.client import AgentClient
from edgefleet.core.errors import InvalidArgument
from edgefleet.device.https import HttpsControlPlane, enroller
from edgefleet.device.identity import enroll
from edgefleet.device.sim.control_plane import FakeControlPlane
from edgefleet.device.summaries import SummaryWindows
from edgefleet.monitoring import ModelSummary
from edgefleet.monitoring.baseline import summarise_reference


@pytest.fixture
def package(tmp_path: Path, keys: Path) -> Path:
    return build(
        make_linear_onnx(tmp_path / "m.onnx"), keys, tmp_path / "pkgs", name="drift-model", version="2.1"
    )


@pytest.fixture
def agent(tmp_path: Path, trust: Path, package: Path) -> Iterator[tuple[AgentProcess, AgentClient]]:
    (tmp_path / "agent").mkdir()
    proc = start(tmp_path / "agent", trust, agent={"model_summaries": True})
    client = AgentClient(proc.address, timeout=60)
    try:
        client.load(str(package), "live")
        yield proc, client
    finally:
        client.close()
        proc.stop()


def traffic(client: AgentClient, calls: int, *, shift: float = 0.0) -> None:
    """``calls`` Predicts, then wait until the agent has summarised them all."""
    before = sum(s.calls for s in client.model_summaries())
    for x in np.random.default_rng(calls).normal(shift, size=(calls, 1, 4)).astype(np.float32):
        client.predict("live", {"x": x})
    wait_for(lambda: sum(s.calls for s in client.model_summaries()) == before + calls, f"{calls} calls")


def test_a_due_window_rides_on_the_next_heartbeat(
    tmp_path: Path, trust: Path, agent: tuple[AgentProcess, AgentClient]
) -> None:
    _, client = agent
    plane = FakeControlPlane()
    dev = make_device(tmp_path / "state", trust, plane, client)
    traffic(client, 20)
    assert dev.daemon.heartbeat_once() is True
    (window,) = plane.heartbeats[-1].summaries
    assert (window.model_name, window.model_version, window.calls) == ("drift-model", "2.1", 20)
    assert window.window_start <= window.window_end
    summary = ModelSummary.from_wire(window.summary)
    assert summary.inputs["x"].features == 4 and summary.inputs["x"].count == 20
    assert client.model_summaries() == []  # the daemon started new windows in the agent
    assert len(dev.daemon.summaries) == 0

    assert dev.daemon.heartbeat_once() is True  # nothing new: no window
    assert plane.heartbeats[-1].summaries == ()
    wire = plane.heartbeats[0].to_wire()
    assert wire["ModelSummaries"][0]["Calls"] == 20


def test_windows_wait_while_the_server_is_unreachable(
    tmp_path: Path, trust: Path, agent: tuple[AgentProcess, AgentClient]
) -> None:
    _, client = agent
    plane = FakeControlPlane(online=False)
    dev = make_device(tmp_path / "state", trust, plane, client)
    traffic(client, 5)
    assert dev.daemon.heartbeat_once() is False
    traffic(client, 7)
    assert dev.daemon.heartbeat_once() is False
    assert len(dev.daemon.summaries) == 2
    # the heartbeats queued on disk go without the windows, which wait in memory
    assert [h.summaries for h in dev.daemon.outbox.pending()] == [(), ()]

    plane.online = True
    assert dev.daemon.heartbeat_once() is True
    assert [w.calls for w in plane.heartbeats[-1].summaries] == [5, 7]
    assert [h.summaries for h in plane.heartbeats[:-1]] == [(), ()]
    assert len(dev.daemon.summaries) == 0 and dev.daemon.summaries.dropped == 0


def test_windows_a_server_refuses_as_invalid_are_dropped(
    tmp_path: Path, trust: Path, agent: tuple[AgentProcess, AgentClient]
) -> None:
    _, client = agent
    plane = FakeControlPlane()

    def refuse(call: str) -> None:
        if call == "SendHeartbeat":
            raise InvalidArgument("a heartbeat carries at most 0 model summaries")

    plane.hook = refuse
    dev = make_device(tmp_path / "state", trust, plane, client)
    traffic(client, 3)
    assert dev.daemon.heartbeat_once() is False
    assert len(dev.daemon.summaries) == 0 and dev.daemon.summaries.dropped == 1
    plane.hook = None
    assert dev.daemon.heartbeat_once() is True
    assert plane.heartbeats[-1].summaries == ()


def test_pending_windows_are_bounded_oldest_dropped(agent: tuple[AgentProcess, AgentClient]) -> None:
    _, client = agent
    clock = itertools.count(step=1000.0)
    windows = SummaryWindows(
        lambda: client.model_summaries(reset=True),
        300.0,
        max_pending=2,
        monotonic=lambda: next(clock),
        now=lambda: datetime.now(UTC),
    )
    for calls in (1, 2, 3):
        traffic(client, calls)
        windows.for_heartbeat()
    assert [w.calls for w in windows.for_heartbeat()] == [2, 3]
    assert windows.dropped == 1


def test_an_agent_without_summaries_does_not_stop_heartbeats(
    tmp_path: Path, trust: Path, package: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "agent").mkdir()
    proc = start(tmp_path / "agent", trust)  # model summaries off
    try:
        with AgentClient(proc.address, timeout=60) as client:
            client.load(str(package), "live")
            client.predict("live", {"x": np.ones((1, 4), np.float32)})
            plane = FakeControlPlane()
            dev = make_device(tmp_path / "state", trust, plane, client)
            with caplog.at_level(logging.WARNING, logger="edgefleet.device.summaries"):
                assert dev.daemon.heartbeat_once() is True
                assert dev.daemon.heartbeat_once() is True
            assert [h.summaries for h in plane.heartbeats] == [(), ()]
            warnings = [r for r in caplog.records if r.name == "edgefleet.device.summaries"]
            assert len(warnings) == 1 and "model summaries are off" in warnings[0].getMessage()
    finally:
        proc.stop()


def test_drift_end_to_end_agent_daemon_server(
    tmp_path: Path,
    trust: Path,
    package: Path,
    agent: tuple[AgentProcess, AgentClient],
    server: LoopbackServer,
) -> None:
    """Live traffic summarised by a real agent, sent by the daemon over mutual TLS, stored and
    scored by the real server: shifted inputs score a higher PSI than the reference distribution."""
    _, client = agent
    server.op.upload_package(package)
    reference = np.random.default_rng(7).normal(size=(2000, 4)).astype(np.float32)
    (scores,) = client.predict("live", {"x": reference}).values()
    wait_for(lambda: client.model_summaries(), "the reference call summarised")
    client.model_summaries(reset=True)  # live windows start after it
    server.op.put_baseline(
        "drift-model", "2.1", summarise_reference({"x": reference}, {"y": scores}).to_wire()
    )
    (registered,) = server.op.register_devices(FLEET, [{"DeviceName": "drift-dev"}])
    state = tmp_path / "state"
    identity = enroll(state, server.api_url, registered["EnrolmentToken"], enroller())
    plane = HttpsControlPlane(identity, timeout=30)
    dev = make_device(state, trust, plane, client)  # type: ignore[arg-type]
    try:
        start = server.running.state.db.now()
        traffic(client, 200)
        assert dev.daemon.heartbeat_once() is True
        calm = server.op.fleet_drift(FLEET, "drift-model", version="2.1", since=start.isoformat())
        middle = server.running.state.db.now()
        traffic(client, 200, shift=3.0)
        assert dev.daemon.heartbeat_once() is True
        drifted = server.op.fleet_drift(FLEET, "drift-model", version="2.1", since=middle.isoformat())
        assert [(b["Calls"], b["Devices"]) for b in calm["Buckets"]] == [(200, 1)]
        assert [(b["Calls"], b["Devices"]) for b in drifted["Buckets"]] == [(200, 1)]
        assert drifted["Buckets"][0]["MaxPsi"] > 1.0 > calm["Buckets"][0]["MaxPsi"]
        assert drifted["Features"][0]["Tensor"] == "x" and drifted["Features"][0]["Kind"] == "input"
    finally:
        plane.close()
