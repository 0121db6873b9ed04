"""Entry point of the ``edgefleet`` command.

Each sub-command lives in its own module under ``edgefleet.cli`` exposing
``add_parser(subparsers) -> None``; the parser it adds sets ``func(args) -> int``. Modules are
imported lazily by name so that a device install without the server extras still runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from edgefleet import __version__
from edgefleet.core.errors import EdgefleetError

# sub-command -> module under edgefleet.cli that defines it
COMMANDS: dict[str, str] = {
    "keys": "keys",
    "package": "package",
    "agent": "agent",
    "demo": "demo",
    "compile": "compile",
    "server": "server",
    "admin": "admin",
    "fleet": "fleet",
    "device": "device",
    "model": "model",
    "deploy": "deploy",
    "simulate": "simulate",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefleet", description="Run and manage ML models on edge fleets.")
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        try:
            module = importlib.import_module(f"edgefleet.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"edgefleet.cli.{module_name}":
                continue  # not built yet in this tree
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except EdgefleetError as exc:
        print(f"edgefleet: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
