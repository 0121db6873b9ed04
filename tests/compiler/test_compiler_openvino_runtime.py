"""The OpenVINO runtime backend (device side): load IR, run, concurrent runs, errors."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from compiler_support import make_mlp_onnx

from edgefleet.core.errors import Code, EdgefleetError
from edgefleet.core.manifest import FileEntry, Manifest, Runtime, Target
from edgefleet.core.tensors import DataType, TensorSpec
from edgefleet.runtimes.base import RuntimeOptions, get_backend

ov = pytest.importorskip("openvino", reason="pip install 'edgefleet[openvino]'")


def manifest_for(directory: Path, files: list[str]) -> Manifest:
    entries = tuple(FileEntry(f, (directory / f).stat().st_size, "0" * 64) for f in files)
    return Manifest(
        name="mlp",
        version="1",
        runtime=Runtime("openvino", "2024.0"),
        target=Target(arch="x86_64"),
        model_file=files[0],
        inputs=(),
        outputs=(),
        files=entries,
    )


@pytest.fixture(scope="module")
def ir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(directory holding model.xml/model.bin, the source ONNX)."""
    directory = tmp_path_factory.mktemp("ov")
    onnx_path = make_mlp_onnx(directory / "mlp.onnx", features=4, classes=3)
    ov.save_model(ov.convert_model(str(onnx_path)), str(directory / "model.xml"), compress_to_fp16=False)
    return directory, onnx_path


def expected(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    result: np.ndarray = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    return result


def test_load_and_run(ir: tuple[Path, Path]) -> None:
    directory, onnx_path = ir
    backend = get_backend("openvino")
    assert backend.name == "openvino" and backend.extra == "openvino"
    assert backend.version().count(".") == 2 and "-" not in backend.version()
    manifest = manifest_for(directory, ["model.xml", "model.bin"])
    assert backend.estimate_memory(directory, manifest) > 2 * (directory / "model.bin").stat().st_size
    model = backend.load(directory, manifest, RuntimeOptions(intra_op_threads=1))
    try:
        assert model.inputs == (TensorSpec("x", DataType.FLOAT32, (-1, 4)),)
        assert model.outputs == (TensorSpec("y", DataType.FLOAT32, (-1, 3)),)
        for batch in (1, 7):
            x = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
            np.testing.assert_allclose(model.run({"x": x})[0], expected(onnx_path, x), rtol=1e-4, atol=1e-5)
        with pytest.raises(EdgefleetError, match=r"missing input tensor\(s\) x") as info:
            model.run({"other": np.zeros((1, 4), np.float32)})
        assert info.value.code is Code.INVALID_ARGUMENT
    finally:
        model.close()
    with pytest.raises(EdgefleetError, match=r"model was unloaded") as closed:
        model.run({"x": np.zeros((1, 4), np.float32)})
    assert closed.value.code is Code.FAILED_PRECONDITION


def test_concurrent_runs_share_a_pool_of_infer_requests(ir: tuple[Path, Path]) -> None:
    directory, onnx_path = ir
    model = get_backend("openvino").load(
        directory, manifest_for(directory, ["model.xml", "model.bin"]), RuntimeOptions(concurrency=2)
    )
    inputs = [np.random.default_rng(i).standard_normal((3, 4)).astype(np.float32) for i in range(32)]
    start = threading.Barrier(4)

    def work(x: np.ndarray) -> np.ndarray:
        if x is inputs[0] or x is inputs[1] or x is inputs[2] or x is inputs[3]:
            start.wait(timeout=30)  # the first four start together, so requests really overlap
        return model.run({"x": x})[0]

    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(work, inputs))
    finally:
        model.close()
    for x, got in zip(inputs, results, strict=True):
        np.testing.assert_allclose(got, expected(onnx_path, x), rtol=1e-4, atol=1e-5)


def test_unloadable_ir_is_failed_precondition(tmp_path: Path) -> None:
    (tmp_path / "model.xml").write_text("<net><broken")
    with pytest.raises(EdgefleetError, match=r"OpenVINO cannot load model.xml") as info:
        get_backend("openvino").load(tmp_path, manifest_for(tmp_path, ["model.xml"]), RuntimeOptions())
    assert info.value.code is Code.FAILED_PRECONDITION


def test_precision_follows_the_ir(ir: tuple[Path, Path], tmp_path: Path) -> None:
    """An fp32 IR computes in fp32 even where the CPU plugin would default to bf16; an IR saved with
    fp16 weights leaves the precision to the plugin (f16/bf16 where the CPU has it)."""
    from edgefleet.runtimes.openvino import has_fp16_weights

    directory, onnx_path = ir
    backend = get_backend("openvino")
    fp32 = backend.load(directory, manifest_for(directory, ["model.xml", "model.bin"]), RuntimeOptions())
    try:
        assert not has_fp16_weights(ov.Core().read_model(str(directory / "model.xml")))
        assert fp32._compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32  # type: ignore[attr-defined]
    finally:
        fp32.close()

    half = tmp_path / "fp16"
    half.mkdir()
    ov.save_model(ov.convert_model(str(onnx_path)), str(half / "model.xml"), compress_to_fp16=True)
    assert has_fp16_weights(ov.Core().read_model(str(half / "model.xml")))
    model = backend.load(half, manifest_for(half, ["model.xml", "model.bin"]), RuntimeOptions())
    try:
        plugin_default = (
            ov.Core().compile_model(str(half / "model.xml"), "CPU").get_property("INFERENCE_PRECISION_HINT")
        )
        assert model._compiled.get_property("INFERENCE_PRECISION_HINT") == plugin_default  # type: ignore[attr-defined]
        x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
        np.testing.assert_allclose(model.run({"x": x})[0], expected(onnx_path, x), rtol=0.05, atol=0.05)
    finally:
        model.close()
