"""``edgefleet keys`` and ``edgefleet package`` end to end (in-process and as a real process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_package import make_onnx_classifier

from edgefleet.cli.main import main


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def built(work: Path) -> tuple[Path, Path]:
    """(key dir, package) made through the CLI."""
    keys = work / "keys"
    assert main(["keys", "init", str(keys)]) == 0
    model = make_onnx_classifier(work / "clf.onnx")
    out = work / "out"
    assert (
        main(
            [
                "package",
                "build",
                str(model),
                "--name",
                "clf",
                "--version",
                "1.0",
                "--key",
                str(keys),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    return keys, out / "clf-1.0.tar.gz"


def test_keys_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "init", str(tmp_path / "k"), "--algorithm", "ecdsa-p256"]) == 0
    out = capsys.readouterr().out
    assert "ecdsa-p256" in out
    assert f"trust directory:   {tmp_path / 'k' / 'trust'}" in out
    assert (tmp_path / "k" / "trust" / "root-ca.pem").is_file()
    assert main(["keys", "init", str(tmp_path / "k")]) == 1
    assert "ALREADY_EXISTS: keys already exist" in capsys.readouterr().err
    assert main(["keys", "init", str(tmp_path / "k"), "--force"]) == 0


def test_keys_init_rejects_unknown_algorithm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="2"):
        main(["keys", "init", str(tmp_path), "--algorithm", "rsa"])
    assert "invalid choice: 'rsa'" in capsys.readouterr().err


def test_build_prints_the_package_path(
    work: Path, built: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    keys, _ = built
    model = work / "clf.onnx"
    assert (
        main(
            [
                "package",
                "build",
                str(model),
                "--name",
                "clf",
                "--version",
                "2 beta",
                "--key",
                str(keys),
                "-o",
                str(work / "out2"),
                "--arch",
                "x86_64",
            ]
        )
        == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == str(work / "out2" / "clf-2_beta.tar.gz")
    assert Path(last).is_file()


def test_build_error_exits_1(
    work: Path, built: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    keys, _ = built
    code = main(
        [
            "package",
            "build",
            str(work / "clf.onnx"),
            "--name",
            "bad_name",
            "--version",
            "1",
            "--key",
            str(keys),
            "-o",
            str(work / "bad"),
        ]
    )
    assert code == 1
    assert "INVALID_ARGUMENT: model name 'bad_name' is invalid" in capsys.readouterr().err
    assert not (work / "bad").exists()


def test_verify_ok_archive_and_directory(
    built: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, pkg = built
    assert main(["package", "verify", str(pkg), "--trust", str(keys / "trust")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK clf 1.0 (onnxruntime, 1 file(s)) signed by CN=edgefleet package signer")
    from edgefleet.core.package import unpack_package

    directory = unpack_package(pkg, tmp_path / "d")
    assert main(["package", "verify", str(directory), "--trust", str(keys / "trust")]) == 0
    assert capsys.readouterr().out.startswith("OK clf 1.0")


def test_verify_failures_exit_1_with_reason(
    built: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, pkg = built
    assert main(["keys", "init", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    assert main(["package", "verify", str(pkg), "--trust", str(tmp_path / "other" / "trust")]) == 1
    assert "FAILED_PRECONDITION: untrusted signer" in capsys.readouterr().err
    from edgefleet.core.package import unpack_package

    directory = unpack_package(pkg, tmp_path / "d")
    (directory / "extra.bin").write_bytes(b"x")
    assert main(["package", "verify", str(directory), "--trust", str(keys / "trust")]) == 1
    assert "'extra.bin'" in capsys.readouterr().err
    assert main(["package", "verify", str(tmp_path / "nope.tar.gz"), "--trust", str(keys / "trust")]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_inspect_text_and_json(built: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, pkg = built
    assert main(["package", "inspect", str(pkg)]) == 0
    out = capsys.readouterr().out
    assert "model:       clf 1.0" in out
    assert "input:       x FLOAT32 [-1, 4]" in out
    assert "signer:      CN=edgefleet package signer (ed25519)" in out
    assert "not verified" in out
    assert main(["package", "inspect", str(pkg), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["manifest"]["name"] == "clf"
    assert data["signer"]["issuer"] == "CN=edgefleet root CA"
    assert data["verified"] is False


def test_real_process_end_to_end(work: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "error"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgefleet", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    keys = tmp_path / "keys"
    assert run("keys", "init", str(keys), "--algorithm", "ecdsa-p256").returncode == 0
    built = run(
        "package",
        "build",
        str(work / "clf.onnx"),
        "--name",
        "clf",
        "--version",
        "3",
        "--key",
        str(keys),
        "-o",
        str(tmp_path / "out"),
    )
    assert built.returncode == 0, built.stderr
    pkg = built.stdout.strip().splitlines()[-1]
    ok = run("package", "verify", pkg, "--trust", str(keys / "trust"))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK clf 3")
    other = tmp_path / "other"
    assert run("keys", "init", str(other)).returncode == 0
    bad = run("package", "verify", pkg, "--trust", str(other / "trust"))
    assert bad.returncode == 1
    assert "untrusted signer" in bad.stderr
    assert bad.stdout == ""
