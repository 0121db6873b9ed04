"""``edgefleet alert``: drift alert rules of a model and their events (a client of the operator API)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from edgefleet.cli.output import add_client_arguments, client_from_args, dump_json, emit

#: the environment variable the help suggests for ``alert set --secret-env`` (the secret is read from
#: the environment because one on the command line would be visible to every user of the machine)
SECRET_ENV = "EDGEFLEET_WEBHOOK_SECRET"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("alert", help="drift alert rules and events")
    commands = parser.add_subparsers(dest="alert_command", metavar="COMMAND", required=True)

    put = commands.add_parser("set", help="create or replace an alert rule of a model")
    put.add_argument("--model", required=True, help="model name")
    put.add_argument("--name", required=True, help="rule name")
    put.add_argument("--fleet", help="only this fleet (default: every fleet)")
    put.add_argument("--version", help="only this model version (default: every version)")
    put.add_argument("--max-psi", type=float, metavar="X", help="alert when a feature's PSI is above X")
    put.add_argument("--max-ks", type=float, metavar="X", help="alert when a feature's KS is above X")
    put.add_argument("--max-js", type=float, metavar="X", help="alert when an output's JS is above X (0-1)")
    put.add_argument("--webhook", metavar="URL", help="http(s) URL alert events are posted to")
    put.add_argument(
        "--secret-env",
        metavar="VAR",
        help=f"sign the webhook with the secret in environment variable VAR (e.g. {SECRET_ENV})",
    )
    put.set_defaults(func=set_rule)
    add_client_arguments(put)

    show = commands.add_parser("list", help="a model's alert rules")
    show.add_argument("--model", required=True, help="model name")
    show.set_defaults(func=list_rules)
    add_client_arguments(show)

    remove = commands.add_parser("delete", help="delete an alert rule (its open events clear)")
    remove.add_argument("--model", required=True, help="model name")
    remove.add_argument("--name", required=True, help="rule name")
    remove.set_defaults(func=delete_rule)
    add_client_arguments(remove)

    events = commands.add_parser("events", help="a model's alert events, newest first")
    events.add_argument("--model", required=True, help="model name")
    events.add_argument("--rule", help="only this rule's events")
    events.add_argument("--fleet", help="only this fleet's events")
    events.add_argument("--open", action="store_true", help="only events not cleared yet")
    events.set_defaults(func=list_events)
    add_client_arguments(events)


def _webhook(value: Any) -> str:
    if not value:
        return "-"
    return f"{value['Url']} (signed)" if value.get("HasSecret") else str(value["Url"])


RULE_FIELDS: list[Any] = [
    ("Rule", "AlertRuleName"),
    ("Model", "ModelName"),
    ("Fleet", "DeviceFleetName"),
    ("Version", "ModelVersion"),
    ("MaxPsi", "MaxPsi"),
    ("MaxKs", "MaxKs"),
    ("MaxJs", "MaxJs"),
    ("Webhook", "Webhook", _webhook),
    ("Modified", "LastModifiedTime"),
    ("By", "UpdatedBy"),
]

RULE_COLUMNS: list[Any] = [
    ("RULE", "AlertRuleName"),
    ("FLEET", "DeviceFleetName"),
    ("VERSION", "ModelVersion"),
    ("MAX PSI", "MaxPsi"),
    ("MAX KS", "MaxKs"),
    ("MAX JS", "MaxJs"),
    ("WEBHOOK", "Webhook", _webhook),
]


def set_rule(args: argparse.Namespace) -> int:
    from edgefleet.core.errors import InvalidArgument

    body: dict[str, Any] = {
        k: v
        for k, v in {
            "DeviceFleetName": args.fleet,
            "ModelVersion": args.version,
            "MaxPsi": args.max_psi,
            "MaxKs": args.max_ks,
            "MaxJs": args.max_js,
        }.items()
        if v is not None
    }
    if args.webhook:
        body["Webhook"] = {"Url": args.webhook}
        if args.secret_env:
            secret = os.environ.get(args.secret_env)
            if not secret:
                raise InvalidArgument(f"environment variable {args.secret_env} holds no webhook secret")
            body["Webhook"]["Secret"] = secret
    elif args.secret_env:
        raise InvalidArgument("--secret-env needs --webhook")
    with client_from_args(args) as client:
        rule = client.put_alert_rule(args.model, args.name, body)
    return emit(args, rule, RULE_FIELDS)


def list_rules(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        rules = client.list_alert_rules(args.model)
    return emit(args, rules, RULE_COLUMNS)


def delete_rule(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        client.delete_alert_rule(args.model, args.name)
    if args.json:
        dump_json({"Deleted": {"ModelName": args.model, "AlertRuleName": args.name}})
    else:
        print(f"deleted alert rule {args.name} of model {args.model}")
    return 0


def _score(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def list_events(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        events = list(
            client.list_alert_events(args.model, rule=args.rule, fleet=args.fleet, open_only=args.open)
        )
    return emit(
        args,
        events,
        [
            ("OPENED", "OpenedAt"),
            ("RULE", "AlertRuleName"),
            ("FLEET", "DeviceFleetName"),
            ("VERSION", "ModelVersion"),
            ("FEATURE", "Feature"),
            ("KIND", "ScoreKind"),
            ("SCORE", "Score", _score),
            ("THRESHOLD", "Threshold", _score),
            ("CLEARED", "ClearedAt"),
        ],
    )
