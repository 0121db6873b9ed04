"""The TVM candidate builder: compile, tune within budget, never call untuned code optimised, errors.

Tuning runs here are a handful of trials on models with one to five kernels; a tuning run that
reaches the cost model (a build that ends tuned) belongs to the slow tier.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from tvm_support import (
    CNN_SHAPE,
    DENSE_SHAPE,
    build,
    info,
    load,
    make_cnn_onnx,
    make_dense_onnx,
    make_det_onnx,
    make_two_output_onnx,
    reference,
)

from edgefleet.compiler.targets import get_target, matches_host
from edgefleet.compiler.types import CandidateArtifact, CandidateUnavailable, Quantization
from edgefleet.core.errors import Code, EdgefleetError
from edgefleet.core.tensors import DataType, TensorSpec

tvm = pytest.importorskip("tvm", reason="TVM is not installed: pip install 'edgefleet[tvm]'")

X86 = get_target("linux-x86_64")
needs_x86_host = pytest.mark.skipif(
    not matches_host(X86), reason="runs linux-x86_64 code, which this host cannot execute"
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tvm-models")
    return {
        "cnn": make_cnn_onnx(base / "cnn.onnx"),
        "dense": make_dense_onnx(base / "dense.onnx"),
        "two": make_two_output_onnx(base / "two.onnx"),
        "det": make_det_onnx(base / "det.onnx"),
    }


@pytest.fixture(scope="module")
def untuned_cnn(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> CandidateArtifact:
    return build(models["cnn"], tmp_path_factory.mktemp("untuned") / "work", {"x": CNN_SHAPE})


def assert_matches_onnxruntime(artifact: CandidateArtifact, onnx_path: Path, feeds_list: list[dict]) -> None:
    model = load(artifact)
    try:
        for feeds in feeds_list:
            got = model.run(feeds)
            want = reference(onnx_path, feeds)
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                assert g.dtype == w.dtype and g.shape == w.shape
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    finally:
        model.close()


def cnn_feeds(count: int) -> list[dict]:
    rng = np.random.default_rng(7)
    return [{"x": rng.standard_normal(CNN_SHAPE).astype(np.float32)} for _ in range(count)]


@needs_x86_host
def test_untuned_build_runs_like_onnxruntime_but_is_not_optimised(
    untuned_cnn: CandidateArtifact, models: dict[str, Path]
) -> None:
    artifact = untuned_cnn
    assert artifact.name == "tvm-untuned" and artifact.runtime == "tvm"
    assert artifact.optimised is False and artifact.runs_on_host is True
    assert artifact.quantization is Quantization.NONE
    assert artifact.files() == ["model.so", "model.tvm.json"]
    assert artifact.runtime_min_version == ".".join(tvm.__version__.split(".")[:2])
    assert artifact.tool_versions["tvm"] == tvm.__version__
    assert any(note.startswith("tuned: false") for note in artifact.notes)
    meta = info(artifact)
    assert meta.tuned is False and meta.arch == "x86_64" and meta.tvm_version == tvm.__version__
    assert meta.target["mtriple"] == "x86_64-linux-gnu" and meta.target["mcpu"] == "x86-64-v2"
    assert meta.tuning["budget"] == {"trials": 0, "minutes": 0.0}
    assert meta.inputs == (TensorSpec("x", DataType.FLOAT32, CNN_SHAPE),)
    assert meta.outputs == (TensorSpec("probs", DataType.FLOAT32, (1, 10)),)
    assert_matches_onnxruntime(artifact, models["cnn"], cnn_feeds(3))


@needs_x86_host
def test_several_outputs_and_integer_outputs(models: dict[str, Path], tmp_path: Path) -> None:
    artifact = build(models["two"], tmp_path / "work", {"a": (3, 5)})
    meta = info(artifact)
    assert [(t.name, t.dtype, t.shape) for t in meta.outputs] == [
        ("r", DataType.FLOAT32, (3, 5)),
        ("idx", DataType.INT64, (3,)),
    ]
    a = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    assert_matches_onnxruntime(artifact, models["two"], [{"a": a}])


@pytest.mark.slow  # a full tuning round with the cost model: 30-70 s; the budget tests below tune in CI
@needs_x86_host
def test_tuned_within_the_trial_budget_is_optimised(models: dict[str, Path], tmp_path: Path) -> None:
    artifact = build(models["dense"], tmp_path / "work", {"a": DENSE_SHAPE}, tune_trials=3)
    meta = info(artifact)
    assert meta.tuning["tasks"] == meta.tuning["tasks_tuned"] >= 1
    assert 1 <= meta.tuning["trials"] <= 3
    assert meta.tuning["budget"] == {"trials": 3, "minutes": 0.0}
    assert meta.tuned is True
    assert artifact.optimised is True and artifact.name == "tvm"
    assert any("MetaSchedule" in note for note in artifact.notes)
    rng = np.random.default_rng(3)
    feeds = [{"a": rng.standard_normal(DENSE_SHAPE).astype(np.float32)} for _ in range(3)]
    assert_matches_onnxruntime(artifact, models["dense"], feeds)


@needs_x86_host
def test_a_budget_too_small_for_every_kernel_is_not_optimised(
    models: dict[str, Path], tmp_path: Path
) -> None:
    # One trial cannot reach the CNN's five kernels: the four left untuned make the build untuned.
    artifact = build(models["cnn"], tmp_path / "work", {"x": CNN_SHAPE}, tune_trials=1)
    meta = info(artifact)
    assert meta.tuning["trials"] == 1 and meta.tuning["stopped_by"] == "trials"
    assert meta.tuning["tasks_tuned"] < meta.tuning["tasks"]
    assert meta.tuned is False and artifact.optimised is False and artifact.name == "tvm-untuned"
    assert any(note.startswith("tuned: false") and "budget" in note for note in artifact.notes)
    assert_matches_onnxruntime(artifact, models["cnn"], cnn_feeds(1))


@needs_x86_host
def test_the_time_budget_stops_tuning(models: dict[str, Path], tmp_path: Path) -> None:
    # 1e-6 minutes is over before the first candidate is built: tuning stops after the first round
    # (2 trials for one kernel) although the trial budget allowed 10.
    artifact = build(models["cnn"], tmp_path / "work", {"x": CNN_SHAPE}, tune_trials=10, tune_minutes=1e-6)
    meta = info(artifact)
    assert meta.tuning["stopped_by"] == "time"
    assert meta.tuning["trials"] == 2 and meta.tuning["tasks_tuned"] <= 1
    assert artifact.optimised is False
    assert any("time budget spent" in note for note in artifact.notes)


@pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-gcc") is None, reason="apt-get install gcc-aarch64-linux-gnu"
)
def test_cross_compiled_aarch64_is_untuned_and_not_run_here(models: dict[str, Path], tmp_path: Path) -> None:
    from edgefleet.runtimes.tvm import library_arch

    artifact = build(models["cnn"], tmp_path / "work", {"x": CNN_SHAPE}, "linux-aarch64", tune_trials=5)
    assert artifact.runs_on_host is False and artifact.optimised is False
    assert artifact.name == "tvm-untuned"
    assert artifact.tool_versions["cross-linker"] == "aarch64-linux-gnu-gcc"
    assert any("must run candidate kernels on the target CPU" in note for note in artifact.notes)
    assert any(note.startswith("not benchmarked or verified on this host") for note in artifact.notes)
    meta = info(artifact)
    assert meta.arch == "aarch64" and meta.tuned is False and meta.target["mattr"] == ["+neon"]
    assert library_arch(artifact.directory / artifact.model_file) == "aarch64"
    if matches_host(X86):
        with pytest.raises(EdgefleetError, match="is TVM code for aarch64; this device is x86_64") as err:
            load(artifact)
        assert err.value.code is Code.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"llvm_mcpu": "pentium-9000"}, "LLVM does not know the CPU 'pentium-9000'"),
        ({"llvm_triple": "aarch64-linux-gnu"}, "does not build x86_64 code"),
        ({"llvm_mattr": ("+avx2", "+warp-drive")}, r"does not know the CPU feature\(s\) \+warp-drive"),
        ({"llvm_mattr": ("avx2",)}, "must read"),
        ({"backends": ("onnxruntime",)}, "is not served by TVM"),
    ],
)
def test_bad_target_is_invalid_argument(
    change: dict[str, object], message: str, models: dict[str, Path], tmp_path: Path
) -> None:
    target = dataclasses.replace(X86, name="custom", **change)  # type: ignore[arg-type]
    with pytest.raises(EdgefleetError, match=message) as err:
        build(models["cnn"], tmp_path / "work", {"x": CNN_SHAPE}, target)
    assert err.value.code is Code.INVALID_ARGUMENT
    assert list((tmp_path / "work").iterdir()) == []


def test_missing_cross_compiler_makes_the_candidate_unavailable(
    models: dict[str, Path], tmp_path: Path
) -> None:
    target = dataclasses.replace(get_target("linux-aarch64"), cross_compiler="no-such-aarch64-linux-gnu-gcc")
    with pytest.raises(CandidateUnavailable, match="needs no-such-aarch64-linux-gnu-gcc: apt-get install"):
        build(models["cnn"], tmp_path / "work", {"x": CNN_SHAPE}, target)
    assert list((tmp_path / "work").iterdir()) == []


def test_int8_is_left_to_other_backends(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CandidateUnavailable, match="TVM candidates are fp32 only"):
        build(models["cnn"], tmp_path / "work", {"x": CNN_SHAPE}, quantize=Quantization.INT8)


def test_unsupported_operator_makes_the_candidate_unavailable(
    models: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(
        CandidateUnavailable, match=r"TVM cannot import the model: .*not supported.*Det"
    ) as err:
        build(models["det"], tmp_path / "work", {"m": (2, 3, 3)})
    assert err.value.code is Code.FAILED_PRECONDITION
    assert list((tmp_path / "work").iterdir()) == []


def test_negative_budget_is_invalid_argument(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EdgefleetError, match="tuning budget must be >= 0") as err:
        build(models["cnn"], tmp_path / "work", {"x": CNN_SHAPE}, tune_trials=-1)
    assert err.value.code is Code.INVALID_ARGUMENT


def test_corrupt_model_file_is_invalid_argument(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07not an onnx model")
    with pytest.raises(EdgefleetError, match=r"cannot read the ONNX model bad\.onnx") as err:
        build(bad, tmp_path / "work", {"x": CNN_SHAPE})
    assert err.value.code is Code.INVALID_ARGUMENT
