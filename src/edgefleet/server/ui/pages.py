"""The dashboard's pages, fragments and chart data (``/ui``).

Every read goes through the service functions the API's routes call and every answer is rendered
from the API's own response bodies (:mod:`edgefleet.server.api.render`); every action calls the
API's route function itself (approval, stage start and stop), so the rules, the transaction and
the error messages are the API's. A failed action shows the API's error code and message on the
page, with the error's HTTP status.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from edgefleet.core.errors import EdgefleetError, InvalidArgument, PermissionDenied
from edgefleet.server import captures, devices, drift, fleets, metrics, registry, reports
from edgefleet.server.api import deployments as api_deployments
from edgefleet.server.api import models as api_models
from edgefleet.server.api import render as bodies
from edgefleet.server.api import schemas as s
from edgefleet.server.api.auth import app_state
from edgefleet.server.api.state import AppState
from edgefleet.server.deployments import plans, stages
from edgefleet.server.deployments.records import StageStatus
from edgefleet.server.tokens import Unauthenticated
from edgefleet.server.ui import sessions
from edgefleet.server.ui.sessions import SessionInfo
from edgefleet.server.ui.web import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    LOGIN_PATH,
    PREFIX,
    SESSION_COOKIE,
    Refused,
    ago,
    check_csrf,
    error_page,
    form_fields,
    json_response,
    render,
    see_other,
    session_info,
)
from edgefleet.server.validation import parse_tag_filters

Info = Annotated[SessionInfo, Depends(session_info)]
Form = Annotated[dict[str, str], Depends(form_fields)]
router = APIRouter(prefix=PREFIX, include_in_schema=False)

#: devices per page of the device list
DEVICE_PAGE = 50
#: a device is stale when its latest heartbeat is older than this many heartbeat intervals
STALE_INTERVALS = 3
#: stage rows shown per stage on a deployment's page, deployment history rows on a device's page
STAGE_DEVICE_ROWS = 200
HISTORY_ROWS = 20
#: "last seen" filter choices of the device list: value -> (label, seconds)
SEEN_CHOICES: dict[str, tuple[str, int]] = {
    "5m": ("within 5 minutes", 300),
    "1h": ("within 1 hour", 3600),
    "24h": ("within 24 hours", 86400),
    "7d": ("within 7 days", 7 * 86400),
}
STATUS_CHOICES = ("connected", "offline")
_RUNNING = (StageStatus.STARTING, StageStatus.INPROGRESS, StageStatus.STOPPING)
_STARTABLE = (StageStatus.READYTODEPLOY, StageStatus.STOPPED)
_STOPPABLE = (StageStatus.STARTING, StageStatus.INPROGRESS)


def _cookie_secure(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path=PREFIX, secure=True, httponly=True, samesite="strict"
    )


# ---------------------------------------------------------------------------------------------- login


def _login_page(request: Request, error: EdgefleetError | None = None, status: int = 200) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = render(request, "login.html", {"csrf": token, "error": error}, status=status)
    _cookie_secure(response, LOGIN_COOKIE, token, 3600)
    return response


@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    return _login_page(request)


@router.post("/login")
def login(request: Request, form: Form) -> Response:
    """Check the token with the API's token service and open a session (cookie ``edgefleet_session``)."""
    if not sessions.csrf_matches(request.cookies.get(LOGIN_COOKIE, ""), form.get(CSRF_FIELD)) or not form.get(
        CSRF_FIELD
    ):
        return _login_page(
            request,
            PermissionDenied("the login form expired or came from another site: log in again"),
            status=403,
        )
    st = app_state(request)
    timing = st.config.timing
    try:
        with st.db.session() as session:
            secret, _ = sessions.open_session(
                session,
                form.get("token", ""),
                st.db.now(),
                timedelta(seconds=timing.ui_session_ttl),
                timedelta(seconds=timing.token_touch_interval),
            )
    except Unauthenticated as exc:
        return _login_page(request, exc, status=exc.http_status)
    response = see_other(PREFIX)
    _cookie_secure(response, SESSION_COOKIE, secret, int(timing.ui_session_ttl))
    response.delete_cookie(LOGIN_COOKIE, path=PREFIX, secure=True, httponly=True, samesite="strict")
    return response


@router.post("/logout")
def logout(request: Request, info: Info, form: Form) -> Response:
    check_csrf(request, info, form)
    st = app_state(request)
    with st.db.session() as session:
        sessions.close_session(session, request.cookies.get(SESSION_COOKIE, ""))
    response = see_other(LOGIN_PATH)
    response.delete_cookie(SESSION_COOKIE, path=PREFIX, secure=True, httponly=True, samesite="strict")
    return response


# --------------------------------------------------------------------------------------------- fleets


@dataclass
class FleetView:
    """One fleet on the fleets page."""

    name: str
    registered: int
    connected: int
    report: s.FleetReportOut
    models: list[dict[str, Any]] = field(default_factory=list)

    @property
    def offline(self) -> int:
        return self.registered - self.connected


@router.get("")
def fleets_page(request: Request, info: Info) -> HTMLResponse:
    """Per fleet: live device counts, the stored fleet report and the model versions' figures."""
    st = app_state(request)
    now = st.db.now()
    views: list[FleetView] = []
    with st.db.session() as session:
        page = fleets.list_fleets(session, limit=st.config.limits.max_page_size)
        figures = metrics.model_figures(session, now - st.connected_window)
        for fleet in page.items:
            live = reports.compute_report(session, fleet, now, st.connected_window)
            stored = bodies.report(fleet, reports.get_report(session, fleet.name, now, st.connected_window))
            view = FleetView(
                fleet.name,
                live["DeviceStats"]["RegisteredDeviceCount"],
                live["DeviceStats"]["ConnectedDeviceCount"],
                stored,
            )
            for stat in live["ModelStats"]:
                key = (fleet.name, stat["ModelName"], stat["ModelVersion"])
                view.models.append({**stat, "figures": figures.get(key)})
            view.models.sort(key=lambda m: (m["ModelName"], m["ModelVersion"]))
            views.append(view)
    total = sum(v.registered for v in views)
    return render(
        request,
        "fleets.html",
        {"fleets": views, "total": total, "now": now, "ago": ago, "more": page.next_token is not None},
        info=info,
    )


# -------------------------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class DeviceFilter:
    """The device list's filters as the form sent them."""

    fleet: str = ""
    status: str = ""
    tag: str = ""
    model: str = ""
    seen: str = ""

    def query(self, **extra: str) -> str:
        values = {k: v for k, v in vars(self).items() if v}
        return urlencode({**values, **extra})


def _device_status(st: AppState, last: datetime | None, now: datetime) -> tuple[str, bool]:
    """(``connected`` / ``offline`` / ``never seen``, stale) of a device's latest heartbeat."""
    if last is None:
        return "never seen", False
    stale = now - last > timedelta(seconds=STALE_INTERVALS * st.config.timing.heartbeat_interval)
    return ("connected" if now - last < st.connected_window else "offline"), stale


@router.get("/devices")
def devices_page(
    request: Request,
    info: Info,
    fleet: str = "",
    status: str = "",
    tag: str = "",
    model: str = "",
    seen: str = "",
    page: str = "",
) -> HTMLResponse:
    """The filterable, paginated device list (the service's paged device query)."""
    st = app_state(request)
    now = st.db.now()
    chosen = DeviceFilter(fleet.strip(), status, tag.strip(), model.strip(), seen)
    context: dict[str, Any] = {
        "filter": chosen,
        "seen_choices": SEEN_CHOICES,
        "status_choices": STATUS_CHOICES,
        "rows": [],
        "next_query": None,
        "now": now,
        "ago": ago,
    }
    try:
        with st.db.session() as session:
            context["fleet_names"] = [f.name for f in fleets.list_fleets(session, limit=1000).items]
            after, before = _heartbeat_bounds(st, chosen, now)
            found = devices.list_devices(
                session,
                fleet_name=chosen.fleet or None,
                model_name=chosen.model or None,
                heartbeat_after=after,
                heartbeat_before=before,
                tags=parse_tag_filters([chosen.tag]) if chosen.tag else None,
                limit=DEVICE_PAGE,
                next_token=page or None,
            )
            for row in found.items:
                summary = bodies.device_summary(row)
                state, stale = _device_status(st, row.last_heartbeat_at, now)
                context["rows"].append({"device": summary, "status": state, "stale": stale})
            if found.next_token:
                context["next_query"] = chosen.query(page=found.next_token)
    except EdgefleetError as exc:
        context["error"] = exc
        return render(request, "devices.html", context, status=exc.http_status, info=info)
    return render(request, "devices.html", context, info=info)


def _heartbeat_bounds(
    st: AppState, chosen: DeviceFilter, now: datetime
) -> tuple[datetime | None, datetime | None]:
    after: datetime | None = None
    before: datetime | None = None
    if chosen.status == "connected":
        after = now - st.connected_window
    elif chosen.status == "offline":
        before = now - st.connected_window
    elif chosen.status:
        raise InvalidArgument(f"status {chosen.status!r} is unknown (known: {', '.join(STATUS_CHOICES)})")
    if chosen.seen:
        if chosen.seen not in SEEN_CHOICES:
            raise InvalidArgument(f"last seen {chosen.seen!r} is unknown (known: {', '.join(SEEN_CHOICES)})")
        since = now - timedelta(seconds=SEEN_CHOICES[chosen.seen][1])
        after = since if after is None else max(after, since)
    return after, before


@router.get("/devices/{name}")
def device_page(name: str, request: Request, info: Info) -> HTMLResponse:
    """One device: status, last seen, agent figures, models, deployment history, capture backlog."""
    st = app_state(request)
    now = st.db.now()
    try:
        with st.db.session() as session:
            row = devices.get_device(session, name)
            device = bodies.device(
                row, captures.latest_samples(session, row), captures.capture_status(session, row)
            )
            model_metrics = {(m.model_name, m.model_version): list(m.metrics or ()) for m in row.models}
            history = [
                bodies.stage_device(plan, stage, item)
                for plan, stage, item in stages.device_history(session, row.id, HISTORY_ROWS)
            ]
    except EdgefleetError as exc:
        return error_page(request, exc, info)
    state, stale = _device_status(st, device.LatestHeartbeat, now)
    return render(
        request,
        "device.html",
        {
            "device": device,
            "status": state,
            "stale": stale,
            "stale_after": STALE_INTERVALS * st.config.timing.heartbeat_interval,
            "model_metrics": model_metrics,
            "history": history,
            "now": now,
            "ago": ago,
        },
        info=info,
    )


# --------------------------------------------------------------------------------------------- models


def _models_context(st: AppState) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    with st.db.session() as session:
        for model in registry.list_models(
            session, limit=st.config.limits.max_page_size, next_token=None
        ).items:
            out = bodies.model(session, model)
            versions = []
            for version in registry.list_versions(
                session, model.name, limit=st.config.limits.max_page_size, next_token=None
            ).items:
                provenance = {}
                for package in version.packages:
                    manifest = package.manifest or {}
                    provenance[package.target] = dict(manifest.get("provenance") or {})
                aliases = sorted(a for a, v in out.Aliases.items() if v == version.version)
                versions.append(
                    {
                        "out": bodies.version(version, st.artifacts),
                        "provenance": provenance,
                        "aliases": aliases,
                    }
                )
            items.append({"model": out, "versions": versions})
    return {"models": items}


@router.get("/models")
def models_page(request: Request, info: Info) -> HTMLResponse:
    """The registry: versions, targets, signer, approval, aliases, provenance."""
    return render(request, "models.html", _models_context(app_state(request)), info=info)


@router.post("/models/{name}/versions/{version}/approval")
def set_approval(name: str, version: str, request: Request, info: Info, form: Form) -> Response:
    """Approve or reject a version through the API's own route (who: the session's operator)."""
    check_csrf(request, info, form)
    status = form.get("status", "")
    try:
        body = s.ApprovalRequest(ApprovalStatus=status, Reason=form.get("reason") or None)
        api_models.set_approval(name, version, body, request, info.operator)
    except EdgefleetError as exc:
        context = _models_context(app_state(request))
        return render(request, "models.html", {**context, "error": exc}, status=exc.http_status, info=info)
    return see_other(f"{PREFIX}/models")


# ---------------------------------------------------------------------------------------- deployments


@router.get("/deployments")
def deployments_page(request: Request, info: Info) -> HTMLResponse:
    """Every plan with its stages' status and device counts."""
    st = app_state(request)
    with st.db.session() as session:
        rows = [
            bodies.plan(session, plan)
            for plan in plans.list_plans(session, limit=st.config.limits.max_page_size, next_token=None).items
        ]
    return render(request, "deployments.html", {"plans": rows}, info=info)


def _plan_context(request: Request, name: str, operator: str) -> dict[str, Any]:
    """The plan as DescribeEdgeDeploymentPlan answers it (stages refreshed) and its stage devices."""
    st = app_state(request)
    plan = api_deployments.describe_plan(name, request, operator)
    devices_of: dict[str, list[s.DeviceDeploymentSummary]] = {}
    with st.db.session() as session:
        for stage in plan.Stages:
            page = stages.list_stage_devices(
                session, name, stage.StageName, limit=STAGE_DEVICE_ROWS, next_token=None
            )
            devices_of[stage.StageName] = [bodies.stage_device(name, stage.StageName, r) for r in page.items]
    status = [st_.DeploymentStatus.StageStatus for st_ in plan.Stages]
    startable = next((x.StageName for x in plan.Stages if x.DeploymentStatus.StageStatus in _STARTABLE), None)
    stoppable = next((x.StageName for x in plan.Stages if x.DeploymentStatus.StageStatus in _STOPPABLE), None)
    events = sorted(((x.StageName, e) for x in plan.Stages for e in x.Events), key=lambda item: item[1].Time)
    return {
        "plan": plan,
        "stage_devices": devices_of,
        "running": any(x in _RUNNING for x in status),
        "startable": startable,
        "stoppable": stoppable,
        "events": events,
        "now": st.db.now(),
        "ago": ago,
    }


@router.get("/deployments/{name}")
def deployment_page(name: str, request: Request, info: Info) -> HTMLResponse:
    try:
        context = _plan_context(request, name, info.operator)
    except EdgefleetError as exc:
        return error_page(request, exc, info)
    return render(request, "deployment.html", context, info=info)


@router.get("/deployments/{name}/progress")
def deployment_progress(name: str, request: Request, info: Info) -> HTMLResponse:
    """The live part of a deployment's page (htmx polls it every 2 s while a stage runs)."""
    try:
        context = _plan_context(request, name, info.operator)
    except EdgefleetError as exc:
        return error_page(request, exc, info)
    return render(request, "progress.html", context, info=info)


def _stage_action(
    name: str, request: Request, info: SessionInfo, form: dict[str, str], start: bool
) -> Response:
    check_csrf(request, info, form)
    stage = form.get("stage", "")
    try:
        if not stage:
            raise InvalidArgument(
                f"plan {name!r} has no stage that can be {'started' if start else 'stopped'} now"
            )
        if start:
            api_deployments.start_stage(name, stage, request, info.operator)
        else:
            api_deployments.stop_stage(name, stage, request, info.operator)
    except EdgefleetError as exc:
        try:
            context = _plan_context(request, name, info.operator)
        except EdgefleetError:
            return error_page(request, exc, info)
        return render(
            request, "deployment.html", {**context, "error": exc}, status=exc.http_status, info=info
        )
    return see_other(f"{PREFIX}/deployments/{name}")


@router.post("/deployments/{name}/start")
def start_stage(name: str, request: Request, info: Info, form: Form) -> Response:
    """Start the plan's stage named in the form, through the API's StartEdgeDeploymentStage."""
    return _stage_action(name, request, info, form, start=True)


@router.post("/deployments/{name}/stop")
def stop_stage(name: str, request: Request, info: Info, form: Form) -> Response:
    """Stop the plan's stage named in the form, through the API's StopEdgeDeploymentStage."""
    return _stage_action(name, request, info, form, start=False)


# ----------------------------------------------------------------------------------------- monitoring


@router.get("/monitoring")
def monitoring_page(request: Request, info: Info) -> HTMLResponse:
    st = app_state(request)
    with st.db.session() as session:
        fleet_names = [f.name for f in fleets.list_fleets(session, limit=1000).items]
    return render(request, "monitoring.html", {"fleet_names": fleet_names}, info=info)


@router.get("/data/figures")
def figures_data(request: Request, info: Info, fleet: str = "") -> Response:
    """Each model version's figures now, from its connected devices' latest heartbeats: requests,
    errors, error rate, p50 (median of devices) and p99 (worst device) latency in milliseconds."""
    st = app_state(request)
    now = st.db.now()
    try:
        with st.db.session() as session:
            fleet_id = fleets.get_fleet(session, fleet).id if fleet else None
            figures = metrics.model_figures(session, now - st.connected_window, fleet_id)
    except EdgefleetError as exc:
        raise Refused(exc) from exc
    return json_response(
        {
            "time": now.timestamp(),
            "series": [
                {
                    "fleet": f,
                    "model": m,
                    "version": v,
                    "devices": fig.devices,
                    "requests": fig.requests,
                    "errors": fig.errors,
                    "error_rate": fig.error_rate,
                    "p50_ms": fig.p50_ms,
                    "p99_ms": fig.p99_ms,
                }
                for (f, m, v), fig in sorted(figures.items())
            ],
        }
    )


@router.get("/data/drift")
def drift_data(request: Request, info: Info, fleet: str = "", hours: int = 24) -> Response:
    """The stored drift time series of the last ``hours``: per fleet, model version and score kind,
    the highest score of each bucket."""
    st = app_state(request)
    if not 1 <= hours <= 24 * 90:
        raise Refused(InvalidArgument(f"hours must be between 1 and {24 * 90}, got {hours}"))
    try:
        with st.db.session() as session:
            points = drift.score_series(
                session, st.db.now() - timedelta(hours=hours), fleet_name=fleet or None
            )
    except EdgefleetError as exc:
        raise Refused(exc) from exc
    series: dict[tuple[str, str, str, str], list[list[float]]] = {}
    for p in points:
        series.setdefault((p.fleet, p.model_name, p.model_version, p.kind), []).append(
            [p.bucket_start.timestamp(), p.score]
        )
    return json_response(
        {
            "series": [
                {"fleet": f, "model": m, "version": v, "kind": k, "points": values}
                for (f, m, v, k), values in series.items()
            ]
        }
    )
