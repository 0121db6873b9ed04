"""Operator commands under ``edgefleet device``: register / update / deregister / describe / list / new-token.

The device CLI module (``edgefleet.cli.device``, which also holds the daemon's own commands) calls
:func:`add_operator_commands` with its sub-parsers. These commands are clients of the operator API.
"""

from __future__ import annotations

import argparse
from typing import Any

from edgefleet.cli.output import (
    add_client_arguments,
    client_from_args,
    dump_json,
    emit,
    fields,
    parse_key_values,
    table,
)

DEVICE_FIELDS = [
    ("Name", "DeviceName"),
    ("Fleet", "DeviceFleetName"),
    ("Description", "Description"),
    ("Tags", "Tags"),
    ("Platform", "Platform"),
    ("Registered", "RegistrationTime"),
    ("Enrolled", "EnrolmentTime"),
    ("Certificate expires", "CertificateExpiresAt"),
    ("Agent version", "AgentVersion"),
    ("Last heartbeat", "LatestHeartbeat"),
]


def add_operator_commands(commands: Any) -> None:
    """Add the operator's device commands to the ``edgefleet device`` sub-parsers ``commands``."""
    register = commands.add_parser(
        "register", help="register devices in a fleet and print their enrolment tokens"
    )
    register.add_argument("names", nargs="+", metavar="NAME", help="device names to register")
    register.add_argument("--fleet", required=True, help="the fleet the devices join")
    register.add_argument("--description", help="free text shown with each device")
    register.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a tag (repeatable)")
    register.set_defaults(func=register_devices)

    update = commands.add_parser("update", help="change a device's description, tags or platform")
    update.add_argument("name", help="device name")
    update.add_argument("--description", help="new description")
    update.add_argument("--tag", action="append", metavar="KEY=VALUE", help="replaces all tags")
    update.add_argument("--arch", help="CPU architecture (x86_64, aarch64, armv7l); picks packages")
    update.add_argument("--os", default="linux", help="operating system, with --arch (default linux)")
    update.add_argument("--accelerator", default="none", help="accelerator, with --arch (default none)")
    update.set_defaults(func=update_device)

    deregister = commands.add_parser("deregister", help="deregister devices (revokes their certificates)")
    deregister.add_argument("names", nargs="+", metavar="NAME", help="device names to deregister")
    deregister.set_defaults(func=deregister_devices)

    describe = commands.add_parser("describe", help="show a device, its models and last heartbeat")
    describe.add_argument("name", help="device name")
    describe.set_defaults(func=describe_device)

    listing = commands.add_parser("list", help="list devices")
    listing.add_argument("--fleet", help="only devices of this fleet")
    listing.add_argument("--model", help="only devices running this model")
    listing.add_argument("--heartbeat-after", help="only devices heard from after this ISO 8601 time")
    listing.add_argument("--tag", action="append", metavar="KEY=VALUE", help="repeat to require several")
    listing.set_defaults(func=list_devices)

    token = commands.add_parser("new-token", help="issue a fresh one-time enrolment token for a device")
    token.add_argument("name", help="device name")
    token.set_defaults(func=new_token)

    for command in (register, update, deregister, describe, listing, token):
        add_client_arguments(command)


def register_devices(args: argparse.Namespace) -> int:
    devices = [{"DeviceName": name, "Description": args.description} for name in args.names]
    with client_from_args(args) as client:
        registered = client.register_devices(args.fleet, devices, tags=parse_key_values(args.tag, "tag"))
    return emit(
        args,
        registered,
        [
            ("DEVICE", "DeviceName"),
            ("ENROLMENT TOKEN (shown once)", "EnrolmentToken"),
            ("EXPIRES", "EnrolmentTokenExpiresAt"),
        ],
    )


def update_device(args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    if args.description is not None:
        changes["Description"] = args.description
    tags = parse_key_values(args.tag, "tag")
    if tags is not None:
        changes["Tags"] = tags
    if args.arch is not None:
        changes["Platform"] = {"Os": args.os, "Arch": args.arch, "Accelerator": args.accelerator}
    with client_from_args(args) as client:
        device = client.update_device(args.name, **changes)
    return emit(args, device, DEVICE_FIELDS)


def deregister_devices(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        for name in args.names:
            client.deregister_device(name)
            if not args.json:
                print(f"device {name} deregistered; its certificate is revoked")
    if args.json:
        dump_json({"Deregistered": list(args.names)})
    return 0


def describe_device(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        device = client.describe_device(args.name)
    if args.json:
        dump_json(device)
        return 0
    fields(device, DEVICE_FIELDS)
    print()
    table(
        device["Models"],
        [
            ("MODEL", "ModelName"),
            ("VERSION", "ModelVersion"),
            ("LATEST INFERENCE", "LatestInference"),
            ("LATEST SAMPLE", "LatestSampleTime"),
        ],
    )
    return 0


def list_devices(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        rows = list(
            client.list_devices(
                fleet=args.fleet, model=args.model, heartbeat_after=args.heartbeat_after, tags=args.tag
            )
        )
    if args.json:
        dump_json(rows)
        return 0
    for row in rows:
        row["ModelList"] = [f"{m['ModelName']}:{m['ModelVersion']}" for m in row.get("Models", [])]
    table(
        rows,
        [
            ("NAME", "DeviceName"),
            ("FLEET", "DeviceFleetName"),
            ("AGENT", "AgentVersion"),
            ("LAST HEARTBEAT", "LatestHeartbeat"),
            ("MODELS", "ModelList"),
        ],
    )
    return 0


def new_token(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        result = client.new_enrolment_token(args.name)
    if args.json:
        dump_json(result)
    else:
        print(result["EnrolmentToken"])
    return 0
