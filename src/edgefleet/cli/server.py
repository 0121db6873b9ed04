"""``edgefleet server``: run the fleet control plane (one stateless replica)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from edgefleet.cli.argtypes import positive_int, positive_seconds, seconds
from edgefleet.core.logs import LOG_FORMATS, configure_logging


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "server",
        help="run the fleet control plane (operator API, enrolment, device data plane)",
        description=(
            "Serve the operator API and device enrolment on --port (TLS, API tokens) and the device data "
            "plane on --device-port (mutual TLS with certificates issued at enrolment). With no options: "
            "SQLite and local artifacts under the data directory."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8443, help="operator API + enrolment port (default: 8443; 0: a free port)"
    )
    parser.add_argument(
        "--device-port", type=int, help="device data-plane port, mutual TLS (default: --port + 1)"
    )
    parser.add_argument(
        "--port-file",
        type=Path,
        help=(
            "once both listeners accept, write the bound ports and URLs here as JSON (port, device_port, "
            "api_url, device_url, ca_cert); with --port 0 the system picks free ports and this file says which"
        ),
    )
    parser.add_argument("--data-dir", type=Path, help="state directory (default: ~/.local/share/edgefleet)")
    parser.add_argument(
        "--database", help="database URL, e.g. postgresql://user@host/db (default: SQLite in --data-dir)"
    )
    parser.add_argument(
        "--artifacts", help="artifact store URI: s3://bucket/prefix or file:///dir (default: --data-dir)"
    )
    parser.add_argument(
        "--captures", help="capture store URI: s3://bucket/prefix or file:///dir (default: --data-dir)"
    )
    parser.add_argument(
        "--queue",
        help="task queue URL for jobs: redis://host:6379/0 (workers anywhere) (default: SQLite in --data-dir)",
    )
    parser.add_argument(
        "--job-max-attempts",
        type=positive_int,
        default=3,
        help="attempts a job gets when its workers are lost (default: 3; a request may set its own)",
    )
    parser.add_argument("--s3-endpoint-url", help="S3 endpoint for non-AWS stores (MinIO, Ceph, ...)")
    parser.add_argument(
        "--trust", type=Path, help="trusted package signers' root certificates (default: DATA/trust)"
    )
    parser.add_argument(
        "--tls-cert", type=Path, help="server certificate (PEM) instead of one issued by the fleet CA"
    )
    parser.add_argument("--tls-key", type=Path, help="key of --tls-cert")
    parser.add_argument(
        "--tls-name", action="append", default=[], help="extra DNS name/IP for the issued server certificate"
    )
    parser.add_argument(
        "--device-url", help="device endpoint URL given to devices (set it behind a load balancer)"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="server processes sharing both ports, each a full replica (default: 1; about one per core)",
    )
    parser.add_argument(
        "--metrics-public",
        action="store_true",
        help="serve GET /metrics on the operator port without an API token (default: token required)",
    )
    parser.add_argument(
        "--report-interval", type=float, default=86400.0, help="seconds between fleet report regenerations"
    )
    parser.add_argument(
        "--ui-session-ttl",
        type=positive_seconds,
        default=12 * 3600.0,
        help="seconds a web dashboard login (/ui) lasts (default: 12 hours)",
    )
    parser.add_argument(
        "--summary-retention",
        type=float,
        default=30 * 86400.0,
        help="seconds model summary windows (drift monitoring) are kept (default: 30 days)",
    )
    parser.add_argument(
        "--capture-retention",
        type=seconds,
        default=90 * 86400.0,
        help="seconds the capture index keeps an object after its newest record (0: forever; "
        "default: 90 days); the objects themselves stay in the capture store",
    )
    parser.add_argument(
        "--drift-bucket",
        type=int,
        default=3600,
        help="seconds of each bucket of the stored drift score series that alerts watch (default: 3600)",
    )
    parser.add_argument(
        "--figures-interval",
        type=int,
        default=60,
        help="seconds between two samples of the stored model figures series (latency, requests, "
        "errors per fleet and model version; default: 60)",
    )
    parser.add_argument(
        "--webhook-give-up",
        type=float,
        default=86400.0,
        help="seconds an alert webhook is retried before it is given up (default: a day)",
    )
    parser.add_argument(
        "--connected-window",
        type=float,
        default=600.0,
        help="heartbeat age (s) under which a device is connected",
    )
    parser.add_argument(
        "--capture-upload-url-ttl",
        type=float,
        default=900.0,
        help="seconds a presigned capture upload URL handed to a device stays valid (default: 900)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per request on both listeners (uvicorn's access log; default: off)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines on stderr as text or json, one object per line (default: text; fields in docs/logs.md)",
    )
    parser.set_defaults(func=run, log_level=logging.INFO)  # a service: its log is its output


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`~edgefleet.server.config.ServerConfig` for parsed flags."""
    from edgefleet.server.config import JobPolicy, ServerConfig, Timing, WebhookPolicy, default_data_dir
    from edgefleet.server.drift import check_bucket
    from edgefleet.server.figures import check_interval

    check_bucket(args.drift_bucket)
    check_interval(args.figures_interval)

    return ServerConfig(
        data_dir=args.data_dir or default_data_dir(),
        database_url=args.database,
        artifacts_uri=args.artifacts,
        captures_uri=args.captures,
        queue_url=args.queue,
        s3_endpoint_url=args.s3_endpoint_url,
        trust_dir=args.trust,
        host=args.host,
        port=args.port,
        device_port=args.device_port if args.device_port is not None else (args.port + 1 if args.port else 0),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_names=tuple(args.tls_name),
        device_url=args.device_url,
        workers=args.workers,
        metrics_public=args.metrics_public,
        access_log=args.access_log,
        timing=Timing(
            report_interval=args.report_interval,
            connected_window=args.connected_window,
            summary_retention=args.summary_retention,
            capture_retention=args.capture_retention,
            capture_upload_url_ttl=args.capture_upload_url_ttl,
            drift_bucket=args.drift_bucket,
            figures_interval=args.figures_interval,
            ui_session_ttl=args.ui_session_ttl,
        ),
        webhooks=WebhookPolicy(give_up_after=args.webhook_give_up),
        jobs=JobPolicy(max_attempts=args.job_max_attempts),
    )


def write_port_file(path: Path, endpoints: Any) -> None:
    """Write where the server listens (an :class:`~edgefleet.server.runner.Endpoints`) to ``path``,
    atomically: a reader that sees the file sees all of it."""
    from edgefleet.core.files import write_json_atomic

    write_json_atomic(
        path,
        {
            "port": endpoints.api_port,
            "device_port": endpoints.device_port,
            "api_url": endpoints.api_url,
            "device_url": endpoints.device_url,
            "ca_cert": endpoints.ca_cert,
        },
    )


def run(args: argparse.Namespace) -> int:
    import logging

    from edgefleet.server.runner import Endpoints
    from edgefleet.server.runner import run as serve

    configure_logging(args.log_format, "server")  # uvicorn's loggers go through it too (runner.py)
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # its start-up chatter is not news
    config = build_config(args)

    def ready(endpoints: Endpoints) -> None:
        if args.port_file is not None:  # first: whoever reads the ready line finds the file
            write_port_file(args.port_file, endpoints)
        print(
            f"edgefleet server ready: operator API {endpoints.api_url} (tokens), "
            f"devices {endpoints.device_url} (mutual TLS), CA certificate {endpoints.ca_cert}",
            flush=True,
        )
        trust = config.resolved_trust_dir
        if not trust.is_dir():
            note = f"no package trust store at {trust}; uploads are refused until it exists"
            if args.log_format == "json":  # only JSON on stderr
                logging.getLogger("edgefleet.server").warning(note)
            else:
                print(f"note: {note}", file=sys.stderr)

    serve(config, ready)
    return 0
