"""The web dashboard, served under ``/ui`` on the operator listener (not on the device listener).

Server-rendered pages (Jinja2 templates in ``templates/``) with two vendored libraries in
``static/vendor/`` (htmx for the live fragments, uPlot for the charts; versions and licences in
``static/vendor/README.md``): no CDN, no Node.js at install or run time. Operators log in with an
API token, which the API's token service checks; the dashboard keeps a server-side session
(:mod:`.sessions`) behind an HttpOnly, Secure, SameSite=Strict cookie, and every form and htmx
request carries the session's CSRF token (:mod:`.web`). Pages read and act through the API's
service layer and route functions (:mod:`.pages`).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from edgefleet.server.ui.web import STATIC_DIR, STATIC_URL, install_handlers


def install_ui(app: FastAPI) -> None:
    """Serve the dashboard's pages under ``/ui`` and its assets under ``/ui/static``."""
    from edgefleet.server.ui.pages import router

    install_handlers(app)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="ui-static")
    app.include_router(router)
