"""Periodic work every replica runs: due fleet reports, stage refreshes (device timeouts), the
watch periods of DEPLOYED stages, the deletion of model summary windows, drift scores and capture index
rows past their retention, jobs whose worker was lost (their lease ran out: re-queued or failed,
every monitoring tick), the model figures time series (one sample per fleet's model version and
interval, every monitoring tick; deleted after the summary retention), and drift monitoring (scoring
complete buckets into the stored time series, alert rules, webhook deliveries).

Safe with several replicas: report generation is claimed through a lease row
(:func:`edgefleet.server.reports.regenerate_due_reports`), stage refreshes lock the stage row, a
drift bucket is written under its row's lock, a rule is evaluated under its row's lock, a figures sample is one row per
series and interval (insert-ignore) and webhook deliveries are claimed with ``SKIP LOCKED``, so running them on every replica only costs a few
queries.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from datetime import timedelta

from starlette.concurrency import run_in_threadpool

from edgefleet.server import alerts, captures, drift, figures, tasks, webhooks
from edgefleet.server.api.state import AppState
from edgefleet.server.deployments.stages import refresh_active_stages
from edgefleet.server.deployments.watch import watch_stages
from edgefleet.server.pipelines import runs as pipeline_runs
from edgefleet.server.reports import regenerate_due_reports

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitoringRound:
    """What one round of :func:`run_monitoring` did."""

    buckets_scored: int
    alerts: list[alerts.Change]
    webhooks: webhooks.Outcome
    #: model figure samples written (0 when this interval was sampled already)
    figures_sampled: int = 0


def run_monitoring(state: AppState, *, rng: random.Random | None = None) -> MonitoringRound:
    """Re-queue (or fail) jobs whose worker was lost (a pipeline run whose job ran out of attempts
    fails with it), sample the model figures of the current interval, score complete drift buckets,
    reconcile alert rules with them, post due webhooks."""
    reaped = tasks.reap_expired(state.db, state.queue)
    pipeline_runs.fail_runs_of_lost_jobs(state.db, [r.job_id for r in reaped if not r.requeued])
    timing = state.config.timing
    sampled = figures.sample(
        state.db, state.db.now(), interval=timing.figures_interval, connected_window=state.connected_window
    )
    scored = state.drift_scorer.run(state.db.now())
    changes = alerts.evaluate(state.db, lookback=timedelta(seconds=timing.drift_lookback))
    outcome = webhooks.deliver_due(state.db, state.config.webhooks, rng=rng)
    return MonitoringRound(len(scored), changes, outcome, sampled)


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
    retained = state.db.now() - timedelta(seconds=timing.summary_retention)
    with state.db.session() as session:
        watch_stages(session, state.db.now())
    with state.db.session() as session:
        drift.purge_windows(session, retained)
    with state.db.session() as session:
        drift.purge_scores(session, retained)
    with state.db.session() as session:
        figures.purge(session, retained)
    if timing.capture_retention > 0:
        with state.db.session() as session:
            captures.purge_objects(session, state.db.now() - timedelta(seconds=timing.capture_retention))
    run_monitoring(state)
    return generated


async def run_periodic(state: AppState, stop: asyncio.Event) -> None:
    """Run :func:`run_once` every job tick and :func:`run_monitoring` every monitoring tick in
    between, until ``stop`` is set. A failed round is logged and retried next tick."""
    timing = state.config.timing
    job_tick = min(timing.job_tick, timing.report_interval)
    tick = min(job_tick, timing.monitoring_tick)
    last_full = time.monotonic()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=tick)
            return
        except TimeoutError:
            pass
        full = time.monotonic() - last_full >= job_tick - tick / 2
        try:
            if full:
                last_full = time.monotonic()
                await run_in_threadpool(run_once, state)
            else:
                await run_in_threadpool(run_monitoring, state)
        except Exception:  # the loop must outlive a bad round (e.g. the database restarting)
            log.exception("periodic work failed; retrying in %.0f s", tick)
