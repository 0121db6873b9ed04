"""Pipelines and their runs: the records (``pipelines``, ``pipeline_runs``, ``pipeline_steps``,
``pipeline_logs``) and the rules that change them.

A run is advanced by a ``pipeline`` job on the task queue (server/tasks.py), run by
``edgefleet worker`` (``edgefleet.worker.pipeline``); the control plane only records, enqueues and
takes decisions. Life of a run::

    QUEUED --job claims--> RUNNING --each step in turn--> SUCCEEDED
                             |   \\--a step fails--> FAILED (reason; later steps stay PENDING)
                             \\--manual approval gate--> WAITING_APPROVAL
                                   --approve--> RUNNING (a new job continues after the gate)
                                   --reject---> REJECTED

Steps are journalled: a step's artifacts (job ids, package ids, plan names) are written as soon as
they exist, so a job re-run after its worker died (the job engine's lease and retry) picks the run
up where it was instead of starting again. Each run state change enqueues a webhook delivery on
the existing outbox (server/webhooks.py) when the pipeline configures ``[webhook]``.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from edgefleet.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from edgefleet.core.manifest import validate_version
from edgefleet.server import tasks, webhooks
from edgefleet.server.config import JobPolicy
from edgefleet.server.db.engine import Database
from edgefleet.server.db.paging import paginate
from edgefleet.server.db.schema import PipelineLogRow, PipelineRow, PipelineRunRow, PipelineStepRow
from edgefleet.server.pipelines.config import PipelineConfig, check_config, parse_toml
from edgefleet.server.queue import JobQueue
from edgefleet.server.validation import Page

log = logging.getLogger(__name__)

MAX_LINE_CHARS = 4000


class RunState(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    WAITING_APPROVAL = "WAITING_APPROVAL"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"


class StepState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


RUN_TERMINAL = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.REJECTED})
STEP_DONE = frozenset({StepState.SUCCEEDED, StepState.SKIPPED})

# ---------------------------------------------------------------------------------- pipelines


def put_pipeline(session: Session, text: str, actor: str, now: datetime, *, replace: bool) -> PipelineRow:
    """Store a pipeline configuration (TOML ``text``) under its model name; ALREADY_EXISTS for a
    name taken unless ``replace``."""
    config = parse_toml(text)
    row = session.get(PipelineRow, config.name)
    if row is not None and not replace:
        raise AlreadyExists(f"pipeline {config.name!r} exists already (update it with --replace)")
    if row is None:
        row = PipelineRow(name=config.name, created_at=now, created_by=actor)
        session.add(row)
    row.source_text = text
    row.config = config.to_dict()
    row.updated_at = now
    session.flush()
    return row


def get_pipeline(session: Session, name: str) -> PipelineRow:
    row = session.get(PipelineRow, name[:63]) if isinstance(name, str) else None
    if row is None:
        raise NotFound(f"no pipeline {name[:63]!r} (create one with `edgefleet pipeline create FILE`)")
    return row


def list_pipelines(session: Session) -> list[PipelineRow]:
    return list(session.scalars(select(PipelineRow).order_by(PipelineRow.name)))


def config_of(row: PipelineRow | PipelineRunRow) -> PipelineConfig:
    return check_config(row.config)


# ---------------------------------------------------------------------------------- runs


def start_run(
    db: Database,
    queue: JobQueue,
    name: str,
    actor: str,
    policy: JobPolicy,
    *,
    version: str | None = None,
    source: str | None = None,
    trigger: str = "manual",
) -> PipelineRunRow:
    """Record a run of pipeline ``name`` (its configuration as it is now, ``source`` replacing the
    model file when given) with its steps, and queue the job that advances it."""
    if source is not None and not Path(source).is_absolute():
        raise InvalidArgument(f"Source {source[:200]!r} must be an absolute path (the workers read it)")
    with db.session() as session:
        pipeline = get_pipeline(session, name)
        raw = dict(pipeline.config)
        if source is not None:
            raw["source"] = {**raw["source"], "model": source}
        config = check_config(raw)
        number = (
            session.scalar(select(func.max(PipelineRunRow.number)).where(PipelineRunRow.pipeline == name))
            or 0
        ) + 1
        model_version = version or f"r{number}"
        validate_version(model_version)
        run_id = uuid.uuid4().hex
        now = db.now()
        run = PipelineRunRow(
            id=run_id,
            pipeline=name,
            number=number,
            model_version=model_version,
            state=RunState.QUEUED,
            trigger=trigger[:100],
            config=config.to_dict(),
            created_at=now,
            created_by=actor,
        )
        session.add(run)
        session.flush()  # the steps and log lines refer to it (no ORM relationship orders the inserts)
        for position, step in enumerate(config.steps()):
            session.add(
                PipelineStepRow(
                    run_id=run_id,
                    position=position,
                    name=step,
                    state=StepState.PENDING,
                    artifacts={},
                    figures={},
                )
            )
        _log(
            session,
            run_id,
            None,
            now,
            [f"run {number} of {name} (version {model_version}) queued by {actor} ({trigger})"],
        )
        _notify(session, run, config, now)
    _queue_job(db, queue, run_id, actor, policy)
    with db.session() as session:
        return get_run(session, run_id)


def _queue_job(db: Database, queue: JobQueue, run_id: str, actor: str, policy: JobPolicy) -> None:
    job = tasks.submit(db, queue, tasks.PIPELINE, {"RunId": run_id}, actor, policy)
    with db.session() as session:
        session.execute(update(PipelineRunRow).where(PipelineRunRow.id == run_id).values(job_id=job.id))
        _log(session, run_id, None, db.now(), [f"job {job.id} advances the run"])


def get_run(session: Session, run_id: str) -> PipelineRunRow:
    row = session.get(PipelineRunRow, run_id[:64]) if isinstance(run_id, str) else None
    if row is None:
        raise NotFound(f"no pipeline run {run_id[:64]!r}")
    return row


def steps_of(session: Session, run_id: str) -> list[PipelineStepRow]:
    return list(
        session.scalars(
            select(PipelineStepRow).where(PipelineStepRow.run_id == run_id).order_by(PipelineStepRow.position)
        )
    )


def list_runs(
    session: Session, *, pipeline: str | None, state: str | None, limit: int, next_token: str | None
) -> Page[PipelineRunRow]:
    stmt = select(PipelineRunRow)
    if pipeline is not None:
        stmt = stmt.where(PipelineRunRow.pipeline == pipeline)
    if state is not None:
        if state not in RunState.__members__:
            raise InvalidArgument(f"unknown run state {state[:30]!r} (known: {', '.join(RunState)})")
        stmt = stmt.where(PipelineRunRow.state == state)
    stmt = stmt.order_by(PipelineRunRow.created_at.desc(), PipelineRunRow.id.desc())
    return paginate(session, stmt, limit, next_token)


def run_logs(session: Session, run_id: str, *, after: int, limit: int) -> list[PipelineLogRow]:
    get_run(session, run_id)
    if after < 0:
        raise InvalidArgument(f"After must be 0 or more, got {after}")
    return list(
        session.scalars(
            select(PipelineLogRow)
            .where(PipelineLogRow.run_id == run_id, PipelineLogRow.id > after)
            .order_by(PipelineLogRow.id)
            .limit(limit)
        )
    )


# ---------------------------------------------------------------------------------- decisions


def decide(
    db: Database,
    queue: JobQueue,
    run_id: str,
    actor: str,
    policy: JobPolicy,
    *,
    approve: bool,
    note: str | None = None,
) -> PipelineRunRow:
    """Approve (the run continues after the gate, on a new job) or reject (REJECTED, nothing is
    rolled out) a run WAITING_APPROVAL; FAILED_PRECONDITION for a run in any other state."""
    if note is not None and len(note) > 1000:
        raise InvalidArgument("Note is at most 1000 characters")
    with db.session() as session:
        run = get_run(session, run_id)
        if run.state != RunState.WAITING_APPROVAL:
            raise FailedPrecondition(
                f"run {run_id} is {run.state}, not WAITING_APPROVAL: only a run at its approval gate is approved or rejected"
            )
        now = db.now()
        done = session.execute(
            update(PipelineRunRow)
            .where(PipelineRunRow.id == run_id, PipelineRunRow.state == RunState.WAITING_APPROVAL)
            .values(
                decision="Approved" if approve else "Rejected",
                decided_by=actor,
                decided_at=now,
                decision_note=note,
                state=RunState.QUEUED if approve else RunState.REJECTED,
                reason=None if approve else f"rejected by {actor}" + (f": {note}" if note else ""),
                finished_at=None if approve else now,
            )
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise FailedPrecondition(f"run {run_id} changed meanwhile; look again")
        gate = next(s for s in steps_of(session, run_id) if s.name == "approval")
        if approve:
            gate.state, gate.message = (
                StepState.SUCCEEDED,
                f"approved by {actor}" + (f": {note}" if note else ""),
            )
        else:
            gate.state, gate.message = (
                StepState.FAILED,
                f"rejected by {actor}" + (f": {note}" if note else ""),
            )
        gate.finished_at = now
        _log(session, run_id, "approval", now, [gate.message])
        session.refresh(run)
        _notify(session, run, config_of(run), now)
    if approve:
        _queue_job(db, queue, run_id, actor, policy)
    with db.session() as session:
        return get_run(session, run_id)


# ---------------------------------------------------------------------------------- for the executor


def _log(session: Session, run_id: str, step: str | None, now: datetime, lines: Sequence[str]) -> None:
    for line in lines:
        session.add(PipelineLogRow(run_id=run_id, step=step, logged_at=now, line=line[:MAX_LINE_CHARS]))


def log_lines(db: Database, run_id: str, step: str | None, lines: Sequence[str]) -> None:
    """Append lines to a run's log."""
    with db.session() as session:
        _log(session, run_id, step, db.now(), lines)


def set_run_state(db: Database, run_id: str, state: RunState, *, reason: str | None = None) -> None:
    """Move a run to ``state`` (stamping its start or end) and notify the webhook."""
    with db.session() as session:
        run = get_run(session, run_id)
        now = db.now()
        if run.state == state and reason is None:
            return
        run.state = state
        if state == RunState.RUNNING and run.started_at is None:
            run.started_at = now
        if state in RUN_TERMINAL:
            run.finished_at = now
        if reason is not None:
            run.reason = reason
        line = f"run {state}" + (f": {reason}" if reason else "")
        _log(session, run_id, None, now, [line])
        log.info("pipeline run %s %s", run_id, line)
        _notify(session, run, config_of(run), now)


def update_step(
    db: Database,
    run_id: str,
    name: str,
    *,
    state: StepState | None = None,
    message: str | None = None,
    artifacts: dict[str, Any] | None = None,
    figures: dict[str, Any] | None = None,
) -> PipelineStepRow:
    """Change one step: its state (stamping start and end), message, and artifacts or figures
    merged into what it has."""
    with db.session() as session:
        step = session.scalar(
            select(PipelineStepRow).where(PipelineStepRow.run_id == run_id, PipelineStepRow.name == name)
        )
        if step is None:
            raise NotFound(f"run {run_id} has no step {name!r}")
        now = db.now()
        if state is not None and state != step.state:
            step.state = state
            if state == StepState.RUNNING:
                step.started_at, step.finished_at = now, None
            if state in (StepState.SUCCEEDED, StepState.FAILED, StepState.SKIPPED):
                step.finished_at = now
                if step.started_at is None:
                    step.started_at = now
            _log(session, run_id, name, now, [f"step {name} {state}" + (f": {message}" if message else "")])
        if message is not None:
            step.message = message
        if artifacts:
            step.artifacts = {**step.artifacts, **artifacts}
        if figures:
            step.figures = {**step.figures, **figures}
        session.flush()
        session.expunge(step)
        return step


def fail_runs_of_lost_jobs(db: Database, job_ids: Sequence[str]) -> int:
    """Runs whose advancing job failed for good because its workers were lost (every attempt's
    lease ran out): FAILED with that reason, so no run waits forever on a job that will not come."""
    if not job_ids:
        return 0
    with db.session() as session:
        lost = list(
            session.scalars(
                select(PipelineRunRow.id).where(
                    PipelineRunRow.job_id.in_(list(job_ids)),
                    PipelineRunRow.state.in_([RunState.QUEUED, RunState.RUNNING]),
                )
            )
        )
    for run_id in lost:
        set_run_state(
            db, run_id, RunState.FAILED, reason="its job's workers were lost (every attempt's lease ran out)"
        )
    return len(lost)


def _notify(session: Session, run: PipelineRunRow, config: PipelineConfig, now: datetime) -> None:
    if config.webhook is None:
        return
    payload = {
        "Event": "pipeline.run." + run.state.lower(),
        "PipelineName": run.pipeline,
        "RunId": run.id,
        "RunNumber": run.number,
        "ModelVersion": run.model_version,
        "State": run.state,
        "Reason": run.reason,
        "Time": now.isoformat(),
    }
    webhooks.enqueue(
        session, event_id=None, url=config.webhook.url, payload=payload, secret=config.webhook.secret, now=now
    )
