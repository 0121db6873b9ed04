"""A device daemon in its own process, for tests that kill it: ``python device_proc.py SPEC.json``.

The daemon is real (executor, state on disk, supervised agent child process, handle map); the
control plane is a file-backed fake the test drives through a directory:

- ``deployments.json`` — the deployments (wire form) the "server" lists, minus those with a result;
- ``offline`` — while this file exists every call fails UNAVAILABLE;
- ``results.jsonl`` — one line per deployment result the daemon reported.

``SPEC["block_unload"]``: an alias whose unload blocks for ever (after touching ``blocked``), so the
test can kill the daemon at that exact point. The daemon touches ``ready`` once started.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from device_testkit import ScriptedAgent  # noqa: E402

from edgefleet.core.deviceplane import Deployment, DeploymentResult  # noqa: E402
from edgefleet.core.errors import Unavailable  # noqa: E402
from edgefleet.device.agentlink import AgentConnection, AgentSupervisor, write_agent_config  # noqa: E402
from edgefleet.device.config import (  # noqa: E402
    AgentSettings,
    DaemonConfig,
    DeploymentSettings,
    RetryPolicy,
    Timing,
)
from edgefleet.device.daemon import Daemon  # noqa: E402
from edgefleet.device.executor import Executor  # noqa: E402
from edgefleet.device.outbox import Outbox  # noqa: E402
from edgefleet.device.packages import PackageStore  # noqa: E402
from edgefleet.device.sim.control_plane import FakeControlPlane  # noqa: E402
from edgefleet.device.state import StateStore  # noqa: E402


class FilePlane(FakeControlPlane):
    """The fake control plane, driven through files (see the module docstring)."""

    def __init__(self, root: Path, packages: list[str]) -> None:
        super().__init__()
        self.root = root
        for package in packages:
            self.add_package(Path(package))

    def _enter(self, call: str) -> None:
        if (self.root / "offline").exists():
            raise Unavailable(f"{call}: the test server is offline")

    def get_deployments(self) -> list[Deployment]:
        self._enter("GetDeployments")
        listed = json.loads((self.root / "deployments.json").read_text())
        results = self.root / "results.jsonl"
        done = (
            {json.loads(line)["DeploymentName"] for line in results.read_text().splitlines()}
            if results.exists()
            else set()
        )
        return [Deployment.from_wire(d) for d in listed if d["DeploymentName"] not in done]

    def report_result(self, result: DeploymentResult) -> None:
        self._enter("ReportDeploymentResult")
        with (self.root / "results.jsonl").open("a") as fh:
            fh.write(json.dumps(result.to_wire()) + "\n")


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    root = Path(spec["plane_dir"])
    state_dir = Path(spec["state_dir"])
    trust = Path(spec["trust_dir"])
    config = DaemonConfig(
        trust_dir=trust,
        state_dir=state_dir,
        agent=AgentSettings(address=spec["agent_address"], spawn=True),
        timing=Timing(heartbeat_interval_seconds=0.2, poll_interval_seconds=0.2),
        retry=RetryPolicy(max_attempts=2, initial_seconds=0.1),
    )
    agent_config = write_agent_config(
        state_dir / "agent" / "agent.json",
        device_name="dev",
        fleet_name="fleet",
        trust_dir=trust,
        data_dir=state_dir / "agent",
    )
    supervisor = AgentSupervisor(config.agent_address, agent_config, state_dir / "agent" / "agent.log")
    connection = AgentConnection.connect(config.agent_address, call_timeout=60, smoke_timeout=30)
    blocked = spec.get("block_unload")
    if blocked:

        def block(call: str, name: str) -> None:
            if call == "unload" and name == blocked:
                (root / "blocked").touch()
                threading.Event().wait()  # until the test kills this process

        connection = AgentConnection(ScriptedAgent(connection.api, block), connection.smoke)
    plane = FilePlane(root, spec["packages"])
    store = StateStore(state_dir)
    executor = Executor(
        store=store,
        agent=connection,
        packages=PackageStore(state_dir / "packages", trust),
        plane=plane,
        handles_path=state_dir / "handles.json",
        retry=config.retry,
        settings=DeploymentSettings(),
    )
    daemon = Daemon(
        config=config,
        store=store,
        outbox=Outbox(state_dir, 10),
        executor=executor,
        plane=plane,
        agent=connection,
        supervisor=supervisor,
    )
    daemon.run(threading.Event(), on_ready=(root / "ready").touch)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main(sys.argv[1])
