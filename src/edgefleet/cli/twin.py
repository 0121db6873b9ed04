"""``edgefleet twin``: a digital-twin fleet on this machine (``up``, ``status``, ``down``).

``up`` creates the fleet (or marks an existing one) pre-production, registers and enrols N devices
and starts their twins (each the real agent on ONNX Runtime and the real device daemon, in one
process), then runs in the foreground until Ctrl-C or, with ``--detach``, in the background with its
state in the work directory. ``status`` shows each twin's device, pid, last heartbeat and models;
``down`` stops the twins a detached ``up`` started. See :mod:`edgefleet.twin`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edgefleet.cli.output import add_client_arguments, dump_json, table

#: the log of a detached ``up``, in the work directory
DETACHED_LOG = "twin-up.log"


def default_workdir() -> Path:
    """``$XDG_STATE_HOME/edgefleet/twins`` (or ``~/.local/state/edgefleet/twins``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edgefleet" / "twins"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "twin",
        help="a digital-twin fleet on this machine: real agents and daemons in a pre-production fleet",
        description=(
            "Run N digital-twin devices on this machine: each one is the real device agent (ONNX "
            "Runtime inference on its own socket) and the real device daemon (its own state directory, "
            "key and certificate, mutual TLS), enrolled into a fleet tagged "
            "edgefleet.io/stage=pre-production."
        ),
    )
    commands = parser.add_subparsers(dest="twin_command", metavar="ACTION", required=True)

    up = commands.add_parser(
        "up",
        help="create or mark the fleet, register and enrol N twins, run them (Ctrl-C stops them)",
        description=(
            "Create the fleet (or tag an existing one pre-production), register N devices, enrol each "
            "and start its twin; then run until Ctrl-C or SIGTERM, or with --detach in the background."
        ),
    )
    up.add_argument("count", type=int, help="how many twins (20 fit a 2-core machine)")
    up.add_argument("--fleet", required=True, help="the twin fleet's name (created if missing)")
    up.add_argument("--trust", type=Path, required=True, help="the devices' model-signing trust store")
    up.add_argument("--device-class", help="compile target the twins stand for (default: the host's)")
    up.add_argument(
        "--emulator-python",
        type=Path,
        help="for a device class of another architecture: a Python of that architecture to run under qemu-user",
    )
    up.add_argument("--prefix", help="device names are PREFIX-01, PREFIX-02 ... (default: the fleet name)")
    up.add_argument(
        "--output", help="capture output location of a new fleet (default: file://WORKDIR/captures)"
    )
    up.add_argument("--heartbeat-seconds", type=float, default=5.0, help="heartbeat interval (default 5)")
    up.add_argument("--poll-seconds", type=float, default=5.0, help="deployment poll interval (default 5)")
    up.add_argument(
        "--detach", action="store_true", help="run in the background; stop with 'edgefleet twin down'"
    )
    up.set_defaults(func=run_up)

    status = commands.add_parser("status", help="show each twin's device, pid, last heartbeat and models")
    status.set_defaults(func=show_status)

    down = commands.add_parser("down", help="stop the twins of a detached 'edgefleet twin up'")
    down.add_argument("--timeout", type=float, default=60.0, help="seconds before a twin is killed")
    down.set_defaults(func=run_down)

    for command in (up, status, down):
        command.add_argument(
            "--workdir", type=Path, default=None, help=f"the fleet's directory (default: {default_workdir()})"
        )
    for command in (up, status):
        add_client_arguments(command)


def _workdir(args: argparse.Namespace) -> Path:
    return (args.workdir or default_workdir()).absolute()


def _say(line: str) -> None:
    print(line, flush=True)


def run_up(args: argparse.Namespace) -> int:
    from edgefleet.opclient.config import ENV_CA_CERT, ENV_SERVER, ENV_TOKEN, load_client_config
    from edgefleet.twin import TwinFleet, TwinTiming

    workdir = _workdir(args)
    config = load_client_config(args.server, args.token, args.ca_cert)
    if args.detach:
        # the same command in its own session; the connection goes in its environment (a token in
        # argv would show in every `ps`)
        env = {**os.environ, ENV_SERVER: config.server, ENV_TOKEN: config.token or ""}
        if config.ca_cert is not None:
            env[ENV_CA_CERT] = str(config.ca_cert)
        return _detach(args, workdir, env)
    timing = TwinTiming(
        heartbeat_interval_seconds=args.heartbeat_seconds,
        poll_interval_seconds=args.poll_seconds,
        health_interval_seconds=min(2.0, args.poll_seconds),
    )
    fleet = TwinFleet(workdir, say=_say)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if fleet.phase in ("starting", "running"):
            raise KeyboardInterrupt  # during start-up: start() stops what it started, then this returns 130
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    started = time.monotonic()
    try:
        fleet.start(
            args.count,
            args.fleet,
            config.server,
            config.token,
            ca_cert=config.ca_cert,
            trust_dir=args.trust,
            device_class=args.device_class,
            emulator_python=args.emulator_python,
            prefix=args.prefix,
            output_location=args.output,
            timing=timing,
        )
        fleet.wait_heartbeats(max(120.0, 10 * args.heartbeat_seconds))
        _say(
            f"{args.count} twins of device class {fleet.device_class.name if fleet.device_class else '?'} "
            f"up in fleet {args.fleet} in {time.monotonic() - started:.1f} s (state in {fleet.state_path}); "
            "Ctrl-C stops them"
        )
        while not stop.wait(1.0):
            gone = [t.name for t in fleet.twins if not t.alive()]
            if gone:
                print(f"edgefleet: error: twins exited: {', '.join(gone)}; stopping", file=sys.stderr)
                break
        failed = not stop.is_set()
    except KeyboardInterrupt:
        fleet.stop()
        print("edgefleet: interrupted; twins stopped", file=sys.stderr)
        return 130
    finally:
        codes = fleet.stop()
    _say(f"twins stopped (exit codes {sorted(set(codes.values()), key=str)})")
    return 1 if failed else 0


def _detach(args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> int:
    from edgefleet.twin import TwinFleet

    running = TwinFleet.controller(workdir)
    if running is not None:
        print(
            f"edgefleet: error: a twin fleet runs in {workdir} already (pid {running.pid}): "
            "`edgefleet twin down` first",
            file=sys.stderr,
        )
        return 1
    argv = [
        sys.executable, "-m", "edgefleet", "twin", "up", str(args.count), "--fleet", args.fleet,
        "--trust", str(args.trust.absolute()), "--workdir", str(workdir),
        "--heartbeat-seconds", str(args.heartbeat_seconds), "--poll-seconds", str(args.poll_seconds),
    ]  # fmt: skip
    for flag, value in (
        ("--device-class", args.device_class),
        ("--emulator-python", args.emulator_python),
        ("--prefix", args.prefix),
        ("--output", args.output),
    ):
        if value is not None:
            argv += [flag, str(value)]
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / DETACHED_LOG
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    print(f"starting {args.count} twins in the background (pid {proc.pid}, log {log}) ...", flush=True)
    shown = log.stat().st_size
    while True:
        shown = _follow(log, shown)
        if proc.poll() is not None:
            _follow(log, shown)
            print(f"edgefleet: error: `twin up` exited with {proc.returncode}; see {log}", file=sys.stderr)
            return 1
        try:
            phase = TwinFleet.attach(workdir).phase
        except Exception:  # not written yet, or being replaced
            phase = "starting"
        if phase == "ready":
            _follow(log, shown)
            print(
                f"twins up (pid {proc.pid}); `edgefleet twin status` shows them, `edgefleet twin down` stops them"
            )
            return 0
        time.sleep(0.2)


def _follow(log: Path, offset: int) -> int:
    """Print what ``log`` gained since ``offset``; the new offset."""
    with log.open("rb") as handle:
        handle.seek(offset)
        data = handle.read()
    if data:
        sys.stdout.write(data.decode("utf-8", "replace"))
        sys.stdout.flush()
    return offset + len(data)


def show_status(args: argparse.Namespace) -> int:
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import load_client_config
    from edgefleet.twin import TwinFleet

    fleet = TwinFleet.attach(_workdir(args))
    with FleetClient(load_client_config(args.server, args.token, args.ca_cert)) as op:
        statuses = fleet.status(op)
    rows = [
        {
            "Device": s.name,
            "Pid": s.pid,
            "Phase": s.phase,
            "LatestHeartbeat": s.last_heartbeat,
            "Models": "?" if s.models is None else ", ".join(s.models) or "-",
            "Handles": ", ".join(f"{h}->{a}" for h, a in sorted(s.handles.items())) or "-",
            "Socket": s.agent_address,
            "Error": s.error,
        }
        for s in statuses
    ]
    if args.json:
        dump_json({"Fleet": fleet.fleet, "Phase": fleet.phase, "Twins": rows})
        return 0
    print(
        f"fleet {fleet.fleet}: {fleet.phase}, {sum(s.phase == 'running' for s in statuses)}/{len(statuses)} running"
    )
    table(
        rows,
        [
            ("Device", "Device"),
            ("Pid", "Pid"),
            ("Phase", "Phase"),
            ("Last heartbeat", "LatestHeartbeat"),
            ("Models", "Models"),
            ("Handles", "Handles"),
        ],
    )
    for s in statuses:
        if s.error:
            print(f"{s.name}: {s.error}")
    return 0


def run_down(args: argparse.Namespace) -> int:
    from edgefleet.twin import TwinFleet

    workdir = _workdir(args)
    fleet = TwinFleet.attach(workdir, say=_say)
    controller = TwinFleet.controller(workdir)
    if controller is not None:
        controller.terminate()  # SIGTERM: it stops its twins in order and removes the state file
        try:
            controller.wait(args.timeout + 30)
        except Exception:
            print(f"edgefleet: error: pid {controller.pid} did not stop; killing its twins", file=sys.stderr)
    left = [t.name for t in fleet.twins if t.alive()]
    fleet.stop(args.timeout)  # whatever is left (a controller that was killed): SIGTERM, then SIGKILL
    print(
        f"stopped {len(fleet.twins)} twins of fleet {fleet.fleet}"
        + (f" ({', '.join(left)} outlived their controller)" if left else "")
    )
    return 0
