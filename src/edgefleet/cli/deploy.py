"""``edgefleet deploy``: staged OTA deployment plans (create, start/stop stages, watch, per-device status).

See :data:`CREATE_HELP` for how stages and models are written on the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from edgefleet.cli.output import add_client_arguments, client_from_args, dump_json, emit, fields, table
from edgefleet.core.deviceplane import DEFAULT_MIN_INFERENCES, DEFAULT_OBSERVATION_SECONDS, HealthGate

CREATE_HELP = """Create a deployment plan.

Stages are given as one quoted argument each: NAME SELECTOR [policy=...] [threshold=...] where
SELECTOR is percent=N, names=a,b, contains=TEXT or tags=key:value,key:value, e.g.
--stage "canary percent=10" --stage "rest percent=100". Models are HANDLE=MODEL:VERSION or
HANDLE=MODEL@ALIAS (MODEL:VERSION alone uses the model name as handle).
"""

_SELECTORS = {"percent": "PERCENTAGE", "names": "SELECTION", "contains": "NAMECONTAINS", "tags": "TAGS"}
_FINISHED = {"DEPLOYED", "FAILED", "STOPPED"}


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("deploy", help="staged deployments of model versions to fleets")
    commands = parser.add_subparsers(dest="deploy_command", metavar="COMMAND", required=True)

    create = commands.add_parser("create", help="create a deployment plan", description=CREATE_HELP)
    create.add_argument("name", nargs="?", help="plan name (not needed with --file)")
    create.add_argument("--file", type=Path, help="a CreateEdgeDeploymentPlan JSON body instead of the flags")
    create.add_argument("--fleet", help="the fleet to deploy to")
    create.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="HANDLE=MODEL:VERSION|HANDLE=MODEL@ALIAS",
        help="a model version to deploy (repeatable)",
    )
    create.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar='"NAME SELECTOR [policy=P] [threshold=F]"',
        help="a stage, in order (repeatable); SELECTOR is percent=N, names=a,b, contains=TEXT or tags=k:v",
    )
    create.add_argument(
        "--max-error-rate", type=float, help="health gate: highest error rate (0-1) after activation"
    )
    create.add_argument(
        "--max-p99-ms", type=float, help="health gate: highest p99 latency in ms after activation"
    )
    create.add_argument(
        "--min-inferences",
        type=int,
        default=DEFAULT_MIN_INFERENCES,
        help="health gate: inferences before a verdict",
    )
    create.add_argument(
        "--observe",
        type=float,
        default=DEFAULT_OBSERVATION_SECONDS,
        help="health gate: seconds to observe a device",
    )
    create.add_argument(
        "--max-drift-score",
        type=float,
        help="health gate: highest drift score (worst feature PSI against the version's baseline, "
        "e.g. 0.25) of the new version on a stage's devices; needs a baseline per version",
    )
    create.add_argument("--device-timeout", type=float, help="seconds after which an unfinished device fails")
    create.add_argument(
        "--watch-seconds",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after a stage is DEPLOYED, keep checking the health gate's limits this long (default 0: no watch)",
    )
    create.add_argument(
        "--watch-policy",
        choices=["ROLLBACK", "ALERT_ONLY"],
        default="ROLLBACK",
        help="what a breach in the watch period does (default ROLLBACK)",
    )
    create.set_defaults(func=create_plan)

    listing = commands.add_parser("list", help="list deployment plans")
    listing.add_argument("--fleet", help="only plans of this fleet")
    listing.set_defaults(func=list_plans)

    describe = commands.add_parser("describe", help="show a plan with per-stage status")
    describe.add_argument("name", help="plan name")
    describe.set_defaults(func=describe_plan)

    start = commands.add_parser("start", help="start a stage")
    start.add_argument("name", help="plan name")
    start.add_argument("stage", help="stage name")
    start.add_argument(
        "--wait", action="store_true", help="follow the stage until it is DEPLOYED, FAILED or STOPPED"
    )
    start.add_argument("--poll", type=float, default=2.0, help="seconds between status checks with --wait")
    start.set_defaults(func=start_stage)

    watch = commands.add_parser("watch", help="follow a stage until it finishes")
    watch.add_argument("name", help="plan name")
    watch.add_argument("stage", help="stage name")
    watch.add_argument("--poll", type=float, default=2.0, help="seconds between status checks (default 2)")
    watch.set_defaults(func=watch_stage)

    stop = commands.add_parser("stop", help="stop a stage (devices not yet finished roll back)")
    stop.add_argument("name", help="plan name")
    stop.add_argument("stage", help="stage name")
    stop.set_defaults(func=stop_stage)

    devices = commands.add_parser("devices", help="per-device status of a stage")
    devices.add_argument("name", help="plan name")
    devices.add_argument("stage", help="stage name")
    devices.add_argument(
        "--status", help="only READYTODEPLOY / INPROGRESS / DEPLOYED / FAILED / STOPPING / STOPPED"
    )
    devices.set_defaults(func=stage_devices)

    delete = commands.add_parser("delete", help="delete a plan with nothing in flight")
    delete.add_argument("name", help="plan name")
    delete.set_defaults(func=delete_plan)

    for command in (create, listing, describe, start, watch, stop, devices, delete):
        add_client_arguments(command)


def parse_model(text: str) -> dict[str, Any]:
    """``HANDLE=MODEL:VERSION``, ``HANDLE=MODEL@ALIAS`` or ``MODEL:VERSION`` to a ModelConfig."""
    from edgefleet.core.errors import InvalidArgument

    handle, sep, ref = text.partition("=")
    if not sep:
        handle, ref = "", text
    if "@" in ref:
        model, _, alias = ref.partition("@")
        config: dict[str, Any] = {"ModelName": model, "ModelAlias": alias}
    elif ":" in ref:
        model, _, version = ref.partition(":")
        config = {"ModelName": model, "ModelVersion": version}
    else:
        raise InvalidArgument(f"--model {text!r} must look like HANDLE=MODEL:VERSION or HANDLE=MODEL@ALIAS")
    if not config["ModelName"]:
        raise InvalidArgument(f"--model {text!r} names no model")
    return {"ModelHandle": handle or config["ModelName"], **config}


def parse_stage(text: str) -> dict[str, Any]:
    """``"NAME percent=10 policy=DO_NOTHING threshold=0.1"`` to a Stage."""
    from edgefleet.core.errors import InvalidArgument

    words = text.split()
    if len(words) < 2:
        raise InvalidArgument(f"--stage {text!r} needs a name and a selector, e.g. 'canary percent=10'")
    name, options = words[0], dict(w.partition("=")[::2] for w in words[1:])
    selectors = [key for key in options if key in _SELECTORS]
    if len(selectors) != 1:
        raise InvalidArgument(
            f"--stage {text!r} needs exactly one of {', '.join(k + '=' for k in _SELECTORS)}"
        )
    unknown = set(options) - set(_SELECTORS) - {"policy", "threshold"}
    if unknown:
        raise InvalidArgument(f"--stage {text!r}: unknown option(s) {', '.join(sorted(unknown))}")
    kind = selectors[0]
    value = options[kind]
    selection: dict[str, Any] = {"DeviceSubsetType": _SELECTORS[kind]}
    try:
        if kind == "percent":
            selection["Percentage"] = int(value)
        elif kind == "names":
            selection["DeviceNames"] = [n for n in value.split(",") if n]
        elif kind == "contains":
            selection["DeviceNameContains"] = value
        else:
            selection["DeviceTags"] = dict(pair.split(":", 1) for pair in value.split(",") if pair)
        config: dict[str, Any] = {"FailureHandlingPolicy": options.get("policy", "ROLLBACK_ON_FAILURE")}
        if "threshold" in options:
            config["FailureThreshold"] = float(options["threshold"])
    except ValueError as exc:
        raise InvalidArgument(f"--stage {text!r}: {exc}") from exc
    return {"StageName": name, "DeviceSelectionConfig": selection, "DeploymentConfig": config}


def plan_body(args: argparse.Namespace) -> dict[str, Any]:
    """The CreateEdgeDeploymentPlan body for ``deploy create`` flags (or ``--file``)."""
    from edgefleet.core.errors import InvalidArgument

    if args.file is not None:
        try:
            body: dict[str, Any] = json.loads(args.file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidArgument(f"cannot read the plan file {args.file}: {exc}") from exc
        if args.name:
            body["EdgeDeploymentPlanName"] = args.name
        return body
    if not args.name or not args.fleet or not args.model or not args.stage:
        raise InvalidArgument(
            "deploy create needs NAME, --fleet, at least one --model and one --stage (or --file)"
        )
    body = {
        "EdgeDeploymentPlanName": args.name,
        "DeviceFleetName": args.fleet,
        "ModelConfigs": [parse_model(m) for m in args.model],
        "Stages": [parse_stage(s) for s in args.stage],
    }
    gate = HealthGate(
        args.max_error_rate,
        args.max_p99_ms,
        args.min_inferences,
        args.observe,
        max_drift_score=args.max_drift_score,
    )
    if gate.enabled:
        body["HealthGate"] = gate.to_wire()
    if args.device_timeout is not None:
        body["DeviceTimeoutSeconds"] = args.device_timeout
    if args.watch_seconds:
        body["WatchSeconds"] = args.watch_seconds
        body["WatchPolicy"] = args.watch_policy
    return body


def _print_plan(plan: dict[str, Any]) -> None:
    fields(
        plan,
        [
            ("Plan", "EdgeDeploymentPlanName"),
            ("Fleet", "DeviceFleetName"),
            ("Deployed", "EdgeDeploymentSuccess"),
            ("Pending", "EdgeDeploymentPending"),
            ("Failed", "EdgeDeploymentFailed"),
            ("Health gate", "HealthGate"),
            ("Watch", "WatchSeconds"),
            ("Watch policy", "WatchPolicy"),
            ("Created", "CreationTime"),
        ],
    )
    print()
    table(
        plan["ModelConfigs"],
        [
            ("HANDLE", "ModelHandle"),
            ("MODEL", "ModelName"),
            ("VERSION", "ModelVersion"),
            ("ALIAS", "ModelAlias"),
        ],
    )
    print()
    rows = []
    for stage in plan["Stages"]:
        status = stage["DeploymentStatus"]
        selection = stage["DeviceSelectionConfig"]
        rows.append(
            {
                "name": stage["StageName"],
                "selection": {k: v for k, v in selection.items() if v is not None},
                "policy": stage["DeploymentConfig"]["FailureHandlingPolicy"],
                "status": status["StageStatus"],
                "ok": status["EdgeDeploymentSuccessInStage"],
                "pending": status["EdgeDeploymentPendingInStage"],
                "failed": status["EdgeDeploymentFailedInStage"],
                "stopped": status["EdgeDeploymentStoppedInStage"],
                "message": status["EdgeDeploymentStatusMessage"],
                "watch": _watch_text(stage.get("Watch")),
            }
        )
    table(
        rows,
        [
            ("STAGE", "name"),
            ("SELECTION", "selection"),
            ("POLICY", "policy"),
            ("STATUS", "status"),
            ("DEPLOYED", "ok"),
            ("PENDING", "pending"),
            ("FAILED", "failed"),
            ("STOPPED", "stopped"),
            ("MESSAGE", "message"),
            ("WATCH", "watch"),
        ],
    )
    events = [
        {"stage": stage["StageName"], **event}
        for stage in plan["Stages"]
        for event in stage.get("Events") or []
    ]
    if events:
        print()
        table(events, [("STAGE", "stage"), ("TIME", "Time"), ("EVENT", "Kind"), ("MESSAGE", "Message")])


def _watch_text(watch: dict[str, Any] | None) -> str:
    """A stage's watch period in one cell: until when, and the breach if any."""
    if not watch:
        return "-"
    text = f"until {watch['WatchUntil']}"
    return f"{text}; {watch['BreachReason']}" if watch.get("BreachReason") else text


def create_plan(args: argparse.Namespace) -> int:
    body = plan_body(args)
    with client_from_args(args) as client:
        plan = client.create_plan(body)
    dump_json(plan) if args.json else _print_plan(plan)
    return 0


def list_plans(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        rows = list(client.list_plans(fleet=args.fleet))
    return emit(
        args,
        rows,
        [("PLAN", "EdgeDeploymentPlanName"), ("FLEET", "DeviceFleetName"), ("CREATED", "CreationTime")],
    )


def describe_plan(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        plan = client.describe_plan(args.name)
    dump_json(plan) if args.json else _print_plan(plan)
    return 0


def _stage_line(plan: dict[str, Any], stage_name: str) -> tuple[str, str]:
    stage = next(s for s in plan["Stages"] if s["StageName"] == stage_name)
    status = stage["DeploymentStatus"]
    total = sum(
        status[k]
        for k in (
            "EdgeDeploymentSuccessInStage",
            "EdgeDeploymentPendingInStage",
            "EdgeDeploymentFailedInStage",
            "EdgeDeploymentStoppedInStage",
        )
    )
    line = (
        f"{plan['EdgeDeploymentPlanName']}/{stage_name}: {status['StageStatus']}  "
        f"{status['EdgeDeploymentSuccessInStage']}/{total} deployed, {status['EdgeDeploymentFailedInStage']} failed, "
        f"{status['EdgeDeploymentPendingInStage']} pending, {status['EdgeDeploymentStoppedInStage']} stopped"
    )
    if status["EdgeDeploymentStatusMessage"]:
        line += f"  ({status['EdgeDeploymentStatusMessage']})"
    return status["StageStatus"], line


def _follow(client: Any, plan_name: str, stage: str, poll: float, *, as_json: bool = False) -> int:
    """Poll until the stage finishes; a line per change (or, as JSON, the finished plan alone)."""
    last = ""
    while True:
        plan = client.describe_plan(plan_name)
        status, line = _stage_line(plan, stage)
        if line != last and not as_json:
            print(line, flush=True)
            last = line
        if status in _FINISHED:
            if as_json:
                dump_json(plan)
            return 0 if status == "DEPLOYED" else 1
        time.sleep(poll)


def start_stage(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        plan = client.start_stage(args.name, args.stage)
        if args.wait:
            if not args.json:
                print(_stage_line(plan, args.stage)[1], flush=True)
            return _follow(client, args.name, args.stage, args.poll, as_json=args.json)
        dump_json(plan) if args.json else print(_stage_line(plan, args.stage)[1], flush=True)
    return 0


def watch_stage(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        try:
            return _follow(client, args.name, args.stage, args.poll, as_json=args.json)
        except KeyboardInterrupt:
            print("", file=sys.stderr)
            return 130


def stop_stage(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        plan = client.stop_stage(args.name, args.stage)
    dump_json(plan) if args.json else print(_stage_line(plan, args.stage)[1])
    return 0


def stage_devices(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        rows = list(client.stage_devices(args.name, args.stage, status=args.status))
    return emit(
        args,
        rows,
        [
            ("DEVICE", "DeviceName"),
            ("STATUS", "DeviceDeploymentStatus"),
            ("RESULT", "DeviceResult"),
            ("ROLLBACK", "Rollback"),
            ("STARTED", "DeploymentStartTime"),
            ("MESSAGE", "DeviceDeploymentStatusMessage"),
        ],
    )


def delete_plan(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        client.delete_plan(args.name)
    if args.json:
        dump_json({"Deleted": {"EdgeDeploymentPlanName": args.name}})
    else:
        print(f"deployment plan {args.name} deleted")
    return 0
