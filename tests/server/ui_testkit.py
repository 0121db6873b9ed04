"""Helpers of the web dashboard tests: an application on a real SQLite file, logins, fleet data."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from server_testkit import FakeClock, record_package_row

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class UI:
    """A dashboard under test: a real control plane on loopback (TLS), an HTTPS client, a token."""

    server: Any
    client: Any
    token: str
    clock: FakeClock

    @property
    def state(self) -> Any:
        return self.server.state

    def login(self, token: str | None = None) -> Any:
        """Log in through the login form; returns the POST's response."""
        form = self.client.get("/ui/login")
        csrf = csrf_of(form.text)
        return self.client.post("/ui/login", data={"token": token or self.token, "csrf_token": csrf})

    def csrf(self, path: str = "/ui") -> str:
        """The CSRF token of the logged-in session, as a page's forms carry it."""
        return csrf_of(self.client.get(path).text)

    def new_client(self) -> Any:
        """Another browser: a client without cookies."""
        return _client(self.server.endpoints)

    def close(self) -> None:
        self.client.close()
        self.server.stop()


def csrf_of(html: str) -> str:
    found = CSRF_RE.search(html)
    assert found is not None, "the page has no CSRF field"
    return found.group(1)


def start_ui(data_dir: Path, clock: FakeClock, **timing: Any) -> UI:
    """A control plane on loopback ports (SQLite, no periodic work) and an operator token."""
    from edgefleet.server import tokens
    from edgefleet.server.config import ServerConfig, Timing
    from edgefleet.server.runner import start_in_thread

    config = ServerConfig(data_dir=data_dir, port=0, device_port=0, timing=Timing(shutdown_grace=1, **timing))
    server = start_in_thread(config, clock=clock)
    db = server.state.db
    with db.session() as session:
        token = tokens.create_token(session, "ops-alice", db.now())
    return UI(server, _client(server.endpoints), token, clock)


def _client(endpoints: Any) -> Any:
    import ssl

    import httpx

    context = ssl.create_default_context(cafile=endpoints.ca_cert)
    return httpx.Client(base_url=endpoints.api_url, verify=context, timeout=60, follow_redirects=False)


def fill_fleet(state: Any, fleet: str = "cams", count: int = 3, *, model: str = "detector") -> list[str]:
    """A fleet of ``count`` devices; all but the last sent a heartbeat serving ``model`` version 1
    (with figures), the last never did. Returns the device names."""
    from edgefleet.server import devices, fleets

    db = state.db
    now = db.now()
    names = [f"{fleet}-{i:03d}" for i in range(count)]
    with db.session() as session:
        fleets.create_fleet(session, fleets.FleetSpec(fleet, f"file:///tmp/{fleet}"), now)
        specs = [
            devices.DeviceSpec(n, tags={"site": "berlin" if i % 2 == 0 else "paris"})
            for i, n in enumerate(names)
        ]
        devices.register_devices(session, fleet, specs, state.ca, now, timedelta(days=1))
    with db.session() as session:
        for name in names[:-1]:
            device = devices.get_device(session, name)
            beat = devices.Heartbeat(
                agent_version="1.2.0",
                agent_metrics=[{"Dimension": "agent", "MetricName": "cpu_percent", "Value": 12.5}],
                models=[
                    devices.ModelReport(
                        model,
                        "1",
                        latest_inference=now,
                        metrics=[
                            {"MetricName": "requests", "Value": 100},
                            {"MetricName": "errors", "Value": 2},
                            {"MetricName": "latency_p50_ms", "Value": 1.5},
                            {"MetricName": "latency_p99_ms", "Value": 4.0},
                        ],
                    )
                ],
            )
            devices.record_heartbeat(session, device, beat, now)
    return names


def add_versions(state: Any, model: str = "detector", versions: tuple[str, ...] = ("1", "2")) -> None:
    """Versions of ``model``, each with a package row (pending approval)."""
    db = state.db
    with db.session() as session:
        session.info["now"] = db.now()
        for version in versions:
            record_package_row(session, model, version)


def add_plan(state: Any, name: str = "rollout", fleet: str = "cams", model: str = "detector") -> None:
    """A plan of one stage over every device of ``fleet``, deploying version 1 of ``model``."""
    from edgefleet.server.deployments import plans
    from edgefleet.server.deployments.records import ModelConfigSpec, PlanSpec, StageSpec

    db = state.db
    spec = PlanSpec(
        name=name,
        fleet_name=fleet,
        model_configs=[ModelConfigSpec("main", model, version="1")],
        stages=[StageSpec(name="canary", subset_type="PERCENTAGE", percentage=100)],
    )
    with db.session() as session:
        plans.create_plan(session, spec, "ops-alice", db.now())
