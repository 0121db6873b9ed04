"""`edgefleet package build` takes an `edgefleet compile` output directory as its MODEL."""

from __future__ import annotations

from pathlib import Path

import pytest
from compiler_support import make_mlp_onnx

from edgefleet.cli.main import main
from edgefleet.compiler.job import CompileJob, CompileRequest
from edgefleet.core.package import verify_package


def test_package_build_from_compile_output(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = make_mlp_onnx(tmp_path / "mlp.onnx")
    out = tmp_path / "compiled"
    CompileJob(
        CompileRequest(
            model=model,
            framework="onnx",
            target="linux-x86_64",
            output_dir=out,
            backend="onnxruntime",
            quantize="none",
            benchmark_seconds=0.05,
        )
    ).run()
    capsys.readouterr()
    code = main(
        [
            "package",
            "build",
            str(out),
            "--name",
            "mlp",
            "--version",
            "2.0",
            "--key",
            str(keys),
            "-o",
            str(tmp_path / "pkgs"),
        ]
    )
    assert code == 0
    package = Path(capsys.readouterr().out.strip().splitlines()[-1])
    manifest = verify_package(package, keys / "trust").manifest
    assert (manifest.name, manifest.version, manifest.runtime.name) == ("mlp", "2.0", "onnxruntime")
    assert manifest.target.arch == "x86_64"
    assert manifest.provenance["compiler"] == "edgefleet compile"


def test_package_build_refuses_a_plain_directory(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "not-compiled").mkdir()
    code = main(
        [
            "package",
            "build",
            str(tmp_path / "not-compiled"),
            "--name",
            "m",
            "--version",
            "1",
            "--key",
            str(keys),
            "-o",
            str(tmp_path / "pkgs"),
        ]
    )
    assert code == 1
    assert "edgefleet-package.json" in capsys.readouterr().err
    assert not (tmp_path / "pkgs").exists()
