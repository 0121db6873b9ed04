"""Entry point of the ``edgefleet`` command.

Each sub-command lives in its own module under ``edgefleet.cli`` exposing
``add_parser(subparsers) -> None``; the parser it adds sets ``func(args) -> int``. The modules
import only light things at import time; what a command needs beyond the device install (the
control plane, the operator client, the compiler) is imported when the command runs, and a missing
one is reported with the extra that installs it (:data:`EXTRA_OF_MODULE`).

Output: stdout carries the command's answer; logs go to stderr at WARNING and above (``-v`` adds
INFO and DEBUG, ``-q`` keeps only errors).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from edgefleet import __version__
from edgefleet.core import logs
from edgefleet.core.errors import EdgefleetError

# sub-command -> (module under edgefleet.cli that defines it, extra the whole command needs or None)
COMMANDS: dict[str, tuple[str, str | None]] = {
    "keys": ("keys", None),
    "package": ("package", None),
    "agent": ("agent", None),
    "demo": ("demo", "demo"),
    "compile": ("compile", "compiler"),
    "server": ("server", "server"),
    "worker": ("worker", "server"),
    "job": ("job", "cli"),
    "admin": ("admin", "server"),
    "fleet": ("fleet", "cli"),
    "device": ("device", None),  # the daemon's commands need nothing; the operator's ones need cli
    "model": ("model", "cli"),
    "deploy": ("deploy", "cli"),
    "baseline": ("baseline", "cli"),
    "drift": ("drift", "cli"),
    "capture": ("capture", "cli"),
    "alert": ("alert", "cli"),
    "simulate": ("simulate", None),
    "twin": ("twin", "cli"),
    "pipeline": ("pipeline", "cli"),
}

#: top-level module -> the pip extra that installs it (the one place that knows)
EXTRA_OF_MODULE: dict[str, str] = {
    **dict.fromkeys(
        (
            "fastapi",
            "starlette",
            "pydantic",
            "uvicorn",
            "sqlalchemy",
            "alembic",
            "psycopg",
            "boto3",
            "botocore",
            "uvloop",
            "httptools",
            "huey",
        ),
        "server",
    ),
    "redis": "scale",
    **dict.fromkeys(("httpx", "httpcore", "rich"), "cli"),
    **dict.fromkeys(
        ("onnx", "onnxsim", "skl2onnx", "onnxmltools", "sklearn", "xgboost", "lightgbm", "PIL"), "compiler"
    ),
    "openvino": "openvino",
    "tvm": "tvm",
    "ai_edge_litert": "litert",
    "prometheus_client": "metrics",
}

#: extra -> the extras whose modules it installs too (pyproject.toml's optional-dependencies)
_CONTAINS: dict[str, set[str]] = {
    "server": {"server", "cli", "metrics"},
    "scale": {"scale", "server", "cli", "metrics"},
    "compiler": {"compiler"},
    "demo": {"demo", "compiler", "server", "cli", "litert"},
}

# Libraries whose INFO records are per-request chatter (httpx logs every HTTP request at INFO).
_CHATTY = ("httpx", "httpcore", "alembic", "urllib3")


def build_parser() -> argparse.ArgumentParser:
    """The whole ``edgefleet`` argument parser (every command module is imported; none is skipped)."""
    parser = argparse.ArgumentParser(prog="edgefleet", description="Run and manage ML models on edge fleets.")
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more on stderr: -v for INFO, -vv for DEBUG and every HTTP request (default: warnings)",
    )
    noise.add_argument("-q", "--quiet", action="store_true", help="log errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, _ in COMMANDS.values():
        importlib.import_module(f"edgefleet.cli.{module_name}").add_parser(sub)
    return parser


def setup_logging(verbose: int, quiet: bool, default: int = logging.WARNING) -> None:
    """Logs on stderr: WARNING by default (INFO for long-running services, whose log is their output),
    one step more per -v, ERROR with -q."""
    level = logging.ERROR if quiet else max(logging.DEBUG, default - 10 * verbose)
    logging.basicConfig(level=level, format=logs.TEXT_FORMAT, stream=sys.stderr)
    logging.getLogger().setLevel(level)
    for name in _CHATTY:
        # one line per HTTP request is debugging detail, not news: only -vv shows it
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else max(level, logging.WARNING))


def missing_extra_message(command: str | None, exc: ModuleNotFoundError) -> str | None:
    """What to tell a user whose command needs a module that is not installed (None: not an extra's)."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    declared = COMMANDS.get(command or "", ("", None))[1]
    if declared is not None and extra in _CONTAINS.get(declared, {declared}):
        # `edgefleet server` without httpx needs the server extra (which has it), not the cli one
        extra = declared
    return (
        f"`edgefleet {command}` needs the '{extra}' extra, which is not installed here "
        f"(no module named {top!r}): pip install 'edgefleet[{extra}]'"
    )


def _quiet_broken_pipe() -> int:
    """The reader of stdout went away (``edgefleet ... | head``): stop quietly, as Unix tools do."""
    # Python would report the failed flush of stdout at exit: point stdout at /dev/null instead.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a real file (e.g. captured by a test); nothing will be flushed to it
    finally:
        os.close(devnull)
    return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``edgefleet ARGS``; returns the exit code."""
    try:
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe is found here, inside the handler below
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except SystemExit:  # argparse's --help, --version and usage errors
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            return _quiet_broken_pipe()
        raise
    return code


def _fail(message: str) -> None:
    """Report the error a command ended with: a line on stderr, or a JSON record when the command
    logs JSON (``--log-format json``: nothing but JSON reaches stderr)."""
    if logs.active_format() == "json":
        logging.getLogger("edgefleet.cli").error("edgefleet: error: %s", message)
    else:
        print(f"edgefleet: error: {message}", file=sys.stderr)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # a long-running command (server, daemon) sets log_level=logging.INFO: its log is its output
    setup_logging(args.verbose, args.quiet, getattr(args, "log_level", logging.WARNING))
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except EdgefleetError as exc:
        _fail(str(exc))
        return 1
    except ModuleNotFoundError as exc:
        message = missing_extra_message(args.command, exc)
        if message is None:
            raise
        _fail(message)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
