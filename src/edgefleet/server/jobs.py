"""Periodic work every replica runs: due fleet reports, stage refreshes (device timeouts), the
watch periods of DEPLOYED stages, and the deletion of model summary windows past their retention
(drift monitoring).

Safe with several replicas: report generation is claimed through a lease row
(:func:`edgefleet.server.reports.regenerate_due_reports`) and stage refreshes lock the stage row,
so running them on every replica only costs a few queries.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from starlette.concurrency import run_in_threadpool

from edgefleet.server import drift
from edgefleet.server.api.state import AppState
from edgefleet.server.deployments.stages import refresh_active_stages
from edgefleet.server.deployments.watch import watch_stages
from edgefleet.server.reports import regenerate_due_reports

log = logging.getLogger(__name__)


def run_once(state: AppState) -> list[str]:
    """One round of periodic work; returns the fleets whose report was regenerated."""
    timing = state.config.timing
    generated = regenerate_due_reports(
        state.db,
        state.replica_id,
        interval=timedelta(seconds=timing.report_interval),
        lease=timedelta(seconds=timing.job_lease),
        connected_window=state.connected_window,
    )
    with state.db.session() as session:
        refresh_active_stages(session, state.db.now())
    with state.db.session() as session:
        watch_stages(session, state.db.now())
    with state.db.session() as session:
        drift.purge_windows(session, state.db.now() - timedelta(seconds=timing.summary_retention))
    return generated


async def run_periodic(state: AppState, stop: asyncio.Event) -> None:
    """Run :func:`run_once` every tick until ``stop`` is set. A failed round is logged and retried next tick."""
    tick = min(state.config.timing.job_tick, state.config.timing.report_interval)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=tick)
            return
        except TimeoutError:
            pass
        try:
            await run_in_threadpool(run_once, state)
        except Exception:  # the loop must outlive a bad round (e.g. the database restarting)
            log.exception("periodic work failed; retrying in %.0f s", tick)
