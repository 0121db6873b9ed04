"""The one JSON log formatter (edgefleet.core.logs): fields, context, exceptions, bad values."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest

from edgefleet.cli.main import build_parser
from edgefleet.core import logs

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Collect(logging.Handler):
    """Keeps the formatted lines."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def collected() -> Iterator[tuple[logging.Logger, Collect]]:
    logger = logging.getLogger("edgefleet.test.logs")
    handler = Collect(logs.JsonFormatter("daemon", {"device": "cam-1", "fleet": "plant"}))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def test_a_record_has_every_field(collected: tuple[logging.Logger, Collect]) -> None:
    logger, handler = collected
    logger.info("loaded %s", "det", extra={"model": "det", "version": "1.0"})
    (entry,) = [json.loads(line) for line in handler.lines]
    assert RFC3339_UTC.match(entry.pop("time"))
    assert entry == {
        "level": "INFO",
        "component": "daemon",
        "event": "loaded det",
        "logger": "edgefleet.test.logs",
        "device": "cam-1",
        "fleet": "plant",
        "model": "det",
        "version": "1.0",
    }


def test_a_records_own_context_wins_over_the_defaults(collected: tuple[logging.Logger, Collect]) -> None:
    logger, handler = collected
    logs.bind(logger, device="cam-2", deployment=None).warning("hello", extra={"deployment": "d1"})
    entry = json.loads(handler.lines[0])
    assert (entry["device"], entry["fleet"], entry["deployment"]) == ("cam-2", "plant", "d1")
    assert entry["level"] == "WARNING"


def test_an_exception_is_a_field(collected: tuple[logging.Logger, Collect]) -> None:
    logger, handler = collected
    try:
        raise ValueError("bad thing\nsecond line")
    except ValueError:
        logger.exception("step failed")
    (line,) = handler.lines
    assert "\n" not in line  # one line per record, whatever the traceback
    entry = json.loads(line)
    assert entry["event"] == "step failed"
    assert entry["level"] == "ERROR"
    assert entry["exception"]["type"] == "ValueError"
    assert entry["exception"]["message"] == "bad thing\nsecond line"
    assert "Traceback (most recent call last)" in entry["exception"]["traceback"]


def test_unknown_components_formats_and_fields_are_refused() -> None:
    with pytest.raises(ValueError, match=r"log component 'web' is unknown \(known: agent, daemon, server\)"):
        logs.JsonFormatter("web")
    with pytest.raises(ValueError, match=r"log fields \['colour'\] are unknown"):
        logs.JsonFormatter("agent", {"colour": "red"})
    with pytest.raises(ValueError, match=r"log fields \['colour'\] are unknown"):
        logs.bind(logging.getLogger("x"), colour="red")
    with pytest.raises(ValueError, match=r"log format 'xml' is unknown \(known: text, json\)"):
        logs.check_format("xml")


@pytest.mark.parametrize(
    "argv",
    [
        ["server", "--log-format", "xml"],
        ["device", "run", "--config", "d.toml", "--log-format", "xml"],
        ["agent", "run", "-c", "a.toml", "--log-format", "xml"],
    ],
)
def test_a_bad_log_format_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert (
        "argument --log-format: invalid choice: 'xml' (choose from 'text', 'json')" in capsys.readouterr().err
    )


def test_the_text_format_is_the_default() -> None:
    parser = build_parser()
    assert parser.parse_args(["server"]).log_format == "text"
    # None: text for the daemon, and its spawned agent keeps its config's format
    assert parser.parse_args(["device", "run", "--config", "d.toml"]).log_format is None
    assert parser.parse_args(["agent", "run", "-c", "a.toml"]).log_format is None  # the config's


def test_configure_logging_json_formats_the_root_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import threading

    root = logging.getLogger()
    handler = Collect(logging.Formatter(logs.TEXT_FORMAT))
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setattr(logs, "_active", "text")
    logs.configure_logging("text", "server")
    assert not isinstance(handler.formatter, logs.JsonFormatter)  # text leaves the handlers alone
    logs.configure_logging("json", "server", fields={"worker": "1"})
    try:
        assert logs.active_format() == "json"
        logging.getLogger("uvicorn.error").warning("Started server process [1]")
        entry = json.loads(handler.lines[-1])
        assert (entry["component"], entry["logger"], entry["worker"]) == ("server", "uvicorn.error", "1")
        thread = threading.Thread(target=lambda: 1 / 0, name="boom")
        thread.start()
        thread.join()
        crash = json.loads(handler.lines[-1])
        assert crash["level"] == "CRITICAL"
        assert crash["event"] == "uncaught exception in thread boom"
        assert crash["exception"]["type"] == "ZeroDivisionError"
    finally:
        logging.captureWarnings(False)
