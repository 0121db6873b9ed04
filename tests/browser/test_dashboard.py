"""The web dashboard in a real browser (headless Chromium): logging in and out, no access without a
session, fleets with simulated devices, the device list's filters, approving and rejecting model
versions, a deployment watched live to DEPLOYED, a stage that fails and rolls back, the monitoring
charts. Each main page is saved as a screenshot in the artifacts directory (see conftest)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from browser_testkit import (
    DEPLOY_MODEL,
    DEVICE_PAGE,
    IDLE_DEVICES,
    IDLE_FLEET,
    REVIEW_MODEL,
    ROLLOUT_TIMEOUT_MS,
    SIM_DEVICES,
    SIM_FLEET,
    Dashboard,
    by_id,
)
from support import wait_for

pytestmark = pytest.mark.browser

#: the pages behind the navigation bar
PAGES = ("/ui", "/ui/devices", "/ui/models", "/ui/deployments", "/ui/monitoring")


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


# -- the harness itself: Chromium reaches the real server over TLS, the simulated devices heartbeat


def test_chromium_loads_the_servers_offline_api_docs(
    anonymous_page: Any, dashboard: Dashboard, shoot: Any
) -> None:
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


def device_rows(page: Any) -> set[str]:
    """The names of the devices the device table lists."""
    ids = page.locator("#device-table [id^='device-row-']").evaluate_all("rows => rows.map(r => r.id)")
    return {i.removeprefix("device-row-") for i in ids}


def create_plan(dashboard: Dashboard, plan: str, version: str) -> None:
    """A one-stage plan rolling ``det`` ``version`` out to every device of the simulated fleet."""
    dashboard.op.create_plan(
        {
            "EdgeDeploymentPlanName": plan,
            "DeviceFleetName": SIM_FLEET,
            "ModelConfigs": [{"ModelHandle": "detector", "ModelName": DEPLOY_MODEL, "ModelVersion": version}],
            "Stages": [
                {
                    "StageName": "all",
                    "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": 100},
                }
            ],
        }
    )


def open_plan(page: Any, plan: str) -> None:
    """From the deployments page to the plan's own page."""
    page.click("#nav-deployments")
    row = page.locator(by_id(f"deployment-row-{plan}"))
    expect(row).to_be_visible()
    row.get_by_role("link", name=plan).first.click()
    expect(page.locator("#progress")).to_be_visible()


def start_and_watch(page: Any, plan: str, stage: str, status: str) -> None:
    """Press the stage's start button, then wait for ``status`` in the progress panel, which must get
    there by live updates (no navigation of the page after the start)."""
    start = page.locator(by_id(f"start-{plan}"))
    expect(start).to_contain_text(f"stage {stage}")
    start.click()
    expect(page.locator(by_id(f"stop-{plan}"))).to_be_enabled()  # the page after the start: running
    expect(page.locator("#progress")).to_have_attribute("data-running", "true")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    expect(page.locator(by_id(f"stage-status-{stage}"))).to_have_text(status, timeout=ROLLOUT_TIMEOUT_MS)
    assert navigations == [], f"the progress panel reloaded the page instead of updating: {navigations}"


def ensure_serving(dashboard: Dashboard) -> None:
    """Wait until every simulated device serves ``det`` 1.0 (rolled out through the API first when
    no earlier test of the session has done it), so that their heartbeats carry model figures."""

    def serving() -> bool:
        rows = list(dashboard.op.list_devices(fleet=SIM_FLEET, model=DEPLOY_MODEL))
        return len(rows) == len(SIM_DEVICES)

    if not serving() and "rollout-good" not in {
        p["EdgeDeploymentPlanName"] for p in dashboard.op.list_plans()
    }:
        create_plan(dashboard, "rollout-good", "1.0")
        dashboard.op.start_stage("rollout-good", "all")
    wait_for(serving, f"every simulated device to serve {DEPLOY_MODEL}", timeout=180)


def stage_status(dashboard: Dashboard, plan: str) -> str:
    return str(dashboard.op.describe_plan(plan)["Stages"][0]["DeploymentStatus"]["StageStatus"])


# ------------------------------------------------------------------------------- sessions


def test_login_rejects_a_bad_token_then_logs_in_and_out(
    anonymous_page: Any, dashboard: Dashboard, shoot: Any
) -> None:
    page = anonymous_page
    page.goto(dashboard.url("/ui"))
    expect(page.locator("#login-form")).to_be_visible()
    shoot(page, "login")
    page.fill("#token", "not-a-token")
    page.click("#login-submit")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).not_to_be_empty()
    expect(page.locator("#nav-fleets")).to_have_count(0)

    # the form works from the keyboard: the token field has the focus, Enter submits
    page.goto(dashboard.url("/ui"))
    expect(page.locator("#token")).to_be_focused()
    page.keyboard.type(dashboard.token)
    page.keyboard.press("Enter")
    expect(page.locator("#nav-fleets")).to_be_visible()
    [cookie] = [c for c in page.context.cookies() if c["name"] == "edgefleet_session"]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] in ("Strict", "Lax")

    page.click("#logout")
    expect(page.locator("#login-form")).to_be_visible()
    page.goto(dashboard.url("/ui/devices"))
    expect(page.locator("#login-form")).to_be_visible()  # the session ended with the logout


def test_nothing_is_served_without_a_session(anonymous_page: Any, dashboard: Dashboard) -> None:
    page = anonymous_page
    for path in PAGES:
        page.goto(dashboard.url(path))
        expect(page.locator("#login-form")).to_be_visible()
        assert "/ui/login" in page.url, (path, page.url)
    # what htmx asks for (a fragment), a chart's data and a POST are refused outright, not redirected
    fragment = page.request.get(dashboard.url("/ui/devices"), headers={"HX-Request": "true"}, max_redirects=0)
    assert fragment.status == 401, fragment.text()
    assert fragment.headers.get("hx-redirect") == "/ui/login"
    data = page.request.get(dashboard.url("/ui/data/figures"), max_redirects=0)
    assert data.status == 401 and data.json()["error"]["code"] == "UNAUTHENTICATED", data.text()
    posted = page.request.post(
        dashboard.url(f"/ui/models/{DEPLOY_MODEL}/versions/1.0/approval"),
        form={"csrf_token": "x", "status": "Rejected"},
        max_redirects=0,
    )
    assert posted.status == 401, posted.text()
    assert dashboard.op.describe_version(DEPLOY_MODEL, "1.0")["ApprovalStatus"] == "Approved"


# ------------------------------------------------------------------------------- models


def test_approve_and_reject_model_versions(page: Any, dashboard: Dashboard, shoot: Any) -> None:
    page.goto(dashboard.url("/ui"))
    page.click("#nav-models")
    approved, rejected = f"{REVIEW_MODEL}-1.0", f"{REVIEW_MODEL}-2.0"
    expect(page.locator(by_id(f"model-row-{approved}"))).to_contain_text("Pending")
    shoot(page, "models")

    page.click(by_id(f"approve-{approved}"))
    expect(page.locator(by_id(f"model-row-{approved}"))).to_contain_text("Approved")
    expect(page.locator(by_id(f"approve-{approved}"))).to_be_disabled()
    page.click(by_id(f"reject-{rejected}"))
    expect(page.locator(by_id(f"model-row-{rejected}"))).to_contain_text("Rejected")
    shoot(page, "models-reviewed")

    # the same service layer as the API: the API sees the operator's decisions
    reviewed = dashboard.op.describe_version(REVIEW_MODEL, "1.0")
    assert reviewed["ApprovalStatus"] == "Approved" and reviewed["ApprovalUpdatedBy"] == "ops-browser"
    assert dashboard.op.describe_version(REVIEW_MODEL, "2.0")["ApprovalStatus"] == "Rejected"


# ------------------------------------------------------------------------------- deployments


def test_a_deployment_watched_to_deployed(page: Any, dashboard: Dashboard, shoot: Any) -> None:
    create_plan(dashboard, "rollout-good", "1.0")
    page.goto(dashboard.url("/ui"))
    page.click("#nav-deployments")
    expect(page.locator(by_id("deployment-row-rollout-good"))).to_be_visible()
    shoot(page, "deployments")
    open_plan(page, "rollout-good")
    start_and_watch(page, "rollout-good", "all", "DEPLOYED")
    shoot(page, "deployment-detail")
    assert stage_status(dashboard, "rollout-good") == "DEPLOYED"


def test_the_buttons_follow_a_stage_that_ends_live(page: Any, dashboard: Dashboard) -> None:
    create_plan(dashboard, "rollout-again", "1.0")
    page.goto(dashboard.url("/ui"))
    open_plan(page, "rollout-again")
    start_and_watch(page, "rollout-again", "all", "DEPLOYED")
    # the buttons are in the live part: the update that brings DEPLOYED brings their new state
    expect(page.locator(by_id("stop-rollout-again"))).to_be_disabled(timeout=5_000)
    expect(page.locator(by_id("start-rollout-again"))).to_be_disabled()  # the plan's only stage is done
    expect(page.locator(by_id("stop-rollout-again"))).to_have_text("Stop")


def failed_rollout(dashboard: Dashboard) -> list[dict[str, Any]]:
    """The stage devices of "rollout-bad" once each has finished or stopped."""
    return wait_for(
        lambda: (rows := list(dashboard.op.stage_devices("rollout-bad", "all")))
        and {d["DeviceDeploymentStatus"] for d in rows} <= {"FAILED", "STOPPED"}
        and rows,
        "every device of the failed stage to finish or stop",
        timeout=180,
    )


def test_a_failing_stage_rolls_back(page: Any, dashboard: Dashboard, shoot: Any) -> None:
    create_plan(dashboard, "rollout-bad", "2.0")  # det 2.0 fails its smoke test on every device
    page.goto(dashboard.url("/ui"))
    open_plan(page, "rollout-bad")
    start_and_watch(page, "rollout-bad", "all", "FAILED")
    stage = page.locator("#stage-all")
    expect(stage).to_contain_text("rolling the stage back")  # the reason, as the API words it
    # the failure and the rollback reach the events list by the same live update, with their reasons
    events = page.locator("#events")
    expect(events).to_contain_text(re.compile(r"STAGE_FAILED: \d+/\d+ device\(s\) failed"))
    expect(events).to_contain_text("STAGE_ROLLBACK: rolling the stage back")
    expect(page.locator(by_id("stop-rollout-bad"))).to_be_disabled()
    assert stage_status(dashboard, "rollout-bad") == "FAILED"
    rows = failed_rollout(dashboard)
    rolled_back = sorted(d["DeviceName"] for d in rows if d["DeviceResult"] == "FAILED_ROLLED_BACK")
    assert rolled_back, rows
    page.reload()  # the panel stops polling once the stage has ended; devices may have reported since
    for name in rolled_back:
        row = page.locator(by_id(f"stage-device-all-{name}"))
        expect(row).to_contain_text("FAILED_ROLLED_BACK")
        expect(row).to_contain_text("null model configured to fail")  # the device's own reason
    shoot(page, "deployment-failed")


def test_a_failed_stage_is_listed_in_the_events(page: Any, dashboard: Dashboard) -> None:
    if "rollout-bad" not in {p["EdgeDeploymentPlanName"] for p in dashboard.op.list_plans()}:
        create_plan(dashboard, "rollout-bad", "2.0")
        dashboard.op.start_stage("rollout-bad", "all")
    failed_rollout(dashboard)
    page.goto(dashboard.url("/ui/deployments/rollout-bad"))
    events = page.locator("#events")
    expect(events).to_contain_text(re.compile(r"fail", re.IGNORECASE), timeout=5_000)
    # oldest first: the failure with its reason, then the rollback it started
    items = events.locator("li")
    expect(items).to_have_count(2)
    expect(items.nth(0)).to_contain_text(
        re.compile(r"all STAGE_FAILED: \d+/\d+ device\(s\) failed, above the threshold of 0%")
    )
    expect(items.nth(1)).to_contain_text(
        re.compile(r"all STAGE_ROLLBACK: rolling the stage back: \d+ device\(s\) asked to roll back")
    )


# ------------------------------------------------------------------------------- fleets and devices


def test_fleets_page_shows_the_simulated_devices(page: Any, dashboard: Dashboard, shoot: Any) -> None:
    ensure_serving(dashboard)
    page.goto(dashboard.url("/ui"))
    page.click("#nav-fleets")
    table = page.locator("#fleet-table")
    expect(table).to_be_visible()
    cells = table.locator(by_id(f"fleet-row-{SIM_FLEET}")).locator("td")
    # registered, connected, offline: every simulated device heartbeats
    expect(cells.nth(0)).to_have_text(str(len(SIM_DEVICES)))
    expect(cells.nth(1)).to_have_text(str(len(SIM_DEVICES)))
    expect(cells.nth(2)).to_have_text("0")
    idle = table.locator(by_id(f"fleet-row-{IDLE_FLEET}")).locator("td")
    expect(idle.nth(0)).to_have_text(str(len(IDLE_DEVICES)))
    expect(idle.nth(1)).to_have_text("0")
    # the model versions in use in the fleet, with the figures of the devices' heartbeats
    in_use = page.locator("section.fleet", has_text=SIM_FLEET).locator(
        "table.models tr", has_text=DEPLOY_MODEL
    )
    expect(in_use.locator("td").nth(1)).to_have_text("1.0")
    expect(in_use.locator("td").nth(2)).to_have_text(str(len(SIM_DEVICES)))  # connected devices serving it
    shoot(page, "fleets")


def test_device_list_filters_and_device_detail(page: Any, dashboard: Dashboard, shoot: Any) -> None:
    ensure_serving(dashboard)
    page.goto(dashboard.url("/ui"))
    page.click("#nav-devices")
    expect(page.locator("#device-table")).to_be_visible()
    expect(page.locator(by_id(f"device-row-{SIM_DEVICES[0]}"))).to_be_visible()
    # one page of rows in name order (cam-*, then spare-*), and a link to the next
    assert device_rows(page) == {*SIM_DEVICES, *IDLE_DEVICES[: DEVICE_PAGE - len(SIM_DEVICES)]}
    expect(page.locator("#next-page")).to_be_visible()
    shoot(page, "devices")

    def apply(**fields: str) -> None:
        form = page.locator("#device-filter")
        for name in ("fleet", "status", "tag", "model"):
            field = form.locator(f"#filter-{name}")
            value = fields.get(name, "")
            if field.evaluate("e => e.tagName") == "SELECT":
                field.select_option(value)
            else:
                field.fill(value)
        form.locator("#filter-submit").click()
        page.wait_for_load_state()

    apply(fleet=IDLE_FLEET)
    expect(page.locator(by_id(f"device-row-{SIM_DEVICES[0]}"))).to_have_count(0)
    assert device_rows(page) == set(IDLE_DEVICES[:DEVICE_PAGE])
    page.click("#next-page")  # the next page keeps the filter
    expect(page.locator(by_id(f"device-row-{IDLE_DEVICES[-1]}"))).to_be_visible()
    assert device_rows(page) == set(IDLE_DEVICES[DEVICE_PAGE:])
    expect(page.locator("#next-page")).to_have_count(0)
    expect(page.locator("#filter-fleet")).to_have_value(IDLE_FLEET)
    apply(tag="site=north")
    expect(page.locator(by_id(f"device-row-{SIM_DEVICES[-1]}"))).to_have_count(0)
    assert device_rows(page) == set(SIM_DEVICES[:3])
    shoot(page, "devices-filtered")
    apply(status="connected")
    assert device_rows(page) == set(SIM_DEVICES)
    apply(model=DEPLOY_MODEL)
    assert device_rows(page) == set(SIM_DEVICES)
    apply(tag="site=nowhere")
    expect(page.locator("#empty-state")).to_be_visible()
    apply(tag="site")  # a bad filter: the API's code and message, on the page
    expect(page.locator("#error")).to_have_text(
        "INVALID_ARGUMENT: tag filter 'site' must look like KEY=VALUE"
    )
    apply()
    expect(page.locator(by_id(f"device-row-{IDLE_DEVICES[0]}"))).to_be_visible()

    page.locator(by_id(f"device-row-{SIM_DEVICES[0]}")).get_by_role("link", name=SIM_DEVICES[0]).click()
    expect(page.locator("h1")).to_contain_text(SIM_DEVICES[0])
    expect(page.locator("#device-status")).to_contain_text("connected")
    expect(page.locator("#last-seen")).to_contain_text("ago")  # relative, then the UTC time
    expect(page.locator("#device-models tr", has_text=DEPLOY_MODEL)).to_contain_text("1.0")
    expect(page.locator("#deployment-history")).to_contain_text("rollout-good")
    shoot(page, "device-detail")


# ------------------------------------------------------------------------------- monitoring


def test_monitoring_charts(page: Any, dashboard: Dashboard, shoot: Any) -> None:
    ensure_serving(dashboard)
    page.goto(dashboard.url("/ui"))
    page.click("#nav-monitoring")
    latency = page.locator("#chart-latency")
    expect(latency).to_have_attribute("data-state", "drawn")
    expect(latency.locator("canvas").first).to_be_visible()
    expect(latency).to_contain_text(f"{SIM_FLEET} {DEPLOY_MODEL}:1.0")  # the series' legend
    expect(page.locator("#chart-errors")).to_have_attribute("data-state", "drawn")
    # no baseline was uploaded, so no drift scores: the chart says so
    expect(page.locator("#chart-drift")).to_have_attribute("data-state", "empty")
    expect(page.locator("#chart-drift")).to_contain_text("no drift scores yet")
    shoot(page, "monitoring")
