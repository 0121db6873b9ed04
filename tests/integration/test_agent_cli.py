"""``edgefleet agent`` operator subcommands against a real agent, run as real ``edgefleet`` processes.

One agent serves the module (started with the legacy form ``edgefleet agent -a ... -c ... -f`` by
tests/support.py); every subcommand is run as ``python -m edgefleet agent ...`` and judged by its
exit code, stdout and stderr. A test of its own starts agents with ``agent run`` and the legacy form.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from support import (
    AgentProcess,
    build,
    make_linear_onnx,
    running_agent,
    short_socket_dir,
    wait_ready,
    write_native_config,
)

from edgefleet.client import AgentClient

CALL_TIMEOUT = 180  # seconds one CLI process may take on a busy machine (it normally takes about one)


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def edgefleet(*args: str, cwd: Path) -> Result:
    """Run ``python -m edgefleet ARGS`` (the environment, PYTHONPATH included, is inherited)."""
    proc = subprocess.run(
        [sys.executable, "-m", "edgefleet", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=os.environ.copy(),
        timeout=CALL_TIMEOUT,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def make_add_onnx(path: Path) -> Path:
    """``total = a + b`` over float32 [N, 3] and ``doubled = 2 * a`` (two inputs, two outputs)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["total"]), helper.make_node("Mul", ["a", "two"], ["doubled"])],
        "add",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3]),
        ],
        [
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["N", 3]),
        ],
        [numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


@dataclass(frozen=True)
class Setup:
    agent: AgentProcess
    work: Path  # the CLI's working directory (not the agent's)
    linear_pkg: Path
    add_pkg: Path
    linear_onnx: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, keys: Path, trust: Path) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("agent-cli")
    work = root / "cli"
    work.mkdir()
    linear_onnx = make_linear_onnx(root / "linear.onnx")
    linear = build(linear_onnx, keys, work / "pkgs", name="linear", version="1.0")
    add = build(make_add_onnx(root / "add.onnx"), keys, work / "pkgs", name="add", version="2.0")
    with running_agent(root, trust) as agent:
        with AgentClient(agent.address, timeout=120) as client:
            # loaded here, not by the CLI, so that each test below stands on its own
            client.load(str(linear), "lin")
            client.load(str(add), "add")
        yield Setup(agent, work, linear, add, linear_onnx)


def agent_cli(setup: Setup, *args: str) -> Result:
    return edgefleet("agent", *args, "-a", setup.agent.address, cwd=setup.work)


def npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


# -- load, list, describe, unload ----------------------------------------------------------------------
def test_load_a_relative_path_list_describe_and_unload(setup: Setup) -> None:
    relative = os.path.relpath(setup.linear_pkg, setup.work)
    assert not Path(relative).is_absolute()
    loaded = agent_cli(setup, "load", relative, "cli-lin")
    assert loaded.code == 0, loaded.err
    assert f"loaded cli-lin from {setup.linear_pkg}" in loaded.out
    assert "x" in loaded.out and "FLOAT32" in loaded.out and "[-1, 4]" in loaded.out

    listed = agent_cli(setup, "list")
    assert listed.code == 0, listed.err
    assert "NAME" in listed.out.splitlines()[0]
    rows = {line.split()[0]: line for line in listed.out.splitlines()[1:]}
    assert "x:FLOAT32[-1,4]" in rows["cli-lin"] and "y:FLOAT32[-1,3]" in rows["cli-lin"]
    assert {"lin", "add"} <= set(rows)

    as_json = agent_cli(setup, "list", "--json")
    assert as_json.code == 0, as_json.err
    by_name = {m["name"]: m for m in json.loads(as_json.out)}
    assert by_name["cli-lin"]["inputs"] == [{"name": "x", "dtype": "FLOAT32", "shape": [-1, 4]}]
    assert by_name["cli-lin"]["outputs"] == [{"name": "y", "dtype": "FLOAT32", "shape": [-1, 3]}]

    described = agent_cli(setup, "describe", "cli-lin", "--json")
    assert described.code == 0, described.err
    assert json.loads(described.out) == by_name["cli-lin"]
    text = agent_cli(setup, "describe", "add")
    assert text.code == 0, text.err
    tensors = [line.split() for line in text.out.splitlines() if line.startswith(("input", "output"))]
    assert tensors == [
        ["input", "a", "FLOAT32", "[-1,", "3]"],
        ["input", "b", "FLOAT32", "[-1,", "3]"],
        ["output", "total", "FLOAT32", "[-1,", "3]"],
        ["output", "doubled", "FLOAT32", "[-1,", "3]"],
    ]

    unloaded = agent_cli(setup, "unload", "cli-lin")
    assert (unloaded.code, unloaded.out) == (0, "unloaded cli-lin\n"), unloaded.err
    after = {m["name"] for m in json.loads(agent_cli(setup, "list", "--json").out)}
    assert "cli-lin" not in after and {"lin", "add"} <= after


def test_load_and_unload_print_json(setup: Setup) -> None:
    loaded = agent_cli(setup, "load", str(setup.add_pkg), "cli-add", "--json")
    assert loaded.code == 0, loaded.err
    assert [t["name"] for t in json.loads(loaded.out)["inputs"]] == ["a", "b"]
    unloaded = agent_cli(setup, "unload", "cli-add", "--json")
    assert (unloaded.code, json.loads(unloaded.out)) == (0, {"unloaded": "cli-add"})


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("describe", "nosuch"), "NOT_FOUND", "nosuch"),
        (("unload", "nosuch"), "NOT_FOUND", "nosuch"),
        (("stats", "nosuch"), "NOT_FOUND", "nosuch"),
        (("predict", "nosuch", "{x}"), "NOT_FOUND", "nosuch"),
        (("load", "missing/pkg.tar.gz", "ghost"), "NOT_FOUND", "{work}/missing/pkg.tar.gz"),
        (("load", "{linear}", "lin"), "ALREADY_EXISTS", "lin"),
        (("load", "{linear}", "bad_name"), "INVALID_ARGUMENT", "bad_name"),
    ],
)
def test_agent_errors_are_one_line_naming_the_code(
    setup: Setup, tmp_path: Path, args: tuple[str, ...], code: str, message: str
) -> None:
    x = npy(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    values = {"x": str(x), "linear": str(setup.linear_pkg), "work": str(setup.work)}
    result = agent_cli(setup, *(a.format(**values) for a in args))
    assert result.code == 1
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"edgefleet: error: {code}: ")
    assert message.format(**values) in lines[0]


# -- predict -------------------------------------------------------------------------------------------
def test_predict_npy_prints_a_summary_and_saves_exact_outputs(setup: Setup, tmp_path: Path) -> None:
    x = np.random.default_rng(5).standard_normal((2, 4)).astype(np.float32)
    want = ort.InferenceSession(str(setup.linear_onnx)).run(None, {"x": x})[0]
    out_file = tmp_path / "result.npz"

    result = agent_cli(setup, "predict", "lin", str(npy(tmp_path / "x.npy", x)), "-o", str(out_file))
    assert result.code == 0, result.err
    header, row = result.out.splitlines()
    assert header.split() == ["OUTPUT", "DTYPE", "SHAPE", "VALUES", "ARGMAX"]
    assert row.split()[:4] == ["y", "FLOAT32", "[2,", "3]"]
    assert row.endswith(json.dumps(np.argmax(want, axis=-1).tolist()))
    printed = re.search(r"\[\[.*\]\]", row)
    assert printed is not None, row
    np.testing.assert_allclose(np.array(ast.literal_eval(printed.group())), want, rtol=1e-5, atol=1e-6)
    assert f"saved 1 output(s) to {out_file}" in result.err

    with np.load(out_file) as saved:
        assert saved.files == ["y"]
        np.testing.assert_array_equal(saved["y"], want)

    as_json = agent_cli(setup, "predict", "lin", str(tmp_path / "x.npy"), "--json")
    assert as_json.code == 0, as_json.err
    answer = json.loads(as_json.out)
    assert answer["model"] == "lin"
    [y] = answer["outputs"]
    assert (y["name"], y["dtype"], y["shape"]) == ("y", "FLOAT32", [2, 3])
    np.testing.assert_array_equal(np.array(y["data"], dtype=np.float32), want)
    assert y["argmax"] == np.argmax(want, axis=-1).tolist()


def test_predict_npz_by_input_name(setup: Setup, tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    a, b = (rng.standard_normal((3, 3)).astype(np.float32) for _ in range(2))
    inputs = tmp_path / "ab.npz"
    np.savez(inputs, b=b, a=a)  # the file's order is not the model's: names decide
    result = agent_cli(setup, "predict", "add", str(inputs), "--json", "-o", str(tmp_path / "out.npz"))
    assert result.code == 0, result.err
    outputs = {o["name"]: np.array(o["data"], dtype=np.float32) for o in json.loads(result.out)["outputs"]}
    np.testing.assert_array_equal(outputs["total"], a + b)
    np.testing.assert_array_equal(outputs["doubled"], 2 * a)
    with np.load(tmp_path / "out.npz") as saved:
        assert sorted(saved.files) == ["doubled", "total"]
        np.testing.assert_array_equal(saved["total"], a + b)


def test_predict_summarises_a_large_output(setup: Setup, tmp_path: Path) -> None:
    x = np.ones((40, 4), np.float32)  # 120 output values: more than are printed
    result = agent_cli(setup, "predict", "lin", str(npy(tmp_path / "x.npy", x)))
    assert result.code == 0, result.err
    row = result.out.splitlines()[1]
    assert "min " in row and "max " in row and "mean " in row
    assert row.split()[-1] == "-"  # 40 rows: too many for an argmax column


def test_predict_cast_converts_float64(setup: Setup, tmp_path: Path) -> None:
    x = np.arange(8, dtype=np.float64).reshape(2, 4)
    want = ort.InferenceSession(str(setup.linear_onnx)).run(None, {"x": x.astype(np.float32)})[0]
    result = agent_cli(setup, "predict", "lin", str(npy(tmp_path / "x.npy", x)), "--cast", "--json")
    assert result.code == 0, result.err
    [y] = json.loads(result.out)["outputs"]
    np.testing.assert_array_equal(np.array(y["data"], dtype=np.float32), want)


def write_input(tmp_path: Path, kind: str) -> Path:
    """An input file that is wrong for its model in the way ``kind`` names."""
    f32 = np.zeros((2, 4), np.float32)
    if kind == "npz-unknown-name":
        np.savez(tmp_path / "in.npz", a=np.zeros((1, 3), np.float32), c=np.zeros((1, 3), np.float32))
        return tmp_path / "in.npz"
    if kind == "npz-missing-input":
        np.savez(tmp_path / "in.npz", a=np.zeros((1, 3), np.float32))
        return tmp_path / "in.npz"
    if kind == "npy-for-two-inputs":
        return npy(tmp_path / "in.npy", np.zeros((1, 3), np.float32))
    if kind == "wrong-dtype":
        return npy(tmp_path / "in.npy", f32.astype(np.float64))
    if kind == "uncastable-dtype":
        return npy(tmp_path / "in.npy", f32.astype(np.complex64))
    if kind == "wrong-shape":
        return npy(tmp_path / "in.npy", np.zeros((2, 5), np.float32))
    if kind == "wrong-rank":
        return npy(tmp_path / "in.npy", np.zeros(4, np.float32))
    if kind == "not-numpy":
        (tmp_path / "in.npy").write_text("1,2,3,4\n")
        return tmp_path / "in.npy"
    if kind == "pickled-objects":
        np.save(tmp_path / "in.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
        return tmp_path / "in.npy"
    if kind == "missing-file":
        return tmp_path / "nothing-here.npy"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("model", "kind", "extra", "message"),
    [
        (
            "add",
            "npz-unknown-name",
            (),
            "has array(s) 'c' but the model has no such input (its inputs: a, b)",
        ),
        ("add", "npz-missing-input", (), "has no array for input(s) 'b' (the model's inputs: a, b)"),
        ("add", "npy-for-two-inputs", (), "the model has 2 inputs (a, b); give an .npz file"),
        (
            "lin",
            "wrong-dtype",
            (),
            "input 'x' is float64 but the model wants float32 (FLOAT32); save it as float32 or pass --cast",
        ),
        (
            "lin",
            "uncastable-dtype",
            ("--cast",),
            "input 'x': complex64 cannot be converted to float32 safely",
        ),
        ("lin", "wrong-shape", (), "input 'x' has shape [2, 5] but the model wants [-1, 4] (-1: any size)"),
        ("lin", "wrong-rank", (), "input 'x' has shape [4] but the model wants [-1, 4]"),
        ("lin", "not-numpy", (), "is not an .npy or .npz file of numeric arrays"),
        ("lin", "pickled-objects", (), "is not an .npy or .npz file of numeric arrays"),
        ("lin", "missing-file", (), "cannot read"),
    ],
)
def test_predict_usage_errors_exit_2_and_send_nothing(
    setup: Setup, tmp_path: Path, model: str, kind: str, extra: tuple[str, ...], message: str
) -> None:
    before = requests(setup, model)
    path = write_input(tmp_path, kind)
    result = agent_cli(setup, "predict", model, str(path), *extra)
    assert result.code == 2, (result.out, result.err)
    assert result.out == ""
    [line] = result.err.splitlines()
    assert line.startswith("edgefleet agent predict: error: ")
    assert message in line
    assert requests(setup, model) == before  # nothing reached the model


def test_predict_output_into_a_directory_is_a_usage_error(setup: Setup, tmp_path: Path) -> None:
    x = npy(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    result = agent_cli(setup, "predict", "lin", str(x), "-o", str(tmp_path))
    assert result.code == 2
    assert f"-o {tmp_path} is a directory" in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def requests(setup: Setup, model: str) -> int:
    with AgentClient(setup.agent.address, timeout=60) as client:
        [stats] = client.model_stats(model)
    return stats.request_count


# -- stats ---------------------------------------------------------------------------------------------
def test_stats_count_the_cli_predictions(setup: Setup, tmp_path: Path) -> None:
    before = requests(setup, "lin")
    x = npy(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    for _ in range(2):
        assert agent_cli(setup, "predict", "lin", str(x)).code == 0

    result = agent_cli(setup, "stats", "lin", "--json")
    assert result.code == 0, result.err
    [lin] = json.loads(result.out)
    assert (lin["name"], lin["model_name"], lin["model_version"]) == ("lin", "linear", "1.0")
    assert lin["request_count"] == before + 2
    assert lin["error_count"] == 0
    assert lin["last_inference_time"] is not None

    every = agent_cli(setup, "stats")
    assert every.code == 0, every.err
    lines = every.out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "MODEL", "VERSION"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert {"lin", "add"} <= set(rows)
    assert rows["lin"][1:4] == ["linear", "1.0", str(before + 2)]
    assert rows["lin"][-1].endswith("Z") and rows["lin"][-2].endswith("Z")  # loaded / last inference, UTC


# -- no agent ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ("list",),
        ("describe", "lin"),
        ("load", "pkg.tar.gz", "lin"),
        ("unload", "lin"),
        ("predict", "lin", "x.npy"),
        ("stats",),
    ],
)
def test_no_agent_names_the_socket(tmp_path: Path, args: tuple[str, ...]) -> None:
    npy(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    sock = tmp_path / "none.sock"
    result = edgefleet("agent", *args, "-a", f"unix://{sock}", cwd=tmp_path)
    assert result.code == 1
    [line] = result.err.splitlines()
    assert line.startswith(f"edgefleet: error: UNAVAILABLE: no agent is running at unix://{sock}: ")
    assert f"socket {sock} does not exist" in line
    assert f"edgefleet agent run -a unix://{sock} -c CONFIG" in line


def test_a_stale_socket_file_is_named_as_such(tmp_path: Path) -> None:
    directory = short_socket_dir()
    try:
        sock = directory / "stale.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(sock))  # bound, never listening: what a crashed agent leaves behind
        listener.close()
        result = edgefleet("agent", "list", "-a", str(sock), cwd=tmp_path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    assert result.code == 1
    assert (
        f"no agent is running at {sock}: nothing accepts connections on {sock} (a stale socket file)"
        in result.err
    )


def test_the_default_address_is_the_documented_socket(tmp_path: Path) -> None:
    if Path("/run/edgefleet/agent.sock").exists():
        pytest.skip("an agent runs at /run/edgefleet/agent.sock on this machine")
    result = edgefleet("agent", "list", cwd=tmp_path)
    assert result.code == 1
    assert "no agent is running at unix:///run/edgefleet/agent.sock" in result.err


# -- arguments -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give a subcommand (run, list, describe, load, unload, predict, stats, shadow), or -c CONFIG"),
        (("-c", "agent.json", "list"), "-c/--config must come after 'agent run', not before 'list'"),
        (("predict", "lin"), "the following arguments are required: INPUT"),
        (("list", "--timeout", "0"), "'0' must be more than 0 seconds"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
        (("run",), "the following arguments are required: -c/--config"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = edgefleet("agent", *args, cwd=tmp_path)
    assert result.code == 2
    assert message in result.err
    assert "usage: edgefleet agent" in result.err


def test_every_argument_has_help_without_backticks() -> None:
    import argparse

    from edgefleet.cli.main import build_parser

    def walk(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.Action]]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from walk(sub, f"{name} {sub_name}")
            elif not isinstance(action, argparse._HelpAction):
                yield name, action

    top = build_parser()
    [commands] = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    checked = list(walk(commands.choices["agent"], "agent"))
    assert {name for name, _ in checked} == {
        "agent",
        *(f"agent {s}" for s in ("run", "list", "describe", "load", "unload", "predict", "stats")),
        *(f"agent shadow {s}" for s in ("load", "unload", "promote", "stats")),
    }
    for name, action in checked:
        assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        assert "`" not in action.help, f"{name} {action.option_strings or action.dest}: {action.help}"
    assert "`" not in (commands.choices["agent"].description or "")


# -- running the agent ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "form",
    [
        ("agent", "-a", "{address}", "-c", "{config}", "-f"),  # today's documented form, unchanged
        ("agent", "run", "-a", "{address}", "-c", "{config}", "-f"),
        ("agent", "-a", "{address}", "run", "-c", "{config}"),  # -a before the subcommand
    ],
)
def test_run_and_the_legacy_form_start_an_agent(tmp_path: Path, trust: Path, form: tuple[str, ...]) -> None:
    directory = short_socket_dir()
    sock = directory / "agent.sock"
    config = write_native_config(
        tmp_path / "agent.json", trust_dir=trust, data_dir=tmp_path / "data", capture_dir=tmp_path / "cap"
    )
    log_path = tmp_path / "agent.log"
    args = [a.format(address=f"unix://{sock}", config=config) for a in form]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
    agent = AgentProcess(sock, config, tmp_path / "data", tmp_path / "cap", log_path, proc)
    try:
        wait_ready(agent)
        listed = edgefleet("agent", "list", "-a", f"unix://{sock}", cwd=tmp_path)
        assert listed.code == 0, listed.err
        assert listed.out.splitlines()[-1] == "(none)"
        assert agent.stop(signal.SIGTERM) == 0
        assert f"edgefleet agent serving on unix://{sock}" in agent.log()
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(directory, ignore_errors=True)
