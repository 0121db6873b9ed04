"""CompileJob end to end: candidates per backend, int8 accuracy, auto selection, bad inputs, lifecycle."""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from compiler_support import make_custom_op_onnx, make_mlp_onnx, make_tflite_fc

from edgefleet.compiler.job import CompileJob, CompileRequest, CompileResult, JobStatus
from edgefleet.compiler.output import PACKAGE_METADATA_FILE
from edgefleet.compiler.report import REPORT_FILE, CandidateStatus
from edgefleet.compiler.signature import InputSpec
from edgefleet.core.errors import Code, EdgefleetError

# Latency figures are not asserted (no timing thresholds); a short measurement keeps tests fast.
BENCH_SECONDS = 0.05
METADATA_KEYS = {"model_file", "runtime", "target", "inputs", "outputs", "source_sha256", "extra_files"}


def request(model: Path, out: Path, **kwargs: Any) -> CompileRequest:
    values: dict[str, Any] = {
        "framework": "onnx",
        "target": "linux-x86_64",
        "benchmark_seconds": BENCH_SECONDS,
        **kwargs,
    }
    return CompileRequest(model=model, output_dir=out, **values)


def compile_model(model: Path, out: Path, **kwargs: Any) -> CompileResult:
    return CompileJob(request(model, out, **kwargs)).run()


def failing(model: Path, out: Path, code: Code, match: str, **kwargs: Any) -> CompileJob:
    """Run a job that must fail with ``code``; check it left nothing behind."""
    job = CompileJob(request(model, out, **kwargs))
    with pytest.raises(EdgefleetError, match=match) as info:
        job.run()
    assert info.value.code is code, str(info.value)
    assert job.status is JobStatus.FAILED and job.error is info.value
    assert not out.exists() or not any(out.iterdir()), "a failed job must not write its output"
    assert not list(out.parent.glob(f".{out.name}.partial-*"))
    return job


def statuses(result: CompileResult) -> dict[str, CandidateStatus]:
    return {c.name: c.status for c in result.report.candidates}


def test_int8_quantisation_keeps_digits_accuracy(
    tmp_path: Path, digits_cnn: Path, digits_data: dict[str, Path]
) -> None:
    result = compile_model(
        digits_cnn,
        tmp_path / "out",
        backend="onnxruntime",
        quantize="int8",
        calibration=digits_data["calibration"],
        validation=digits_data["validation"],
    )
    report = result.report
    base, int8 = report.candidate("onnxruntime-original"), report.candidate("onnxruntime-int8")
    assert report.selected == "onnxruntime-int8"
    assert base.accuracy is not None and base.accuracy > 93.0
    assert int8.accuracy is not None and int8.accuracy >= base.accuracy - 1.0
    assert (
        int8.size_bytes is not None and base.size_bytes is not None and int8.size_bytes < base.size_bytes / 2
    )
    assert report.validation == {
        "source": str(digits_data["validation"]),
        "samples": 397,
        "metric": "top1_accuracy",
        "max_accuracy_drop": 1.0,
        "batch_axes": {},  # every input batched on axis 0
    }
    meta = json.loads((tmp_path / "out" / PACKAGE_METADATA_FILE).read_text())
    assert set(meta) == METADATA_KEYS
    assert meta["model_file"] == "model.onnx" and meta["extra_files"] == []
    assert meta["runtime"] == {"name": "onnxruntime", "min_version": "1.12"}
    assert meta["target"] == {"os": "linux", "arch": "x86_64", "accelerator": "none"}
    assert meta["inputs"] == [{"name": "x", "dtype": "FLOAT32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "y", "dtype": "FLOAT32", "shape": [-1, 10]}]
    import hashlib

    assert meta["source_sha256"] == hashlib.sha256(digits_cnn.read_bytes()).hexdigest()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        PACKAGE_METADATA_FILE,
        "model.onnx",
        REPORT_FILE,
    ]
    saved = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert saved["selected"] == "onnxruntime-int8" and saved["after"]["accuracy"] == int8.accuracy
    assert set(saved["before"]) == {
        "candidate",
        "size_bytes",
        "latency_p50_ms",
        "latency_p99_ms",
        "accuracy",
        "agreement",
    }
    assert {"onnx", "onnxruntime", "numpy", "edgefleet"} <= set(saved["tool_versions"])


@pytest.mark.parametrize(("tolerance", "int8_kept"), [(1.0, False), (100.0, True)])
def test_auto_honours_the_accuracy_tolerance(
    tmp_path: Path, digits_cnn: Path, digits_data: dict[str, Path], tolerance: float, int8_kept: bool
) -> None:
    """Calibrating on inputs 100x too small wrecks int8 accuracy: the tolerance decides its fate."""
    result = compile_model(
        digits_cnn,
        tmp_path / "out",
        backend="onnxruntime",
        calibration=digits_data["tiny_calibration"],
        validation=digits_data["validation"],
        max_accuracy_drop=tolerance,
    )
    report = result.report
    base, int8 = report.candidate("onnxruntime-original"), report.candidate("onnxruntime-int8")
    assert base.accuracy is not None and int8.accuracy is not None
    assert int8.accuracy < base.accuracy - 5.0, "the bad calibration must really hurt int8"
    measured = [c for c in report.candidates if c.latency is not None]
    # (an accuracy-aware "-mixed" int8 candidate may join them when full int8 misses the tolerance)
    assert {c.name for c in measured} - {"onnxruntime-int8-mixed"} == {
        "onnxruntime-original",
        "onnxruntime",
        "onnxruntime-int8",
    }
    selected = report.candidate(report.selected)
    assert selected.latency is not None and base.latency is not None
    # Never slower than plain ONNX Runtime on the original, in the same measurement.
    assert selected.latency.p50_ms <= base.latency.p50_ms
    if int8_kept:
        assert "loses" not in int8.reason
        eligible = measured
    else:
        assert report.selected != "onnxruntime-int8"
        assert int8.status is CandidateStatus.REJECTED
        assert int8.reason.startswith("loses ") and "points of top-1 accuracy (limit 1)" in int8.reason
        eligible = [c for c in measured if c.name != "onnxruntime-int8"]
    assert selected.latency.p50_ms == min(c.latency.p50_ms for c in eligible if c.latency)


def test_explicit_int8_beyond_tolerance_fails_and_writes_nothing(
    tmp_path: Path, digits_cnn: Path, digits_data: dict[str, Path]
) -> None:
    failing(
        digits_cnn,
        tmp_path / "out",
        Code.FAILED_PRECONDITION,
        r"every requested candidate exceeds --max-accuracy-drop 1 on top-1 accuracy \(onnxruntime-int8 loses",
        backend="onnxruntime",
        quantize="int8",
        calibration=digits_data["tiny_calibration"],
        validation=digits_data["validation"],
    )


def test_auto_on_all_installed_backends(
    tmp_path: Path, digits_cnn: Path, digits_data: dict[str, Path]
) -> None:
    pytest.importorskip("openvino", reason="pip install 'edgefleet[openvino]'")
    result = compile_model(
        digits_cnn,
        tmp_path / "out",
        target="linux-x86_64-avx2",
        calibration=digits_data["calibration"],
        validation=digits_data["unlabelled"],
    )
    report = result.report
    assert {c.name for c in report.candidates} == {
        "onnxruntime-original",
        "onnxruntime",
        "onnxruntime-int8",
        "openvino",
        "openvino-int8",
    }
    assert report.validation["metric"] == "agreement"
    for cand in report.candidates:
        assert cand.latency is not None and cand.agreement is not None, cand.name
        assert cand.agreement >= 97.0, cand.name
        assert cand.max_abs_diff is not None
    assert report.candidate("openvino").agreement == 100.0
    selected = report.candidate(report.selected)
    assert selected.latency is not None
    assert all(selected.latency.p50_ms <= c.latency.p50_ms for c in report.candidates if c.latency)
    assert any("TVM skipped: untuned TVM code is far slower" in n for n in report.notes)
    table = report.render_table()
    assert "before (onnxruntime-original)" in table and f"after ({report.selected})" in table
    assert "openvino-int8" in table and "agreement" in table


@pytest.mark.parametrize(
    ("quantize", "kind"),
    [("none", "openvino"), ("int8", "openvino-int8"), ("fp16", "openvino-fp16")],
)
def test_openvino_artifacts(
    tmp_path: Path, digits_cnn: Path, digits_data: dict[str, Path], quantize: str, kind: str
) -> None:
    pytest.importorskip("openvino", reason="pip install 'edgefleet[openvino]'")
    result = compile_model(
        digits_cnn,
        tmp_path / "out",
        backend="openvino",
        quantize=quantize,
        calibration=digits_data["calibration"],
        validation=digits_data["validation"],
    )
    assert result.report.selected == kind
    assert result.metadata["model_file"] == "model.xml" and result.metadata["extra_files"] == ["model.bin"]
    assert result.metadata["runtime"]["name"] == "openvino"
    assert (tmp_path / "out" / "model.bin").is_file()
    cand = result.report.candidate(kind)
    base = result.report.candidate("onnxruntime-original")
    assert cand.accuracy is not None and base.accuracy is not None and cand.accuracy >= base.accuracy - 1.0
    if quantize == "fp16":
        assert base.size_bytes is not None
        assert (tmp_path / "out" / "model.bin").stat().st_size < 0.6 * base.size_bytes, (
            "fp16 halves the weights"
        )


def test_fp16_needs_a_target_with_fp16_compute(tmp_path: Path, digits_cnn: Path) -> None:
    failing(
        digits_cnn,
        tmp_path / "out",
        Code.FAILED_PRECONDITION,
        r"target linux-x86_64 has no native fp16 arithmetic",
        backend="onnxruntime",
        quantize="fp16",
    )


def test_cross_target_fp16_with_host_proxy(
    tmp_path: Path, digits_cnn: Path, digits_data: dict[str, Path]
) -> None:
    result = compile_model(
        digits_cnn,
        tmp_path / "out",
        target="linux-aarch64-armv8.2",
        backend="onnxruntime",
        quantize="fp16",
        validation=digits_data["validation"],
    )
    assert result.report.selected == "onnxruntime-fp16"
    assert result.metadata["target"]["arch"] == "aarch64"
    assert result.metadata["inputs"][0]["dtype"] == "FLOAT32", "fp16 keeps fp32 inputs and outputs"
    assert "as a proxy for linux-aarch64-armv8.2" in result.report.latency_measured_on
    fp16 = result.report.candidate("onnxruntime-fp16")
    assert fp16.agreement is not None and fp16.agreement >= 99.0


def test_tflite_is_served_by_litert(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert", reason="pip install 'edgefleet[litert]'")
    weights = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    model = make_tflite_fc(tmp_path / "fc.tflite", weights, np.zeros(3, np.float32))
    result = compile_model(model, tmp_path / "out", framework="tflite", target="linux-aarch64")
    assert result.report.selected == "litert" and result.report.baseline == "litert"
    assert result.metadata["runtime"] == {"name": "litert", "min_version": "1.0"}
    assert result.metadata["inputs"] == [{"name": "x", "dtype": "FLOAT32", "shape": [1, 4]}]
    assert (tmp_path / "out" / "model.tflite").read_bytes() == model.read_bytes()
    failing(
        model,
        tmp_path / "out2",
        Code.INVALID_ARGUMENT,
        r"TFLite models are served by LiteRT: use --backend litert or auto, not onnxruntime",
        framework="tflite",
        backend="onnxruntime",
    )


def test_tabular_model_without_quantisable_operators(tmp_path: Path) -> None:
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    x, y = load_iris(return_X_y=True)
    clf = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x.astype(np.float32), y)
    (tmp_path / "tree.pkl").write_bytes(pickle.dumps(clf))
    np.savez(tmp_path / "val.npz", input=x.astype(np.float32), labels=y)
    result = compile_model(
        tmp_path / "tree.pkl",
        tmp_path / "out",
        framework="sklearn",
        backend="onnxruntime",
        calibration=tmp_path / "val.npz",
        validation=tmp_path / "val.npz",
    )
    int8 = result.report.candidate("onnxruntime-int8")
    assert int8.status is CandidateStatus.UNAVAILABLE
    assert "int8 quantisation needs Conv/ConvTranspose/MatMul/Gemm operators" in int8.reason
    base = result.report.candidate("onnxruntime-original")
    assert base.accuracy == pytest.approx(clf.score(x.astype(np.float32), y) * 100)
    assert [o["name"] for o in result.metadata["outputs"]] == ["label", "probabilities"]


def test_scikit_learn_mlp_quantises_and_unconvertible_candidates_are_skipped(tmp_path: Path) -> None:
    """A scikit-learn MLP (ONNX Runtime's per-channel bias-scale adjustment fails on its Gemm graph,
    and OpenVINO cannot convert its ai.onnx.ml operators): the int8 candidate is still built and
    checked, OpenVINO candidates are unavailable with the reason, and the job succeeds."""
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=0).fit(
        x[:1200], digits.target[:1200]
    )
    (tmp_path / "mlp.pkl").write_bytes(pickle.dumps(clf))
    np.savez(tmp_path / "cal.npz", input=x[1200:1400])
    np.savez(tmp_path / "val.npz", input=x[1200:], labels=digits.target[1200:])
    job = CompileJob(
        request(
            tmp_path / "mlp.pkl",
            tmp_path / "out",
            framework="sklearn",
            calibration=tmp_path / "cal.npz",
            validation=tmp_path / "val.npz",
        )
    )
    result = job.run()
    int8 = result.report.candidate("onnxruntime-int8")
    assert int8.status is not CandidateStatus.UNAVAILABLE, int8.reason
    assert int8.accuracy is not None and int8.accuracy > 90
    assert any("quantising without it" in line.message for line in job.log)
    if importlib.util.find_spec("openvino") is not None:
        openvino = result.report.candidate("openvino")
        assert openvino.status is CandidateStatus.UNAVAILABLE
        assert "OpenVINO cannot convert the model" in openvino.reason


@pytest.mark.slow
def test_tvm_candidate_when_available(tmp_path: Path) -> None:
    """The job drives the TVM builder through the builder seam (TVM itself is tested by its own suite)."""
    pytest.importorskip("tvm", reason="pip install 'edgefleet[tvm]'")
    pytest.importorskip("edgefleet.compiler.backends.tvm", reason="the TVM builder is not in this tree yet")
    model = make_mlp_onnx(tmp_path / "mlp.onnx")
    job = CompileJob(
        request(model, tmp_path / "out", backend="tvm", quantize="none", inputs=(InputSpec("x", (1, 4)),))
    )
    result = job.run()
    assert result.metadata["runtime"]["name"] == "tvm"
    cand = result.report.candidate(result.report.selected)
    assert cand.runtime == "tvm" and cand.optimised is False, "an untuned TVM build is never called optimised"
    # asked for by name, it ships, and says plainly that it is not optimised
    assert cand.reason == "not optimised (e.g. untuned): shipped only because --backend tvm asked for it"
    assert any(line.message == f"warning: {cand.name} is {cand.reason}" for line in job.log)


class TestBadInputs:
    def test_corrupt_model_file(self, tmp_path: Path) -> None:
        (tmp_path / "m.onnx").write_bytes(b"\x08\x07garbage\xff" * 50)
        failing(
            tmp_path / "m.onnx", tmp_path / "out", Code.INVALID_ARGUMENT, r"m.onnx is not a valid ONNX model"
        )

    def test_missing_model_file(self, tmp_path: Path) -> None:
        failing(
            tmp_path / "none.onnx", tmp_path / "out", Code.NOT_FOUND, r"model file .*none.onnx does not exist"
        )

    def test_unsupported_operator(self, tmp_path: Path) -> None:
        model = make_custom_op_onnx(tmp_path / "c.onnx")
        failing(
            model,
            tmp_path / "out",
            Code.UNIMPLEMENTED,
            r"unsupported operator\(s\): FancyOp \(domain com.example\)",
        )

    def test_wrong_input_shape(self, tmp_path: Path) -> None:
        model = make_mlp_onnx(tmp_path / "mlp.onnx")
        failing(
            model,
            tmp_path / "out",
            Code.INVALID_ARGUMENT,
            r"--input 'x': shape \[1, 5\] conflicts with the model's fixed shape \[-1, 4\]",
            inputs=(InputSpec("x", (1, 5)),),
        )

    def test_calibration_data_of_the_wrong_shape(self, tmp_path: Path) -> None:
        model = make_mlp_onnx(tmp_path / "mlp.onnx")
        np.savez(tmp_path / "cal.npz", x=np.zeros((10, 5), np.float32))
        failing(
            model,
            tmp_path / "out",
            Code.INVALID_ARGUMENT,
            r"calibration data cal.npz: input 'x' has shape \(10, 5\) but the model expects \(N, 4\)",
            calibration=tmp_path / "cal.npz",
        )

    def test_unknown_target(self, tmp_path: Path) -> None:
        model = make_mlp_onnx(tmp_path / "mlp.onnx")
        failing(
            model,
            tmp_path / "out",
            Code.INVALID_ARGUMENT,
            r"unknown target 'jetson': known targets are linux-aarch64, linux-aarch64-armv8.2, linux-x86_64",
            target="jetson",
        )

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"framework": "keras"}, r"framework 'keras' is not supported directly: convert it to TFLite"),
            ({"framework": "caffe2"}, r"unknown framework 'caffe2': supported frameworks are"),
            (
                {"backend": "tensorrt"},
                r"unknown backend 'tensorrt': known backends are auto, litert, onnxruntime",
            ),
            (
                {"backend": "openvino", "target": "linux-aarch64"},
                r"backend openvino does not serve target linux-aarch64 \(it is served by onnxruntime, tvm, litert\)",
            ),
            ({"backend": "litert"}, r"--backend litert serves .tflite models \(--framework tflite\) only"),
            ({"quantize": "int4"}, r"unknown --quantize 'int4': choose one of auto, none, int8, fp16"),
            ({"quantize": "int8"}, r"--quantize int8 needs --calibration DATA"),
            ({"max_accuracy_drop": -1.0}, r"--max-accuracy-drop must be >= 0, got -1"),
            ({"tune_trials": -5}, r"--tune-trials must be >= 0, got -5"),
            ({"benchmark_seconds": 0.0}, r"--bench-seconds must be > 0"),
        ],
    )
    def test_bad_options(self, tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
        model = make_mlp_onnx(tmp_path / "mlp.onnx")
        failing(model, tmp_path / "out", Code.INVALID_ARGUMENT, match, **kwargs)

    def test_output_directory_not_empty(self, tmp_path: Path) -> None:
        model = make_mlp_onnx(tmp_path / "mlp.onnx")
        out = tmp_path / "out"
        out.mkdir()
        (out / "keep.txt").write_text("precious")
        job = CompileJob(request(model, out))
        with pytest.raises(EdgefleetError, match=r"output directory .*out is not empty") as info:
            job.run()
        assert info.value.code is Code.ALREADY_EXISTS
        assert [p.name for p in out.iterdir()] == ["keep.txt"] and (
            out / "keep.txt"
        ).read_text() == "precious"


def test_job_lifecycle_and_log(tmp_path: Path) -> None:
    model = make_mlp_onnx(tmp_path / "mlp.onnx")
    seen: list[str] = []
    times = iter(range(1000, 2000))
    job = CompileJob(
        request(model, tmp_path / "out"), job_id="job-1", on_log=seen.append, clock=lambda: next(times)
    )
    assert job.id == "job-1" and job.status is JobStatus.PENDING and job.result is None
    result = job.run()
    assert job.status is JobStatus.SUCCEEDED and job.result is result
    # the log holds every progress line, in order, and also the full text of tools' output
    remaining = iter(line.message for line in job.log)
    assert all(message in remaining for message in seen)
    assert seen[0].startswith("compiling mlp.onnx (onnx) for linux-x86_64")
    assert any(m.startswith("benchmarking ") for m in seen) and seen[-1] == f"succeeded: {tmp_path / 'out'}"
    assert [line.time for line in job.log][:2] == [1000, 1001]
    state = job.to_dict()
    assert (
        state["status"] == "succeeded"
        and state["error"] is None
        and state["output_dir"] == str(tmp_path / "out")
    )
    assert state["request"]["target"] == "linux-x86_64"
    assert result.report.job_id == "job-1"
    assert any(
        "no validation data: candidates were checked for output agreement on random inputs" in n
        for n in result.report.notes
    )
    with pytest.raises(
        EdgefleetError, match=r"compile job job-1 has already run \(status succeeded\)"
    ) as info:
        job.run()
    assert info.value.code is Code.FAILED_PRECONDITION


def test_cancel_stops_at_the_next_step(tmp_path: Path) -> None:
    model = make_mlp_onnx(tmp_path / "mlp.onnx")
    job: CompileJob

    def on_log(message: str) -> None:
        if message.startswith("building candidate"):
            job.cancel()

    job = CompileJob(request(model, tmp_path / "out", backend="onnxruntime"), on_log=on_log)
    with pytest.raises(EdgefleetError, match=r"compile job .* was cancelled") as info:
        job.run()
    assert info.value.code is Code.ABORTED and job.status is JobStatus.CANCELLED
    assert job.to_dict()["error"]["code"] == "ABORTED"
    assert not (tmp_path / "out").exists()


def test_offline_optimised_graph_stays_portable(tmp_path: Path) -> None:
    """Basic-level ORT optimisation keeps standard operators and declares only the opsets it uses,
    so the artifact's minimum ONNX Runtime version follows the opset, not the compiling release."""
    import onnx

    from edgefleet.compiler import graph_passes, onnx_graph

    model = make_mlp_onnx(tmp_path / "mlp.onnx")
    optimised = onnx.load(str(graph_passes.ort_offline_optimise(model, tmp_path / "opt.onnx")))
    assert [(o.domain, o.version) for o in optimised.opset_import] == [("", 17)]
    assert onnx_graph.ort_min_version(optimised, "1.31.1") == "1.12"


def test_a_failed_openvino_conversion_leaves_the_root_logger_alone(tmp_path: Path) -> None:
    """OpenVINO's convert_model sets the root logger to ERROR and keeps it so when it fails."""
    pytest.importorskip("openvino", reason="pip install 'edgefleet[openvino]'")
    import logging

    from edgefleet.compiler.backends.openvino import build_openvino
    from edgefleet.compiler.targets import get_target
    from edgefleet.compiler.types import BuildOptions, CandidateUnavailable, Quantization

    broken = make_custom_op_onnx(tmp_path / "custom.onnx")
    root = logging.getLogger()
    before = (root.level, list(root.filters), list(root.handlers))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(CandidateUnavailable, match="OpenVINO cannot convert the model"):
        build_openvino(
            broken,
            get_target("linux-x86_64"),
            BuildOptions(work_dir=work, input_shapes={}, quantize=Quantization.NONE),
            print,
        )
    assert (root.level, list(root.filters), list(root.handlers)) == before
