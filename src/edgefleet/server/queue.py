"""The task queue jobs travel on: Huey (https://huey.readthedocs.io), on SQLite or Redis.

Two modes, chosen by the queue URL (``ServerConfig.queue_url``):

* embedded (the default): ``sqlite:///DATA/queue.db``, a file beside the control plane's database,
  no extra server; the workers run on the same machine (``edgefleet worker``);
* scale: ``redis://host:6379/0``, workers on any machine that reaches Redis, the control plane's
  database and the artifact store (needs the ``scale`` extra: the ``redis`` client).

The queue carries one task, ``run_job(job_id, attempt)``; what a job is and does lives in the
``jobs`` table (:mod:`edgefleet.server.tasks`): a message only says "run attempt N of job J". The
control plane opens the queue without a handler and only enqueues; ``edgefleet worker`` opens it
with the handler that claims and runs the attempt (``edgefleet.worker``), so the task's name is the
same on both sides and the control plane never imports the code that runs the jobs. A message is
lost when the worker holding it dies: the job's lease then runs out and the periodic work enqueues
the next attempt (:func:`edgefleet.server.tasks.reap_expired`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgefleet.core.errors import EdgefleetError, FailedPrecondition, InvalidArgument, Unavailable

#: the queue's name (Huey's namespace in Redis, its table key in SQLite)
QUEUE_NAME = "edgefleet"
KNOWN_SCHEMES = ("sqlite", "redis", "rediss")
#: runs attempt ``attempt`` of job ``job_id`` (raising nothing the queue should retry)
Handler = Callable[[str, int], None]


class JobQueue:
    """A Huey instance with the one ``run_job`` task registered."""

    def __init__(self, url: str, handler: Handler | None = None) -> None:
        self.url = url
        self.huey = _open_huey(url)
        self._handler = handler

        def run_job(job_id: str, attempt: int) -> None:
            if self._handler is None:
                raise FailedPrecondition("this process only enqueues jobs: run them with 'edgefleet worker'")
            self._handler(job_id, attempt)

        self._task = self.huey.task(name="run_job")(run_job)

    @property
    def safe_url(self) -> str:
        """The URL without a password (for logs and messages)."""
        parts = urlsplit(self.url)
        if parts.password:
            netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
            return parts._replace(netloc=netloc).geturl()
        return self.url

    def enqueue(self, job_id: str, attempt: int) -> None:
        """Put "run attempt ``attempt`` of job ``job_id``" on the queue; UNAVAILABLE when it is down."""
        try:
            self.huey.enqueue(self._task.s(job_id, attempt))
        except EdgefleetError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise Unavailable(f"task queue {self.safe_url} is unavailable: {exc}") from exc
        except Exception as exc:  # redis-py's errors (ConnectionError, TimeoutError, ...)
            if type(exc).__module__.startswith("redis"):
                raise Unavailable(f"task queue {self.safe_url} is unavailable: {exc}") from exc
            raise

    def pending(self) -> int:
        """Messages waiting on the queue (not those a worker took); UNAVAILABLE when it is down."""
        try:
            count: int = self.huey.pending_count()
        except (sqlite3.Error, OSError) as exc:
            raise Unavailable(f"task queue {self.safe_url} is unavailable: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("redis"):
                raise Unavailable(f"task queue {self.safe_url} is unavailable: {exc}") from exc
            raise
        return count

    def consumer(self, *, workers: int, worker_type: str) -> Any:
        """A Huey consumer of this queue (``run()`` blocks until SIGINT/SIGTERM)."""
        return self.huey.create_consumer(
            workers=workers,
            worker_type=worker_type,
            periodic=False,
            initial_delay=0.05,
            backoff=1.5,
            max_delay=1.0,
            check_worker_health=True,
        )

    def close(self) -> None:
        """Close the queue's connections."""
        storage = self.huey.storage
        close = getattr(storage, "close", None)
        if close is not None:
            close()


def _open_huey(url: str) -> Any:
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in KNOWN_SCHEMES:
        raise InvalidArgument(
            f"task queue URL {url[:100]!r}: scheme {scheme!r} is not supported (known: {', '.join(KNOWN_SCHEMES)})"
        )
    try:
        from huey import RedisHuey, SqliteHuey
    except ImportError as exc:  # pragma: no cover - the server extra installs it
        raise FailedPrecondition("the task queue needs huey: pip install 'edgefleet[server]'") from exc
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise InvalidArgument(f"task queue URL {url[:100]!r}: give a file, sqlite:///path/queue.db")
        path = Path(url[len("sqlite:///") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # fsync: a job enqueued (and answered 201) survives a power cut
            return SqliteHuey(QUEUE_NAME, filename=str(path), results=False, fsync=True, timeout=30)
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open the task queue {path}: {exc}") from exc
    try:
        import redis  # noqa: F401  (RedisHuey imports it lazily; name the extra when it is missing)
    except ImportError as exc:
        raise FailedPrecondition(
            "a redis:// task queue needs the redis client: pip install 'edgefleet[scale]'"
        ) from exc
    return RedisHuey(QUEUE_NAME, url=url, results=False)
