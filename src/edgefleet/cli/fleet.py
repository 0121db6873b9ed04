"""``edgefleet fleet``: device fleets, fleet reports and shadow figures (a client of the operator API)."""

from __future__ import annotations

import argparse
from typing import Any

from edgefleet.cli.output import (
    add_client_arguments,
    cell,
    client_from_args,
    dump_json,
    emit,
    parse_key_values,
    table,
)

FLEET_FIELDS = [
    ("Name", "DeviceFleetName"),
    ("Output", "S3OutputLocation"),
    ("KMS key", "KmsKeyId"),
    ("Description", "Description"),
    ("Tags", "Tags"),
    ("Created", "CreationTime"),
    ("Modified", "LastModifiedTime"),
]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("fleet", help="manage device fleets and fleet reports")
    commands = parser.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)

    create = commands.add_parser("create", help="create a fleet")
    create.add_argument("name", help="fleet name: 1-63 of [a-zA-Z0-9-], starting and ending alnum")
    create.add_argument("--output", required=True, help="capture output location, e.g. s3://bucket/prefix")
    create.add_argument("--kms-key-id", help="KMS key that encrypts the captured data")
    create.add_argument("--description", help="free text shown with the fleet")
    create.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a tag (repeatable)")
    create.set_defaults(func=create_fleet)

    update = commands.add_parser("update", help="change a fleet's output config, description or tags")
    update.add_argument("name", help="fleet name")
    update.add_argument("--output", help="new capture output location, e.g. s3://bucket/prefix")
    update.add_argument("--kms-key-id", help="new KMS key for the captured data")
    update.add_argument("--description", help="new description")
    update.add_argument("--tag", action="append", metavar="KEY=VALUE", help="replaces all tags")
    update.set_defaults(func=update_fleet)

    listing = commands.add_parser("list", help="list fleets")
    listing.add_argument("--name-contains", metavar="TEXT", help="only fleets whose name contains TEXT")
    listing.set_defaults(func=list_fleets)

    describe = commands.add_parser("describe", help="show a fleet")
    describe.add_argument("name", help="fleet name")
    describe.set_defaults(func=describe_fleet)

    delete = commands.add_parser("delete", help="delete a fleet (no devices or plans may remain)")
    delete.add_argument("name", help="fleet name")
    delete.set_defaults(func=delete_fleet)

    report = commands.add_parser("report", help="show the fleet report (device, agent and model counts)")
    report.add_argument("name", help="fleet name")
    report.add_argument(
        "--regenerate", action="store_true", help="regenerate it now instead of showing the last one"
    )
    report.set_defaults(func=show_report)

    shadows = commands.add_parser(
        "shadows", help="show the fleet's shadow figures per champion and shadow model version"
    )
    shadows.add_argument("name", help="fleet name")
    shadows.add_argument("--champion-model", metavar="MODEL", help="only pairs whose champion is MODEL")
    shadows.add_argument("--shadow-model", metavar="MODEL", help="only pairs whose shadow is MODEL")
    shadows.add_argument("--since", metavar="TIME", help="only reports received since TIME (ISO 8601)")
    shadows.set_defaults(func=show_shadows)

    for command in (create, update, listing, describe, delete, report, shadows):
        add_client_arguments(command)


def _flat(fleet: dict[str, Any]) -> dict[str, Any]:
    output = fleet.get("OutputConfig") or {}
    return {**fleet, "S3OutputLocation": output.get("S3OutputLocation"), "KmsKeyId": output.get("KmsKeyId")}


def create_fleet(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        fleet = client.create_fleet(
            args.name,
            args.output,
            description=args.description,
            kms_key_id=args.kms_key_id,
            tags=parse_key_values(args.tag, "tag"),
        )
    return emit(args, _flat(fleet), FLEET_FIELDS)


def update_fleet(args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    if args.output is not None or args.kms_key_id is not None:
        current = None
        if args.output is None:
            with client_from_args(args) as client:
                current = client.describe_fleet(args.name)["OutputConfig"]["S3OutputLocation"]
        changes["OutputConfig"] = {"S3OutputLocation": args.output or current, "KmsKeyId": args.kms_key_id}
    if args.description is not None:
        changes["Description"] = args.description
    tags = parse_key_values(args.tag, "tag")
    if tags is not None:
        changes["Tags"] = tags
    with client_from_args(args) as client:
        fleet = client.update_fleet(args.name, **changes)
    return emit(args, _flat(fleet), FLEET_FIELDS)


def list_fleets(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        rows = list(client.list_fleets(name_contains=args.name_contains))
    return emit(
        args,
        rows,
        [("NAME", "DeviceFleetName"), ("CREATED", "CreationTime"), ("MODIFIED", "LastModifiedTime")],
    )


def describe_fleet(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        fleet = client.describe_fleet(args.name)
    return emit(args, _flat(fleet), FLEET_FIELDS)


def delete_fleet(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        client.delete_fleet(args.name)
    if args.json:
        dump_json({"Deleted": {"DeviceFleetName": args.name}})
    else:
        print(f"fleet {args.name} deleted")
    return 0


def show_report(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        report = client.fleet_report(args.name, regenerate=args.regenerate)
    if args.json:
        dump_json(report)
        return 0
    stats = report["DeviceStats"]
    print(f"Fleet {report['DeviceFleetName']}  (report generated {cell(report['ReportGenerated'])})")
    print(
        f"Devices: {stats['RegisteredDeviceCount']} registered, {stats['ConnectedDeviceCount']} connected\n"
    )
    table(report["AgentVersions"], [("AGENT VERSION", "Version"), ("DEVICES", "AgentCount")])
    print()
    table(
        report["ModelStats"],
        [
            ("MODEL", "ModelName"),
            ("VERSION", "ModelVersion"),
            ("OFFLINE", "OfflineDeviceCount"),
            ("CONNECTED", "ConnectedDeviceCount"),
            ("ACTIVE", "ActiveDeviceCount"),
            ("SAMPLING", "SamplingDeviceCount"),
        ],
    )
    return 0


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def show_shadows(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        report = client.fleet_shadows(
            args.name, champion_model=args.champion_model, shadow_model=args.shadow_model, since=args.since
        )
    if args.json:
        dump_json(report)
        return 0
    rows = [
        {
            **pair,
            "Champion": f"{pair['ChampionModel']}:{pair['ChampionVersion']}",
            "Shadow": f"{pair['ShadowModel']}:{pair['ShadowVersion']}",
            "Agreement": _rate(pair["AgreementRate"]),
            "P50Ratio": f"{_rate(pair['LatencyRatioP50Median'])} / {_rate(pair['LatencyRatioP50Worst'])}",
            "P99Ratio": f"{_rate(pair['LatencyRatioP99Median'])} / {_rate(pair['LatencyRatioP99Worst'])}",
        }
        for pair in report["ShadowPairs"]
    ]
    if not rows:
        print(f"fleet {report['DeviceFleetName']}: no device reports a shadow pair")
        return 0
    table(
        rows,
        [
            ("CHAMPION", "Champion"),
            ("SHADOW", "Shadow"),
            ("DEVICES", "DeviceCount"),
            ("MIRRORED", "Mirrored"),
            ("COMPLETED", "Completed"),
            ("AGREEMENT", "Agreement"),
            ("ERRORS", "ShadowErrors"),
            ("DROPPED", "Dropped"),
            ("P50 RATIO MED/WORST", "P50Ratio"),
            ("P99 RATIO MED/WORST", "P99Ratio"),
        ],
    )
    return 0
