"""``edgefleet compile`` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from compiler_support import make_mlp_onnx

from edgefleet.cli.main import main


def test_compile_prints_progress_and_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_mlp_onnx(tmp_path / "mlp.onnx")
    np.savez(tmp_path / "val.npz", x=np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32))
    code = main(
        [
            "compile",
            str(model),
            "--framework",
            "onnx",
            "--input",
            "x:-1x4:float32",
            "--target",
            "linux-x86_64",
            "--backend",
            "onnxruntime",
            "--validation",
            str(tmp_path / "val.npz"),
            "--bench-seconds",
            "0.05",
            "-o",
            str(tmp_path / "out"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "compiled mlp.onnx for linux-x86_64: selected onnxruntime" in captured.out  # -original or not
    assert "latency p50" in captured.out and "compile time" in captured.out and "tools: " in captured.out
    assert f"wrote {tmp_path / 'out'} (model.onnx, runtime onnxruntime)" in captured.out
    assert (
        "] building candidate onnxruntime" in captured.err and "] benchmarking 2 candidate(s)" in captured.err
    )
    assert (
        json.loads((tmp_path / "out" / "edgefleet-package.json").read_text())["runtime"]["name"]
        == "onnxruntime"
    )


def test_json_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_mlp_onnx(tmp_path / "mlp.onnx")
    args = [
        "compile",
        str(model),
        "--framework",
        "onnx",
        "--target",
        "linux-x86_64",
        "--backend",
        "onnxruntime",
    ]
    code = main(
        [*args, "--quantize", "none", "--bench-seconds", "0.05", "--json", "-o", str(tmp_path / "out")]
    )
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)
    # both ONNX Runtime fp32 candidates qualify; the faster in this run is selected
    assert (
        report["selected"] in ("onnxruntime", "onnxruntime-original") and report["target"] == "linux-x86_64"
    )
    assert report == json.loads((tmp_path / "out" / "report.json").read_text())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--input", "x:1xbad!"], "INVALID_ARGUMENT: --input 'x:1xbad!' is malformed"),
        (["--target", "pdp11"], "INVALID_ARGUMENT: unknown target 'pdp11': known targets are"),
        (["--framework", "mxnet"], "INVALID_ARGUMENT: framework 'mxnet' is not supported directly"),
    ],
)
def test_errors_exit_1_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    model = make_mlp_onnx(tmp_path / "mlp.onnx")
    base = {"--framework": "onnx", "--target": "linux-x86_64"}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        base[flag] = value
    argv = ["compile", str(model), *[item for pair in base.items() for item in pair]]
    argv += [flag for flag in extra[::2] if flag not in base] + ["-o", str(tmp_path / "out")]
    assert main(argv) == 1
    assert f"edgefleet: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", "model.onnx"]) == 1
    assert "edgefleet compile needs --framework, --target, -o OUTDIR" in capsys.readouterr().err


def test_list_targets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", "--list-targets"]) == 0
    out = capsys.readouterr().out
    assert "linux-x86_64" in out and "linux-aarch64" in out
    assert "backends onnxruntime, tvm, litert" in out and "assumes CPU features: fp, asimd" in out
