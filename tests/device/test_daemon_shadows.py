"""The daemon sends a real agent's shadow figures with its heartbeats, and they reach the real
control plane over mutual TLS: cumulative per pair, so the server's figures follow the agent's
(never summed twice), and an agent without the extension means no ``Shadows`` and one warning."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from device_testkit import FLEET, LoopbackServer, make_device
from support import build, make_linear_onnx, start, wait_for

from edgefleet.client import AgentClient, ShadowStatistics
from edgefleet.device.agentlink import AgentConnection
from edgefleet.device.https import HttpsControlPlane, enroller
from edgefleet.device.identity import enroll
from edgefleet.device.shadows import ShadowReporter
from edgefleet.device.sim.control_plane import FakeControlPlane
from edgefleet.device.sim.nullagent import NullAgent


def calls(client: AgentClient, count: int, seed: int) -> ShadowStatistics:
    """``count`` Predicts on the handle, then the pair's figures once the shadow answered them all."""
    (before,) = client.shadow_statistics("lin")
    for x in np.random.default_rng(seed).normal(size=(count, 1, 4)).astype(np.float32):
        client.predict("lin", {"x": x})
    return wait_for(  # type: ignore[no-any-return]
        lambda: (p := client.shadow_statistics("lin")[0]).completed + p.shadow_errors
        >= before.completed + before.shadow_errors + count
        and p,
        f"{count} mirrored calls answered",
    )


def test_shadow_figures_reach_the_server(
    tmp_path: Path, trust: Path, keys: Path, server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    model = make_linear_onnx(tmp_path / "lin.onnx", seed=0)
    champion = build(model, keys, tmp_path / "c", name="lin", version="1")
    candidate = build(model, keys, tmp_path / "s", name="lin", version="2")  # the same graph: agrees
    (tmp_path / "agent").mkdir()
    proc = start(tmp_path / "agent", trust)
    client = AgentClient(proc.address, timeout=60)
    (registered,) = server.op.register_devices(FLEET, [{"DeviceName": "shadow-dev"}])
    identity = enroll(tmp_path / "state", server.api_url, registered["EnrolmentToken"], enroller())
    plane = HttpsControlPlane(identity, timeout=30)
    try:
        client.load(str(champion), "lin-v1")
        client.load(str(candidate), "lin-v2")
        client.set_handle("lin", "lin-v1")
        client.load_shadow("lin", "lin-v2")
        dev = make_device(tmp_path / "state", trust, plane, client)  # type: ignore[arg-type]

        agent_figures = calls(client, 20, seed=1)
        assert dev.daemon.heartbeat_once() is True
        (got,) = server.op.fleet_shadows(FLEET, shadow_model="lin")["ShadowPairs"]
        assert (got["ChampionVersion"], got["ShadowVersion"], got["DeviceCount"]) == ("1", "2", 1)
        assert (got["Completed"], got["Agreed"], got["Disagreed"], got["ShadowErrors"]) == (20, 20, 0, 0)
        assert got["Mirrored"] == agent_figures.mirrored and got["AgreementRate"] == 1.0
        assert got["LatencyRatioP50Median"] is not None and got["LatencyRatioP50Median"] > 0
        assert got["ShadowLatencyP99MsWorst"] == pytest.approx(agent_figures.shadow_p99_ms)

        # more traffic: the next heartbeat's cumulative figures replace the server's
        calls(client, 10, seed=2)
        assert dev.daemon.heartbeat_once() is True
        (got,) = server.op.fleet_shadows(FLEET)["ShadowPairs"]
        assert (got["Completed"], got["Agreed"], got["DeviceCount"]) == (30, 30, 1)

        # a second pair; a reporter bounded to one pair reports the first by handle, and says so once
        client.set_handle("lin2", "lin-v1")
        client.load_shadow("lin2", "lin-v2")
        bounded = ShadowReporter(AgentConnection(client, client), max_pairs=1)
        with caplog.at_level(logging.WARNING, logger="edgefleet.device.shadows"):
            assert [r.handle for r in bounded.report()] == ["lin"]
            assert [r.handle for r in bounded.report()] == ["lin"]
        assert [r.getMessage() for r in caplog.records if r.name == "edgefleet.device.shadows"] == [
            "the agent has 2 shadow pairs; heartbeats report the first 1 (by handle)"
        ]
        assert [r.handle for r in dev.daemon.shadows.report()] == ["lin", "lin2"]
        client.unload_shadow("lin2")

        # promoted: the pair is over, heartbeats carry no Shadows, the server keeps its last figures
        client.promote_shadow("lin")
        assert dev.daemon.heartbeat_once() is True
        (got,) = server.op.fleet_shadows(FLEET)["ShadowPairs"]
        assert got["Completed"] == 30
    finally:
        plane.close()
        client.close()
        proc.stop()


def test_an_agent_without_shadows_sends_no_field_and_warns_once(
    tmp_path: Path, trust: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plane = FakeControlPlane()
    dev = make_device(tmp_path / "state", trust, plane, NullAgent())  # the null agent has no shadows
    with caplog.at_level(logging.WARNING, logger="edgefleet.device.shadows"):
        assert dev.daemon.heartbeat_once()
        assert dev.daemon.heartbeat_once()
    assert [h.shadows for h in plane.heartbeats] == [(), ()]
    assert all("Shadows" not in h.to_wire() for h in plane.heartbeats)
    warnings = [r for r in caplog.records if r.name == "edgefleet.device.shadows"]
    assert len(warnings) == 1 and "shadow-models" in warnings[0].getMessage()
