"""``edgefleet device``: the device daemon's commands (``enroll``, ``run``, ``status``).

The operator's device commands (register, update, deregister, describe, list) live in
``edgefleet.cli.device_ops`` and are always added here; they need the ``edgefleet[cli]`` extra
when they run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from edgefleet.core.logs import LOG_FORMATS, configure_logging


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "device",
        help="the device daemon (enroll, run, status) and operator device commands",
        description="Enrol this device, run its daemon, or manage devices as an operator.",
    )
    parser.set_defaults(func=lambda args: _help(parser))
    commands = parser.add_subparsers(dest="device_command", metavar="ACTION")

    enroll = commands.add_parser(
        "enroll",
        help="enrol this device with a one-time token (makes its key, gets its certificate)",
        description=(
            "Generate the device key locally, send a certificate signing request with the one-time "
            "enrolment token, and store key (mode 0600), certificate, fleet CA and endpoints in the "
            "state directory."
        ),
    )
    enroll.add_argument("--server", required=True, help="server URL, e.g. https://fleet.example.com:8443")
    enroll.add_argument(
        "--token", required=True, help="the one-time token that edgefleet device register printed"
    )
    where = enroll.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, help="daemon config file (its daemon.state_dir is used)")
    where.add_argument("--state-dir", type=Path, help="daemon state directory (default: the standard one)")
    enroll.add_argument(
        "--server-ca", type=Path, help="CA of an operator-supplied server certificate (not the fleet CA)"
    )
    enroll.add_argument("--force", action="store_true", help="replace an existing enrolment")
    enroll.set_defaults(func=run_enroll)

    run = commands.add_parser(
        "run",
        help="run the device daemon (heartbeats, deployments, rollbacks; works offline)",
        description="Run the device daemon until SIGTERM/SIGINT. See docs/device-daemon.md.",
    )
    run.add_argument("--config", type=Path, required=True, help="daemon config file (TOML)")
    run.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="log lines on stderr as text or json, one object per line (default: text; fields in "
        "docs/logs.md); a spawned agent logs the same way (default: as its config says)",
    )
    run.set_defaults(func=run_daemon, log_level=logging.INFO)  # a service: its log is its output

    status = commands.add_parser("status", help="show what the daemon serves and what is in flight")
    status.add_argument("--config", type=Path, required=True, help="daemon config file (TOML)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=show_status)

    # always added: they import the operator client only when they run, and say which extra it needs
    importlib.import_module("edgefleet.cli.device_ops").add_operator_commands(commands)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_enroll(args: argparse.Namespace) -> int:
    from edgefleet.device.config import default_state_dir, load_config
    from edgefleet.device.https import enroller
    from edgefleet.device.identity import enroll

    if args.config is not None:
        state_dir = load_config(args.config).state_dir
    else:
        state_dir = args.state_dir or default_state_dir()
    identity = enroll(
        state_dir,
        args.server,
        args.token,
        enroller(str(args.server_ca) if args.server_ca else None),
        force=args.force,
    )
    print(
        f"enrolled device {identity.device_name} (fleet {identity.fleet_name}); "
        f"identity in {identity.directory}; device endpoint {identity.device_url}"
    )
    return 0


def run_daemon(args: argparse.Namespace) -> int:
    import signal
    import threading

    from edgefleet.device.config import load_config
    from edgefleet.device.daemon import build_daemon

    fmt = args.log_format or "text"
    configure_logging(fmt, "daemon")
    config = load_config(args.config)
    daemon = build_daemon(config, log_format=args.log_format)
    # one daemon, one device: its name and fleet go on every record, whichever module logs it
    configure_logging(fmt, "daemon", fields=daemon.log_fields)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        daemon.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if fmt == "json":  # only JSON on stderr
        daemon.log.info("device daemon starting (state in %s)", config.state_dir)
    else:
        print(f"edgefleet device daemon starting (state in {config.state_dir})", file=sys.stderr, flush=True)
    daemon.run(stop)
    return 0


def show_status(args: argparse.Namespace) -> int:
    from edgefleet.device.config import load_config
    from edgefleet.device.outbox import Outbox
    from edgefleet.device.state import StateStore

    config = load_config(args.config)
    state = StateStore(config.state_dir).state
    outbox = Outbox(config.state_dir, config.queue.max_heartbeats)
    summary: dict[str, Any] = {
        "certificate": _certificate_status(config.state_dir, config.certificate.renew_after_fraction),
        "handles": {
            h: {
                "alias": m.alias,
                "model": m.model_name,
                "version": m.model_version,
                "deployment": m.deployment,
            }
            for h, m in sorted(state.installed.items())
        },
        "in_flight": None
        if state.journal is None
        else {
            "deployment": state.journal.deployment.name,
            "kind": state.journal.kind.value,
            "phase": state.journal.phase.value,
            "steps": [f"{s.status.value:8} {s.describe()}" for s in state.journal.steps],
        },
        "observed_by_health_gate": sorted(state.watches),
        "unsent_results": [e.deployment for e in state.history if not e.sent],
        "queued_heartbeats": len(outbox),
        "dropped_heartbeats": outbox.dropped,
        "history": [
            {"deployment": e.deployment, "kind": e.kind.value, "result": e.result.value, "message": e.message}
            for e in state.history[-10:]
        ],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    cert = summary["certificate"]
    if cert is None:
        print("certificate: none (not enrolled: run `edgefleet device enroll`)")
    elif cert["expired"]:
        print(f"certificate: EXPIRED at {cert['not_after']} (serial {cert['serial']}); {cert['action']}")
    else:
        print(
            f"certificate: valid until {cert['not_after']}, renewed from {cert['renew_from']} "
            f"(serial {cert['serial']})"
        )
    print("handles:")
    for handle, info in summary["handles"].items():
        print(
            f"  {handle:20} {info['alias']:30} {info['model']} {info['version']} ({info['deployment'] or '-'})"
        )
    if not summary["handles"]:
        print("  (none)")
    flight = summary["in_flight"]
    print(
        f"in flight: {'-' if flight is None else flight['deployment'] + ' ' + flight['kind'] + ' ' + flight['phase']}"
    )
    for line in flight["steps"] if flight else []:
        print(f"  {line}")
    print(f"health gates observing: {', '.join(summary['observed_by_health_gate']) or '-'}")
    print(f"unsent results: {', '.join(summary['unsent_results']) or '-'}")
    print(f"queued heartbeats: {summary['queued_heartbeats']} (dropped: {summary['dropped_heartbeats']})")
    print("recent deployments:")
    for entry in summary["history"]:
        print(f"  {entry['deployment']:30} {entry['kind']:8} {entry['result']:24} {entry['message']}")
    return 0


def _certificate_status(state_dir: Path, renew_after_fraction: float) -> dict[str, Any] | None:
    """The device certificate's validity and renewal time; None when the device is not enrolled."""
    from datetime import UTC, datetime

    from edgefleet.core.deviceplane import timestamp
    from edgefleet.device.identity import CERT_FILE, REENROL_HINT, certificate_validity, identity_dir

    path = identity_dir(state_dir) / CERT_FILE
    if not path.is_file():
        return None
    validity = certificate_validity(path)
    expired = validity.expired(datetime.now(UTC))
    return {
        "serial": validity.serial,
        "not_after": timestamp(validity.not_after),
        "renew_from": timestamp(validity.renew_from(renew_after_fraction)),
        "expired": expired,
        "action": REENROL_HINT if expired else None,
    }
