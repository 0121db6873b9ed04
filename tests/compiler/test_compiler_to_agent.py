"""compile -> package -> agent -> Predict gives the original model's outputs (within tolerance)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from compiler_support import Digits
from support import AgentProcess, output_array, running_agent, tensor, unpack

from edgefleet.compiler.job import CompileJob, CompileRequest
from edgefleet.compiler.output import build_package_from_output
from edgefleet.core.package import inspect_package
from edgefleet.protocol.agent.proto import agent_pb2
from edgefleet.runtimes.base import RuntimeOptions, get_backend


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compile-agent")


@pytest.fixture(scope="module")
def agent(workdir: Path, trust: Path) -> Iterator[AgentProcess]:
    with running_agent(workdir, trust, agent={"memory_budget_mb": 1024}) as proc:
        yield proc


def compile_and_package(
    workdir: Path, keys: Path, model: Path, name: str, backend: str, quantize: str, data: dict[str, Path]
) -> Path:
    out = workdir / f"out-{name}"
    CompileJob(
        CompileRequest(
            model=model,
            framework="onnx",
            target="linux-x86_64",
            output_dir=out,
            backend=backend,
            quantize=quantize,
            calibration=data["calibration"],
            validation=data["validation"],
            benchmark_seconds=0.05,
        )
    ).run()
    return build_package_from_output(
        out, name=name, version="1.0", key_dir=keys, out_dir=workdir / "packages"
    )


def reference(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(None, {"x": x})[0]
    return result


@pytest.mark.parametrize(
    ("backend", "quantize", "runtime"),
    [
        ("onnxruntime", "none", "onnxruntime"),
        ("openvino", "none", "openvino"),
        ("onnxruntime", "int8", "onnxruntime"),
    ],
)
def test_compiled_package_predicts_like_the_original(
    workdir: Path,
    keys: Path,
    agent: AgentProcess,
    digits_cnn: Path,
    digits_data: dict[str, Path],
    digits: Digits,
    backend: str,
    quantize: str,
    runtime: str,
) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino", reason="pip install 'edgefleet[openvino]'")
    name = f"digits-{backend}-{quantize}"
    package = compile_and_package(workdir, keys, digits_cnn, name, backend, quantize, digits_data)
    info = inspect_package(package)
    assert info.manifest.runtime.name == runtime
    assert info.manifest.provenance["compiler"] == "edgefleet compile"
    assert info.manifest.provenance["compile_target"] == "linux-x86_64"

    stub = agent.stub()
    stub.LoadModel(agent_pb2.LoadModelRequest(url=str(package), name=name))
    try:
        x = digits.x_test[:16]
        response = stub.Predict(agent_pb2.PredictRequest(name=name, tensors=[tensor("x", x)]))
        (out,) = response.tensors
        got = output_array(out)
    finally:
        stub.UnLoadModel(agent_pb2.UnLoadModelRequest(name=name))
    expected = reference(digits_cnn, x)
    assert got.shape == expected.shape == (16, 10)
    if quantize == "none":
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    else:
        # int8 changes values a little but (on this data) not the predicted digit
        assert np.mean(np.argmax(got, 1) == np.argmax(expected, 1)) >= 15 / 16
        assert np.max(np.abs(got - expected)) < 0.25 * np.max(np.abs(expected))


def test_openvino_int8_package_loads_with_the_runtime_backend(
    workdir: Path, keys: Path, digits_cnn: Path, digits_data: dict[str, Path], digits: Digits
) -> None:
    pytest.importorskip("openvino", reason="pip install 'edgefleet[openvino]'")
    package = compile_and_package(
        workdir, keys, digits_cnn, "digits-ov-int8", "openvino", "int8", digits_data
    )
    directory = unpack(package, workdir / "unpacked-ov-int8")
    manifest = inspect_package(package).manifest
    assert sorted(f.path for f in manifest.files) == ["model.bin", "model.xml"]
    model = get_backend("openvino").load(directory, manifest, RuntimeOptions())
    try:
        x = digits.x_test[:64]
        got = model.run({"x": x})[0]
    finally:
        model.close()
    expected = reference(digits_cnn, x)
    assert np.mean(np.argmax(got, 1) == np.argmax(expected, 1)) >= 0.95
