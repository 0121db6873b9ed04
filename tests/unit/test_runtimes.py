"""Runtime seam: the backend registry, the instance pool, and the LiteRT backend on a real .tflite."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest_package import make_tflite_add
from support import make_slow_onnx

from edgefleet.core.errors import FailedPrecondition, InvalidArgument
from edgefleet.core.manifest import Manifest
from edgefleet.core.package import unpack_package
from edgefleet.packager.build import build_package
from edgefleet.runtimes.base import InstancePool, RuntimeOptions, get_backend, version_at_least
from edgefleet.runtimes.onnxruntime import OnnxRuntimeModel


def test_unknown_backend_lists_known_ones() -> None:
    with pytest.raises(
        FailedPrecondition, match=r"unknown runtime 'tensorrt': this agent knows .*onnxruntime"
    ):
        get_backend("tensorrt")


@pytest.mark.parametrize(
    ("installed", "minimum", "ok"),
    [
        ("1.31.1", "1.17", True),
        ("1.17", "1.17.0", True),
        ("1.9", "1.17", False),
        ("2026.4.1", "2024.0", True),
        ("2.13.0+cpu", "2.13", True),
        ("0.27.0.post1", "0.28", False),
    ],
)
def test_version_at_least(installed: str, minimum: str, ok: bool) -> None:
    assert version_at_least(installed, minimum) is ok


def test_instance_pool_lends_each_instance_to_one_caller_and_caps_creation() -> None:
    created: list[object] = []
    lock = threading.Lock()

    def factory() -> object:
        with lock:
            created.append(object())
            return created[-1]

    pool: InstancePool[object] = InstancePool(factory, limit=3)
    held: set[int] = set()
    overlap = threading.Event()
    barrier = threading.Barrier(3)

    def work() -> None:
        with pool.lease() as instance:
            with lock:
                assert id(instance) not in held  # never lent twice at once
                held.add(id(instance))
            try:
                barrier.wait(timeout=30)  # three callers hold three instances at the same time
                overlap.set()
            finally:
                with lock:
                    held.discard(id(instance))

    with ThreadPoolExecutor(max_workers=6) as executor:
        for future in [executor.submit(work) for _ in range(6)]:
            future.result()
    assert overlap.is_set()
    assert len(created) == 3


def test_instance_pool_factory_failure_frees_its_slot() -> None:
    calls = []

    def factory() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("engine refused")
        return len(calls)

    pool: InstancePool[int] = InstancePool(factory, limit=1)
    with pytest.raises(RuntimeError, match="engine refused"), pool.lease():
        pass
    with pool.lease() as instance:  # the failed creation did not use up the only slot
        assert instance == 2


def test_litert_backend_runs_a_tflite_package(tmp_path: Path, keys: Path) -> None:
    model = make_tflite_add(tmp_path / "add.tflite")
    package = build_package(model, name="add", version="1", key_dir=keys, out_dir=tmp_path)
    directory = unpack_package(package, tmp_path / "unpacked", trust_dir=keys / "trust")
    from edgefleet.core.package import verify_package_dir

    manifest = verify_package_dir(directory, keys / "trust")
    assert manifest.runtime.name == "litert"
    backend = get_backend("litert")
    loaded = backend.load(directory, manifest, RuntimeOptions(concurrency=2))
    assert [(t.name, t.shape) for t in loaded.inputs] == [("a", (-1, 4)), ("b", (-1, 4))]
    a = np.arange(12, dtype=np.float32).reshape(3, 4)  # a batch of 3 resizes the interpreter
    b = np.ones((3, 4), np.float32)

    def run(_: int) -> np.ndarray:
        return loaded.run({"a": a, "b": b})[0]

    with ThreadPoolExecutor(max_workers=4) as executor:
        for out in executor.map(run, range(16)):
            np.testing.assert_array_equal(out, a + b)
    loaded.close()
    with pytest.raises(FailedPrecondition, match="unloaded"):
        loaded.run({"a": a, "b": b})


def test_installed_backends_does_not_import_engines() -> None:
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from edgefleet.runtimes.base import installed_backends\n"
        "names = installed_backends()\n"
        "print(json.dumps([names, [m for m in ('tvm', 'openvino', 'ai_edge_litert') if m in sys.modules]]))\n"
    )
    names, imported = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert {"onnxruntime", "null"} <= set(names)
    assert imported == []


def test_onnxruntime_errors_become_invalid_argument(tmp_path: Path, keys: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "index"], ["row"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("index", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("row", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "lookup.onnx"
    onnx.save(model, path)
    package = build_package(path, name="lookup", version="1", key_dir=keys, out_dir=tmp_path)
    directory = unpack_package(package, tmp_path / "unpacked", trust_dir=keys / "trust")
    from edgefleet.core.package import verify_package_dir

    manifest = verify_package_dir(directory, keys / "trust")
    loaded = get_backend("onnxruntime").load(directory, manifest, RuntimeOptions())
    np.testing.assert_array_equal(loaded.run({"index": np.array([2])})[0], [[8, 9, 10, 11]])
    with pytest.raises(InvalidArgument, match="ONNX Runtime rejected the inputs"):
        loaded.run({"index": np.array([7])})
    loaded.close()


def _unpacked(tmp_path: Path, keys: Path, model: Path, name: str) -> tuple[Path, Manifest]:
    from edgefleet.core.package import verify_package_dir

    package = build_package(model, name=name, version="1", key_dir=keys, out_dir=tmp_path)
    directory = unpack_package(package, tmp_path / f"unpacked-{name}", trust_dir=keys / "trust")
    return directory, verify_package_dir(directory, keys / "trust")


def test_onnxruntime_adaptive_threads_runs_overlapping_requests_single_threaded(
    tmp_path: Path, keys: Path
) -> None:
    directory, manifest = _unpacked(tmp_path, keys, make_slow_onnx(tmp_path / "slow.onnx"), "slow")
    backend = get_backend("onnxruntime")
    model = backend.load(directory, manifest, RuntimeOptions(intra_op_threads=2, adaptive_threads=True))
    assert isinstance(model, OnnxRuntimeModel) and model.adaptive
    x = np.random.default_rng(2).standard_normal((1024, 1024)).astype(np.float32)
    lone = model.run({"x": x})[0]
    assert (model.lone_runs, model.overlapping_runs) == (1, 0)

    results: list[np.ndarray] = []
    first = threading.Thread(target=lambda: results.append(model.run({"x": x})[0]))
    first.start()
    deadline = time.monotonic() + 30
    while model.lone_runs < 2:  # the first call has started (an event, not a timing assumption)
        assert time.monotonic() < deadline, "the first call never started"
        time.sleep(0.001)
    overlapping = model.run({"x": x})[0]  # starts while the first one runs: the single-threaded twin
    first.join()
    assert (model.lone_runs, model.overlapping_runs) == (2, 1)
    # both sessions compute the same function (summation order may differ between thread counts)
    scale = float(np.abs(lone).max())
    np.testing.assert_allclose(overlapping, lone, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(results[0], lone, rtol=1e-4, atol=1e-4 * scale)
    model.close()
    with pytest.raises(FailedPrecondition, match="unloaded"):
        model.run({"x": x})


def test_onnxruntime_adaptive_threads_memory_estimate_and_when_it_applies(tmp_path: Path, keys: Path) -> None:
    directory, manifest = _unpacked(tmp_path, keys, make_slow_onnx(tmp_path / "slow.onnx", depth=2), "est")
    backend = get_backend("onnxruntime")
    weights = (directory / manifest.model_file).stat().st_size
    plain = backend.estimate_memory(directory, manifest, RuntimeOptions())
    assert backend.estimate_memory(directory, manifest) == plain
    adaptive = RuntimeOptions(intra_op_threads=2, adaptive_threads=True)
    assert backend.estimate_memory(directory, manifest, adaptive) >= plain + weights  # the twin's weights
    # one thread per request already, or one request at a time: no twin, no extra memory
    one = RuntimeOptions(intra_op_threads=1, adaptive_threads=True)
    assert backend.estimate_memory(directory, manifest, one) == plain
    serial = RuntimeOptions(intra_op_threads=2, concurrency=1, adaptive_threads=True)
    assert backend.estimate_memory(directory, manifest, serial) == plain
    model = backend.load(directory, manifest, one)
    assert isinstance(model, OnnxRuntimeModel) and not model.adaptive
    model.run({"x": np.ones((1024, 1024), np.float32)})
    assert (model.lone_runs, model.overlapping_runs) == (0, 0)  # counted in adaptive mode only
    model.close()
