"""The dashboard's plumbing: templates, the session dependency, CSRF and form bodies, error pages.

Without a valid session a page answers ``303 See Other`` to the login page, an htmx fragment
(``HX-Request`` header) or a chart's JSON (``/ui/data/...``) ``401``. Every POST must carry the
session's CSRF token as the form field ``csrf_token`` or the header ``X-CSRF-Token`` (htmx sends
it from ``hx-headers``); a missing or wrong one is refused with 403 before anything is done.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from edgefleet import __version__
from edgefleet.core.errors import Code, EdgefleetError, InvalidArgument, PermissionDenied, error_body
from edgefleet.server.api.auth import app_state
from edgefleet.server.api.errors import BodyTooLarge
from edgefleet.server.tokens import Unauthenticated
from edgefleet.server.ui import sessions
from edgefleet.server.ui.sessions import SessionInfo

PREFIX = "/ui"
LOGIN_PATH = f"{PREFIX}/login"
DATA_PREFIX = f"{PREFIX}/data/"
STATIC_URL = f"{PREFIX}/static"
#: the session cookie (HttpOnly, Secure, SameSite=Strict, Path=/ui)
SESSION_COOKIE = "edgefleet_session"
#: the login form's own CSRF cookie (double submit: there is no session yet to hold a token)
LOGIN_COOKIE = "edgefleet_login"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
FORM_TYPE = "application/x-www-form-urlencoded"
#: most fields in one form
MAX_FORM_FIELDS = 50
#: every page's security headers: scripts and styles only from this server (no inline script; the
#: progress bars' widths are inline styles), no framing (the pages have action buttons)
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

_HERE = Path(__file__).parent
TEMPLATES_DIR = _HERE / "templates"
STATIC_DIR = _HERE / "static"


class LoginRequired(Exception):
    """No valid session: the page redirects to the login page, a fragment or data call gets 401."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Refused(Exception):
    """A request the dashboard refuses before doing anything (CSRF, form body): an error page."""

    def __init__(self, error: EdgefleetError) -> None:
        super().__init__(error.message)
        self.error = error


def ago(when: datetime | None, now: datetime) -> str:
    """``when`` relative to ``now`` for people: ``12 s ago``, ``5 min ago``, ``never``."""
    if when is None:
        return "never"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (now - when).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 60:
        text = f"{int(seconds)} s"
    elif seconds < 3600:
        text = f"{int(seconds // 60)} min"
    elif seconds < 86400:
        text = f"{int(seconds // 3600)} h"
    else:
        text = f"{int(seconds // 86400)} d"
    return f"in {text}" if future else f"{text} ago"


def _iso(when: datetime | None) -> str:
    if when is None:
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "\N{EN DASH}"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.{digits}f}"


def _percent(value: float | None) -> str:
    return "\N{EN DASH}" if value is None else f"{value * 100:.2f} %"


templates = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters.update(iso=_iso, number=_number, percent=_percent)
templates.globals.update(static=STATIC_URL, version=__version__)


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
    info: SessionInfo | None = None,
) -> HTMLResponse:
    """An HTML page (or fragment) from ``template``; ``info`` is the session of the page's forms."""
    values = {"request": request, "info": info, "path": request.url.path, **context}
    html = templates.get_template(template).render(values)
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)


def error_page(request: Request, error: EdgefleetError, info: SessionInfo | None = None) -> HTMLResponse:
    """The API's error (code and message) on a page of its own, with the code's HTTP status."""
    if is_htmx(request):
        return render(request, "error_fragment.html", {"error": error}, status=error.http_status, info=info)
    return render(request, "error.html", {"error": error}, status=error.http_status, info=info)


def is_htmx(request: Request) -> bool:
    """Whether htmx sent the request (a fragment is wanted, not a page)."""
    return request.headers.get("hx-request", "").lower() == "true"


def session_info(request: Request) -> SessionInfo:
    """FastAPI dependency (blocking: one query): the request's live session, or LoginRequired."""
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        raise LoginRequired("log in with an API token")
    st = app_state(request)
    try:
        with st.db.session() as session:
            return sessions.find_session(session, secret, st.db.now())
    except Unauthenticated as exc:
        raise LoginRequired(exc.message) from exc


async def form_fields(request: Request) -> dict[str, str]:
    """FastAPI dependency: the URL-encoded form body (each field's last value).

    Bounded: the request guard refuses a body above ``Limits.max_form_body_bytes`` before it is
    read; this checks the size again, the content type and the number of fields.
    """
    limit = app_state(request).config.limits.max_form_body_bytes
    body = await request.body()
    if len(body) > limit:
        raise Refused(BodyTooLarge(f"the form is {len(body)} bytes; this server accepts at most {limit}"))
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if body and content_type != FORM_TYPE:
        raise Refused(InvalidArgument(f"forms must be sent as {FORM_TYPE} (got {content_type or 'none'!r})"))
    try:
        parsed = parse_qs(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FORM_FIELDS
        )
    except UnicodeDecodeError as exc:
        raise Refused(InvalidArgument("the form is not UTF-8")) from exc
    except ValueError as exc:  # more than MAX_FORM_FIELDS fields
        raise Refused(InvalidArgument(f"the form has more than {MAX_FORM_FIELDS} fields")) from exc
    return {key: values[-1] for key, values in parsed.items()}


def check_csrf(request: Request, info: SessionInfo, form: Mapping[str, str]) -> None:
    """Refuse (403) a POST whose CSRF token (form field or ``X-CSRF-Token``) is not the session's."""
    sent = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
    if not sessions.csrf_matches(info.csrf_token, sent):
        raise Refused(
            PermissionDenied(
                "the form's CSRF token does not match your session: reload the page and try again"
            )
        )


def see_other(url: str) -> RedirectResponse:
    """``303 See Other`` (after a POST, or to the login page)."""
    return RedirectResponse(url, status_code=303)


def install_handlers(app: FastAPI) -> None:
    """The answers to :class:`LoginRequired` and :class:`Refused`."""

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        error = Unauthenticated(exc.message)
        if request.url.path.startswith(DATA_PREFIX):
            return JSONResponse(error_body(Code.UNAUTHENTICATED, exc.message), status_code=401)
        if is_htmx(request) or request.method != "GET":
            # htmx follows redirects itself; this tells the page to go to the login page instead
            response = await run_in_threadpool(error_page, request, error)
            response.headers["HX-Redirect"] = LOGIN_PATH
            return response
        return see_other(LOGIN_PATH)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> Response:
        if request.url.path.startswith(DATA_PREFIX):
            return JSONResponse(
                error_body(exc.error.code, exc.error.message), status_code=exc.error.http_status
            )
        return await run_in_threadpool(error_page, request, exc.error)


def json_response(payload: Any) -> Response:
    """A JSON answer of a chart's data (never cached)."""
    return Response(
        json.dumps(payload, separators=(",", ":")),
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
