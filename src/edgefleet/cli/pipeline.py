"""``edgefleet pipeline``: model pipelines and their runs (a client of the operator API; runs are
advanced by ``edgefleet worker``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from edgefleet.cli.output import add_client_arguments, client_from_args, dump_json, emit
from edgefleet.core.errors import InvalidArgument, NotFound

#: how often ``logs --follow`` and ``run --wait`` look again, seconds
FOLLOW_POLL = 1.0
FINAL_STATES = ("SUCCEEDED", "FAILED", "REJECTED")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "pipeline", help="model pipelines: compile, package, twin validation, shadow, approval, rollout"
    )
    commands = parser.add_subparsers(dest="pipeline_command", metavar="COMMAND", required=True)

    create = commands.add_parser("create", help="store a model's pipeline configuration (a TOML file)")
    create.add_argument("config", type=Path, help="the TOML file (see docs/pipelines.md)")
    create.add_argument("--replace", action="store_true", help="replace the model's existing pipeline")
    create.set_defaults(func=create_pipeline)

    show = commands.add_parser("show", help="a pipeline's configuration, or a run (by its id)")
    show.add_argument("name", help="the model name, or a run id")
    show.set_defaults(func=show_pipeline_or_run)

    listing = commands.add_parser("list", help="the pipelines")
    listing.set_defaults(func=list_pipelines)

    run = commands.add_parser("run", help="start a run of a model's pipeline")
    run.add_argument("model", help="the model (pipeline) name")
    run.add_argument("--source", type=Path, help="a model file replacing the configured source")
    run.add_argument("--version", help="the version registered (default: r<run number>)")
    run.add_argument(
        "--wait", action="store_true", help="print the log until the run ends or waits for approval"
    )
    run.set_defaults(func=start_run)

    runs = commands.add_parser("runs", help="runs, newest first")
    runs.add_argument("model", nargs="?", help="only runs of this pipeline")
    runs.add_argument("--state", help="only runs in this state")
    runs.set_defaults(func=list_runs)

    logs = commands.add_parser("logs", help="a run's log")
    logs.add_argument("run_id", help="the run's id (edgefleet pipeline runs)")
    logs.add_argument("-f", "--follow", action="store_true", help="until the run ends or waits for approval")
    logs.set_defaults(func=run_logs)

    for name, helptext in (
        ("approve", "approve a run at its approval gate"),
        ("reject", "reject a run at its approval gate"),
    ):
        decide = commands.add_parser(name, help=helptext)
        decide.add_argument("run_id", help="the run's id (edgefleet pipeline runs)")
        decide.add_argument("--note", help="why (kept with the run)")
        decide.set_defaults(func=decide_run, approve=name == "approve")

    for p in (create, show, listing, run, runs, logs, *[commands.choices[n] for n in ("approve", "reject")]):
        add_client_arguments(p)


PIPELINE_FIELDS: list[Any] = [
    ("Pipeline", "PipelineName"),
    ("Steps", "Steps", lambda v: " -> ".join(v)),
    ("Created", "CreationTime"),
    ("By", "CreatedBy"),
    ("Modified", "LastModifiedTime"),
]
PIPELINE_COLUMNS: list[Any] = [
    ("PIPELINE", "PipelineName"),
    ("STEPS", "Steps", lambda v: ",".join(v)),
    ("MODIFIED", "LastModifiedTime"),
]
RUN_FIELDS: list[Any] = [
    ("Run", "RunId"),
    ("Pipeline", "PipelineName"),
    ("Number", "RunNumber"),
    ("Version", "ModelVersion"),
    ("State", "State"),
    ("Reason", "Reason"),
    ("Trigger", "Trigger"),
    ("Decision", "Decision"),
    ("DecidedBy", "DecidedBy"),
    ("Created", "CreationTime"),
    ("Started", "StartTime"),
    ("Ended", "EndTime"),
]
RUN_COLUMNS: list[Any] = [
    ("RUN", "RunId"),
    ("PIPELINE", "PipelineName"),
    ("#", "RunNumber"),
    ("VERSION", "ModelVersion"),
    ("STATE", "State"),
    ("CREATED", "CreationTime"),
    ("REASON", "Reason"),
]
STEP_COLUMNS: list[Any] = [
    ("STEP", "StepName"),
    ("STATE", "State"),
    ("STARTED", "StartTime"),
    ("ENDED", "EndTime"),
    ("MESSAGE", "Message"),
]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise NotFound(f"pipeline configuration {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read {path}: {exc}") from exc


def create_pipeline(args: argparse.Namespace) -> int:
    text = _read(args.config)
    with client_from_args(args) as client:
        return emit(args, client.put_pipeline(text, replace=args.replace), PIPELINE_FIELDS)


def _looks_like_run(name: str) -> bool:
    return len(name) == 32 and all(c in "0123456789abcdef" for c in name)


def _show_run(args: argparse.Namespace, run: dict[str, Any]) -> int:
    if args.json:
        dump_json(run)
        return 0
    emit(args, run, RUN_FIELDS)
    print()
    emit(args, run["Steps"], STEP_COLUMNS)
    for step in run["Steps"]:
        if step["Figures"]:
            print(f"{step['StepName']} figures: {step['Figures']}")
    return 0


def show_pipeline_or_run(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        if _looks_like_run(args.name):
            return _show_run(args, client.describe_pipeline_run(args.name))
        pipeline = client.describe_pipeline(args.name)
    if args.json:
        dump_json(pipeline)
        return 0
    emit(args, pipeline, PIPELINE_FIELDS)
    print()
    print(pipeline["Source"].rstrip())
    return 0


def list_pipelines(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        return emit(args, client.list_pipelines(), PIPELINE_COLUMNS)


def start_run(args: argparse.Namespace) -> int:
    source = str(args.source.resolve()) if args.source is not None else None
    with client_from_args(args) as client:
        run = client.start_pipeline_run(args.model, version=args.version, source=source)
        if not args.wait:
            return emit(args, run, RUN_FIELDS)
        _follow(client, run["RunId"], args.json)
        run = client.describe_pipeline_run(run["RunId"])
    _show_run(args, run)
    return 0 if run["State"] in ("SUCCEEDED", "WAITING_APPROVAL") else 1


def _follow(client: Any, run_id: str, as_json: bool) -> None:
    after = 0
    while True:
        page = client.pipeline_run_logs(run_id, after=after)
        for line in page["Lines"]:
            if as_json:
                dump_json(line)
            else:
                print(f"{line['Time']}  {line['Step'] or '-':8}  {line['Line']}")
        sys.stdout.flush()
        after = page["LastId"]
        if page["Lines"]:
            continue
        if page["State"] in (*FINAL_STATES, "WAITING_APPROVAL"):
            return
        time.sleep(FOLLOW_POLL)


def list_runs(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        return emit(args, list(client.list_pipeline_runs(pipeline=args.model, state=args.state)), RUN_COLUMNS)


def run_logs(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        if args.follow:
            _follow(client, args.run_id, args.json)
            return 0
        after = 0
        while True:
            page = client.pipeline_run_logs(args.run_id, after=after)
            for line in page["Lines"]:
                if args.json:
                    dump_json(line)
                else:
                    print(f"{line['Time']}  {line['Step'] or '-':8}  {line['Line']}")
            after = page["LastId"]
            if not page["Lines"]:
                return 0


def decide_run(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        run = client.decide_pipeline_run(args.run_id, approve=args.approve, note=args.note)
    return _show_run(args, run)
