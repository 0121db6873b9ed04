"""Jobs on the task queue: real ``edgefleet worker`` processes consuming the SQLite queue of a real
server (compile to SUCCEEDED; SIGKILL mid-job, re-queued by the reaper and finished once by a
second worker; attempts exhausted), the record rules on both databases, bad input, and Redis."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support import REPO, wait_for

from edgefleet.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from edgefleet.server import tasks
from edgefleet.server.config import JobPolicy
from edgefleet.server.queue import JobQueue

LEASE, HEARTBEAT = "2", "0.3"
POLICY = JobPolicy(lease=2.0, heartbeat=0.3)


@contextmanager
def worker(data_dir: Path, log: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """``edgefleet worker`` on the server's data directory, in a process group of its own (a SIGKILL
    to the group takes its job slots with it, as a lost machine would)."""
    command = [sys.executable, "-m", "edgefleet", "worker", "--data-dir", str(data_dir)]
    command += ["--lease", LEASE, "--heartbeat", HEARTBEAT, *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def reap_until(state: Any, condition: Any) -> Any:
    """One round of the reaper (as the periodic work runs it), then ``condition()``."""
    tasks.reap_expired(state.db, state.queue)
    return condition()


def job_state(op: Any, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = op.describe_job(job_id)
    return job


def lines_of(op: Any, job_id: str) -> list[str]:
    return [line["Line"] for line in op.job_logs(job_id)["Lines"]]


def ended(op: Any, job_id: str) -> dict[str, Any] | None:
    job = job_state(op, job_id)
    return job if job["State"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None


@pytest.fixture(scope="module")
def data_dir(fleet_server: Any) -> Path:
    path: Path = fleet_server.state.config.data_dir
    return path


def test_a_worker_process_compiles_a_model_to_succeeded(
    op: Any, fleet_server: Any, data_dir: Path, tmp_path: Path
) -> None:
    from support import make_linear_onnx

    from edgefleet.compiler.targets import host_target

    target = host_target()
    if target is None:
        pytest.skip("this host matches no catalogue target")
    model = make_linear_onnx(tmp_path / "linear.onnx")
    spec = {
        "Model": str(model),
        "Framework": "onnx",
        "Target": target.name,
        "Backend": "onnxruntime",
        "Quantize": "none",
        "BenchmarkSeconds": 0.05,
    }
    job = op.submit_job("compile", spec)
    assert job["State"] == "QUEUED"
    assert job["Attempt"] == 1
    # followed from before a worker takes it: the lines arrive while it runs, the CLI ends with it
    follow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet",
            "job",
            "logs",
            "--follow",
            job["JobId"],
            *cli_flags(fleet_server, op),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    try:
        with worker(data_dir, tmp_path / "worker.log", "--workers", "1"):
            done = wait_for(lambda: ended(op, job["JobId"]), "the compile job to end", timeout=240)
        followed, errors = follow.communicate(timeout=120)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == 0, errors
    assert "#1  compiling linear.onnx" in followed
    assert followed.rstrip().endswith("#1  attempt 1 succeeded")
    assert done["State"] == "SUCCEEDED", (done, (tmp_path / "worker.log").read_text())
    assert done["Progress"]["Fraction"] == 1.0
    result = done["Result"]
    assert result["Report"]["target"] == target.name
    assert result["Report"]["selected"]
    keys = {f["Key"] for f in result["Files"]}
    assert f"{result['ArtifactPrefix']}/report.json" in keys
    store = fleet_server.state.artifacts
    assert all(store.exists(key) for key in keys)
    lines = lines_of(op, job["JobId"])
    assert lines[0].startswith("queued by ")
    assert any(line.startswith("compiling linear.onnx") for line in lines)
    assert lines[-1] == "attempt 1 succeeded"
    listed = [j["JobId"] for j in op.list_jobs(kind="compile", state="SUCCEEDED")]
    assert job["JobId"] in listed


def test_a_sigkilled_worker_s_job_is_queued_again_and_finished_once_by_another(
    op: Any, fleet_server: Any, data_dir: Path, tmp_path: Path
) -> None:
    go, touched = tmp_path / "go", tmp_path / "touched"
    job = op.submit_job("wait", {"Path": str(go), "Touch": str(touched)}, max_attempts=3)
    job_id = job["JobId"]
    state = fleet_server.state
    with worker(data_dir, tmp_path / "first.log") as first:
        # progress and log lines are visible while the job runs
        running = wait_for(
            lambda: (j := job_state(op, job_id))["State"] == "RUNNING" and j["Progress"]["Message"] and j,
            "the first worker to report progress",
        )
        assert running["Progress"] == {"Fraction": 0.5, "Message": f"waiting for {go}"}
        wait_for(lambda: f"waiting for {go}" in lines_of(op, job_id), "the job's log line")
        first_worker = running["WorkerId"]
        kill_group(first)
    # the lease runs out: the reaper (the periodic work's, called here) queues attempt 2
    wait_for(
        lambda: reap_until(state, lambda: job_state(op, job_id)["Attempt"] == 2),
        "the reaper to queue the job again",
    )
    again = job_state(op, job_id)
    assert (again["State"], again["Attempt"], again["WorkerId"]) == ("QUEUED", 2, None)
    assert any(
        "lost (lease expired); queued again as attempt 2 of 3" in line for line in lines_of(op, job_id)
    )
    with worker(data_dir, tmp_path / "second.log"):
        second = wait_for(
            lambda: (j := job_state(op, job_id))["State"] == "RUNNING" and j["Attempt"] == 2 and j,
            "the second worker to take attempt 2",
        )
        assert second["WorkerId"] != first_worker
        go.write_text("go")
        done = wait_for(lambda: ended(op, job_id), "the job to end")
    assert done["State"] == "SUCCEEDED"
    assert done["Attempt"] == 2
    assert touched.read_text().splitlines() == [f"{job_id} 2"]  # run to completion exactly once
    # a late duplicate of either message changes nothing
    assert tasks.claim(state.db, job_id, 1, "late", 2.0) is None
    assert tasks.claim(state.db, job_id, 2, "late", 2.0) is None
    out = subprocess.run(
        [sys.executable, "-m", "edgefleet", "job", "logs", job_id, *cli_flags(fleet_server, op)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        timeout=120,
        check=True,
    ).stdout
    assert "#1  waiting for" in out
    assert "#2  attempt 2 succeeded" in out


def cli_flags(fleet_server: Any, op: Any) -> list[str]:
    endpoints = fleet_server.endpoints
    return ["--server", endpoints.api_url, "--token", op.config.token, "--ca-cert", endpoints.ca_cert]


def test_a_job_whose_worker_is_lost_on_its_last_attempt_fails_with_the_reason(
    op: Any, fleet_server: Any, data_dir: Path, tmp_path: Path
) -> None:
    job = op.submit_job("wait", {"Path": str(tmp_path / "never")}, max_attempts=1)
    state = fleet_server.state
    with worker(data_dir, tmp_path / "worker.log", "--worker-type", "thread") as proc:
        wait_for(lambda: job_state(op, job["JobId"])["State"] == "RUNNING", "the worker to take the job")
        kill_group(proc)
    wait_for(
        lambda: reap_until(state, lambda: ended(op, job["JobId"])),
        "the reaper to fail the job",
    )
    done = job_state(op, job["JobId"])
    assert done["State"] == "FAILED"
    assert done["Error"] == {"Code": "UNAVAILABLE", "Message": "worker lost (lease expired) after 1 attempts"}


def test_bad_job_requests_are_refused_with_clear_errors_and_record_nothing(op: Any, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not really")
    before = len(list(op.list_jobs()))
    good = {"Model": str(model), "Framework": "onnx", "Target": "linux-x86_64"}
    with pytest.raises(
        InvalidArgument, match=r"unknown target 'riscv-toaster': known targets are linux-aarch64"
    ):
        op.submit_job("compile", {**good, "Target": "riscv-toaster"})
    with pytest.raises(NotFound, match=r"Model '/nonexistent/model.onnx' does not exist or is not a file"):
        op.submit_job("compile", {**good, "Model": "/nonexistent/model.onnx"})
    with pytest.raises(InvalidArgument, match=r"Model 'm.onnx' must be an absolute path"):
        op.submit_job("compile", {**good, "Model": "m.onnx"})
    with pytest.raises(InvalidArgument, match=r"Compile.Framework: Field required"):
        op.submit_job("compile", {"Model": str(model), "Target": "linux-x86_64"})
    with pytest.raises(InvalidArgument, match=r"unknown job kind 'paint' \(known: compile, wait, pipeline\)"):
        op.request("POST", "/api/v1/jobs", json={"Kind": "paint"})
    with pytest.raises(InvalidArgument, match=r"pipeline jobs are queued by pipeline runs"):
        op.request("POST", "/api/v1/jobs", json={"Kind": "pipeline"})
    with pytest.raises(InvalidArgument, match=r"a compile job needs its parameters in Compile"):
        op.request("POST", "/api/v1/jobs", json={"Kind": "compile"})
    with pytest.raises(InvalidArgument, match=r"a wait job takes no Compile"):
        op.request("POST", "/api/v1/jobs", json={"Kind": "wait", "Wait": {"Path": "/x"}, "Compile": good})
    with pytest.raises(InvalidArgument, match=r"TimeoutSeconds is at most 3600"):
        op.submit_job("wait", {"Path": str(tmp_path / "x"), "TimeoutSeconds": 4000})
    with pytest.raises(InvalidArgument, match=r"MaxAttempts"):
        op.submit_job("wait", {"Path": str(tmp_path / "x")}, max_attempts=0)
    assert len(list(op.list_jobs())) == before
    with pytest.raises(NotFound, match=r"no job 'nope'"):
        op.describe_job("nope")
    with pytest.raises(NotFound, match=r"no job 'nope'"):
        op.job_logs("nope")
    with pytest.raises(InvalidArgument, match=r"unknown job state 'DONE'"):
        list(op.list_jobs(state="DONE"))


def test_cancel_a_queued_job_and_not_a_finished_one(op: Any, tmp_path: Path) -> None:
    job = op.submit_job("wait", {"Path": str(tmp_path / "never")})
    cancelled = op.cancel_job(job["JobId"])
    assert cancelled["State"] == "CANCELLED"
    assert cancelled["Error"]["Code"] == "ABORTED"
    with pytest.raises(FailedPrecondition, match=r"has already ended \(CANCELLED\)"):
        op.cancel_job(job["JobId"])


def test_every_job_command_prints_json_with_json(
    op: Any, fleet_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``edgefleet job compile|list|show|logs|cancel --json`` print the API's answers as JSON (no
    worker runs here: the submitted job stays QUEUED until it is cancelled)."""
    import json

    from edgefleet.cli import main as cli_main

    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read by the server")

    def run(*argv: str) -> Any:
        code = cli_main.main([*argv, "--json", *cli_flags(fleet_server, op)])
        out, err = capsys.readouterr()
        assert code == 0, err
        return json.loads(out)

    submitted = run(
        "job", "compile", str(model), "--framework", "onnx", "--target", "linux-x86_64", "--input", "x:1x64"
    )
    job_id = submitted["JobId"]
    assert submitted["State"] == "QUEUED" and submitted["Kind"] == "compile"
    listed = run("job", "list", "--kind", "compile")
    assert job_id in [j["JobId"] for j in (listed if isinstance(listed, list) else listed["Jobs"])]
    assert run("job", "show", job_id)["JobId"] == job_id
    logs = run("job", "logs", job_id)
    assert isinstance(logs, (dict, list))
    assert run("job", "cancel", job_id)["State"] == "CANCELLED"


# ------------------------------------------------------------------ record rules on both databases


class NoQueue(JobQueue):
    """A queue that records what was enqueued (the rules' tests need no consumer)."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(f"sqlite:///{tmp / 'queue.db'}")
        self.sent: list[tuple[str, int]] = []

    def enqueue(self, job_id: str, attempt: int) -> None:
        self.sent.append((job_id, attempt))


def test_claims_heartbeats_and_outcomes_are_fenced_by_attempt_and_worker(
    db: Any, clock: Any, tmp_path: Path
) -> None:
    queue = NoQueue(tmp_path)
    row = tasks.submit(db, queue, "wait", {"Path": str(tmp_path / "p")}, "ops", POLICY, max_attempts=2)
    assert queue.sent == [(row.id, 1)]
    assert tasks.claim(db, row.id, 1, "w1", 2.0) is not None
    assert tasks.claim(db, row.id, 1, "w2", 2.0) is None  # a duplicate delivery does not run it
    assert tasks.heartbeat(db, row.id, 1, "w1", 2.0, progress=0.3, message="m", lines=["l"])
    assert not tasks.heartbeat(db, row.id, 1, "w2", 2.0)
    clock.advance(3)
    assert [(r.job_id, r.attempt, r.requeued) for r in tasks.reap_expired(db, queue)] == [(row.id, 1, True)]
    assert tasks.reap_expired(db, queue) == []  # once
    assert queue.sent[-1] == (row.id, 2)
    # the lost worker comes back: it can neither renew nor finish
    assert not tasks.heartbeat(db, row.id, 1, "w1", 2.0)
    assert not tasks.finish(db, row.id, 1, "w1", result={"x": 1})
    assert tasks.claim(db, row.id, 2, "w2", 2.0) is not None
    assert tasks.finish(db, row.id, 2, "w2", result={"ok": True})
    assert not tasks.finish(db, row.id, 2, "w2", result={"again": True})
    with db.session() as session:
        done = tasks.get_job(session, row.id)
        assert (done.state, done.attempt, done.result) == ("SUCCEEDED", 2, {"ok": True})
        logged = [r.line for r in tasks.job_logs(session, row.id, after=0, limit=100)]
    assert logged[2] == "l"
    assert logged[-1] == "attempt 2 succeeded"


def test_a_running_job_cancelled_stops_its_worker_at_the_next_heartbeat(db: Any, tmp_path: Path) -> None:
    queue = NoQueue(tmp_path)
    row = tasks.submit(db, queue, "wait", {"Path": str(tmp_path / "p")}, "ops", POLICY)
    assert tasks.claim(db, row.id, 1, "w1", 2.0) is not None
    assert tasks.cancel(db, row.id, "ops-bob").state == "CANCELLED"
    assert not tasks.heartbeat(db, row.id, 1, "w1", 2.0)
    assert not tasks.finish(db, row.id, 1, "w1", result={})
    with db.session() as session:
        job = tasks.get_job(session, row.id)
        assert (job.state, job.error_code, job.error_message) == (
            "CANCELLED",
            "ABORTED",
            "cancelled by ops-bob",
        )


def test_a_queue_that_cannot_take_the_job_fails_it_at_once(db: Any, tmp_path: Path) -> None:
    from edgefleet.core.errors import Unavailable

    class Down(NoQueue):
        def enqueue(self, job_id: str, attempt: int) -> None:
            raise Unavailable("task queue is down")

    with pytest.raises(Unavailable, match="task queue is down"):
        tasks.submit(db, Down(tmp_path), "wait", {"Path": str(tmp_path / "p")}, "ops", POLICY)
    with db.session() as session:
        (job,) = tasks.list_jobs(session, state=None, kind=None, limit=10, next_token=None).items
        assert job.state == "FAILED"
        assert job.error_message == "could not be queued: task queue is down"


def test_unknown_queue_urls_name_the_known_schemes(tmp_path: Path) -> None:
    with pytest.raises(
        InvalidArgument, match=r"scheme 'amqp' is not supported \(known: sqlite, redis, rediss\)"
    ):
        JobQueue("amqp://127.0.0.1:5672")
    with pytest.raises(InvalidArgument, match=r"give a file, sqlite:///path/queue.db"):
        JobQueue("sqlite://")


def test_migration_0011_adds_the_job_tables_and_takes_them_away_again(unmigrated: Any) -> None:
    from server_testkit import migrate
    from sqlalchemy import inspect

    db = unmigrated
    migrate(db, "0011")
    assert {"jobs", "job_logs"} <= set(inspect(db.engine).get_table_names())
    migrate(db, "0010", down=True)
    assert not {"jobs", "job_logs"} & set(inspect(db.engine).get_table_names())
    migrate(db, "head")
    assert {"jobs", "job_logs"} <= set(inspect(db.engine).get_table_names())


# ------------------------------------------------------------------ scale mode


def test_a_worker_refuses_to_start_on_a_queue_it_cannot_reach(tmp_path: Path) -> None:
    pytest.importorskip("redis", reason="the scale extra (redis client) is not installed")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet",
            "worker",
            "--data-dir",
            str(tmp_path),
            "--queue",
            "redis://127.0.0.1:1/0",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        timeout=120,
    )
    assert done.returncode != 0
    assert "task queue redis://127.0.0.1:1/0 is unavailable" in done.stderr


REDIS = ("127.0.0.1", 6379)


def redis_reachable() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=2):
            return True
    except OSError:
        return False


def test_a_worker_on_a_redis_queue_runs_a_job(
    op: Any, fleet_server: Any, data_dir: Path, tmp_path: Path
) -> None:
    if not redis_reachable():
        pytest.skip(f"Redis is not reachable on {REDIS[0]}:{REDIS[1]} (scale mode needs a broker)")
    pytest.importorskip("redis", reason="the scale extra (redis client) is not installed")
    url = "redis://127.0.0.1:6379/14"
    queue = JobQueue(url)
    state = fleet_server.state
    try:
        (tmp_path / "go").write_text("go")
        row = tasks.submit(state.db, queue, "wait", {"Path": str(tmp_path / "go")}, "ops", POLICY)
        with worker(data_dir, tmp_path / "worker.log", "--queue", url, "--worker-type", "thread"):
            done = wait_for(lambda: ended(op, row.id), "the job on the Redis queue to end")
    finally:
        queue.close()
    assert done["State"] == "SUCCEEDED", (tmp_path / "worker.log").read_text()
    assert done["Result"]["WaitedSeconds"] >= 0
