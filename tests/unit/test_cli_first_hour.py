"""A new user's first hour with the CLI, without a server: the device install (no extras), help
on every option, quiet logs, closed pipes, human-readable tables, and ``scripts/install``."""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support import assert_quiet_on_closed_pipe

from edgefleet.cli.main import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[2]

# The first lines of a ``python -c`` program: whatever the extras install cannot be imported, as
# in a device install made with ``pip install .``.
BLOCK_EXTRAS = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {blocked!r}
    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None
    sys.meta_path.insert(0, NotInstalled())
    """
)
SERVER_AND_CLI_EXTRAS = (
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "boto3",
    "httpx",
    "rich",
)


def run_cli(
    args: list[str], *, blocked: tuple[str, ...] = (), cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``edgefleet ARGS`` in a fresh interpreter, with the ``blocked`` top-level modules uninstallable."""
    code = BLOCK_EXTRAS.format(blocked=set(blocked)) + textwrap.dedent(
        f"""
        import runpy
        sys.argv = ["edgefleet", *{args!r}]
        runpy.run_module("edgefleet", run_name="__main__")
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd or REPO
    )


# ---------------------------------------------------------------------- the device install


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["server", "--port", "0", "--data-dir", "{tmp}"], "server"),
        (["admin", "list-tokens", "--data-dir", "{tmp}"], "server"),
        (["admin", "migrate", "--data-dir", "{tmp}"], "server"),
        (["fleet", "list"], "cli"),
        (["model", "list"], "cli"),
        (["deploy", "list"], "cli"),
        (["device", "list"], "cli"),
        (["device", "register", "cam-1", "--fleet", "f"], "cli"),
    ],
)
def test_a_command_that_needs_an_extra_names_it(args: list[str], extra: str, tmp_path: Path) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run_cli(args, blocked=SERVER_AND_CLI_EXTRAS)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"needs the '{extra}' extra" in result.stderr
    assert f"pip install 'edgefleet[{extra}]'" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("command", "module", "extra"),
    [
        ("server", "httpx", "server"),  # the server extra has httpx: say the extra the command needs
        ("fleet", "httpx", "cli"),
        ("compile", "onnx", "compiler"),
        ("compile", "openvino.runtime", "openvino"),  # an extra of its own, not in compiler
        ("agent", "ai_edge_litert.interpreter", "litert"),
    ],
)
def test_the_extra_named_is_the_one_that_installs_the_module(command: str, module: str, extra: str) -> None:
    from edgefleet.cli.main import missing_extra_message

    message = missing_extra_message(command, ModuleNotFoundError("missing", name=module))
    assert message is not None and f"pip install 'edgefleet[{extra}]'" in message
    # a module of edgefleet itself is a bug, not a missing extra
    assert missing_extra_message(command, ModuleNotFoundError("missing", name="edgefleet.nothing")) is None


def test_the_device_install_still_lists_and_runs_every_command(tmp_path: Path) -> None:
    result = run_cli(["--help"], blocked=SERVER_AND_CLI_EXTRAS)
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert command in result.stdout
    # the operator's device commands are listed too (no module is skipped silently)
    result = run_cli(["device", "--help"], blocked=SERVER_AND_CLI_EXTRAS)
    assert result.returncode == 0 and "register" in result.stdout and "enroll" in result.stdout
    result = run_cli(["keys", "init", str(tmp_path / "keys")], blocked=SERVER_AND_CLI_EXTRAS)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "keys" / "trust" / "root-ca.pem").is_file()


def test_a_command_module_that_fails_to_import_is_not_skipped(tmp_path: Path) -> None:
    # a broken command module is a bug to show, not a command to leave out of the parser
    code = textwrap.dedent(
        """
        import sys, edgefleet.cli.main as m
        m.COMMANDS["broken"] = ("no_such_command_module", None)
        m.main(["--help"])
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "edgefleet.cli.no_such_command_module" in result.stderr


# ---------------------------------------------------------------------- help


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ("edgefleet",)
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser, list[argparse.Action]]]:
    """Every parser of the tree with the path that reaches it (and the sub-command help actions)."""
    found = [(path, parser, list(parser._actions))]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _parsers(child, (*path, name))
    return found


def test_every_argument_and_option_has_help_without_rst_markup() -> None:
    missing, markup = [], []
    for path, parser, actions in _parsers(build_parser()):
        texts = [parser.description or "", parser.epilog or ""]
        for action in actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    if not choice.help:
                        missing.append(f"{' '.join(path)} {choice.dest}")
                    texts.append(choice.help or "")
                continue
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
            texts.append(action.help or "")
        markup += [f"{' '.join(path)}: {t[:60]!r}" for t in texts if "`" in t]
        parser.format_help()  # every help text formats (no stray %)
    assert missing == []
    assert markup == []


# ---------------------------------------------------------------------- logs and pipes


def test_default_output_is_the_answer_without_info_logs(tmp_path: Path) -> None:
    from conftest_package import make_onnx_classifier

    keys = run_cli(["keys", "init", str(tmp_path / "keys")])
    assert keys.returncode == 0 and keys.stderr == "", keys.stderr
    model = make_onnx_classifier(tmp_path / "clf.onnx")
    build = [
        "package",
        "build",
        str(model),
        "--name",
        "clf",
        "--version",
        "1",
        "--key",
        str(tmp_path / "keys"),
    ]
    built = run_cli([*build, "-o", str(tmp_path / "out")])
    assert built.returncode == 0 and built.stderr == "", built.stderr
    assert built.stdout.strip() == str(tmp_path / "out" / "clf-1.tar.gz")
    # -v shows what the command logs at INFO; -q is accepted
    verbose = run_cli(["-v", *build, "-o", str(tmp_path / "out2")])
    assert verbose.returncode == 0 and " INFO edgefleet." in verbose.stderr
    quiet = run_cli(["-q", *build, "-o", str(tmp_path / "out3")])
    assert quiet.returncode == 0 and quiet.stderr == ""


@pytest.mark.parametrize(
    "args", [["--help"], ["compile", "--list-targets"], ["package", "inspect", "{pkg}", "--json"]]
)
def test_a_closed_pipe_ends_the_command_quietly(args: list[str], tmp_path: Path, keys: Path) -> None:
    from conftest_package import make_onnx_classifier

    from edgefleet.packager.build import build_package

    package = build_package(
        make_onnx_classifier(tmp_path / "m.onnx"), name="m", version="1", key_dir=keys, out_dir=tmp_path
    )
    args = [a.replace("{pkg}", str(package)) for a in args]
    assert_quiet_on_closed_pipe([sys.executable, "-m", "edgefleet", *args])


# ---------------------------------------------------------------------- what tables look like


def test_tables_show_human_sizes_short_digests_and_one_time_format() -> None:
    from edgefleet.cli.output import fields, table

    digest = "ab" * 32
    rows = [
        {
            "Target": "linux-x86_64-none",
            "Size": 3 * 1024 * 1024 + 1,
            "Sha256": digest,
            "UploadTime": "2030-01-02T03:04:05.678901+00:00",
            "Note": "[bold]not markup[/bold]",
        },
        {
            "Target": "linux-any-none",
            "Size": 512,
            "Sha256": None,
            "UploadTime": datetime(2030, 1, 2, 3, 4, 5),
        },
    ]
    columns = [
        ("TARGET", "Target"),
        ("SIZE", "Size"),
        ("SHA256", "Sha256"),
        ("UPLOADED", "UploadTime"),
        ("NOTE", "Note"),
    ]
    out = io.StringIO()
    assert table(rows, columns, out) == 2
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["TARGET", "SIZE", "SHA256", "UPLOADED", "NOTE"]
    assert "3.0 MiB" in lines[1] and "512 B" in lines[2]
    assert digest not in out.getvalue() and digest[:12] + "…" in lines[1]
    assert lines[1].count("2030-01-02T03:04:05Z") == 1 and lines[2].count("2030-01-02T03:04:05Z") == 1
    assert "[bold]not markup[/bold]" in lines[1]
    assert all(line == line.rstrip() for line in lines)
    empty = io.StringIO()
    assert table([], columns, empty) == 0 and empty.getvalue().splitlines()[-1] == "(none)"

    block = io.StringIO()
    fields(
        {"Created": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), "Size": 2048},
        [("Created", "Created"), ("Size", "Size")],
        block,
    )
    assert block.getvalue().splitlines() == ["Created  2030-01-02T03:04:05Z", "Size     2.0 KiB"]


def test_progress_bar_draws_on_a_terminal_and_stays_silent_in_a_pipe() -> None:
    from edgefleet.cli.output import ProgressBar

    silent = io.StringIO()
    bar = ProgressBar("uploading x", out=silent)
    bar(10, 100)
    bar(100, 100)
    assert silent.getvalue() == ""

    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=True) as terminal:
            bar = ProgressBar("uploading pkg.tar.gz", out=terminal)
            bar(512 * 1024, 1024 * 1024)
            bar(1024 * 1024, 1024 * 1024)
            terminal.flush()
            drawn = b""
            while len(drawn) < 20_000:
                chunk = os.read(master, 65536)
                drawn += chunk
                if b"1.0 MiB" in drawn or b"1.0/1.0" in drawn:
                    break
    finally:
        os.close(master)
    text = drawn.decode(errors="replace")
    assert "uploading pkg.tar.gz" in text
    assert "MiB" in text


# ---------------------------------------------------------------------- scripts/install


def test_scripts_install_shows_pips_progress_and_stops_on_a_failed_step(tmp_path: Path) -> None:
    """A project whose dependency cannot be installed, in a venv where an older edgefleet imports:
    the script must fail (not stamp the install as done) and must show what pip did."""
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "install", project / "scripts" / "install")
    (project / "pyproject.toml").write_text(
        '[project]\nname = "edgefleet"\nversion = "0.0.1"\n'
        'dependencies = ["edgefleet-no-such-dependency-for-this-test>=1"]\n'
    )
    subprocess.run([sys.executable, "-m", "venv", str(project / ".venv")], check=True, timeout=300)
    # an edgefleet from an earlier install is importable, so only pip's exit status tells the failure
    old = tmp_path / "old"
    (old / "edgefleet").mkdir(parents=True)
    (old / "edgefleet" / "__init__.py").write_text("")
    [site] = (project / ".venv" / "lib").glob("python*/site-packages")
    (site / "old-edgefleet.pth").write_text(str(old) + "\n")
    # no index: pip must not reach a registry; "--upgrade pip" is then satisfied by the venv's own
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PIP_NO_INDEX="1", PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(project / "scripts" / "install")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    shown = result.stdout + result.stderr
    assert "Requirement already satisfied: pip" in shown  # pip's own lines are not hidden by -q
    assert result.returncode != 0, shown
    assert not list((project / ".venv").glob(".edgefleet-*")), "a failed install was stamped as done"
    assert re.search(r"ERROR|error", shown)


def test_compile_steps_are_lines_in_a_log_and_a_spinner_on_a_terminal() -> None:
    from edgefleet.cli.output import StepStatus

    ticks = iter([100.0, 101.5, 103.25])
    log = io.StringIO()
    with StepStatus(out=log, clock=lambda: next(ticks)) as progress:
        progress("loading model")
        progress("candidate onnxruntime-fp32")
    assert log.getvalue().splitlines() == ["[   1.5s] loading model", "[   3.2s] candidate onnxruntime-fp32"]

    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=True) as terminal:
            with StepStatus(out=terminal) as progress:
                progress("simplifying the graph")
            terminal.flush()
        drawn = b""  # a pty hands the writes over in several reads; with the slave closed, read to EIO
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(master)
    assert b"simplifying the graph" in drawn


def test_tables_print_plain_columns_on_a_device_install_without_rich() -> None:
    """``edgefleet agent list`` runs on devices without the ``cli`` extra: the same cells, plain columns."""
    code = BLOCK_EXTRAS.format(blocked={"rich"}) + textwrap.dedent(
        """
        from edgefleet.cli.output import table
        rows = [{"Name": "digits", "Size": 3 * 1024 * 1024, "Sha256": "ab" * 32}, {"Name": "a-much-longer-name"}]
        count = table(rows, [("NAME", "Name"), ("SIZE", "Size"), ("SHA256", "Sha256")])
        table([], [("NAME", "Name")])
        print(count, "rich" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "SHA256"]
    assert lines[1].split() == ["digits", "3.0", "MiB", "ab" * 6 + "…"]
    assert lines[2].split()[0] == "a-much-longer-name"
    # columns line up: every header starts where its cells start
    assert lines[0].index("SIZE") == lines[1].index("3.0 MiB")
    assert lines[3:] == ["NAME", "(none)", "2 False"]
