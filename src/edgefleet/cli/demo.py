"""``edgefleet demo``: the whole story on the embedded default, offline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the end-to-end demo (train, sign, serve, predict, capture; compile, fleet, staged rollouts)",
    )
    parser.add_argument("--workdir", type=Path, default=Path(".edgefleet-demo"), help="where the demo writes")
    parser.add_argument("--keep-running", action="store_true", help="leave the agent running at the end")
    parser.add_argument(
        "--device-only",
        action="store_true",
        help="only part 1 (the agent); skip the compiler, control plane and device daemons",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgefleet.demo.device import run_demo

    return run_demo(args.workdir.resolve(), keep_running=args.keep_running, fleet=not args.device_only)
