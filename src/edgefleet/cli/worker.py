"""``edgefleet worker``: run jobs from the task queue (compile jobs and, later, pipeline steps)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from edgefleet.cli.argtypes import positive_int, positive_seconds

WORKER_TYPES = ("process", "thread")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "worker",
        help="run jobs from the task queue (compile jobs, pipeline runs)",
        description=(
            "Consume the control plane's task queue and run its jobs: SQLite beside the server's database "
            "(the default: same machine, same --data-dir) or Redis (--queue redis://host:6379/0: workers on "
            "any machine that reaches Redis, the database and the artifact store). A worker that dies loses "
            "its attempt's lease; the server queues the job again for another worker."
        ),
    )
    parser.add_argument(
        "--data-dir", type=Path, help="the server's state directory (default: ~/.local/share/edgefleet)"
    )
    parser.add_argument("--database", help="the server's database URL (default: SQLite in --data-dir)")
    parser.add_argument("--artifacts", help="the server's artifact store URI (default: --data-dir)")
    parser.add_argument(
        "--queue", help="task queue URL: sqlite:///file or redis://host:port/db (default: --data-dir)"
    )
    parser.add_argument(
        "--signing-keys",
        type=Path,
        help="signing key directory pipeline packages are signed with (default: DATA_DIR/signing; "
        "'edgefleet keys init DIR' makes one, its root certificate goes into the server's trust store)",
    )
    parser.add_argument("--trust", type=Path, help="the server's trust store (default: DATA_DIR/trust)")
    parser.add_argument("--s3-endpoint-url", help="S3 endpoint for non-AWS stores (MinIO, Ceph, ...)")
    parser.add_argument("--workers", type=positive_int, default=1, help="jobs run at once (default: 1)")
    parser.add_argument(
        "--worker-type",
        choices=WORKER_TYPES,
        default="process",
        help="run each job slot in a process (default: CPU-heavy jobs) or a thread",
    )
    parser.add_argument(
        "--lease",
        type=positive_seconds,
        default=60.0,
        help="seconds a job's lease lasts unrenewed (default: 60)",
    )
    parser.add_argument(
        "--heartbeat",
        type=positive_seconds,
        default=10.0,
        help="seconds between lease renewals (default: 10)",
    )
    parser.set_defaults(func=run, log_level=logging.INFO)  # a service: its log is its output


def run(args: argparse.Namespace) -> int:
    from edgefleet.core.errors import InvalidArgument
    from edgefleet.server.config import JobPolicy, ServerConfig, default_data_dir
    from edgefleet.server.db.engine import Database
    from edgefleet.server.queue import JobQueue
    from edgefleet.worker.kinds import EXECUTORS
    from edgefleet.worker.pipeline import PipelineSettings, make_executor
    from edgefleet.worker.runner import Runner

    if args.heartbeat >= args.lease:
        raise InvalidArgument(
            f"--heartbeat ({args.heartbeat:g} s) must be shorter than --lease ({args.lease:g} s)"
        )
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    config = ServerConfig(
        data_dir=args.data_dir or default_data_dir(),
        database_url=args.database,
        artifacts_uri=args.artifacts,
        queue_url=args.queue,
        s3_endpoint_url=args.s3_endpoint_url,
        trust_dir=args.trust,
        jobs=JobPolicy(lease=args.lease, heartbeat=args.heartbeat),
    )
    settings = PipelineSettings(
        signing_dir=args.signing_keys or config.data_dir / "signing",
        trust_dir=config.resolved_trust_dir,
        queue_url=config.resolved_queue_url,
    )
    executors = dict(EXECUTORS)
    executors["pipeline"] = make_executor(settings, EXECUTORS)
    db = Database(config.resolved_database_url)
    try:
        db.migrate()  # the server does it too; a worker started first finds the tables
    finally:
        db.close()
    runner = Runner(config, executors)
    queue = JobQueue(config.resolved_queue_url, handler=runner.run)
    waiting = queue.pending()  # UNAVAILABLE now, not a consumer retrying forever, when it is down
    consumer = queue.consumer(workers=args.workers, worker_type=args.worker_type)
    print(
        f"edgefleet worker ready: {args.workers} {args.worker_type} slot(s) on {queue.safe_url}, "
        f"kinds {', '.join(sorted(executors))}; {waiting} message(s) waiting",
        flush=True,
    )
    consumer.run()
    return 0
