"""``edgefleet simulate``: run N simulated devices against a server (scale and pre-production tests)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "simulate",
        help="run N simulated devices (real enrolment, mutual TLS, heartbeats, deployments; no inference)",
        description=(
            "Enrol N simulated devices and run their daemons in this process. Devices come from "
            "--tokens (a file of enrolment tokens) or are registered in --fleet through the operator "
            "API (token and CA from --api-token/--ca-cert, the environment or the client file)."
        ),
    )
    parser.add_argument("--server", required=True, help="server URL (operator API + enrolment)")
    parser.add_argument("--devices", type=int, required=True, help="how many devices to simulate")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--tokens",
        type=Path,
        help="enrolment tokens: JSON ({DeviceName, EnrolmentToken}) or NAME TOKEN lines",
    )
    source.add_argument("--fleet", help="register the devices in this fleet first (needs an operator token)")
    parser.add_argument("--api-token", help="operator API token (with --fleet)")
    parser.add_argument("--ca-cert", type=Path, help="CA certificate of the server (with --fleet)")
    parser.add_argument("--prefix", default="sim-", help="device name prefix with --fleet (default: sim-)")
    parser.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    parser.add_argument(
        "--heartbeat-interval", type=float, default=30.0, help="seconds between heartbeats (default 30)"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=30.0, help="seconds between deployment polls (default 30)"
    )
    parser.add_argument(
        "--health-interval", type=float, default=10.0, help="seconds between health reports (default 10)"
    )
    parser.add_argument("--workers", type=int, default=16, help="worker threads shared by all devices")
    parser.add_argument("--fail-model", action="append", default=[], help="model whose smoke tests fail")
    parser.add_argument(
        "--inferences", type=int, default=0, help="simulated inferences per model between heartbeats"
    )
    parser.add_argument(
        "--erroring-version",
        action="append",
        default=[],
        help="model version whose simulated inferences fail (passes its smoke test; trips health gates)",
    )
    parser.add_argument("--work-dir", type=Path, help="where device identities go (default: a temp dir)")
    parser.add_argument("--persist", action="store_true", help="keep device state on disk, not in memory")
    parser.set_defaults(func=run)


def _register(args: argparse.Namespace) -> list[tuple[str, str]]:
    from edgefleet.device.sim.simulator import register_devices
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import load_client_config

    config = load_client_config(args.server, args.api_token, args.ca_cert)
    names = [f"{args.prefix}{i:05d}" for i in range(args.devices)]
    with FleetClient(config) as client:

        def register(batch: list[str]) -> list[tuple[str, str]]:
            answer = client.register_devices(args.fleet, [{"DeviceName": n} for n in batch])
            return [(d["DeviceName"], d["EnrolmentToken"]) for d in answer]

        return register_devices(register, names)


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from edgefleet.core.errors import InvalidArgument
    from edgefleet.device.sim.simulator import SimulationSettings, Simulator, read_tokens

    if args.devices < 1:
        raise InvalidArgument("--devices must be at least 1")
    if args.tokens is not None:
        tokens = read_tokens(args.tokens)[: args.devices]
        if len(tokens) < args.devices:
            raise InvalidArgument(
                f"{args.tokens} holds {len(tokens)} tokens, fewer than --devices {args.devices}"
            )
    else:
        tokens = _register(args)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="edgefleet-sim-"))
    simulator = Simulator(
        SimulationSettings(
            server_url=args.server,
            work_dir=work_dir,
            heartbeat_interval_seconds=args.heartbeat_interval,
            poll_interval_seconds=args.poll_interval,
            health_interval_seconds=args.health_interval,
            workers=args.workers,
            fail_models=frozenset(args.fail_model),
            inferences_per_heartbeat=args.inferences,
            erroring_versions=frozenset(args.erroring_version),
            persist=args.persist,
        )
    )
    simulator.enrol(tokens)
    print(f"enrolled {len(simulator.devices)} simulated devices (identities in {work_dir})", file=sys.stderr)
    stop = threading.Event()
    # Ctrl-C and SIGTERM end the run the same way (the summary is printed), also when the shell
    # that started it left SIGINT ignored (a background job)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        stats = simulator.run(args.duration, stop)
    except KeyboardInterrupt:
        stop.set()
        stats = simulator.stats
    finally:
        simulator.close()
    print(json.dumps(stats.as_dict(), indent=2))
    return 0
