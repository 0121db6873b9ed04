"""``edgefleet job``: jobs on the task queue (a client of the operator API; ``edgefleet worker`` runs them)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from edgefleet.cli.output import add_client_arguments, client_from_args, dump_json, emit

#: how often ``job logs --follow`` asks for new lines, seconds
FOLLOW_POLL = 1.0
FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("job", help="jobs on the task queue (compile jobs): submit, list, show, logs")
    commands = parser.add_subparsers(dest="job_command", metavar="COMMAND", required=True)

    submit = commands.add_parser("compile", help="submit a compile job (the files are read by the workers)")
    submit.add_argument("model", type=Path, help="the trained model file (a path the workers can read)")
    submit.add_argument(
        "--framework", required=True, help="onnx, pytorch, sklearn, xgboost, lightgbm, tflite"
    )
    submit.add_argument("--target", required=True, help="target device class (docs/targets.md)")
    submit.add_argument("--input", action="append", default=[], metavar="NAME:SHAPE[:DTYPE]", help="an input")
    submit.add_argument("--backend", default="auto", help="auto or a runtime name (default: auto)")
    submit.add_argument("--quantize", default="auto", help="auto | none | int8 | fp16 (default: auto)")
    submit.add_argument("--validation", type=Path, help="validation data for the accuracy check")
    submit.add_argument("--calibration", type=Path, help="int8 calibration data")
    submit.add_argument(
        "--bench-seconds", type=float, default=2.0, help="seconds of measurement per candidate"
    )
    submit.add_argument("--max-attempts", type=int, help="attempts before a lost worker fails it")
    submit.set_defaults(func=compile_job)
    add_client_arguments(submit)

    listing = commands.add_parser("list", help="jobs, newest first")
    listing.add_argument(
        "--state", help="only jobs in this state (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)"
    )
    listing.add_argument("--kind", help="only jobs of this kind (compile, wait)")
    listing.set_defaults(func=list_jobs)
    add_client_arguments(listing)

    show = commands.add_parser("show", help="one job: state, progress, result or error")
    show.add_argument("job_id", help="the job's id")
    show.set_defaults(func=show_job)
    add_client_arguments(show)

    logs = commands.add_parser("logs", help="a job's log lines")
    logs.add_argument("job_id", help="the job's id")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines until the job ends"
    )
    logs.set_defaults(func=job_logs)
    add_client_arguments(logs)

    cancel = commands.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job_id", help="the job's id")
    cancel.set_defaults(func=cancel_job)
    add_client_arguments(cancel)


def _progress(value: Any) -> str:
    if not value:
        return "-"
    text = f"{100 * float(value.get('Fraction') or 0):.0f}%"
    return f"{text} {value['Message']}" if value.get("Message") else text


def _error(value: Any) -> str:
    return "-" if not value else f"{value['Code']}: {value['Message']}"


JOB_FIELDS: list[Any] = [
    ("Job", "JobId"),
    ("Kind", "Kind"),
    ("State", "State"),
    ("Attempt", "Attempt"),
    ("MaxAttempts", "MaxAttempts"),
    ("Worker", "WorkerId"),
    ("Progress", "Progress", _progress),
    ("Error", "Error", _error),
    ("Created", "CreationTime"),
    ("By", "CreatedBy"),
    ("Started", "StartTime"),
    ("Ended", "EndTime"),
]

JOB_COLUMNS: list[Any] = [
    ("JOB", "JobId"),
    ("KIND", "Kind"),
    ("STATE", "State"),
    ("ATTEMPT", "Attempt"),
    ("PROGRESS", "Progress", _progress),
    ("CREATED", "CreationTime"),
    ("ERROR", "Error", _error),
]


def _absolute(path: Path | None) -> str | None:
    return None if path is None else str(path.resolve())


def compile_job(args: argparse.Namespace) -> int:
    params = {
        "Model": _absolute(args.model),
        "Framework": args.framework,
        "Target": args.target,
        "Inputs": args.input,
        "Backend": args.backend,
        "Quantize": args.quantize,
        "Validation": _absolute(args.validation),
        "Calibration": _absolute(args.calibration),
        "BenchmarkSeconds": args.bench_seconds,
    }
    with client_from_args(args) as client:
        job = client.submit_job("compile", params, max_attempts=args.max_attempts)
    return emit(args, job, JOB_FIELDS)


def list_jobs(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        jobs = list(client.list_jobs(state=args.state, kind=args.kind))
    return emit(args, jobs, JOB_COLUMNS)


def show_job(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        job = client.describe_job(args.job_id)
    if args.json:
        dump_json(job)
        return 0
    emit(args, job, JOB_FIELDS)
    report = (job.get("Result") or {}).get("Report")
    if report:
        selected = report.get("selected") or {}
        print(f"Selected  {selected}")
    if job.get("Result") and job["Result"].get("ArtifactPrefix"):
        print(f"Artifacts {job['Result']['ArtifactPrefix']}/ in the artifact store")
    return 0


def job_logs(args: argparse.Namespace) -> int:
    after = 0
    with client_from_args(args) as client:
        while True:
            page = client.job_logs(args.job_id, after=after)
            for line in page["Lines"]:
                if args.json:
                    dump_json(line)
                else:
                    print(f"{line['Time']}  #{line['Attempt']}  {line['Line']}")
            sys.stdout.flush()
            after = page["LastId"]
            if page["Lines"]:
                continue  # more may be waiting beyond this page
            if not args.follow or page["State"] in FINAL_STATES:
                return 0
            time.sleep(FOLLOW_POLL)


def cancel_job(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        job = client.cancel_job(args.job_id)
    return emit(args, job, JOB_FIELDS)
