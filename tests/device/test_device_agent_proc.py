"""The daemon with real agent processes: hot swaps under load (applications using the agent's own
handles or the handle map), a bad version, daemon and agent restarts, SIGKILL mid-deployment."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from device_testkit import CrashHere, Hammer, ScriptedAgent, deployment, make_device, null_package
from support import REPO, running_agent, short_socket_dir, wait_for
from support import start as start_agent

from edgefleet.client import AgentClient
from edgefleet.client.handles import HandleClient
from edgefleet.core.deviceplane import Result
from edgefleet.core.errors import EdgefleetError
from edgefleet.device.agentlink import AgentConnection
from edgefleet.device.sim.control_plane import FakeControlPlane

PROC = Path(__file__).resolve().parent / "device_proc.py"


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("packages")
    return {
        "1.0": null_package(keys, out, "1.0"),
        "2.0": null_package(keys, out, "2.0"),
        "bad": null_package(keys, out, "3.0", fail=True),
    }


def test_applications_are_served_throughout_swaps_and_a_failed_smoke_test(
    tmp_path: Path, trust: Path, packages: dict[str, Path]
) -> None:
    plane = FakeControlPlane()
    v1, v2, bad = (plane.add_package(packages[v]) for v in ("1.0", "2.0", "bad"))
    with running_agent(tmp_path, trust) as agent:
        connection = AgentConnection.connect(agent.address, call_timeout=60, smoke_timeout=30)
        dev = make_device(tmp_path / "state", trust, plane, connection.api)
        dev.daemon.start()
        assert dev.executor.apply(deployment("p1.s1", ("detector", "1.0", v1))).result is Result.SUCCEEDED
        x = np.ones((1, 4), dtype=np.float32)
        with HandleClient(AgentClient(agent.address), tmp_path / "state" / "handles.json") as app:

            def predict() -> None:
                (y,) = app.predict("detector", {"x": x}).values()
                assert np.array_equal(y, x)

            with Hammer(predict) as hammer:
                failed = dev.executor.apply(deployment("p2.s1", ("detector", "3.0", bad)))
                assert failed.result is Result.FAILED_ROLLED_BACK
                assert "null model configured to fail" in failed.message
                assert dev.handles() == {"detector": "detector-1-0-g1"}
                upgraded = dev.executor.apply(deployment("p3.s1", ("detector", "2.0", v2)))
                assert upgraded.result is Result.SUCCEEDED
                served_before = hammer.ok
                wait_for(lambda: hammer.ok > served_before + 10, "calls on the new version")
            assert hammer.errors == []
        assert dev.handles() == {"detector": "detector-2-0-g3"}
        assert {m.name for m in connection.api.list()} == {"detector-2-0-g3"}
        (stats,) = connection.api.model_stats("detector-2-0-g3")
        assert (stats.model_name, stats.model_version) == ("det", "2.0")
        connection.close()


def test_an_unmodified_application_calling_the_handle_is_served_throughout(
    tmp_path: Path, trust: Path, packages: dict[str, Path]
) -> None:
    """An Edge Manager application knows one model name and nothing of the daemon: no handle map."""
    plane = FakeControlPlane()
    v1, v2, bad = (plane.add_package(packages[v]) for v in ("1.0", "2.0", "bad"))
    state = tmp_path / "state"
    x = np.ones((1, 4), dtype=np.float32)
    (tmp_path / "agent").mkdir()
    with running_agent(tmp_path / "agent", trust) as agent, AgentClient(agent.address) as app:
        connection = AgentConnection.connect(agent.address, call_timeout=60, smoke_timeout=30)
        assert "model-handles" in connection.api.server_metadata().extensions
        dev = make_device(state, trust, plane, connection.api)
        dev.daemon.start()
        assert dev.executor.apply(deployment("p1.s1", ("detector", "1.0", v1))).result is Result.SUCCEEDED

        def predict() -> None:
            (y,) = app.predict("detector", {"x": x}).values()
            assert np.array_equal(y, x)

        with Hammer(predict) as hammer:

            def served_on() -> None:
                ok = hammer.ok
                wait_for(lambda: hammer.ok > ok + 5, "more calls served")

            # a hot swap
            assert dev.executor.apply(deployment("p2.s1", ("detector", "2.0", v2))).result is Result.SUCCEEDED
            assert app.describe("detector").name == "detector-2-0-g2"
            served_on()
            # a version failing its smoke test: rolled back before the handle ever moved
            failed = dev.executor.apply(deployment("p3.s1", ("detector", "3.0", bad)))
            assert failed.result is Result.FAILED_ROLLED_BACK
            assert app.handles() == {"detector": "detector-2-0-g2"}
            served_on()
            # the daemon stops and starts again (the agent keeps running and keeps the handle)
            connection.close()
            connection = AgentConnection.connect(agent.address, call_timeout=60, smoke_timeout=30)
            make_device(state, trust, plane, connection.api).daemon.start()
            assert app.handles() == {"detector": "detector-2-0-g2"}
            served_on()

            # the daemon dies after switching to 1.0, before unloading 2.0: the agent serves 1.0 ...
            def crash_at_unload(call: str, name: str) -> None:
                if call == "unload" and name == "detector-2-0-g2":
                    raise CrashHere

            crashing = make_device(state, trust, plane, ScriptedAgent(connection.api, crash_at_unload))
            with pytest.raises(CrashHere):
                crashing.executor.apply(deployment("p4.s1", ("detector", "1.0", v1)))
            assert app.handles() == {"detector": "detector-1-0-g4"}
            served_on()
            # ... and when it starts again it undoes the interrupted deployment: the handle moves back
            restarted = make_device(state, trust, plane, connection.api)
            restarted.daemon.start()
            assert app.handles() == {"detector": "detector-2-0-g2"} == restarted.handles()
            assert restarted.loaded() == {"detector-2-0-g2"}
            served_on()
        assert hammer.errors == []

        # the agent restarts (handles live in its memory): one reconcile pass serves the handle again
        agent.stop()
        again = start_agent(tmp_path / "agent", trust, config_path=agent.config_path, socket=agent.socket)
        try:
            wait_for(lambda: _answers(connection.api), "the restarted agent")
            plane.online = False  # restoring needs no server
            restarted.daemon.reconcile_once()
            assert app.handles() == {"detector": "detector-2-0-g2"}
            (y,) = app.predict("detector", {"x": x}).values()
            assert np.array_equal(y, x)
        finally:
            connection.close()
            again.stop()


def _answers(api: object) -> bool:
    try:
        api.health()  # type: ignore[attr-defined]
    except EdgefleetError:
        return False
    return True


@pytest.fixture
def device_dir(tmp_path: Path) -> Iterator[Path]:
    sockets = short_socket_dir()
    try:
        yield sockets
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


class DeviceProcess:
    """A daemon process (device_proc.py) and its file-driven control plane."""

    def __init__(self, tmp_path: Path, trust: Path, socket_dir: Path, packages: list[Path]) -> None:
        self.plane = tmp_path / "plane"
        self.plane.mkdir()
        self.state = tmp_path / "state"
        self.address = f"unix://{socket_dir / 'agent.sock'}"
        self.spec = tmp_path / "spec.json"
        self.log = tmp_path / "daemon.log"
        self.base = {
            "plane_dir": str(self.plane),
            "state_dir": str(self.state),
            "trust_dir": str(trust),
            "agent_address": self.address,
            "packages": [str(p) for p in packages],
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def set_deployments(self, *items: object) -> None:
        (self.plane / "deployments.json").write_text(json.dumps([d.to_wire() for d in items]))  # type: ignore[attr-defined]

    def results(self) -> list[dict[str, object]]:
        path = self.plane / "results.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def start(self, **extra: object) -> None:
        (self.plane / "ready").unlink(missing_ok=True)
        self.spec.write_text(json.dumps({**self.base, **extra}))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(PROC), str(self.spec)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )
        wait_for(self.ready, f"the daemon to start; log:\n{self.log.read_text()}")

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n{self.log.read_text()}")
        return (self.plane / "ready").exists()

    def handles(self) -> dict[str, str]:
        raw = json.loads((self.state / "handles.json").read_text())
        return {h: e["alias"] for h, e in raw["handles"].items()}

    def loaded(self) -> set[str]:
        with AgentClient(self.address, timeout=10) as client:
            return {m.name for m in client.list()}

    def agent_handles(self) -> dict[str, str] | None:
        """The handles the agent resolves itself (None while no agent answers)."""
        try:
            with AgentClient(self.address, timeout=10) as client:
                return client.handles()
        except EdgefleetError:
            return None

    def kill_agent(self) -> None:
        """SIGKILL the agent child process (the daemon stays up)."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        os.kill(int(children[0]), signal.SIGKILL)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_a_device_killed_mid_deployment_restores_offline_then_resumes(
    tmp_path: Path, trust: Path, packages: dict[str, Path], device_dir: Path
) -> None:
    plane = FakeControlPlane()
    v1, v2 = plane.add_package(packages["1.0"]), plane.add_package(packages["2.0"])
    device = DeviceProcess(tmp_path, trust, device_dir, [packages["1.0"], packages["2.0"]])
    try:
        device.set_deployments(deployment("p1.s1", ("detector", "1.0", v1)))
        # the daemon dies (SIGKILL; its agent child goes with it) after switching to 2.0, before unloading 1.0
        device.start(block_unload="detector-1-0-g1")
        wait_for(lambda: [r["DeploymentStatus"] for r in device.results()] == ["SUCCEEDED"], "1.0 deployed")
        device.set_deployments(deployment("p2.s1", ("detector", "2.0", v2)))
        wait_for(lambda: (device.plane / "blocked").exists(), "the unload of 1.0")
        assert device.handles() == {"detector": "detector-2-0-g2"}
        assert device.agent_handles() == {"detector": "detector-2-0-g2"}  # as the journal says: switched
        device.kill()

        # reboot with the server unreachable: the interrupted deployment is undone, 1.0 serves again
        (device.plane / "offline").touch()
        device.start()
        assert device.handles() == {"detector": "detector-1-0-g1"}
        assert device.agent_handles() == {"detector": "detector-1-0-g1"}  # the new agent got the handle
        assert device.loaded() == {"detector-1-0-g1"}
        state = json.loads((device.state / "state.json").read_text())
        assert state["journal"] is None and state["interrupted"] == {"p2.s1": 1}

        # the server is back: the deployment is applied again and reported once
        (device.plane / "offline").unlink()
        wait_for(lambda: len(device.results()) == 2, "the result of p2.s1")
        assert [r["DeploymentStatus"] for r in device.results()] == ["SUCCEEDED", "SUCCEEDED"]
        assert device.handles() == {"detector": "detector-2-0-g3"}
        assert device.agent_handles() == {"detector": "detector-2-0-g3"}
        assert device.loaded() == {"detector-2-0-g3"}

        # the agent alone dies: the daemon starts it again and sets the handle again
        device.kill_agent()
        wait_for(lambda: device.agent_handles() is None, "the agent to go")
        wait_for(lambda: device.agent_handles() == {"detector": "detector-2-0-g3"}, "the handle back")
        assert device.loaded() == {"detector-2-0-g3"}
    finally:
        device.stop()


def test_a_new_daemon_waits_for_the_agent_its_crashed_predecessor_started(tmp_path: Path) -> None:
    """That agent is still stopping (it got SIGTERM); it removes the socket file as it exits, so a new
    agent started meanwhile would serve an unlinked socket no application can reach."""
    from edgefleet.core.files import write_json_atomic
    from edgefleet.device.agentlink import AgentSupervisor, _process_start

    lingering = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        supervisor = AgentSupervisor(
            "unix:///nonexistent.sock", tmp_path / "agent.json", tmp_path / "agent.log", ready_timeout=0.5
        )
        # a recorded pid whose start time differs names another process (recycled pid): left alone
        started = _process_start(lingering.pid)
        assert started is not None
        write_json_atomic(supervisor.pid_path, {"pid": lingering.pid, "start": started + 1})
        supervisor._wait_previous_gone()
        assert lingering.poll() is None
        # the previous agent itself: waited for, then killed when it does not stop in time
        write_json_atomic(supervisor.pid_path, {"pid": lingering.pid, "start": started})
        supervisor._wait_previous_gone()
        assert lingering.wait(30) == -signal.SIGKILL
    finally:
        lingering.kill()
        lingering.wait()
