"""Keeping third-party output out of the user's way: capture it, keep it for the job log, say it short.

The compiler drives tools that talk on their own: onnxsim prints ``WARNING: failed to run "Concat"
op`` from C++, ONNX Runtime's quantiser logs ``WARNING root:`` lines, LiteRT prints ``INFO: Created
TensorFlow Lite XNNPACK delegate`` from C++, OpenVINO raises errors many lines long. Some of it is
written by native code straight to file descriptors 1 and 2, below Python's ``sys.stdout``, so
:func:`captured_output` redirects the descriptors themselves (and Python's streams and the root
logger's output with them) while a tool runs, and hands the text to the running job's log
(:func:`detail_sink`) instead of the terminal. :func:`short_reason` makes the one-line reason the
candidate table and the progress output show; the full text goes to the report and the job log.

Descriptors are process-wide: while a capture is active, output from other threads of the process
is captured with it (and ends in the job log, not lost); captures are serialised by a lock.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import io
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator

_log = logging.getLogger(__name__)
_lock = threading.RLock()
# Where captured text goes: the running compile job's log (set by the job for its thread).
_sink: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "edgefleet_compiler_detail_sink", default=None
)
#: Longest reason shown in a table cell or a progress line.
REASON_CHARS = 160


def short_reason(text: str, limit: int = REASON_CHARS) -> str:
    """The first meaningful line of ``text``, cut to ``limit`` characters (with an ellipsis)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if len(first) > limit:
        return first[: limit - 1].rstrip() + "…"
    return first + (" …" if len(lines) > 1 else "")


@contextlib.contextmanager
def detail_sink(sink: Callable[[str], None]) -> Iterator[None]:
    """Send text captured in this context (this thread) to ``sink``."""
    token = _sink.set(sink)
    try:
        yield
    finally:
        _sink.reset(token)


def record_detail(text: str) -> None:
    """Give ``text`` to the current detail sink (the job log), or to this module's logger."""
    text = text.strip()
    if not text:
        return
    sink = _sink.get()
    if sink is not None:
        sink(text)
    else:
        _log.debug("%s", text)


def _flush_all() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    # C stdio buffers what native code printf()s; flush it while the descriptors still point at the sink
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def captured_output(tool: str) -> Iterator[None]:
    """Capture everything written to fds 1/2, ``sys.stdout``/``sys.stderr`` while the block runs and
    record it (prefixed with ``tool``) with :func:`record_detail` afterwards."""
    with _lock, tempfile.TemporaryFile() as sink:
        python_side = io.StringIO()
        _flush_all()
        try:
            saved = (os.dup(1), os.dup(2))
        except OSError:  # a daemon with fds 1/2 closed: nothing reaches a terminal anyway
            with contextlib.redirect_stdout(python_side), contextlib.redirect_stderr(python_side):
                yield
            record_detail(
                f"{tool} output:\n{python_side.getvalue().rstrip()}" if python_side.getvalue().strip() else ""
            )
            return
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(python_side), contextlib.redirect_stderr(python_side):
                yield
        finally:
            _flush_all()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            text = python_side.getvalue() + sink.read().decode("utf-8", errors="replace")
            if text.strip():
                record_detail(f"{tool} output:\n{text.rstrip()}")
