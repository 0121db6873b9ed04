"""``edgefleet drift``: drift of a fleet's live data against the model versions' baselines (a client
of the operator API)."""

from __future__ import annotations

import argparse
from typing import Any

from edgefleet.cli.output import add_client_arguments, client_from_args, dump_json, table


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("drift", help="drift of live data against model baselines")
    commands = parser.add_subparsers(dest="drift_command", metavar="COMMAND", required=True)

    report = commands.add_parser("report", help="drift scores per feature and output, worst first")
    report.add_argument("--fleet", required=True, help="fleet name")
    report.add_argument("--model", required=True, help="model name")
    report.add_argument("--version", help="one model version (default: every version seen)")
    report.add_argument(
        "--since", metavar="TIME", help="ISO 8601 start, e.g. 2030-01-01T00:00:00Z (default: a day ago)"
    )
    report.add_argument("--bucket", type=int, metavar="SECONDS", help="time bucket length (default 3600)")
    report.add_argument("--device-tag", metavar="KEY=VALUE", help="only devices with this tag")
    report.add_argument("--top", type=int, default=20, metavar="N", help="rows shown per table (default 20)")
    report.set_defaults(func=drift_report)
    add_client_arguments(report)


def _score(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def drift_report(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        report = client.fleet_drift(
            args.fleet,
            args.model,
            version=args.version,
            since=args.since,
            bucket_seconds=args.bucket,
            device_tag=args.device_tag,
        )
    if args.json:
        dump_json(report)
        return 0
    buckets = report["Buckets"]
    print(
        f"fleet {report['DeviceFleetName']}, model {report['ModelName']}: {len(buckets)} buckets of "
        f"{report['BucketSeconds']} s since {report['Since']}"
    )
    for version in report["MissingBaselines"]:
        print(f"version {version} has no baseline: not scored")
    print()
    table(
        report["Features"][: args.top],
        [
            ("VERSION", "ModelVersion"),
            ("BUCKET", "BucketStart"),
            ("KIND", "Kind"),
            ("TENSOR", "Tensor"),
            ("FEATURE", "Feature"),
            ("PSI", "Psi", _score),
            ("KS", "Ks", _score),
            ("LIVE N", "LiveCount"),
        ],
    )
    if report["Classes"]:
        print()
        table(
            report["Classes"][: args.top],
            [
                ("VERSION", "ModelVersion"),
                ("BUCKET", "BucketStart"),
                ("OUTPUT", "Output"),
                ("JS", "Js", _score),
            ],
        )
    mismatches = sorted({m for b in buckets for m in b["Mismatches"]})
    for mismatch in mismatches:
        print(f"not compared: {mismatch}")
    return 0
