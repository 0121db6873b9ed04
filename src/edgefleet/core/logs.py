"""Structured logs: the one JSON log formatter of the agent, the device daemon and the server.

``--log-format json`` makes every log line on stderr one JSON object (for journald, fluent-bit,
Vector, Loki ...) with the same fields whichever process wrote it:

- ``time``: when the record was made, RFC 3339 in UTC with milliseconds (``2026-12-08T00:23:01.123Z``);
- ``level``: ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``, ``CRITICAL``;
- ``component``: ``agent``, ``daemon`` or ``server``;
- ``event``: the message;
- ``logger``: the logger's name (``edgefleet.device.executor``, ``uvicorn.error`` ...);
- ``device``, ``fleet``, ``model``, ``version``, ``deployment``, ``worker``: where known, from the
  record's ``extra=`` (:func:`bind` gives a logger that adds them) or, for a process that serves
  one device, from the fields given to :func:`configure_logging`;
- ``exception``: with a traceback, ``{"type", "message", "traceback"}``;
- ``client``, ``method``, ``path``, ``status``: on the server's access log records (``--access-log``).

``text`` (the default) keeps the human-readable ``time level logger: message`` lines. docs/logs.md
is the operator's description of both.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import traceback
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

#: The values of ``--log-format``.
LOG_FORMATS = ("text", "json")
#: The ``component`` of each process that logs.
COMPONENTS = ("agent", "daemon", "server")
#: Context fields taken from a record's ``extra=`` (or the process's defaults), in output order.
CONTEXT_FIELDS = ("device", "fleet", "model", "version", "deployment", "worker")
#: uvicorn's access log, whose records also get ``client``, ``method``, ``path`` and ``status`` fields.
ACCESS_LOGGER = "uvicorn.access"
#: The text format's line (what ``edgefleet`` has always written).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_active = "text"


def rfc3339(created: float) -> str:
    """A POSIX time as RFC 3339 in UTC with milliseconds and a ``Z``."""
    stamp = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the fields in this module's docstring.

    ``component`` is the process's; ``fields`` are context defaults for records that do not carry
    their own (a daemon serving one device: its device and fleet).
    """

    def __init__(self, component: str, fields: Mapping[str, str] | None = None) -> None:
        super().__init__()
        if component not in COMPONENTS:
            raise ValueError(f"log component {component!r} is unknown (known: {', '.join(COMPONENTS)})")
        self.component = component
        unknown = set(fields or {}) - set(CONTEXT_FIELDS)
        if unknown:
            raise ValueError(f"log fields {sorted(unknown)} are unknown (known: {', '.join(CONTEXT_FIELDS)})")
        self.fields: dict[str, str] = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname,
            "component": self.component,
            "event": record.getMessage(),
            "logger": record.name,
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name, self.fields.get(name))
            if value is not None and value != "":
                entry[name] = value if isinstance(value, int | float | bool) else str(value)
        if record.name == ACCESS_LOGGER and isinstance(record.args, tuple) and len(record.args) == 5:
            # uvicorn's access record: (client, method, path, HTTP version, status)
            client, method, path, _, status = record.args
            entry |= {"client": str(client), "method": str(method), "path": str(path), "status": status}
        if record.exc_info and record.exc_info[0] is not None:
            kind, exc, tb = record.exc_info
            entry["exception"] = {
                "type": kind.__qualname__,
                "message": str(exc),
                "traceback": "".join(traceback.format_exception(kind, exc, tb)),
            }
        elif record.exc_text:
            entry["exception"] = {"type": "", "message": "", "traceback": record.exc_text}
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


def check_format(fmt: str) -> str:
    """``fmt`` if it is a known log format, else ValueError naming the known ones."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} is unknown (known: {', '.join(LOG_FORMATS)})")
    return fmt


def configure_logging(fmt: str, component: str, *, fields: Mapping[str, str] | None = None) -> None:
    """Log as ``fmt`` for ``component`` (a stderr handler is added to the root logger when it has
    none). ``json`` formats every root handler with a :class:`JsonFormatter`; ``text`` leaves the
    handlers as they are (the CLI's set-up writes :data:`TEXT_FORMAT`). Idempotent: call it again
    once more context is known (the daemon, after reading its identity).

    With ``json``, Python warnings and uncaught exceptions (main thread and other threads) are
    logged too, so that nothing but JSON reaches stderr.
    """
    global _active
    check_format(fmt)
    root = logging.getLogger()
    if not root.handlers:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(logging.Formatter(TEXT_FORMAT))
        root.addHandler(stderr)
    _active = fmt
    if fmt != "json":
        return
    formatter = JsonFormatter(component, fields)
    for handler in root.handlers:
        handler.setFormatter(formatter)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_uncaught


def active_format() -> str:
    """The format the last :func:`configure_logging` chose (``text`` before any)."""
    return _active


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("edgefleet").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_thread_uncaught(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("edgefleet").critical(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )


class ContextLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger that adds context fields (device, fleet, model ...) to every record, merged with a
    call's own ``extra=`` (the call's win)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def bind(logger: logging.Logger, **fields: str | None) -> ContextLogger:
    """``logger`` with ``fields`` (those not None) on every record."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"log fields {sorted(unknown)} are unknown (known: {', '.join(CONTEXT_FIELDS)})")
    return ContextLogger(logger, {k: v for k, v in fields.items() if v is not None})
