"""Jobs on the task queue: the durable records and their rules (the ``jobs`` and ``job_logs`` tables).

A job is long, CPU-heavy work (a compilation, later a pipeline step) run by ``edgefleet worker``
processes, not by the control plane. Its row is the truth; the queue (:mod:`edgefleet.server.queue`)
only carries "run attempt N of job J" messages to workers.

Life of a job::

    QUEUED --claim--> RUNNING --finish--> SUCCEEDED | FAILED
       ^                 |  (lease expired: the worker died)
       +---reap_expired--+--> FAILED "worker lost (lease expired) after N attempts" (no attempts left)
    QUEUED | RUNNING --cancel--> CANCELLED

Rules that keep a job from being lost or run twice to completion:

* :func:`claim` is a conditional UPDATE (``state = QUEUED AND attempt = N``): of two deliveries of
  the same message only one worker runs the attempt;
* a RUNNING attempt holds a lease its worker renews with each :func:`heartbeat`; every later write
  of the worker (heartbeat, log lines, :func:`finish`) is fenced by ``attempt`` and ``worker_id``,
  so a worker that lost its lease (its job re-queued, or cancelled) can no longer change the job
  and learns it from the heartbeat's answer;
* :func:`reap_expired` (the periodic work on every replica) re-queues a RUNNING job whose lease ran
  out as attempt N+1, or fails it once ``max_attempts`` are used; its update is conditional too,
  so replicas reaping together re-queue a job once.

Job kinds: ``compile`` (the compiler's job, run by ``edgefleet.worker.compile``), ``pipeline``
(advances one pipeline run: server/pipelines/runs.py, ``edgefleet.worker.pipeline``) and ``wait`` (a
diagnostic that waits for a file to appear: a worker deployment's smoke test, and the tests'
way to hold a worker mid-job).
"""

from __future__ import annotations

import enum
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from edgefleet.core.errors import (
    Code,
    EdgefleetError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from edgefleet.core.targets import get_target
from edgefleet.server.config import JobPolicy
from edgefleet.server.db.engine import Database
from edgefleet.server.db.paging import paginate
from edgefleet.server.db.schema import JobLogRow, JobRow
from edgefleet.server.queue import JobQueue
from edgefleet.server.validation import Page

log = logging.getLogger(__name__)

MAX_LINE_CHARS = 4000
MAX_MESSAGE_CHARS = 500
MAX_ATTEMPTS_LIMIT = 20


class JobState(enum.StrEnum):
    """Where a job is."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
COMPILE, WAIT, PIPELINE = "compile", "wait", "pipeline"
KINDS = (COMPILE, WAIT, PIPELINE)

# ---------------------------------------------------------------------------------- parameters


def _number(
    params: dict[str, Any], key: str, default: float, *, least: float, integer: bool = False
) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(f"{key} must be a number, got {value!r}")
    if integer and value != int(value):
        raise InvalidArgument(f"{key} must be a whole number, got {value!r}")
    if value < least:
        raise InvalidArgument(f"{key} must be at least {least:g}, got {value!r}")
    return float(value)


def _file(params: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = params.get(key)
    if value is None:
        if required:
            raise InvalidArgument(
                f"a compile job needs {key} (the path of the file on the workers' machines)"
            )
        return None
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{key} must be a file path, got {value!r}")
    path = Path(value)
    if not path.is_absolute():
        raise InvalidArgument(f"{key} {value[:200]!r} must be an absolute path (workers resolve it, not you)")
    if not path.is_file():
        raise NotFound(f"{key} {value[:200]!r} does not exist or is not a file")
    return str(path)


def check_params(kind: str, params: dict[str, Any], policy: JobPolicy) -> dict[str, Any]:
    """The parameters of a new job of ``kind``, checked (INVALID_ARGUMENT, NOT_FOUND for a file
    that is not there) and normalised; what needs the compiler itself (framework, input specs) is
    checked by the worker, which fails the job with the compiler's reason."""
    if kind == COMPILE:
        target = params.get("Target")
        if not isinstance(target, str):
            raise InvalidArgument("a compile job needs Target (a device class, see docs/targets.md)")
        get_target(target)  # INVALID_ARGUMENT naming the known targets
        framework = params.get("Framework")
        if not isinstance(framework, str) or not framework:
            raise InvalidArgument("a compile job needs Framework (onnx, pytorch, sklearn, ...)")
        inputs = params.get("Inputs") or []
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise InvalidArgument("Inputs must be a list of NAME:SHAPE[:DTYPE] strings")
        out: dict[str, Any] = {
            "Model": _file(params, "Model", required=True),
            "Framework": framework,
            "Target": target,
            "Inputs": inputs,
            "Backend": str(params.get("Backend") or "auto"),
            "Quantize": str(params.get("Quantize") or "auto"),
            "Calibration": _file(params, "Calibration", required=False),
            "Validation": _file(params, "Validation", required=False),
            "MaxAccuracyDrop": _number(params, "MaxAccuracyDrop", 1.0, least=0),
            "Threads": int(_number(params, "Threads", 0, least=0, integer=True)),
            "BenchmarkSeconds": _number(params, "BenchmarkSeconds", 2.0, least=0.01),
            "TuneTrials": int(_number(params, "TuneTrials", 0, least=0, integer=True)),
            "TuneMinutes": _number(params, "TuneMinutes", 0.0, least=0),
        }
        return out
    if kind == WAIT:
        path = params.get("Path")
        if not isinstance(path, str) or not Path(path).is_absolute():
            raise InvalidArgument(f"a wait job needs Path, an absolute file path, got {path!r}")
        touch = params.get("Touch")
        if touch is not None and (not isinstance(touch, str) or not Path(touch).is_absolute()):
            raise InvalidArgument(f"Touch must be an absolute file path, got {touch!r}")
        timeout = _number(params, "TimeoutSeconds", 600.0, least=0.01)
        if timeout > policy.max_wait:
            raise InvalidArgument(f"TimeoutSeconds is at most {policy.max_wait:g}, got {timeout:g}")
        return {"Path": path, "Touch": touch, "TimeoutSeconds": timeout}
    if kind == PIPELINE:
        run_id = params.get("RunId")
        if not isinstance(run_id, str) or not run_id:
            raise InvalidArgument("a pipeline job needs RunId (it is queued by `edgefleet pipeline run`)")
        return {"RunId": run_id}
    raise InvalidArgument(f"unknown job kind {kind[:50]!r} (known: {', '.join(KINDS)})")


# ---------------------------------------------------------------------------------- records


def _append(session: Session, job_id: str, attempt: int, now: datetime, lines: Sequence[str]) -> None:
    for line in lines:
        session.add(JobLogRow(job_id=job_id, attempt=attempt, logged_at=now, line=line[:MAX_LINE_CHARS]))


def submit(
    db: Database,
    queue: JobQueue,
    kind: str,
    params: dict[str, Any],
    actor: str,
    policy: JobPolicy,
    *,
    max_attempts: int | None = None,
) -> JobRow:
    """Record a new job (QUEUED, attempt 1) and enqueue it. A queue that cannot take it fails the
    job at once (UNAVAILABLE to the caller): no QUEUED job without a message."""
    checked = check_params(kind, params, policy)
    attempts = policy.max_attempts if max_attempts is None else max_attempts
    if not 1 <= attempts <= MAX_ATTEMPTS_LIMIT:
        raise InvalidArgument(f"MaxAttempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {attempts}")
    job_id = uuid.uuid4().hex
    with db.session() as session:
        now = db.now()
        row = JobRow(
            id=job_id,
            kind=kind,
            params=checked,
            state=JobState.QUEUED,
            attempt=1,
            max_attempts=attempts,
            progress=0.0,
            created_at=now,
            created_by=actor,
        )
        session.add(row)
        session.flush()  # the row before its log lines (their foreign key)
        _append(session, job_id, 1, now, [f"queued by {actor}"])
    try:
        queue.enqueue(job_id, 1)
    except EdgefleetError as exc:
        _fail_unqueued(db, job_id, 1, exc)
        raise
    log.info("job %s (%s) queued by %s", job_id, kind, actor)
    return row


def _fail_unqueued(db: Database, job_id: str, attempt: int, exc: EdgefleetError) -> None:
    with db.session() as session:
        now = db.now()
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.attempt == attempt, JobRow.state == JobState.QUEUED)
            .values(
                state=JobState.FAILED,
                error_code=exc.code.value,
                error_message=f"could not be queued: {exc.message}",
                finished_at=now,
            )
        )
        _append(session, job_id, attempt, now, [f"could not be queued: {exc.message}"])


def claim(db: Database, job_id: str, attempt: int, worker_id: str, lease: float) -> JobRow | None:
    """Take attempt ``attempt`` of a QUEUED job for ``worker_id``: the job, RUNNING under a lease, or
    None when it is not this attempt's to run (claimed by another delivery, cancelled, unknown)."""
    with db.session() as session:
        now = db.now()
        done = session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.attempt == attempt, JobRow.state == JobState.QUEUED)
            .values(
                state=JobState.RUNNING,
                worker_id=worker_id,
                lease_expires_at=now + timedelta(seconds=lease),
                heartbeat_at=now,
                started_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return None
        _append(session, job_id, attempt, now, [f"attempt {attempt} started on worker {worker_id}"])
        return session.get_one(JobRow, job_id, populate_existing=True)


def _held(job_id: str, attempt: int, worker_id: str) -> Any:
    return (
        (JobRow.id == job_id)
        & (JobRow.attempt == attempt)
        & (JobRow.worker_id == worker_id)
        & (JobRow.state == JobState.RUNNING)
    )


def heartbeat(
    db: Database,
    job_id: str,
    attempt: int,
    worker_id: str,
    lease: float,
    *,
    progress: float | None = None,
    message: str | None = None,
    lines: Sequence[str] = (),
) -> bool:
    """Renew the lease, record progress (0..1) and append log lines; False when the worker no longer
    holds the attempt (re-queued after its lease ran out, or cancelled): it should stop."""
    values: dict[str, Any] = {}
    if progress is not None:
        values["progress"] = min(1.0, max(0.0, progress))
    if message is not None:
        values["progress_message"] = message[:MAX_MESSAGE_CHARS]
    with db.session() as session:
        now = db.now()
        done = session.execute(
            update(JobRow)
            .where(_held(job_id, attempt, worker_id))
            .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease), **values)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return False
        _append(session, job_id, attempt, now, lines)
        return True


def finish(
    db: Database,
    job_id: str,
    attempt: int,
    worker_id: str,
    *,
    result: dict[str, Any] | None = None,
    error: EdgefleetError | None = None,
    lines: Sequence[str] = (),
) -> bool:
    """End a held attempt: SUCCEEDED with ``result``, or FAILED with ``error`` (its code and
    message). False (nothing written) when the worker no longer holds it."""
    with db.session() as session:
        now = db.now()
        values: dict[str, Any] = {"finished_at": now, "lease_expires_at": None, "heartbeat_at": now}
        if error is None:
            values.update(state=JobState.SUCCEEDED, result=result or {}, progress=1.0)
            last = f"attempt {attempt} succeeded"
        else:
            values.update(state=JobState.FAILED, error_code=error.code.value, error_message=error.message)
            last = f"attempt {attempt} failed: {error.code.value}: {error.message}"
        done = session.execute(
            update(JobRow)
            .where(_held(job_id, attempt, worker_id))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            log.warning(
                "job %s attempt %d: worker %s no longer holds it; outcome dropped", job_id, attempt, worker_id
            )
            return False
        _append(session, job_id, attempt, now, [*lines, last])
    return True


def cancel(db: Database, job_id: str, actor: str) -> JobRow:
    """Cancel a QUEUED or RUNNING job (a running worker stops at its next heartbeat);
    FAILED_PRECONDITION for a finished one, NOT_FOUND for an unknown one."""
    with db.session() as session:
        row = get_job(session, job_id)
        if row.state in TERMINAL:
            raise FailedPrecondition(f"job {job_id} has already ended ({row.state})")
        now = db.now()
        done = session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.attempt == row.attempt, JobRow.state == row.state)
            .values(
                state=JobState.CANCELLED,
                finished_at=now,
                lease_expires_at=None,
                error_code=Code.ABORTED.value,
                error_message=f"cancelled by {actor}",
            )
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise FailedPrecondition(f"job {job_id} changed meanwhile; look again")
        _append(session, job_id, row.attempt, now, [f"cancelled by {actor}"])
    with db.session() as session:
        return get_job(session, job_id)


@dataclass(frozen=True)
class Reaped:
    """What :func:`reap_expired` did to one job."""

    job_id: str
    attempt: int  # the attempt whose worker was lost
    requeued: bool


def reap_expired(db: Database, queue: JobQueue) -> list[Reaped]:
    """Jobs whose RUNNING attempt's lease ran out (the worker died): re-queue them as the next
    attempt, or FAILED "worker lost (lease expired) after N attempts" when none is left."""
    with db.session() as session:
        now = db.now()
        expired = session.execute(
            select(JobRow.id, JobRow.attempt, JobRow.max_attempts, JobRow.worker_id).where(
                JobRow.state == JobState.RUNNING, JobRow.lease_expires_at < now
            )
        ).all()
    reaped: list[Reaped] = []
    for job_id, attempt, max_attempts, worker_id in expired:
        lost = f"attempt {attempt}: worker {worker_id} lost (lease expired)"
        with db.session() as session:
            now = db.now()
            fence = (
                (JobRow.id == job_id)
                & (JobRow.attempt == attempt)
                & (JobRow.state == JobState.RUNNING)
                & (JobRow.lease_expires_at < now)
            )
            if attempt < max_attempts:
                values: dict[str, Any] = {
                    "state": JobState.QUEUED,
                    "attempt": attempt + 1,
                    "worker_id": None,
                    "lease_expires_at": None,
                    "progress": 0.0,
                    "progress_message": None,
                }
                line = f"{lost}; queued again as attempt {attempt + 1} of {max_attempts}"
            else:
                reason = f"worker lost (lease expired) after {attempt} attempts"
                values = {
                    "state": JobState.FAILED,
                    "lease_expires_at": None,
                    "finished_at": now,
                    "error_code": Code.UNAVAILABLE.value,
                    "error_message": reason,
                }
                line = f"{lost}; failed: {reason}"
            done = session.execute(
                update(JobRow).where(fence).values(**values).execution_options(synchronize_session=False)
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                continue  # heartbeat came in, or another replica reaped it
            _append(session, job_id, attempt, now, [line])
        log.warning("job %s %s", job_id, line)
        requeued = attempt < max_attempts
        if requeued:
            try:
                queue.enqueue(job_id, attempt + 1)
            except EdgefleetError as exc:
                _fail_unqueued(db, job_id, attempt + 1, exc)
        reaped.append(Reaped(job_id, attempt, requeued))
    return reaped


# ---------------------------------------------------------------------------------- reading


def get_job(session: Session, job_id: str) -> JobRow:
    """One job; NOT_FOUND for an unknown id."""
    row = session.get(JobRow, job_id[:64]) if isinstance(job_id, str) else None
    if row is None:
        raise NotFound(f"no job {job_id[:64]!r}")
    return row


def list_jobs(
    session: Session, *, state: str | None, kind: str | None, limit: int, next_token: str | None
) -> Page[JobRow]:
    """Jobs newest first, optionally of one state and kind."""
    stmt = select(JobRow)
    if state is not None:
        if state not in JobState.__members__:
            raise InvalidArgument(f"unknown job state {state[:30]!r} (known: {', '.join(JobState)})")
        stmt = stmt.where(JobRow.state == state)
    if kind is not None:
        if kind not in KINDS:
            raise InvalidArgument(f"unknown job kind {kind[:30]!r} (known: {', '.join(KINDS)})")
        stmt = stmt.where(JobRow.kind == kind)
    stmt = stmt.order_by(JobRow.created_at.desc(), JobRow.id.desc())
    return paginate(session, stmt, limit, next_token)


def job_logs(session: Session, job_id: str, *, after: int, limit: int) -> list[JobLogRow]:
    """A job's log lines with ids above ``after``, oldest first, at most ``limit``."""
    get_job(session, job_id)
    if after < 0:
        raise InvalidArgument(f"After must be 0 or more, got {after}")
    return list(
        session.scalars(
            select(JobLogRow)
            .where(JobLogRow.job_id == job_id, JobLogRow.id > after)
            .order_by(JobLogRow.id)
            .limit(limit)
        )
    )
