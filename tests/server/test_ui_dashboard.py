"""The web dashboard over HTTP on a real control plane (TLS on loopback, SQLite): login and
sessions, cookie flags, CSRF, every page with data and on an empty database, actions through the
API's service layer, the device list's filters and pages, and the device port not serving it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from server_testkit import FakeClock
from ui_testkit import UI, add_plan, add_versions, csrf_of, fill_fleet, start_ui

PAGES = ("/ui", "/ui/devices", "/ui/models", "/ui/deployments", "/ui/monitoring")
IDS = ("nav-fleets", "nav-devices", "nav-models", "nav-deployments", "nav-monitoring", "logout")


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    """One control plane with a fleet, a model with two versions and a plan; logged in."""
    dashboard = start_ui(tmp_path_factory.mktemp("ui"), _now_clock())
    fill_fleet(dashboard.state, "cams", 5)
    add_versions(dashboard.state)
    add_plan(dashboard.state)
    assert dashboard.login().status_code == 303
    try:
        yield dashboard
    finally:
        dashboard.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[UI]:
    """A control plane of its own with an empty database (and a clock of its own)."""
    dashboard = start_ui(tmp_path / "server", _now_clock(), ui_session_ttl=3600)
    try:
        yield dashboard
    finally:
        dashboard.close()


def _now_clock() -> FakeClock:
    # starting now: the server's TLS certificate is issued on this clock and checked on the real one
    return FakeClock(datetime.now(UTC))


def _version_row(ui: UI, model: str, version: str) -> Any:
    from edgefleet.server import registry

    with ui.state.db.session() as session:
        row = registry.get_version(session, model, version)
        return row.approval_status, row.approval_by


# ------------------------------------------------------------------------------------------- login


def test_login_with_a_good_token_sets_a_strict_session_cookie(fresh: UI) -> None:
    response = fresh.login()
    assert response.status_code == 303
    assert response.headers["location"] == "/ui"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("edgefleet_session="))
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite=strict", "path=/ui"} <= flags
    page = fresh.client.get("/ui")
    assert page.status_code == 200
    for element in IDS:
        assert f'id="{element}"' in page.text
    assert "ops-alice" in page.text


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("eft_not-a-real-token", "unknown API token"),
        ("hello", "malformed API token"),
        ("", "malformed API token"),
    ],
)
def test_login_with_a_bad_token_is_refused_with_the_api_message(fresh: UI, token: str, message: str) -> None:
    form = fresh.client.get("/ui/login")
    for element in ("login-form", "token", "login-submit"):
        assert f'id="{element}"' in form.text
    response = fresh.client.post("/ui/login", data={"token": token, "csrf_token": csrf_of(form.text)})
    assert response.status_code == 401
    assert 'id="error"' in response.text and message in response.text
    assert "edgefleet_session" not in response.headers.get("set-cookie", "")
    assert fresh.client.get("/ui").status_code == 303


def test_login_with_a_revoked_token_is_refused(fresh: UI) -> None:
    from edgefleet.server import tokens

    db = fresh.state.db
    with db.session() as session:
        tokens.revoke_token(session, "ops-alice", db.now())
    response = fresh.login()
    assert response.status_code == 401
    assert "was revoked" in response.text


def test_login_without_the_form_csrf_token_is_refused(fresh: UI) -> None:
    fresh.client.get("/ui/login")
    response = fresh.client.post("/ui/login", data={"token": fresh.token, "csrf_token": "forged"})
    assert response.status_code == 403
    assert "PERMISSION_DENIED" in response.text
    other = fresh.new_client()  # no login cookie at all (a cross-site post)
    try:
        assert other.post("/ui/login", data={"token": fresh.token}).status_code == 403
    finally:
        other.close()
    assert fresh.client.get("/ui").status_code == 303


# ------------------------------------------------------------------------------- without a session


@pytest.mark.parametrize("path", [*PAGES, "/ui/devices/cams-000", "/ui/deployments/rollout"])
def test_pages_without_a_session_redirect_to_the_login_page(ui: UI, path: str) -> None:
    anonymous = ui.new_client()
    try:
        response = anonymous.get(path)
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/login"
        forged = anonymous.get(path, headers={"Cookie": "edgefleet_session=made-up"})
        assert forged.status_code == 303
    finally:
        anonymous.close()


@pytest.mark.parametrize("path", ["/ui/deployments/rollout/progress", "/ui/data/figures", "/ui/data/drift"])
def test_fragments_and_data_without_a_session_are_401(ui: UI, path: str) -> None:
    anonymous = ui.new_client()
    try:
        response = anonymous.get(path, headers={"HX-Request": "true"})
        assert response.status_code == 401
        assert anonymous.get("/ui/data/figures").status_code == 401
    finally:
        anonymous.close()


def test_a_post_without_a_session_is_refused_and_changes_nothing(ui: UI) -> None:
    anonymous = ui.new_client()
    try:
        response = anonymous.post(
            "/ui/models/detector/versions/2/approval", data={"status": "Approved", "csrf_token": "x"}
        )
        assert response.status_code == 401
    finally:
        anonymous.close()
    assert _version_row(ui, "detector", "2")[0] == "PendingManualApproval"


# --------------------------------------------------------------------------------------------- CSRF


@pytest.mark.parametrize("csrf", [None, "wrong-token"])
def test_a_post_without_the_right_csrf_token_is_403_and_changes_nothing(ui: UI, csrf: str | None) -> None:
    data = {"status": "Rejected"}
    if csrf is not None:
        data["csrf_token"] = csrf
    response = ui.client.post("/ui/models/detector/versions/2/approval", data=data)
    assert response.status_code == 403
    assert 'id="error"' in response.text and "CSRF" in response.text
    assert _version_row(ui, "detector", "2")[0] == "PendingManualApproval"
    header = ui.client.post(
        "/ui/models/detector/versions/2/approval",
        data={"status": "Rejected"},
        headers={"X-CSRF-Token": "nope"},
    )
    assert header.status_code == 403
    assert _version_row(ui, "detector", "2")[0] == "PendingManualApproval"


def test_another_sessions_csrf_token_is_refused(ui: UI) -> None:
    other = ui.new_client()
    try:
        form = other.get("/ui/login")
        other.post("/ui/login", data={"token": ui.token, "csrf_token": csrf_of(form.text)})
        foreign = csrf_of(other.get("/ui").text)
    finally:
        other.close()
    assert foreign != ui.csrf()
    response = ui.client.post(
        "/ui/models/detector/versions/2/approval", data={"status": "Rejected", "csrf_token": foreign}
    )
    assert response.status_code == 403
    assert _version_row(ui, "detector", "2")[0] == "PendingManualApproval"


def test_form_bodies_are_bounded_and_must_be_url_encoded(ui: UI) -> None:
    csrf = ui.csrf()
    limit = ui.state.config.limits.max_form_body_bytes
    big = ui.client.post(
        "/ui/models/detector/versions/2/approval",
        data={"status": "Rejected", "csrf_token": csrf, "x": "a" * limit},
    )
    assert big.status_code == 413
    as_json = ui.client.post(
        "/ui/models/detector/versions/2/approval",
        json={"status": "Rejected", "csrf_token": csrf},
        headers={"X-CSRF-Token": csrf},
    )
    assert as_json.status_code == 400
    assert "application/x-www-form-urlencoded" in as_json.text
    assert _version_row(ui, "detector", "2")[0] == "PendingManualApproval"


# ------------------------------------------------------------------------------------------ actions


def test_approve_through_the_ui_changes_the_registry_as_the_operator(ui: UI) -> None:
    page = ui.client.get("/ui/models")
    assert 'id="model-row-detector-1"' in page.text
    assert 'id="approve-detector-1"' in page.text and 'id="reject-detector-1"' in page.text
    response = ui.client.post(
        "/ui/models/detector/versions/1/approval", data={"status": "Approved", "csrf_token": ui.csrf()}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/models"
    assert _version_row(ui, "detector", "1") == ("Approved", "ops-alice")
    after = ui.client.get("/ui/models").text
    row = after[after.index('id="model-row-detector-1"') :]
    assert "by ops-alice" in row[: row.index("</tr>")]


def test_an_action_the_service_refuses_shows_the_api_error(ui: UI) -> None:
    missing = ui.client.post(
        "/ui/models/detector/versions/9/approval", data={"status": "Approved", "csrf_token": ui.csrf()}
    )
    assert missing.status_code == 404
    assert 'id="error"' in missing.text and "NOT_FOUND" in missing.text
    bad = ui.client.post(
        "/ui/models/detector/versions/2/approval", data={"status": "Maybe", "csrf_token": ui.csrf()}
    )
    assert bad.status_code == 400
    assert "INVALID_ARGUMENT" in bad.text
    assert _version_row(ui, "detector", "2")[0] == "PendingManualApproval"


def test_start_and_stop_a_stage_through_the_ui(ui: UI) -> None:
    from edgefleet.server import registry

    with ui.state.db.session() as session:  # the plan's version must be approved to start
        registry.set_approval(session, "detector", "1", "Approved", "ops-alice", ui.state.db.now())
    page = ui.client.get("/ui/deployments/rollout")
    for element in ("start-rollout", "stop-rollout", "progress", "events"):
        assert f'id="{element}"' in page.text
    csrf = csrf_of(page.text)
    started = ui.client.post("/ui/deployments/rollout/start", data={"stage": "canary", "csrf_token": csrf})
    assert started.status_code == 303
    fragment = ui.client.get("/ui/deployments/rollout/progress", headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert 'id="progress"' in fragment.text and 'hx-trigger="every 2s"' in fragment.text
    assert re.search(r'id="stage-status-canary">(STARTING|INPROGRESS)<', fragment.text)
    again = ui.client.post("/ui/deployments/rollout/start", data={"stage": "canary", "csrf_token": csrf})
    assert again.status_code == 412
    assert "FAILED_PRECONDITION" in again.text and "only READYTODEPLOY or STOPPED stages start" in again.text
    stopped = ui.client.post("/ui/deployments/rollout/stop", data={"stage": "canary", "csrf_token": csrf})
    assert stopped.status_code == 303
    listing = ui.client.get("/ui/deployments")
    assert 'id="deployment-row-rollout"' in listing.text


# -------------------------------------------------------------------------------------------- pages


def test_every_page_renders_with_data(ui: UI) -> None:
    for path in (*PAGES, "/ui/devices/cams-000", "/ui/devices/cams-004", "/ui/deployments/rollout"):
        response = ui.client.get(path)
        assert response.status_code == 200, path
        assert 'id="empty-state"' not in response.text, path
    fleets = ui.client.get("/ui").text
    assert 'id="fleet-table"' in fleets
    assert "1.2.0 (4)" in fleets  # agent versions
    assert "Fleet report generated" in fleets
    assert "2.00 %" in fleets  # 8 errors in 400 requests
    device = ui.client.get("/ui/devices/cams-000").text
    assert "connected" in device and "cpu_percent" in device and "latency_p99_ms" in device
    never = ui.client.get("/ui/devices/cams-004").text
    assert "never seen" in never
    monitoring = ui.client.get("/ui/monitoring").text
    for element in ("chart-latency", "chart-errors", "chart-drift"):
        assert f'id="{element}"' in monitoring
    figures = ui.client.get("/ui/data/figures").json()
    assert figures["series"][0]["requests"] == 400.0
    assert ui.client.get("/ui/data/drift").json() == {"series": []}


def test_every_page_renders_on_an_empty_database(fresh: UI) -> None:
    assert fresh.login().status_code == 303
    for path in PAGES:
        response = fresh.client.get(path)
        assert response.status_code == 200, path
    fleets = fresh.client.get("/ui").text
    assert 'id="empty-state"' in fleets and "edgefleet device register" in fleets
    assert 'id="empty-state"' in fresh.client.get("/ui/devices").text
    assert fresh.client.get("/ui/data/figures").json()["series"] == []


def test_an_unknown_device_or_plan_shows_the_api_error(ui: UI) -> None:
    for path in ("/ui/devices/nope", "/ui/deployments/nope"):
        response = ui.client.get(path)
        assert response.status_code == 404
        assert 'id="error"' in response.text and "NOT_FOUND" in response.text


def test_a_device_goes_stale_after_three_heartbeat_intervals(fresh: UI) -> None:
    fill_fleet(fresh.state, "cams", 2)
    assert fresh.login().status_code == 303
    assert "stale" not in fresh.client.get("/ui/devices/cams-000").text
    fresh.clock.advance(3 * fresh.state.config.timing.heartbeat_interval + 1)
    page = fresh.client.get("/ui/devices/cams-000").text
    assert 'class="stale"' in page and "1 min ago" in page


# ------------------------------------------------------------------------------------- device list


def _listed(html: str) -> list[str]:
    return re.findall(r'id="device-row-([^"]+)"', html)


def test_the_device_list_filters(ui: UI) -> None:
    page = ui.client.get("/ui/devices")
    for element in (
        "device-filter",
        "filter-fleet",
        "filter-status",
        "filter-tag",
        "filter-model",
        "device-table",
    ):
        assert f'id="{element}"' in page.text
    assert _listed(page.text) == [f"cams-{i:03d}" for i in range(5)]
    assert _listed(ui.client.get("/ui/devices", params={"status": "offline"}).text) == ["cams-004"]
    assert len(_listed(ui.client.get("/ui/devices", params={"status": "connected"}).text)) == 4
    assert _listed(ui.client.get("/ui/devices", params={"tag": "site=paris"}).text) == [
        "cams-001",
        "cams-003",
    ]
    assert len(_listed(ui.client.get("/ui/devices", params={"model": "detector", "fleet": "cams"}).text)) == 4
    assert len(_listed(ui.client.get("/ui/devices", params={"seen": "1h"}).text)) == 4
    none = ui.client.get("/ui/devices", params={"model": "other"})
    assert _listed(none.text) == [] and 'id="empty-state"' in none.text


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"fleet": "nope"}, 404, "NOT_FOUND"),
        ({"tag": "no-equals"}, 400, "INVALID_ARGUMENT"),
        ({"status": "sleeping"}, 400, "INVALID_ARGUMENT"),
        ({"seen": "forever"}, 400, "INVALID_ARGUMENT"),
        ({"page": "forged"}, 400, "INVALID_ARGUMENT"),
    ],
)
def test_bad_device_filters_show_the_error(ui: UI, params: dict[str, str], status: int, code: str) -> None:
    response = ui.client.get("/ui/devices", params=params)
    assert response.status_code == status
    assert 'id="error"' in response.text and code in response.text


def test_the_device_list_pages(fresh: UI) -> None:
    from edgefleet.server.ui.pages import DEVICE_PAGE

    names = fill_fleet(fresh.state, "big", DEVICE_PAGE + 7)
    assert fresh.login().status_code == 303
    first = fresh.client.get("/ui/devices", params={"fleet": "big"})
    assert _listed(first.text) == names[:DEVICE_PAGE]
    link = re.search(r'id="next-page" href="([^"]+)"', first.text)
    assert link is not None
    second = fresh.client.get(link.group(1).replace("&amp;", "&"))
    assert _listed(second.text) == names[DEVICE_PAGE:]
    assert 'id="next-page"' not in second.text


# ---------------------------------------------------------------------------------------- sessions


def test_logout_ends_the_session(fresh: UI) -> None:
    assert fresh.login().status_code == 303
    cookie = fresh.client.cookies.get("edgefleet_session")
    assert cookie
    refused = fresh.client.post("/ui/logout", data={"csrf_token": "wrong"})
    assert refused.status_code == 403
    assert fresh.client.get("/ui").status_code == 200
    response = fresh.client.post("/ui/logout", data={"csrf_token": fresh.csrf()})
    assert response.status_code == 303 and response.headers["location"] == "/ui/login"
    assert fresh.client.get("/ui").status_code == 303
    replay = fresh.new_client()  # the old cookie, kept by someone, no longer works
    try:
        assert replay.get("/ui", headers={"Cookie": f"edgefleet_session={cookie}"}).status_code == 303
    finally:
        replay.close()


def test_an_expired_session_is_refused(fresh: UI) -> None:
    assert fresh.login().status_code == 303
    assert fresh.client.get("/ui").status_code == 200
    fresh.clock.advance(3601)
    assert fresh.client.get("/ui").status_code == 303
    assert fresh.client.get("/ui/data/figures").status_code == 401
    assert fresh.login().status_code == 303  # a new login works (and purges the expired row)
    from sqlalchemy import func, select

    from edgefleet.server.db.schema import UISession

    with fresh.state.db.session() as session:
        assert session.scalar(select(func.count()).select_from(UISession)) == 1


def test_revoking_the_token_ends_its_sessions(fresh: UI) -> None:
    from edgefleet.server import tokens

    assert fresh.login().status_code == 303
    db = fresh.state.db
    with db.session() as session:
        tokens.revoke_token(session, "ops-alice", db.now())
    assert fresh.client.get("/ui").status_code == 303


def test_the_session_cookie_stores_only_a_hash(fresh: UI) -> None:
    from sqlalchemy import select

    from edgefleet.server.db.schema import UISession

    assert fresh.login().status_code == 303
    secret = fresh.client.cookies.get("edgefleet_session")
    with fresh.state.db.session() as session:
        stored = session.scalars(select(UISession.session_hash)).all()
    assert secret not in stored and len(stored) == 1


# ---------------------------------------------------------------------------------- where it runs


def test_static_assets_are_served_from_the_package(ui: UI) -> None:
    for asset in (
        "ui.css",
        "monitoring.js",
        "vendor/htmx.min.js",
        "vendor/uPlot.iife.min.js",
        "vendor/uPlot.min.css",
    ):
        response = ui.client.get(f"/ui/static/{asset}")
        assert response.status_code == 200, asset
    response = ui.client.get("/ui/monitoring")
    page = response.text
    assert "http://" not in page and "https://" not in page  # nothing from off the server
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["x-frame-options"] == "DENY"
    assert "<script>" not in page  # no inline script (the policy would block it)


def test_the_device_port_does_not_serve_the_dashboard(ui: UI, tmp_path: Path) -> None:
    from server_testkit import enrol

    from edgefleet.server import devices, fleets

    db = ui.state.db
    with db.session() as session:
        fleets.create_fleet(session, fleets.FleetSpec("probe", "file:///tmp/probe"), db.now())
        reg = devices.register_devices(
            session, "probe", [devices.DeviceSpec("ui-probe")], ui.state.ca, db.now(), devices_ttl()
        )
        token = reg[0].enrolment_token
    device = enrol(ui.server.endpoints.api_url, token, tmp_path / "device")
    try:
        for path in ("/ui", "/ui/login", "/ui/static/ui.css"):
            response = device.http.get(path)
            assert response.status_code == 404, path
            assert "operator port" in response.json()["error"]["message"]
    finally:
        device.close()


def devices_ttl() -> Any:
    from datetime import timedelta

    return timedelta(days=1)


def test_migration_0010_downgrades_and_upgrades_again(unmigrated: Any) -> None:
    from server_testkit import migrate
    from sqlalchemy import inspect

    db = unmigrated
    db.migrate()

    def tables() -> set[str]:
        with db.engine.connect() as conn:
            return set(inspect(conn).get_table_names())

    assert "ui_sessions" in tables()
    migrate(db, "0009", down=True)
    assert "ui_sessions" not in tables() and "operator_tokens" in tables()
    db.migrate()
    assert "ui_sessions" in tables()


def test_drift_scores_reach_the_monitoring_data(fresh: UI) -> None:
    """Windows from a heartbeat, scored by the periodic work's scorer, come back as a chart series."""
    from datetime import timedelta

    from drift_testkit import digits, summary_of, window
    from server_testkit import enrolled_fleet

    from edgefleet.server import devices, drift
    from edgefleet.server.deviceplane.heartbeat import HeartbeatItem, HeartbeatService

    db = fresh.state.db
    serials = enrolled_fleet(db, "cams", ["cam-a"])
    add_versions(fresh.state, "digits", ("1",))
    with db.session() as session:
        drift.put_baseline(session, "digits", "1", summary_of(digits(500)).to_wire(), "ops-alice", db.now())
    hour = db.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    writer = HeartbeatService(db)
    try:
        shifted = window(hour + timedelta(minutes=10), x=digits(200, shift=3.0))
        beat = devices.Heartbeat(agent_version="1.0", summaries=(shifted,))
        assert writer.one(HeartbeatItem("cam-a", serials["cam-a"], "cams", beat))
    finally:
        writer.close()
    assert fresh.state.drift_scorer.run(db.now())
    assert fresh.login().status_code == 303
    body = fresh.client.get("/ui/data/drift").json()
    kinds = {s["kind"] for s in body["series"] if s["model"] == "digits" and s["version"] == "1"}
    assert kinds and kinds <= {"PSI", "KS", "JS"}
    psi = next(s for s in body["series"] if s["kind"] == "PSI")
    assert psi["points"][0][0] == hour.timestamp() and psi["points"][0][1] > 0
    assert fresh.client.get("/ui/data/drift", params={"hours": 0}).status_code == 400
    assert fresh.client.get("/ui/data/drift", params={"fleet": "nope"}).status_code == 404


def test_the_session_lifetime_is_a_server_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.cli.main import build_parser
    from edgefleet.cli.server import build_config

    parser = build_parser()
    config = build_config(parser.parse_args(["server", "--ui-session-ttl", "600"]))
    assert config.timing.ui_session_ttl == 600.0
    assert build_config(parser.parse_args(["server"])).timing.ui_session_ttl == 12 * 3600.0
    for bad in ("0", "-5", "soon", "inf"):
        with pytest.raises(SystemExit, match="2"):
            parser.parse_args(["server", "--ui-session-ttl", bad])
        assert "must be a number of seconds above 0" in capsys.readouterr().err


def _drive(state: Any, names: list[str], deployment: str, results: dict[str, str]) -> None:
    """Each device fetches its deployments and reports its result (the device plane's services)."""
    from edgefleet.server import devices
    from edgefleet.server.deployments.device_side import device_deployments, record_result
    from edgefleet.server.deployments.records import ResultReport

    db = state.db
    for name in names:
        with db.session() as session:
            device_deployments(session, devices.get_device(session, name), db.now())
    for name in names:
        with db.session() as session:
            report = ResultReport(deployment, results.get(name, "SUCCEEDED"))
            record_result(session, devices.get_device(session, name), report, db.now())


def _prepare(state: Any, fleet: str, plan: str) -> list[str]:
    from edgefleet.server import devices

    names = fill_fleet(state, fleet, 3)
    with state.db.session() as session:
        for name in names:
            devices.update_device(session, name, state.db.now(), platform=("linux", "x86_64", "none"))
    add_plan(state, plan, fleet)
    return names


def test_a_stage_started_in_the_ui_is_watched_to_deployed(fresh: UI) -> None:
    add_versions(fresh.state, "detector", ("1",))
    names = _prepare(fresh.state, "cams", "rollout")
    assert fresh.login().status_code == 303
    csrf = fresh.csrf()
    approved = fresh.client.post(
        "/ui/models/detector/versions/1/approval", data={"status": "Approved", "csrf_token": csrf}
    )
    assert approved.status_code == 303
    assert (
        fresh.client.post(
            "/ui/deployments/rollout/start", data={"stage": "canary", "csrf_token": csrf}
        ).status_code
        == 303
    )
    running = fresh.client.get("/ui/deployments/rollout/progress", headers={"HX-Request": "true"}).text
    assert 'data-running="true"' in running
    _drive(fresh.state, names, "rollout.canary", {})
    done = fresh.client.get("/ui/deployments/rollout/progress", headers={"HX-Request": "true"}).text
    assert 'id="stage-status-canary">DEPLOYED<' in done
    assert 'data-running="false"' in done and "hx-trigger" not in done  # polling stops
    assert "3 deployed" in done
    history = fresh.client.get(f"/ui/devices/{names[0]}").text
    assert 'href="/ui/deployments/rollout"' in history and "DEPLOYED" in history


def test_a_failed_stage_shows_its_failures_and_rollbacks(fresh: UI) -> None:
    add_versions(fresh.state, "detector", ("1",))
    with fresh.state.db.session() as session:
        from edgefleet.server import registry

        registry.set_approval(session, "detector", "1", "Approved", "ops-alice", fresh.state.db.now())
    names = _prepare(fresh.state, "dogs", "risky")
    assert fresh.login().status_code == 303
    csrf = fresh.csrf()
    assert (
        fresh.client.post(
            "/ui/deployments/risky/start", data={"stage": "canary", "csrf_token": csrf}
        ).status_code
        == 303
    )
    _drive(fresh.state, names, "risky.canary", {names[1]: "FAILED_ROLLED_BACK"})
    page = fresh.client.get("/ui/deployments/risky").text
    assert 'id="stage-status-canary">FAILED<' in page
    row = page[page.index(f'id="stage-device-canary-{names[1]}"') :]
    assert "FAILED_ROLLED_BACK" in row[: row.index("</tr>")]
    assert 'id="events"' in page
    again = fresh.client.post("/ui/deployments/risky/stop", data={"stage": "canary", "csrf_token": csrf})
    assert again.status_code == 412 and "only STARTING or INPROGRESS stages stop" in again.text
