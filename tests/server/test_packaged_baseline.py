"""A drift baseline built with the package (``edgefleet package build --baseline-inputs``): signed
inside it as baseline.json, attached to the version when the package is uploaded, never over a
baseline the version already has; a damaged one refuses the upload and stores nothing."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import make_linear_onnx

from edgefleet.cli import main as cli_main
from edgefleet.core.errors import InvalidArgument, NotFound
from edgefleet.monitoring import ModelSummary
from edgefleet.monitoring.baseline import BASELINE_FILE


@pytest.fixture(scope="module")
def op(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Iterator[Any]:
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig
    from edgefleet.server import tokens
    from edgefleet.server.config import ServerConfig, Timing
    from edgefleet.server.runner import start_in_thread

    config = ServerConfig(
        data_dir=tmp_path_factory.mktemp("server"),
        port=0,
        device_port=0,
        trust_dir=keys / "trust",
        timing=Timing(shutdown_grace=1),
    )
    running = start_in_thread(config)
    db = running.state.db
    with db.session() as session:
        token = tokens.create_token(session, "ops-baseline", db.now())
    endpoints = running.endpoints
    client = FleetClient(ClientConfig(endpoints.api_url, token, Path(endpoints.ca_cert)))
    try:
        yield client
    finally:
        client.close()
        running.stop()


def build(tmp_path: Path, keys: Path, version: str, *extra: str) -> Path:
    model = make_linear_onnx(tmp_path / f"linear-{version}.onnx")
    code = cli_main.main(
        ["package", "build", str(model), "--name", "linear", "--version", version, "--key", str(keys),
         "-o", str(tmp_path / "out"), *extra]
    )  # fmt: skip
    assert code == 0
    return tmp_path / "out" / f"linear-{version}.tar.gz"


def reference(tmp_path: Path, rows: int = 300) -> Path:
    path = tmp_path / "ref.npz"
    np.savez(path, x=np.random.default_rng(3).standard_normal((rows, 4)).astype(np.float32))
    return path


def test_the_package_baseline_becomes_the_versions_baseline(op: Any, keys: Path, tmp_path: Path) -> None:
    package = build(tmp_path, keys, "1", "--baseline-inputs", str(reference(tmp_path)))
    with tarfile.open(package) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert BASELINE_FILE in [f["path"] for f in manifest["files"]]  # signed with the model
    op.upload_package(package)
    stored = op.get_baseline("linear", "1")
    assert stored["Samples"] == 300 and stored["CreatedBy"] == "ops-baseline"
    summary = ModelSummary.from_wire(stored["Summary"])
    # the outputs came from running the ONNX model on the reference inputs here
    assert summary.inputs["x"].count == 300 and summary.outputs["y"].count == 300
    assert sum(summary.classes["y"].counts().values()) == 300


def test_a_versions_own_baseline_is_not_replaced_by_a_package(op: Any, keys: Path, tmp_path: Path) -> None:
    op.upload_package(build(tmp_path, keys, "2"))
    with pytest.raises(NotFound, match="has no baseline"):
        op.get_baseline("linear", "2")
    mine = ModelSummary.empty()
    mine.update({"x": np.zeros((5, 4), np.float32)}, [], [], calls=5)
    op.put_baseline("linear", "2", mine.to_wire())
    # another target's package of the same version, with a baseline of its own
    other = build(tmp_path, keys, "2", "--arch", "aarch64", "--baseline-inputs", str(reference(tmp_path)))
    op.upload_package(other)
    assert op.get_baseline("linear", "2")["Samples"] == 5


def test_a_baseline_file_that_is_not_a_summary_refuses_the_upload(
    op: Any, keys: Path, tmp_path: Path
) -> None:
    bogus = tmp_path / BASELINE_FILE
    bogus.write_text('{"inputs": "not sketches"}')
    package = build(tmp_path, keys, "3", "--file", str(bogus))
    with pytest.raises(InvalidArgument, match=r"baseline\.json is not a model summary"):
        op.upload_package(package)
    with pytest.raises(NotFound):
        op.get_baseline("linear", "3")  # nothing stored: not the package, not the version


def test_bad_baseline_arguments(keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_linear_onnx(tmp_path / "m.onnx")
    base = ["package", "build", str(model), "--name", "linear", "--version", "9", "--key", str(keys),
            "-o", str(tmp_path / "out")]  # fmt: skip
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, z=np.zeros((10, 4), np.float32))
    outputs = tmp_path / "outputs.npz"
    np.savez(outputs, y=np.zeros((10, 3), np.float32))
    cases = [
        (["--baseline-outputs", str(outputs)], "--baseline-outputs goes with --baseline-inputs"),
        (["--baseline-inputs", str(tmp_path / "missing.npz")], "does not exist"),
        (["--baseline-inputs", str(wrong)], "the model takes ['x']"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert cli_main.main([*base, *extra]) != 0
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "linear-9.tar.gz").exists()
