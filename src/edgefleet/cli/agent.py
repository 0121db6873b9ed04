"""``edgefleet agent``: run the device agent on a Unix socket."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object per log line (for journald/fluent-bit style collectors)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "agent", help="run the device agent (Edge Manager compatible gRPC on a Unix socket)"
    )
    parser.add_argument(
        "-a", "--address", required=True, help="socket address, e.g. unix:///tmp/edgefleet.sock"
    )
    parser.add_argument(
        "-c", "--config", required=True, type=Path, help="vendor JSON or native TOML config file"
    )
    parser.add_argument("-f", "--force", action="store_true", help="remove a stale socket file first")
    parser.add_argument("--log-format", choices=["text", "json"], help="override the config's log format")
    parser.set_defaults(func=run, log_level=logging.INFO)  # a service: its log is its output


def run(args: argparse.Namespace) -> int:
    from edgefleet.agent.config import load_config
    from edgefleet.agent.runner import run_until_signal, start_agent

    config = load_config(args.config)
    fmt = args.log_format or config.log_format
    root = logging.getLogger()
    if config.log_verbose:
        root.setLevel(logging.DEBUG)
    if fmt == "json":
        for handler in root.handlers:
            handler.setFormatter(JsonFormatter())
    agent = start_agent(config, args.address, force=args.force)
    print(f"edgefleet agent serving on unix://{agent.path}", file=sys.stderr, flush=True)
    run_until_signal(agent)
    return 0
