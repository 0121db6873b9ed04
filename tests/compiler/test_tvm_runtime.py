"""The TVM runtime backend (device side): load a compiled library, run it concurrently, refuse bad files."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from tvm_support import CNN_SHAPE, build, info, load, make_cnn_onnx, reference

from edgefleet.compiler.evaluate import candidate_manifest
from edgefleet.compiler.targets import get_target, matches_host
from edgefleet.compiler.types import CandidateArtifact
from edgefleet.core.errors import Code, EdgefleetError
from edgefleet.core.tensors import DataType, TensorSpec
from edgefleet.runtimes.base import RuntimeOptions, get_backend, version_at_least

tvm = pytest.importorskip("tvm", reason="TVM is not installed: pip install 'edgefleet[tvm]'")

pytestmark = pytest.mark.skipif(
    not matches_host(get_target("linux-x86_64")),
    reason="runs linux-x86_64 code, which this host cannot execute",
)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cnn_onnx(tmp_path_factory.mktemp("tvm-rt") / "cnn.onnx")


@pytest.fixture(scope="module")
def artifact(onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> CandidateArtifact:
    return build(onnx_model, tmp_path_factory.mktemp("tvm-rt-build") / "work", {"x": CNN_SHAPE})


@pytest.fixture
def copy(artifact: CandidateArtifact, tmp_path: Path) -> CandidateArtifact:
    """A private copy of the artifact that a test may damage."""
    directory = tmp_path / "copy"
    shutil.copytree(artifact.directory, directory, ignore=shutil.ignore_patterns("tuning"))
    return dataclasses.replace(artifact, directory=directory)


def inputs(seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal(CNN_SHAPE).astype(np.float32)}


def test_backend_identity_and_memory_estimate(artifact: CandidateArtifact) -> None:
    backend = get_backend("tvm")
    assert backend.name == "tvm" and backend.extra == "tvm"
    assert backend.version() == tvm.__version__
    assert version_at_least(backend.version(), artifact.runtime_min_version)
    meta = info(artifact)
    manifest = candidate_manifest(artifact, get_target("linux-x86_64"), meta.inputs, meta.outputs)
    size = (artifact.directory / artifact.model_file).stat().st_size
    assert backend.estimate_memory(artifact.directory, manifest) > 2 * size


def test_concurrent_runs_give_each_caller_its_own_result(
    artifact: CandidateArtifact, onnx_model: Path
) -> None:
    want = {seed: reference(onnx_model, inputs(seed))[0] for seed in range(16)}
    model = load(artifact, threads=2, concurrency=3)
    try:
        assert model.inputs == (TensorSpec("x", DataType.FLOAT32, CNN_SHAPE),)
        assert model.outputs == (TensorSpec("probs", DataType.FLOAT32, (1, 10)),)

        def job(seed: int) -> tuple[int, np.ndarray]:
            return seed, model.run(inputs(seed))[0]

        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(job, [s % 16 for s in range(96)]))
    finally:
        model.close()
    for seed, got in results:
        np.testing.assert_allclose(got, want[seed], rtol=1e-5, atol=1e-6)


def test_inputs_are_checked_and_converted(artifact: CandidateArtifact, onnx_model: Path) -> None:
    model = load(artifact)
    try:
        with pytest.raises(EdgefleetError, match="missing input tensor") as err:
            model.run({})
        assert err.value.code is Code.INVALID_ARGUMENT
        with pytest.raises(
            EdgefleetError, match=r"has shape \[1, 1, 9, 8\]; this compiled model takes"
        ) as err:
            model.run({"x": np.zeros((1, 1, 9, 8), np.float32)})
        assert err.value.code is Code.INVALID_ARGUMENT
        buffer = np.zeros(int(np.prod(CNN_SHAPE)) + 1, np.float32)
        misaligned = buffer[1:].reshape(CNN_SHAPE)  # 4 bytes past an allocation: not 64-byte aligned
        misaligned[...] = inputs(4)["x"]
        np.testing.assert_allclose(
            model.run({"x": misaligned})[0], reference(onnx_model, inputs(4))[0], rtol=1e-5, atol=1e-6
        )
        x64 = inputs(5)["x"].astype(np.float64)  # converted to the compiled float32
        np.testing.assert_allclose(
            model.run({"x": x64})[0], reference(onnx_model, inputs(5))[0], rtol=1e-5, atol=1e-6
        )
    finally:
        model.close()
    with pytest.raises(EdgefleetError, match="model was unloaded") as err:
        model.run(inputs(0))
    assert err.value.code is Code.FAILED_PRECONDITION


def test_missing_metadata_is_failed_precondition(copy: CandidateArtifact) -> None:
    (copy.directory / "model.tvm.json").unlink()
    with pytest.raises(EdgefleetError, match=r"cannot read TVM artifact metadata model\.tvm\.json") as err:
        load(copy)
    assert err.value.code is Code.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"format_version": 99}, "metadata format 99 is not supported"),
        ({"arch": "aarch64"}, r"model\.tvm\.json says aarch64 but model\.so is x86_64 code"),
        ({"inputs": [{"name": "x", "dtype": "COMPLEX", "shape": [1]}]}, "metadata is malformed"),
    ],
)
def test_bad_metadata_is_failed_precondition(
    copy: CandidateArtifact, edit: dict[str, object], message: str
) -> None:
    path = copy.directory / "model.tvm.json"
    raw = json.loads(path.read_text())
    raw.update(edit)
    path.write_text(json.dumps(raw))
    with pytest.raises(EdgefleetError, match=message) as err:
        get_backend("tvm").load(
            copy.directory,
            candidate_manifest(copy, get_target("linux-x86_64"), (), ()),
            RuntimeOptions(),
        )
    assert err.value.code is Code.FAILED_PRECONDITION


def test_truncated_library_is_refused_before_dlopen(copy: CandidateArtifact) -> None:
    # dlopen of a truncated ELF kills the process with SIGBUS; the backend must refuse it first.
    library = copy.directory / "model.so"
    library.write_bytes(library.read_bytes()[:4096])
    with pytest.raises(EdgefleetError, match=r"model\.so is truncated or corrupt") as err:
        load(copy)
    assert err.value.code is Code.FAILED_PRECONDITION
    library.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(EdgefleetError, match=r"model\.so is not a 64-bit little-endian ELF library"):
        load(copy)


def test_manifest_tensors_must_match_the_compiled_ones(artifact: CandidateArtifact) -> None:
    wrong = (TensorSpec("image", DataType.FLOAT32, (1, 1, 8, 8)),)
    manifest = candidate_manifest(artifact, get_target("linux-x86_64"), wrong, info(artifact).outputs)
    with pytest.raises(EdgefleetError, match=r"manifest's inputs \['image'\] do not match") as err:
        get_backend("tvm").load(artifact.directory, manifest, RuntimeOptions())
    assert err.value.code is Code.FAILED_PRECONDITION


def test_missing_tvm_is_failed_precondition_naming_the_extra() -> None:
    # A device without the extra: `import tvm` fails. Run in a fresh interpreter where it does.
    script = (
        "import sys\n"
        "sys.modules['tvm'] = None\n"
        "from edgefleet.core.errors import EdgefleetError\n"
        "from edgefleet.runtimes.base import get_backend, installed_backends\n"
        "assert 'tvm' not in installed_backends()\n"
        "try:\n"
        "    get_backend('tvm')\n"
        "except EdgefleetError as exc:\n"
        "    print(exc.code.value, exc.message)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.startswith("FAILED_PRECONDITION runtime 'tvm' is not installed on this device")
    assert "pip install 'edgefleet[tvm]'" in result.stdout
