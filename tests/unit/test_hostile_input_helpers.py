"""The helpers behind the agent's answers to hostile input: quoting client strings shortened,
OS errors as documented codes, and the fast path's limits as declared config knobs."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from edgefleet.agent.config import AgentConfig, load_config
from edgefleet.core.errors import Code, InvalidArgument, os_error, quoted
from edgefleet.protocol.agent.framing import FAST_PATH_MAX_FRAME_BYTES


def test_quoted_shortens_long_client_strings() -> None:
    assert quoted("echo") == "'echo'"
    assert quoted("x" * 100) == repr("x" * 100)
    assert quoted("x" * 10_000) == repr("x" * 100 + "…")
    assert quoted(b"\xffname") == repr("\ufffdname")


@pytest.mark.parametrize(
    ("number", "code", "text"),
    [
        (errno.ENOENT, Code.NOT_FOUND, "nothing at"),
        (errno.ENOTDIR, Code.NOT_FOUND, "nothing at"),
        (errno.ENAMETOOLONG, Code.INVALID_ARGUMENT, "is too long"),
        (errno.ELOOP, Code.INVALID_ARGUMENT, "symbolic links"),
        (errno.EACCES, Code.FAILED_PRECONDITION, "permission denied"),
        (errno.EPERM, Code.FAILED_PRECONDITION, "permission denied"),
        (errno.EIO, Code.FAILED_PRECONDITION, "input/output error"),
    ],
)
def test_os_errors_map_to_documented_codes(number: int, code: Code, text: str) -> None:
    error = os_error(OSError(number, "raw text", "/p" * 5000), "/p" * 5000)
    assert error.code is code
    assert text in error.message
    assert "Errno" not in error.message and "raw text" not in error.message
    assert len(error.message) < 300  # the path is quoted shortened


def test_fast_path_limits_are_config_knobs(tmp_path: Path) -> None:
    default = AgentConfig(device_name="d", fleet_name="f")
    assert default.fast_path_max_frame_bytes == FAST_PATH_MAX_FRAME_BYTES == 64 << 20
    assert (default.fast_path_idle_seconds, default.fast_path_frame_seconds) == (60.0, 10.0)
    path = tmp_path / "agent.json"
    path.write_text(
        json.dumps(
            {
                "device": {"name": "d", "fleet": "f"},
                "agent": {
                    "fast_path_max_frame_bytes": 1 << 20,
                    "fast_path_idle_seconds": 5,
                    "fast_path_frame_seconds": 2.5,
                },
            }
        )
    )
    config = load_config(path)
    assert (
        config.fast_path_max_frame_bytes,
        config.fast_path_idle_seconds,
        config.fast_path_frame_seconds,
    ) == (
        1 << 20,
        5.0,
        2.5,
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"fast_path_max_frame_bytes": 0}, "fast_path_max_frame_bytes must be between 1 and 4294967295"),
        ({"fast_path_max_frame_bytes": 1 << 32}, "fast_path_max_frame_bytes must be between"),
        ({"fast_path_idle_seconds": 0}, "must be positive"),
        ({"fast_path_frame_seconds": -1}, "must be positive"),
    ],
)
def test_bad_fast_path_limits_are_refused(change: dict[str, float], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        AgentConfig(device_name="d", fleet_name="f", **change)  # type: ignore[arg-type]
