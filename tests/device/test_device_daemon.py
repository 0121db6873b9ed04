"""The daemon's loops, one pass at a time: offline queueing, results, health gates, registration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from device_testkit import deployment, make_device, null_package

from edgefleet.core.deviceplane import HealthGate, HealthReport, HealthVerdict, Result, Verdict
from edgefleet.core.errors import Code, EdgefleetError
from edgefleet.device.daemon import Connectivity, DaemonState
from edgefleet.device.outbox import Outbox
from edgefleet.device.sim.control_plane import FakeControlPlane
from edgefleet.device.sim.nullagent import NullAgent


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("packages")
    return {"1.0": null_package(keys, out, "1.0"), "2.0": null_package(keys, out, "2.0")}


def test_heartbeats_queue_while_offline_bounded_and_flush_oldest_first(tmp_path: Path, trust: Path) -> None:
    plane = FakeControlPlane(online=False)
    dev = make_device(tmp_path / "state", trust, plane, NullAgent())
    dev.daemon.start()
    taken = []
    for _ in range(5):
        assert dev.daemon.heartbeat_once() is False
        taken.append(dev.daemon.outbox.pending()[-1].taken_at)
    assert dev.daemon.connectivity is Connectivity.OFFLINE
    outbox = Outbox(tmp_path / "state", 3)  # what a restarted daemon finds on disk
    assert len(outbox) == 3 and outbox.dropped == 2
    assert [h.taken_at for h in outbox.pending()] == taken[2:]

    plane.online = True
    assert dev.daemon.heartbeat_once() is True
    assert [h.taken_at for h in plane.heartbeats[:3]] == taken[2:]
    assert len(plane.heartbeats) == 4
    assert len(dev.daemon.outbox) == 0 and len(Outbox(tmp_path / "state", 3)) == 0


def test_results_wait_for_the_server_and_are_never_applied_twice(
    tmp_path: Path, trust: Path, packages: dict[str, Path]
) -> None:
    plane = FakeControlPlane()
    dev = make_device(tmp_path / "state", trust, plane, NullAgent())
    dev.daemon.start()
    v1 = plane.add_package(packages["1.0"])
    plane.set_deployments(deployment("p1.s1", ("detector", "1.0", v1)))
    calls: list[str] = []

    def go_offline_after_fetch(call: str) -> None:
        calls.append(call)
        if call == "ReportDeploymentResult" and plane.online:
            plane.online = False  # the server vanishes right when the result is due

    plane.hook = go_offline_after_fetch
    outcomes = dev.daemon.reconcile_once()
    assert [o.result for o in outcomes] == [Result.SUCCEEDED]
    assert plane.results == [] and not dev.store.state.history[-1].sent

    plane.hook = None
    plane.online = True
    assert dev.daemon.reconcile_once() == []  # the result goes out; the deployment is not applied again
    assert [r.result for r in plane.results] == [Result.SUCCEEDED]
    assert plane.results[0].models[0].model_version == "1.0"
    assert dev.store.state.history[-1].sent
    assert dev.daemon.reconcile_once() == [] and len(plane.results) == 1


def test_a_health_gate_failure_rolls_back(tmp_path: Path, trust: Path, packages: dict[str, Path]) -> None:
    reports: list[HealthReport] = []

    def judge(report: HealthReport) -> HealthVerdict:
        reports.append(report)
        if report.inferences < 10:
            return HealthVerdict(Verdict.PENDING, "need 10", False)
        if report.errors / report.inferences > 0.1:
            return HealthVerdict(Verdict.FAIL, "error rate too high", True)
        return HealthVerdict(Verdict.PASS, "ok", False)

    plane = FakeControlPlane(judge=judge)
    agent = NullAgent()
    dev = make_device(tmp_path / "state", trust, plane, agent, health_interval_seconds=0.001)
    dev.daemon.start()
    v1, v2 = plane.add_package(packages["1.0"]), plane.add_package(packages["2.0"])
    plane.set_deployments(deployment("p1.s1", ("detector", "1.0", v1)))
    dev.daemon.reconcile_once()
    plane.set_deployments(deployment("p2.s1", ("detector", "2.0", v2), gate=HealthGate(max_error_rate=0.1)))
    dev.daemon.reconcile_once()
    assert dev.handles() == {"detector": "detector-2-0-g2"}
    assert reports[-1] == HealthReport("p2.s1", 0, 0, None)  # the smoke test is not counted

    agent.simulate_traffic("detector-2-0-g2", 20, errors=5)
    outcomes = dev.daemon.reconcile_once()
    assert reports[-1].inferences == 20 and reports[-1].errors == 5
    assert [(o.deployment, o.result) for o in outcomes] == [("p2.s1", Result.FAILED_ROLLED_BACK)]
    assert dev.handles() == {"detector": "detector-1-0-g3"}
    assert dev.store.state.watches == {}
    assert [r.result for r in plane.results] == [
        Result.SUCCEEDED,
        Result.SUCCEEDED,
        Result.FAILED_ROLLED_BACK,
    ]
    assert plane.deployments == []


def test_a_passing_health_gate_ends_the_observation(
    tmp_path: Path, trust: Path, packages: dict[str, Path]
) -> None:
    plane = FakeControlPlane()
    agent = NullAgent()
    dev = make_device(tmp_path / "state", trust, plane, agent, health_interval_seconds=0.001)
    dev.daemon.start()
    v1 = plane.add_package(packages["1.0"])
    plane.set_deployments(deployment("p1.s1", ("detector", "1.0", v1), gate=HealthGate(max_p99_latency_ms=5)))
    dev.daemon.reconcile_once()
    assert dev.store.state.watches == {} and plane.deployments == []
    assert plane.health_reports[0].deployment_name == "p1.s1"


def test_heartbeats_carry_per_model_figures(tmp_path: Path, trust: Path, packages: dict[str, Path]) -> None:
    plane = FakeControlPlane()
    agent = NullAgent()
    dev = make_device(tmp_path / "state", trust, plane, agent)
    dev.daemon.start()
    plane.set_deployments(deployment("p1.s1", ("detector", "1.0", plane.add_package(packages["1.0"]))))
    dev.daemon.reconcile_once()
    agent.simulate_traffic("detector-1-0-g1", 7, errors=2)
    heartbeat = dev.daemon.build_heartbeat()
    (model,) = heartbeat.models
    assert (model.model_name, model.model_version, model.handle) == ("det", "1.0", "detector")
    figures = {m.name: m.value for m in model.metrics}
    assert figures["requests"] == 8.0 and figures["errors"] == 2.0  # 7 + the smoke test
    assert model.latest_inference is not None
    assert heartbeat.platform == ("linux", "x86_64", "none")


def test_a_revoked_device_keeps_serving_its_models(
    tmp_path: Path, trust: Path, packages: dict[str, Path]
) -> None:
    plane = FakeControlPlane()
    dev = make_device(tmp_path / "state", trust, plane, NullAgent())
    dev.daemon.start()
    plane.set_deployments(deployment("p1.s1", ("detector", "1.0", plane.add_package(packages["1.0"]))))
    dev.daemon.reconcile_once()

    def revoked(call: str) -> None:
        raise EdgefleetError(f"{call}: this certificate of device 'dev' was revoked", Code.UNAUTHENTICATED)

    plane.hook = revoked
    dev.daemon._registration_due = 0.0
    dev.daemon.reconcile_once()
    assert dev.daemon.registered is False
    assert dev.daemon.ready and dev.daemon.state is DaemonState.RUNNING
    assert dev.handles() == {"detector": "detector-1-0-g1"}
    assert dev.loaded() == {"detector-1-0-g1"}


def test_start_up_restores_the_installed_models_without_a_server(
    tmp_path: Path, trust: Path, packages: dict[str, Path]
) -> None:
    plane = FakeControlPlane()
    first = make_device(tmp_path / "state", trust, plane, NullAgent())
    first.daemon.start()
    plane.set_deployments(deployment("p1.s1", ("detector", "1.0", plane.add_package(packages["1.0"]))))
    first.daemon.reconcile_once()
    plane.online = False
    rebooted = make_device(tmp_path / "state", trust, plane, NullAgent())
    rebooted.daemon.start()
    assert rebooted.loaded() == {"detector-1-0-g1"}
    assert rebooted.handles() == {"detector": "detector-1-0-g1"}
    rebooted.daemon.reconcile_once()
    assert rebooted.daemon.connectivity is Connectivity.OFFLINE
    assert rebooted.loaded() == {"detector-1-0-g1"}


def test_the_status_command_shows_handles_and_queues(
    tmp_path: Path, trust: Path, packages: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from edgefleet.cli.main import main

    plane = FakeControlPlane()
    dev = make_device(tmp_path / "state", trust, plane, NullAgent())
    dev.daemon.start()
    plane.set_deployments(deployment("p1.s1", ("detector", "1.0", plane.add_package(packages["1.0"]))))
    dev.daemon.reconcile_once()
    plane.online = False
    dev.daemon.heartbeat_once()
    config = tmp_path / "daemon.toml"
    config.write_text(
        f'[daemon]\ntrust_dir = "{trust}"\nstate_dir = "{tmp_path / "state"}"\n[agent]\naddress = "unix:///x.sock"\n'
    )
    assert main(["device", "status", "--config", str(config), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["handles"] == {
        "detector": {"alias": "detector-1-0-g1", "model": "det", "version": "1.0", "deployment": "p1.s1"}
    }
    assert status["in_flight"] is None
    assert status["queued_heartbeats"] == 1
    assert status["history"][0]["result"] == "SUCCEEDED"
    assert main(["device", "status", "--config", str(config)]) == 0
    assert "detector-1-0-g1" in capsys.readouterr().out
