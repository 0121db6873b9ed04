"""Heartbeats carry the capture backlog and the uploads the store confirmed: a real agent process
capturing to disk, the daemon, and the real control plane over mutual TLS. Each upload reaches the
server exactly once across successive heartbeats, a failed heartbeat's uploads go with the next
one, the cursor survives a daemon restart, and an agent without the extension means no Capture."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from device_testkit import FLEET, LoopbackServer, make_device
from support import AgentProcess, build_null, start, wait_for

from edgefleet.client import AgentClient
from edgefleet.core.deviceplane import Heartbeat
from edgefleet.core.errors import FailedPrecondition, InvalidArgument
from edgefleet.device.agentlink import AgentConnection
from edgefleet.device.captures import CURSOR_FILE, CaptureReporter
from edgefleet.device.https import HttpsControlPlane, enroller
from edgefleet.device.identity import enroll
from edgefleet.device.sim.control_plane import FakeControlPlane
from edgefleet.device.sim.nullagent import NullAgent


class Recorded:
    """The real HTTPS plane, keeping each heartbeat the server accepted (what the server saw)."""

    def __init__(self, inner: HttpsControlPlane) -> None:
        self.inner = inner
        self.accepted: list[Heartbeat] = []

    def send_heartbeat(self, heartbeat: Heartbeat) -> None:
        self.inner.send_heartbeat(heartbeat)
        self.accepted.append(heartbeat)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def plane(server: LoopbackServer, tmp_path: Path) -> Iterator[Recorded]:
    name = f"cap-{tmp_path.name[-20:]}".replace("_", "-").strip("-")
    (registered,) = server.op.register_devices(FLEET, [{"DeviceName": name}])
    identity = enroll(tmp_path / "identity", server.api_url, registered["EnrolmentToken"], enroller())
    recorded = Recorded(HttpsControlPlane(identity, timeout=30))
    try:
        yield recorded
    finally:
        recorded.inner.close()


def agent_in(workdir: Path, trust: Path) -> AgentProcess:
    workdir.mkdir(parents=True)
    # the agent's device belongs to the server's fleet: the server indexes only its own fleet's keys
    return start(
        workdir, trust, capture={"batch_size": 1, "push_period_seconds": 0.05}, device={"fleet": FLEET}
    )


def capture_some(client: AgentClient, count: int) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    ids = [client.capture("cam", inputs={"x": x}, outputs={"y": x}) for _ in range(count)]
    wait_for(lambda: all(client.capture_status(i) == "SUCCESS" for i in ids), "captures confirmed")


def logged_keys(client: AgentClient) -> list[str]:
    return [u.key for u in client.capture_uploads(limit=10_000).report.uploads]


def sent_keys(plane: Recorded) -> list[str]:
    return [u.key for h in plane.accepted if h.capture is not None for u in h.capture.uploads]


def test_uploads_reach_the_server_once_and_a_failed_heartbeats_go_with_the_next(
    plane: Recorded, tmp_path: Path, trust: Path, keys: Path
) -> None:
    package = build_null(keys, tmp_path / "pkgs", name="cam", version="1.0")
    agent = agent_in(tmp_path / "agent", trust)
    client = AgentClient(agent.address, timeout=60)
    try:
        client.load(str(package), "cam")
        dev = make_device(tmp_path / "state", trust, plane, client)

        assert dev.daemon.heartbeat_once()
        first = plane.accepted[-1].capture
        assert first is not None and first.uploads == () and first.backlog_records == 0

        capture_some(client, 3)
        assert dev.daemon.heartbeat_once()
        assert sent_keys(plane) == logged_keys(client) and len(sent_keys(plane)) == 3
        assert dev.daemon.heartbeat_once()  # nothing new: nothing sent again
        last = plane.accepted[-1].capture
        assert last is not None and last.uploads == ()
        cursor = json.loads((tmp_path / "state" / CURSOR_FILE).read_text())
        assert cursor["after"] == 3 and cursor["epoch"] == client.capture_uploads().epoch

        # the server is unreachable for one heartbeat: it is queued without its uploads
        capture_some(client, 2)
        reachable = dev.daemon.plane
        with socket.socket() as s:  # bound, not listening: connections are refused
            s.bind(("127.0.0.1", 0))
            lost = HttpsControlPlane(
                plane.inner.identity, url=f"https://127.0.0.1:{s.getsockname()[1]}", timeout=5
            )
            dev.daemon.plane = lost
            try:
                assert not dev.daemon.heartbeat_once()
            finally:
                lost.close()
        (queued,) = dev.daemon.outbox.pending()
        assert queued.capture is not None and queued.capture.uploads == ()
        assert json.loads((tmp_path / "state" / CURSOR_FILE).read_text())["after"] == 3
        dev.daemon.plane = reachable
        assert dev.daemon.heartbeat_once()  # the queued heartbeat, then one with the two uploads
        assert len(dev.daemon.outbox) == 0
        assert sent_keys(plane) == logged_keys(client) and len(set(sent_keys(plane))) == 5

        # a restarted daemon resumes after its persisted cursor: nothing is sent twice
        restarted = make_device(tmp_path / "state", trust, plane, client)
        assert restarted.daemon.heartbeat_once()
        assert sent_keys(plane) == logged_keys(client)

        # at most max_uploads per heartbeat; the rest follow in the next ones, in order
        restarted.daemon.capture = CaptureReporter(
            AgentConnection(client, client), tmp_path / "state", max_uploads=2
        )
        capture_some(client, 5)
        sizes = []
        for _ in range(3):
            assert restarted.daemon.heartbeat_once()
            report = plane.accepted[-1].capture
            assert report is not None
            sizes.append(len(report.uploads))
        assert sizes == [2, 2, 1]
        assert sent_keys(plane) == logged_keys(client) and len(set(sent_keys(plane))) == 10
    finally:
        client.close()
        agent.stop()


def test_an_agent_with_a_new_upload_log_is_reported_from_its_start(
    plane: Recorded, tmp_path: Path, trust: Path, keys: Path
) -> None:
    package = build_null(keys, tmp_path / "pkgs", name="cam", version="1.0")
    old, new = agent_in(tmp_path / "old", trust), agent_in(tmp_path / "new", trust)
    old_client, new_client = AgentClient(old.address, timeout=60), AgentClient(new.address, timeout=60)
    try:
        for client in (old_client, new_client):
            client.load(str(package), "cam")
        capture_some(old_client, 3)
        dev = make_device(tmp_path / "state", trust, plane, old_client)
        assert dev.daemon.heartbeat_once()
        assert len(sent_keys(plane)) == 3
        # the device's agent now keeps another spool (its data was wiped): its log starts at 1 again
        capture_some(new_client, 1)
        dev.daemon.capture = CaptureReporter(AgentConnection(new_client, new_client), tmp_path / "state")
        assert dev.daemon.heartbeat_once()
        assert sent_keys(plane) == logged_keys(old_client) + logged_keys(new_client)
    finally:
        for client in (old_client, new_client):
            client.close()
        old.stop()
        new.stop()


def test_an_agent_without_the_extension_means_no_capture_field_and_one_warning(
    tmp_path: Path, trust: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plane = FakeControlPlane()
    dev = make_device(tmp_path / "state", trust, plane, NullAgent())  # the null agent does not capture
    with caplog.at_level(logging.WARNING, logger="edgefleet.device.captures"):
        assert dev.daemon.heartbeat_once()
        assert dev.daemon.heartbeat_once()
    assert all(h.capture is None for h in plane.heartbeats)
    warnings = [r for r in caplog.records if "capture-uploads" in r.getMessage()]
    assert len(warnings) == 1
    assert not (tmp_path / "state" / CURSOR_FILE).exists()


def test_a_damaged_cursor_and_bad_bounds_are_refused(tmp_path: Path) -> None:
    agent = NullAgent()
    connection = AgentConnection(agent, agent)
    tmp_path.joinpath(CURSOR_FILE).write_text('{"epoch": "abc", "after": -4}')
    with pytest.raises(FailedPrecondition, match=r"capture-cursor\.json is damaged"):
        CaptureReporter(connection, tmp_path)
    tmp_path.joinpath(CURSOR_FILE).write_text("not json")
    with pytest.raises(FailedPrecondition, match="is damaged \\(not JSON\\)"):
        CaptureReporter(connection, tmp_path)
    with pytest.raises(InvalidArgument, match="between 1 and 500"):
        CaptureReporter(connection, None, max_uploads=501)


class RefusingUploads(FakeControlPlane):
    """A control plane that refuses, for good, every heartbeat carrying capture uploads."""

    def send_heartbeat(self, heartbeat: Heartbeat) -> None:
        if heartbeat.capture is not None and heartbeat.capture.uploads:
            raise InvalidArgument("capture upload key outside the fleet's prefix")
        super().send_heartbeat(heartbeat)


def test_uploads_the_server_refuses_for_good_do_not_stop_heartbeats(
    tmp_path: Path, trust: Path, keys: Path, caplog: pytest.LogCaptureFixture
) -> None:
    package = build_null(keys, tmp_path / "pkgs", name="cam", version="1.0")
    agent = agent_in(tmp_path / "agent", trust)
    client = AgentClient(agent.address, timeout=60)
    try:
        client.load(str(package), "cam")
        plane = RefusingUploads()
        dev = make_device(tmp_path / "state", trust, plane, client)
        capture_some(client, 2)
        with caplog.at_level(logging.ERROR, logger="edgefleet.device.captures"):
            assert dev.daemon.heartbeat_once()  # taken without the uploads the server refuses
        (heartbeat,) = plane.heartbeats
        assert heartbeat.capture is not None and heartbeat.capture.uploads == ()
        assert any("refused 2 capture upload(s) for good" in r.getMessage() for r in caplog.records)
        assert json.loads((tmp_path / "state" / CURSOR_FILE).read_text())["after"] == 2
        assert dev.daemon.heartbeat_once() and len(plane.heartbeats) == 2  # heartbeats go on
    finally:
        client.close()
        agent.stop()
