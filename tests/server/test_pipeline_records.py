"""Pipeline records on SQLite and PostgreSQL: a run's steps and log, the approval decision's rules,
webhook deliveries on each state change, and bad requests refused with nothing recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from edgefleet.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

pytest.importorskip("huey", reason="runs are queued on the task queue (server extra)")

CONFIG = """
[model]
name = "digits"
[source]
model = "/models/digits.onnx"
framework = "onnx"
[approval]
mode = "manual"
[webhook]
url = "http://127.0.0.1:9/hook"
secret = "s3cret"
"""


@pytest.fixture
def queue(tmp_path: Path) -> Any:
    from edgefleet.server.queue import JobQueue

    q = JobQueue(f"sqlite:///{tmp_path / 'queue.db'}")
    yield q
    q.close()


def _deliveries(db: Any) -> list[dict[str, Any]]:
    from edgefleet.server.db.schema import WebhookDeliveryRow

    with db.session() as session:
        rows = session.scalars(select(WebhookDeliveryRow).order_by(WebhookDeliveryRow.id)).all()
        assert all(r.signature for r in rows)
        return [dict(r.payload) for r in rows]


def test_a_run_is_recorded_with_its_steps_job_and_webhooks(db: Any, queue: Any) -> None:
    from edgefleet.server import tasks
    from edgefleet.server.config import JobPolicy
    from edgefleet.server.pipelines import runs
    from edgefleet.server.pipelines.runs import RunState, StepState

    policy = JobPolicy()
    with db.session() as session:
        runs.put_pipeline(session, CONFIG, "alice", db.now(), replace=False)
    with db.session() as session, pytest.raises(AlreadyExists, match="exists already"):
        runs.put_pipeline(session, CONFIG, "alice", db.now(), replace=False)
    run = runs.start_run(db, queue, "digits", "alice", policy)
    assert (run.number, run.model_version, run.state) == (1, "r1", RunState.QUEUED)
    assert queue.pending() == 1
    with db.session() as session:
        job = tasks.get_job(session, run.job_id)
        assert job.kind == tasks.PIPELINE and job.params == {"RunId": run.id}
        assert [(s.name, s.state) for s in runs.steps_of(session, run.id)] == [
            ("package", StepState.PENDING),
            ("approval", StepState.PENDING),
        ]
    with pytest.raises(FailedPrecondition, match="is QUEUED, not WAITING_APPROVAL"):
        runs.decide(db, queue, run.id, "bob", policy, approve=True)

    # what the executor does at the gate, then the decision
    runs.update_step(db, run.id, "package", state=StepState.SUCCEEDED, artifacts={"Packages": {"x": 1}})
    runs.update_step(db, run.id, "approval", state=StepState.WAITING)
    runs.set_run_state(db, run.id, RunState.WAITING_APPROVAL, reason="waiting for approval")
    with pytest.raises(InvalidArgument, match="Note is at most 1000 characters"):
        runs.decide(db, queue, run.id, "bob", policy, approve=True, note="x" * 1001)
    decided = runs.decide(db, queue, run.id, "bob", policy, approve=True, note="ok")
    assert decided.state == RunState.QUEUED and decided.decided_by == "bob" and decided.decision == "Approved"
    assert decided.job_id != run.job_id and queue.pending() == 2  # a new job continues the run
    with db.session() as session:
        gate = runs.steps_of(session, run.id)[1]
        assert gate.state == StepState.SUCCEEDED and gate.message == "approved by bob: ok"
        lines = [r.line for r in runs.run_logs(session, run.id, after=0, limit=100)]
    assert lines[0] == "run 1 of digits (version r1) queued by alice (manual)"
    assert "approved by bob: ok" in lines
    events = [p["Event"] for p in _deliveries(db)]
    assert events == ["pipeline.run.queued", "pipeline.run.waiting_approval", "pipeline.run.queued"]

    second = runs.start_run(db, queue, "digits", "alice", policy, version="v2", source="/models/other.onnx")
    assert second.number == 2 and second.model_version == "v2"
    assert second.config["source"]["model"] == "/models/other.onnx"
    runs.set_run_state(db, second.id, RunState.WAITING_APPROVAL)
    rejected = runs.decide(db, queue, second.id, "carol", policy, approve=False)
    assert rejected.state == RunState.REJECTED and rejected.reason == "rejected by carol"
    assert rejected.finished_at is not None
    assert _deliveries(db)[-1]["Event"] == "pipeline.run.rejected"


def test_bad_run_requests_record_nothing(db: Any, queue: Any) -> None:
    from edgefleet.server.config import JobPolicy
    from edgefleet.server.db.schema import JobRow, PipelineRunRow
    from edgefleet.server.pipelines import runs

    policy = JobPolicy()
    with pytest.raises(NotFound, match="no pipeline 'digits'"):
        runs.start_run(db, queue, "digits", "alice", policy)
    with db.session() as session:
        runs.put_pipeline(session, CONFIG, "alice", db.now(), replace=False)
    with pytest.raises(InvalidArgument, match="must be an absolute path"):
        runs.start_run(db, queue, "digits", "alice", policy, source="relative.onnx")
    with pytest.raises(InvalidArgument, match="version"):
        runs.start_run(db, queue, "digits", "alice", policy, version="a/b")
    with pytest.raises(NotFound, match="no pipeline run"):
        runs.decide(db, queue, "f" * 32, "bob", policy, approve=False)
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(PipelineRunRow)) == 0
        assert session.scalar(select(func.count()).select_from(JobRow)) == 0
    assert queue.pending() == 0
    with db.session() as session, pytest.raises(InvalidArgument, match=r"source\.framework"):
        runs.put_pipeline(session, CONFIG.replace('"onnx"', '"caffe"'), "alice", db.now(), replace=True)


def test_migration_0013_adds_the_pipeline_tables_and_takes_them_away_again(unmigrated: Any) -> None:
    from server_testkit import migrate
    from sqlalchemy import inspect

    tables = {"pipelines", "pipeline_runs", "pipeline_steps", "pipeline_logs"}
    db = unmigrated
    migrate(db, "0013")
    assert tables <= set(inspect(db.engine).get_table_names())
    migrate(db, "0012", down=True)
    assert not tables & set(inspect(db.engine).get_table_names())
    migrate(db, "head")
    assert tables <= set(inspect(db.engine).get_table_names())


def test_a_run_whose_job_ran_out_of_attempts_fails_with_it(db: Any, queue: Any) -> None:
    from edgefleet.server.config import JobPolicy
    from edgefleet.server.pipelines import runs

    with db.session() as session:
        runs.put_pipeline(session, CONFIG, "alice", db.now(), replace=False)
    run = runs.start_run(db, queue, "digits", "alice", JobPolicy())
    assert runs.fail_runs_of_lost_jobs(db, ["not-this-one"]) == 0
    assert runs.fail_runs_of_lost_jobs(db, [run.job_id]) == 1
    with db.session() as session:
        failed = runs.get_run(session, run.id)
        assert failed.state == "FAILED" and "workers were lost" in (failed.reason or "")
    assert runs.fail_runs_of_lost_jobs(db, [run.job_id]) == 0  # an ended run stays as it is
