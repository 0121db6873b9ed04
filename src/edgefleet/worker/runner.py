"""Running one attempt of a job: claim, a heartbeat thread, the kind's executor, the outcome.

The consumer calls :meth:`Runner.run` for each message. The attempt is claimed with a conditional
update (a duplicate delivery finds it taken and does nothing); while the executor runs, a thread
renews the lease every ``JobPolicy.heartbeat`` seconds and sends what the executor reported
(progress, log lines) soon after it is reported. A heartbeat that finds the attempt no longer held
(its lease ran out and it was queued again, or it was cancelled) marks the context lost: the
executor stops at its next check and its outcome is dropped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgefleet.core.errors import Aborted, EdgefleetError
from edgefleet.server import tasks
from edgefleet.server.artifacts import ArtifactStore, open_artifact_store
from edgefleet.server.config import JobPolicy, ServerConfig
from edgefleet.server.db.engine import Database

log = logging.getLogger(__name__)

#: the shortest spacing of two heartbeats sent early because lines or progress were waiting, seconds
_FLUSH_SPACING = 0.2


class JobContext:
    """What an executor gets: the job's parameters, where to report, and whether to stop."""

    def __init__(
        self,
        db: Database,
        row: Any,
        worker_id: str,
        policy: JobPolicy,
        artifacts: ArtifactStore,
    ) -> None:
        self.job_id: str = row.id
        self.attempt: int = row.attempt
        self.kind: str = row.kind
        self.params: dict[str, Any] = dict(row.params)
        self.artifacts = artifacts
        self._db = db
        self._worker_id = worker_id
        self._policy = policy
        self._cond = threading.Condition()
        self._lines: list[str] = []
        self._progress: float | None = None
        self._message: str | None = None
        self._lost = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=self._beat, name=f"job-{self.job_id[:8]}-heartbeat", daemon=True
        )

    # -- for executors ----------------------------------------------------------------------

    @property
    def db(self) -> Database:
        """The control plane's database (executors that record more than the job: pipeline runs)."""
        return self._db

    @property
    def policy(self) -> JobPolicy:
        return self._policy

    @property
    def worker_id(self) -> str:
        return self._worker_id

    def log(self, line: str) -> None:
        """Append a line to the job's log (sent with the next heartbeat, within a fraction of a second)."""
        with self._cond:
            self._lines.append(line)
            self._cond.notify()

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the job is (0..1) and what it does now."""
        with self._cond:
            self._progress = fraction
            if message is not None:
                self._message = message
            self._cond.notify()

    @property
    def lost(self) -> bool:
        """True once this worker no longer holds the attempt: stop, the outcome will be dropped."""
        return self._lost.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True (early) when the attempt was lost."""
        return self._lost.wait(seconds)

    def check(self) -> None:
        """ABORTED when the attempt was lost (re-queued elsewhere or cancelled)."""
        if self.lost:
            raise Aborted(f"job {self.job_id} attempt {self.attempt} is no longer this worker's")

    # -- for the runner ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> tuple[list[str], float | None, str | None]:
        """Stop the heartbeats; what was reported and not sent yet."""
        with self._cond:
            self._done = True
            self._cond.notify()
        self._thread.join()
        return self._take()

    def _take(self) -> tuple[list[str], float | None, str | None]:
        lines, self._lines = self._lines, []
        progress, message = self._progress, self._message
        self._progress = self._message = None
        return lines, progress, message

    def _beat(self) -> None:
        interval = self._policy.heartbeat
        while True:
            with self._cond:
                if not self._done and not (self._lines or self._progress is not None):
                    self._cond.wait(interval)
                if self._done:
                    return
                lines, progress, message = self._take()
            try:
                held = tasks.heartbeat(
                    self._db,
                    self.job_id,
                    self.attempt,
                    self._worker_id,
                    self._policy.lease,
                    progress=progress,
                    message=message,
                    lines=lines,
                )
            except EdgefleetError as exc:  # the database is away: the lease may run out meanwhile
                log.warning("job %s: heartbeat failed (%s); retrying", self.job_id, exc)
                held = True
                with self._cond:
                    self._lines[:0] = lines
            if not held:
                log.warning(
                    "job %s attempt %d: lost (re-queued or cancelled); stopping", self.job_id, self.attempt
                )
                self._lost.set()
                return
            with self._cond:  # at most one early heartbeat per spacing: chatty executors batch up
                if not self._done:
                    self._cond.wait(_FLUSH_SPACING)


Executor = Callable[[JobContext], dict[str, Any]]


@dataclass
class _Handles:
    pid: int
    db: Database
    artifacts: ArtifactStore


class Runner:
    """Runs attempts for one ``edgefleet worker`` (each of its processes opens its own handles)."""

    def __init__(self, config: ServerConfig, executors: dict[str, Executor]) -> None:
        self.config = config
        self.executors = executors
        self._handles: _Handles | None = None
        self._lock = threading.Lock()

    def _open(self) -> _Handles:
        # per process: a forked worker must not share the parent's connections
        with self._lock:
            if self._handles is None or self._handles.pid != os.getpid():
                db = Database(self.config.resolved_database_url, pool_size=2)
                artifacts = open_artifact_store(
                    self.config.resolved_artifacts_uri, s3_endpoint_url=self.config.s3_endpoint_url
                )
                self._handles = _Handles(os.getpid(), db, artifacts)
            return self._handles

    def worker_id(self) -> str:
        """This process and thread, as job records name it."""
        return f"{socket.gethostname()}-{os.getpid()}-{threading.get_native_id()}"[:100]

    def run(self, job_id: str, attempt: int) -> None:
        """Claim and run attempt ``attempt`` of ``job_id`` (nothing when it is not ours to run)."""
        handles = self._open()
        policy = self.config.jobs
        worker_id = self.worker_id()
        row = tasks.claim(handles.db, job_id, attempt, worker_id, policy.lease)
        if row is None:
            log.info(
                "job %s attempt %d: not queued for this attempt (taken or ended); skipped", job_id, attempt
            )
            return
        log.info("job %s (%s) attempt %d running on %s", job_id, row.kind, attempt, worker_id)
        run_claimed(handles.db, handles.artifacts, policy, self.executors, row, worker_id)


def run_claimed(
    db: Database,
    artifacts: ArtifactStore,
    policy: JobPolicy,
    executors: dict[str, Executor],
    row: Any,
    worker_id: str,
) -> bool:
    """Run an attempt ``worker_id`` has claimed (``row``, from :func:`tasks.claim`) to its end: the
    heartbeat thread, the kind's executor, the fenced outcome. True when the job SUCCEEDED.
    (A pipeline run's executor also runs its compile jobs through here.)"""
    job_id, attempt = row.id, row.attempt
    ctx = JobContext(db, row, worker_id, policy, artifacts)
    ctx.start()
    result: dict[str, Any] | None = None
    error: EdgefleetError | None = None
    try:
        executor = executors.get(row.kind)
        if executor is None:
            raise EdgefleetError(
                f"this worker cannot run {row.kind!r} jobs (it runs: {', '.join(sorted(executors))})"
            )
        result = executor(ctx)
    except EdgefleetError as exc:
        error = exc
    except Exception as exc:  # a bug or an untranslated library error: the job says so
        log.exception("job %s failed unexpectedly", job_id)
        error = EdgefleetError(f"job failed unexpectedly: {type(exc).__name__}: {exc}")
    lines, _progress, _message = ctx.stop()
    if ctx.lost:
        log.info("job %s attempt %d: outcome dropped (no longer this worker's)", job_id, attempt)
        return False
    finished = tasks.finish(db, job_id, attempt, worker_id, result=result, error=error, lines=lines)
    state = "dropped" if not finished else ("succeeded" if error is None else f"failed: {error}")
    log.info("job %s attempt %d %s", job_id, attempt, state)
    return finished and error is None
