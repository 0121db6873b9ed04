"""The browser harness itself: Chromium reaches the real server over TLS, and the simulated devices
are heartbeating (what the dashboard tests stand on)."""

from __future__ import annotations

from typing import Any

import pytest
from browser_testkit import SIM_DEVICES, SIM_FLEET, Dashboard

pytestmark = pytest.mark.browser


def test_chromium_loads_the_servers_offline_api_docs(
    anonymous_page: Any, dashboard: Dashboard, shoot: Any
) -> None:
    from playwright.sync_api import expect

    requested: list[str] = []
    anonymous_page.on("request", lambda r: requested.append(r.url))
    anonymous_page.goto(dashboard.url("/docs"))
    expect(anonymous_page.locator(".swagger-ui .opblock-tag").first).to_be_visible()
    shoot(anonymous_page, "api-docs", full_page=False)  # the whole page is ~9,000 px tall
    assert requested and all(url.startswith(dashboard.base_url) for url in requested), requested


def test_the_simulated_devices_heartbeat(dashboard: Dashboard) -> None:
    devices = {d["DeviceName"]: d for d in dashboard.op.list_devices(fleet=SIM_FLEET)}
    assert sorted(devices) == SIM_DEVICES
    assert all(d["LatestHeartbeat"] for d in devices.values())
    assert dashboard.simulation.alive()
