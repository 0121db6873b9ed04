"""Operator API: model pipelines and their runs (server/pipelines/), advanced by ``edgefleet worker``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from sqlalchemy.orm import Session

from edgefleet.server.api import schemas as s
from edgefleet.server.api.auth import app_state, operator
from edgefleet.server.api.errors import ERROR_RESPONSES
from edgefleet.server.db.schema import PipelineRow, PipelineRunRow
from edgefleet.server.pipelines import runs
from edgefleet.server.validation import check_page_size

Actor = Annotated[str, Depends(operator)]
router = APIRouter(prefix="/api/v1", tags=["pipelines"], responses=ERROR_RESPONSES)


def pipeline_out(row: PipelineRow) -> s.PipelineOut:
    return s.PipelineOut(
        PipelineName=row.name,
        Configuration=row.config,
        Steps=runs.config_of(row).steps(),
        Source=row.source_text,
        CreationTime=row.created_at,
        CreatedBy=row.created_by,
        LastModifiedTime=row.updated_at,
    )


def run_out(session: Session, row: PipelineRunRow) -> s.PipelineRunOut:
    return s.PipelineRunOut(
        RunId=row.id,
        PipelineName=row.pipeline,
        RunNumber=row.number,
        ModelVersion=row.model_version,
        State=row.state,
        Reason=row.reason,
        Trigger=row.trigger,
        JobId=row.job_id,
        Steps=[
            s.PipelineStepOut(
                StepName=st.name,
                State=st.state,
                Message=st.message,
                Artifacts=st.artifacts,
                Figures=st.figures,
                StartTime=st.started_at,
                EndTime=st.finished_at,
            )
            for st in runs.steps_of(session, row.id)
        ],
        Decision=row.decision,
        DecidedBy=row.decided_by,
        DecisionTime=row.decided_at,
        DecisionNote=row.decision_note,
        CreationTime=row.created_at,
        CreatedBy=row.created_by,
        StartTime=row.started_at,
        EndTime=row.finished_at,
    )


@router.post("/pipelines", status_code=201, response_model=s.PipelineOut, summary="Create a pipeline")
def create_pipeline(body: s.PipelineRequest, request: Request, actor: Actor) -> s.PipelineOut:
    """Store a model's pipeline configuration (TOML); INVALID_ARGUMENT names the key at fault."""
    st = app_state(request)
    with st.db.session() as session:
        return pipeline_out(
            runs.put_pipeline(session, body.PipelineConfig, actor, st.db.now(), replace=body.Replace)
        )


@router.get("/pipelines", response_model=s.PipelineList, summary="List pipelines")
def list_pipelines(request: Request, actor: Actor) -> s.PipelineList:
    st = app_state(request)
    with st.db.session() as session:
        return s.PipelineList(Pipelines=[pipeline_out(r) for r in runs.list_pipelines(session)])


@router.get("/pipelines/{name}", response_model=s.PipelineOut, summary="Show a pipeline")
def get_pipeline(name: str, request: Request, actor: Actor) -> s.PipelineOut:
    st = app_state(request)
    with st.db.session() as session:
        return pipeline_out(runs.get_pipeline(session, name))


@router.post(
    "/pipelines/{name}/runs", status_code=201, response_model=s.PipelineRunOut, summary="Start a run"
)
def start_run(name: str, body: s.StartRunRequest, request: Request, actor: Actor) -> s.PipelineRunOut:
    """Record a run and queue the job that advances it."""
    st = app_state(request)
    row = runs.start_run(
        st.db,
        st.queue,
        name,
        actor,
        st.config.jobs,
        version=body.ModelVersion,
        source=body.Source,
        trigger=body.Trigger,
    )
    with st.db.session() as session:
        return run_out(session, runs.get_run(session, row.id))


@router.get("/pipeline-runs", response_model=s.PipelineRunList, summary="List runs")
def list_runs(
    request: Request,
    actor: Actor,
    PipelineName: str | None = None,
    State: str | None = None,
    MaxResults: int | None = None,
    NextToken: str | None = None,
) -> s.PipelineRunList:
    """Newest first."""
    st = app_state(request)
    limit = check_page_size(MaxResults, 50, st.config.limits.max_page_size)
    with st.db.session() as session:
        page = runs.list_runs(session, pipeline=PipelineName, state=State, limit=limit, next_token=NextToken)
        return s.PipelineRunList(Runs=[run_out(session, r) for r in page.items], NextToken=page.next_token)


@router.get("/pipeline-runs/{run_id}", response_model=s.PipelineRunOut, summary="Show a run")
def get_run(run_id: str, request: Request, actor: Actor) -> s.PipelineRunOut:
    st = app_state(request)
    with st.db.session() as session:
        return run_out(session, runs.get_run(session, run_id))


@router.get("/pipeline-runs/{run_id}/logs", response_model=s.PipelineLogs, summary="A run's log lines")
def run_logs(
    run_id: str, request: Request, actor: Actor, After: int = 0, MaxResults: int | None = None
) -> s.PipelineLogs:
    st = app_state(request)
    limit = check_page_size(MaxResults, 1000, st.config.limits.max_page_size)
    with st.db.session() as session:
        lines = runs.run_logs(session, run_id, after=After, limit=limit)
        state = runs.get_run(session, run_id).state
    return s.PipelineLogs(
        RunId=run_id,
        State=state,
        Lines=[s.PipelineLogLine(Id=r.id, Step=r.step, Time=r.logged_at, Line=r.line) for r in lines],
        LastId=lines[-1].id if lines else After,
    )


@router.post("/pipeline-runs/{run_id}/approve", response_model=s.PipelineRunOut, summary="Approve a run")
def approve_run(run_id: str, body: s.DecisionRequest, request: Request, actor: Actor) -> s.PipelineRunOut:
    """A run WAITING_APPROVAL continues after its gate (a new job); FAILED_PRECONDITION otherwise."""
    st = app_state(request)
    runs.decide(st.db, st.queue, run_id, actor, st.config.jobs, approve=True, note=body.Note)
    with st.db.session() as session:
        return run_out(session, runs.get_run(session, run_id))


@router.post("/pipeline-runs/{run_id}/reject", response_model=s.PipelineRunOut, summary="Reject a run")
def reject_run(run_id: str, body: s.DecisionRequest, request: Request, actor: Actor) -> s.PipelineRunOut:
    """A run WAITING_APPROVAL ends REJECTED; nothing reaches production."""
    st = app_state(request)
    runs.decide(st.db, st.queue, run_id, actor, st.config.jobs, approve=False, note=body.Note)
    with st.db.session() as session:
        return run_out(session, runs.get_run(session, run_id))
