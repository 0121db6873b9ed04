"""The ASGI application of one replica."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import anyio.to_thread
from fastapi import FastAPI, Request
from sqlalchemy import text

from edgefleet import __version__
from edgefleet.server.api import (
    alerts,
    capture_plane,
    captures,
    deployments,
    device_plane,
    devices,
    drift,
    enrolment,
    fleets,
    jobs,
    models,
    pipelines,
)
from edgefleet.server.api.auth import app_state
from edgefleet.server.api.docs import install_docs
from edgefleet.server.api.errors import install_error_handlers
from edgefleet.server.api.guard import RequestGuard
from edgefleet.server.api.state import AppState
from edgefleet.server.ui import install_ui

DESCRIPTION = """\
The edgefleet control plane. Operator API under `/api/v1` (bearer tokens from
`edgefleet admin create-token`), device enrolment under `/enrol/v1` (one-time tokens), device data
plane under `/device/v1` (mutual TLS on the device port only). Errors are
`{"error": {"code": "INVALID_ARGUMENT", "message": "..."}}`. Interactive documentation: `/docs`
(Swagger UI) and `/redoc`, served by this server. The web dashboard is at `/ui` (operator port).
See docs/fleet-api.md.
"""


def create_app(state: AppState, *, run_jobs: bool = True) -> FastAPI:
    """The FastAPI application; ``run_jobs`` starts the periodic work with the app's lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from edgefleet.server.jobs import run_periodic

        # Blocking handlers run on a thread pool; every thread of it competes with the event loop
        # (which serves the routine device calls) for the GIL, so the pool is kept small.
        anyio.to_thread.current_default_thread_limiter().total_tokens = state.config.request_threads
        stop = asyncio.Event()
        task = asyncio.create_task(run_periodic(state, stop)) if run_jobs else None
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                await task

    app = FastAPI(
        title="edgefleet control plane",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by install_docs, without a CDN
        redoc_url=None,
    )
    install_docs(app)
    app.state.edgefleet = state
    install_error_handlers(app)
    # inside the framework's crash handler, outside routing: refusals happen before a body is read
    app.add_middleware(RequestGuard, state=state)
    for router in (
        fleets.router,
        devices.router,
        models.router,
        captures.router,
        deployments.router,
        drift.router,
        alerts.router,
        jobs.router,
        pipelines.router,
        enrolment.router,
        device_plane.router,
        capture_plane.router,
    ):
        app.include_router(router)
    install_ui(app)  # the web dashboard under /ui

    @app.get("/healthz", tags=["health"], summary="Liveness")
    def healthz() -> dict[str, str]:
        return {"Status": "alive"}

    @app.get("/readyz", tags=["health"], summary="Readiness (the database answers)")
    def readyz(request: Request) -> dict[str, str]:
        st = app_state(request)
        with st.db.session() as session:  # UNAVAILABLE (503) when the database does not answer
            session.execute(text("SELECT 1"))
        return {"Status": "ready"}

    return app
