"""``edgefleet model``: the model registry (upload signed packages, approve, alias, list, download)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgefleet.cli.output import (
    ProgressBar,
    add_client_arguments,
    client_from_args,
    dump_json,
    emit,
    fields,
    human_size,
    table,
)
from edgefleet.core.files import sha256_file

VERSION_FIELDS = [
    ("Model", "ModelName"),
    ("Version", "ModelVersion"),
    ("Approval", "ApprovalStatus"),
    ("Approval by", "ApprovalUpdatedBy"),
    ("Approval at", "ApprovalUpdatedAt"),
    ("Approval reason", "ApprovalReason"),
    ("Created", "CreationTime"),
    ("Created by", "CreatedBy"),
]
PACKAGE_COLUMNS = [
    ("TARGET", "Target"),
    ("RUNTIME", "Runtime"),
    ("SIZE", "Size"),
    ("SHA256", "Sha256"),
    ("SIGNER", "Signer"),
    ("UPLOADED", "UploadTime"),
]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("model", help="the model registry: upload, approve, alias, list")
    commands = parser.add_subparsers(dest="model_command", metavar="COMMAND", required=True)

    upload = commands.add_parser(
        "upload", help="upload signed packages (model and version come from the manifest)"
    )
    upload.add_argument(
        "packages",
        nargs="+",
        type=Path,
        metavar="PACKAGE",
        help="signed package files (edgefleet package build)",
    )
    upload.set_defaults(func=upload_packages)

    create = commands.add_parser("create", help="create an empty model")
    create.add_argument("name", help="model name: 1-63 of [a-zA-Z0-9-], starting and ending alnum")
    create.add_argument("--description", help="free text shown with the model")
    create.set_defaults(func=create_model)

    listing = commands.add_parser("list", help="list models")
    listing.add_argument("--name-contains", metavar="TEXT", help="only models whose name contains TEXT")
    listing.set_defaults(func=list_models)

    versions = commands.add_parser("versions", help="list a model's versions, newest first")
    versions.add_argument("name", help="model name")
    versions.add_argument("--status", help="only PendingManualApproval / Approved / Rejected")
    versions.set_defaults(func=list_versions)

    describe = commands.add_parser("describe", help="show a model, or one version with its packages")
    describe.add_argument("name", help="model name")
    describe.add_argument("version", nargs="?", help="a version (default: show the model)")
    describe.set_defaults(func=describe_entry)

    for status, verb in (
        ("Approved", "approve"),
        ("Rejected", "reject"),
        ("PendingManualApproval", "unapprove"),
    ):
        command = commands.add_parser(verb, help=f"set a version's approval status to {status}")
        command.add_argument("name", help="model name")
        command.add_argument("version", help="model version")
        command.add_argument("--reason", help="why (recorded with the approval status)")
        command.set_defaults(func=set_approval, status=status)
        add_client_arguments(command)

    alias = commands.add_parser("alias", help="point an alias (e.g. champion) at a version")
    alias.add_argument("name", help="model name")
    alias.add_argument("alias", help="alias name, e.g. champion")
    alias.add_argument("version", help="the version the alias points at")
    alias.set_defaults(func=set_alias)

    unalias = commands.add_parser("unalias", help="remove an alias")
    unalias.add_argument("name", help="model name")
    unalias.add_argument("alias", help="alias name")
    unalias.set_defaults(func=delete_alias)

    delete = commands.add_parser("delete", help="delete a model, or one version of it, with its packages")
    delete.add_argument("name", help="model name")
    delete.add_argument("version", nargs="?", help="only this version (default: the whole model)")
    delete.set_defaults(func=delete_entry)

    download = commands.add_parser(
        "download",
        help="download a version's package for a target into a directory (resumes, checks SHA-256)",
        description="Write OUTDIR/NAME-VERSION-TARGET.tar.gz. Bytes go to a .part file first; running the "
        "command again resumes it. The file gets its name only once its size and SHA-256 match the registry.",
    )
    download.add_argument("name", help="model name")
    download.add_argument("version", help="model version")
    download.add_argument("target", help="os-arch-accelerator, e.g. linux-x86_64-none")
    download.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUTDIR",
        help="output directory (created if missing)",
    )
    download.set_defaults(func=download_package)

    for command in (upload, create, listing, versions, describe, alias, unalias, delete, download):
        add_client_arguments(command)


def _show_version(version: dict[str, Any]) -> None:
    fields(version, VERSION_FIELDS)
    print()
    table(version["Packages"], PACKAGE_COLUMNS)


def upload_packages(args: argparse.Namespace) -> int:
    stored = []
    with client_from_args(args) as client:
        for path in args.packages:
            bar = ProgressBar(f"uploading {path.name}")
            try:
                version = client.upload_package(path, progress=bar)
            finally:
                bar.close()
            stored.append(version)
            if not args.json:
                print(f"{path}: stored as {version['ModelName']} version {version['ModelVersion']}")
                _show_version(version)
    if args.json:
        dump_json(stored)  # one document: the stored version of each package, in order
    return 0


def create_model(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        model = client.create_model(args.name, description=args.description)
    return emit(args, model, [("Model", "ModelName"), ("Created", "CreationTime")])


def list_models(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        rows = list(client.list_models(name_contains=args.name_contains))
    return emit(
        args,
        rows,
        [
            ("MODEL", "ModelName"),
            ("ALIASES", "Aliases"),
            ("CREATED", "CreationTime"),
            ("BY", "CreatedBy"),
        ],
    )


def list_versions(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        rows = list(client.list_versions(args.name, approval_status=args.status))
    if args.json:
        dump_json(rows)
        return 0
    for row in rows:
        row["Targets"] = [p["Target"] for p in row["Packages"]]
    table(
        rows,
        [
            ("VERSION", "ModelVersion"),
            ("APPROVAL", "ApprovalStatus"),
            ("BY", "ApprovalUpdatedBy"),
            ("TARGETS", "Targets"),
            ("CREATED", "CreationTime"),
        ],
    )
    return 0


def describe_entry(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        if args.version is None:
            record = client.describe_model(args.name)
        else:
            record = client.describe_version(args.name, args.version)
    if args.json:
        dump_json(record)
    elif args.version is None:
        fields(
            record,
            [
                ("Model", "ModelName"),
                ("Description", "Description"),
                ("Aliases", "Aliases"),
                ("Created", "CreationTime"),
                ("Created by", "CreatedBy"),
            ],
        )
    else:
        _show_version(record)
    return 0


def set_approval(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        version = client.set_approval(args.name, args.version, args.status, reason=args.reason)
    return emit(args, version, VERSION_FIELDS)


def set_alias(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        model = client.set_alias(args.name, args.alias, args.version)
    dump_json(model) if args.json else print(f"{args.name}@{args.alias} -> version {args.version}")
    return 0


def delete_alias(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        model = client.delete_alias(args.name, args.alias)
    dump_json(model) if args.json else print(f"alias {args.alias} of {args.name} removed")
    return 0


def delete_entry(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        if args.version is None:
            client.delete_model(args.name)
            message = f"model {args.name} deleted"
        else:
            client.delete_version(args.name, args.version)
            message = f"version {args.version} of {args.name} deleted"
    if args.json:
        dump_json({"Deleted": {"ModelName": args.name, "ModelVersion": args.version}})
    else:
        print(message)
    return 0


def download_package(args: argparse.Namespace) -> int:
    bar = ProgressBar(f"downloading {args.name} {args.version}")
    try:
        with client_from_args(args) as client:
            path = client.download_package(args.name, args.version, args.target, args.output, progress=bar)
    finally:
        bar.close()
    # what is on disk now, read back: that is what the line claims
    record = {"Path": str(path), "Size": path.stat().st_size, "Sha256": sha256_file(path)}
    if args.json:
        dump_json(record)
    else:
        print(f"saved {path} ({human_size(record['Size'])}, SHA-256 {record['Sha256']} verified)")
    return 0
