"""Operator API: jobs on the task queue (see server/tasks.py), run by ``edgefleet worker``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from edgefleet.core.errors import InvalidArgument
from edgefleet.server import tasks
from edgefleet.server.api import schemas as s
from edgefleet.server.api.auth import app_state, operator
from edgefleet.server.api.errors import ERROR_RESPONSES
from edgefleet.server.db.schema import JobRow
from edgefleet.server.validation import check_page_size

Actor = Annotated[str, Depends(operator)]
router = APIRouter(prefix="/api/v1", tags=["jobs"], responses=ERROR_RESPONSES)


def job_out(row: JobRow) -> s.JobOut:
    """The API's view of a job row."""
    error = None
    if row.error_code is not None:
        error = s.JobErrorOut(Code=row.error_code, Message=row.error_message or "")
    return s.JobOut(
        JobId=row.id,
        Kind=row.kind,
        State=row.state,
        Params=row.params,
        Attempt=row.attempt,
        MaxAttempts=row.max_attempts,
        WorkerId=row.worker_id,
        LeaseExpiresAt=row.lease_expires_at,
        LastHeartbeatAt=row.heartbeat_at,
        Progress=s.JobProgress(Fraction=row.progress, Message=row.progress_message),
        Result=row.result,
        Error=error,
        CreationTime=row.created_at,
        CreatedBy=row.created_by,
        StartTime=row.started_at,
        EndTime=row.finished_at,
    )


@router.post("/jobs", status_code=201, response_model=s.JobOut, summary="Submit a job")
def submit_job(body: s.JobRequest, request: Request, actor: Actor) -> s.JobOut:
    """Record a job and put it on the task queue; a worker (``edgefleet worker``) runs it."""
    st = app_state(request)
    if body.Kind == tasks.PIPELINE:
        raise InvalidArgument(
            "pipeline jobs are queued by pipeline runs (POST /api/v1/pipelines/{name}/runs)"
        )
    spec: Any = {tasks.COMPILE: body.Compile, tasks.WAIT: body.Wait}.get(body.Kind)
    if body.Kind in tasks.KINDS and spec is None:
        raise InvalidArgument(f"a {body.Kind} job needs its parameters in {body.Kind.capitalize()}")
    others = [
        k for k, v in (("Compile", body.Compile), ("Wait", body.Wait)) if v is not None and v is not spec
    ]
    if others:
        raise InvalidArgument(f"a {body.Kind[:30]} job takes no {', '.join(others)}")
    params = spec.model_dump() if spec is not None else {}
    row = tasks.submit(
        st.db, st.queue, body.Kind, params, actor, st.config.jobs, max_attempts=body.MaxAttempts
    )
    return job_out(row)


@router.get("/jobs", response_model=s.JobList, summary="List jobs")
def list_jobs(
    request: Request,
    actor: Actor,
    State: str | None = None,
    Kind: str | None = None,
    MaxResults: int | None = None,
    NextToken: str | None = None,
) -> s.JobList:
    """Newest first."""
    st = app_state(request)
    limit = check_page_size(MaxResults, 50, st.config.limits.max_page_size)
    with st.db.session() as session:
        page = tasks.list_jobs(session, state=State, kind=Kind, limit=limit, next_token=NextToken)
        return s.JobList(Jobs=[job_out(r) for r in page.items], NextToken=page.next_token)


@router.get("/jobs/{job_id}", response_model=s.JobOut, summary="Show a job")
def get_job(job_id: str, request: Request, actor: Actor) -> s.JobOut:
    st = app_state(request)
    with st.db.session() as session:
        return job_out(tasks.get_job(session, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=s.JobOut, summary="Cancel a job")
def cancel_job(job_id: str, request: Request, actor: Actor) -> s.JobOut:
    """A queued job never runs; a running one stops at its worker's next heartbeat."""
    st = app_state(request)
    return job_out(tasks.cancel(st.db, job_id, actor))


@router.get("/jobs/{job_id}/logs", response_model=s.JobLogs, summary="A job's log lines")
def job_logs(
    job_id: str,
    request: Request,
    actor: Actor,
    After: int = 0,
    MaxResults: int | None = None,
) -> s.JobLogs:
    """Lines with ids above ``After``, oldest first; follow a job by passing the answer's
    ``LastId`` back as ``After`` until ``State`` is final and no lines come."""
    st = app_state(request)
    limit = check_page_size(MaxResults, 1000, st.config.limits.max_page_size)

    with st.db.session() as session:
        lines = tasks.job_logs(session, job_id, after=After, limit=limit)
        state = tasks.get_job(session, job_id).state
    return s.JobLogs(
        JobId=job_id,
        State=state,
        Lines=[s.JobLogLine(Id=r.id, Attempt=r.attempt, Time=r.logged_at, Line=r.line) for r in lines],
        LastId=lines[-1].id if lines else After,
    )
